"""Augmentations on numpy images and pixel boxes (cv2 + numpy, torch-free). All randomness comes from
a `numpy.random.Generator` passed in, so a seeded generator gives the same result every time.

Conventions:
  * `img`: HxWx3 uint8 RGB.
  * `boxes`: float32 [n, 4] pixel x1, y1, x2, y2 in continuous image coordinates: pixel column i
    covers [i, i + 1), so a rectangle filling columns 10..19 has x1 = 10, x2 = 20.
  * `cls`: float32 [n] class ids, kept aligned with `boxes` (boxes dropped -> their ids dropped).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Item = tuple[np.ndarray, np.ndarray, np.ndarray]  # (img, boxes xyxy px, cls)


def _as_boxes(boxes: np.ndarray | None) -> np.ndarray:
    return np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)


def _as_cls(cls: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros((n,), np.float32) if cls is None else np.asarray(cls, np.float32).reshape(-1)


def _fill3(fill: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(fill, (int, float, np.integer, np.floating)):
        return (int(fill),) * 3
    f = tuple(int(v) for v in fill)
    return (f + (f[-1],) * 3)[:3]


def random_hsv(img: np.ndarray, h: float, s: float, v: float, rng: np.random.Generator) -> np.ndarray:
    """Random hue shift (+/- h of the colour circle) and saturation/value gains (1 +/- s, 1 +/- v).

    Returns a new image; boxes are unaffected. h = s = v = 0 returns `img` itself.
    """
    if not (h or s or v):
        return img
    dh, gs, gv = rng.uniform(-1.0, 1.0, 3) * np.array([h, s, v]) + np.array([0.0, 1.0, 1.0])
    x = np.arange(256, dtype=np.float32)
    lut_h = np.mod(x + dh * 180.0, 180.0).astype(np.uint8)  # OpenCV 8-bit hue is 0..179
    lut_s = np.clip(x * gs, 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gv, 0, 255).astype(np.uint8)
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def hflip(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x -> W - x (x1 and x2 swap roles)."""
    w = img.shape[1]
    b = _as_boxes(boxes).copy()
    if len(b):
        b[:, [0, 2]] = w - b[:, [2, 0]]
    return np.ascontiguousarray(img[:, ::-1]), b


def filter_boxes(
    boxes_before: np.ndarray, boxes_after: np.ndarray, min_size: float = 2.0, area_thr: float = 0.2
) -> np.ndarray:
    """Boolean mask of boxes to keep: at least `min_size` px wide and high after clipping, and keeping
    at least `area_thr` of their (unclipped) area."""
    wa, ha = boxes_after[:, 2] - boxes_after[:, 0], boxes_after[:, 3] - boxes_after[:, 1]
    wb, hb = boxes_before[:, 2] - boxes_before[:, 0], boxes_before[:, 3] - boxes_before[:, 1]
    area_b = np.maximum(wb * hb, 1e-9)
    return (wa >= min_size) & (ha >= min_size) & (wa * ha / area_b >= area_thr)


def affine_matrix(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    degrees: float,
    translate: float,
    scale: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Random 3x3 matrix (cv2 pixel-index convention) taking the input centre to the output centre,
    rotated by U(-degrees, degrees), scaled by U(1 - scale, 1 + scale), then shifted by
    U(-translate, translate) * output size. `in_size`/`out_size` are (w, h)."""
    c = np.eye(3)
    c[0, 2], c[1, 2] = -in_size[0] / 2, -in_size[1] / 2
    r = np.eye(3)
    a = rng.uniform(-degrees, degrees) if degrees else 0.0
    s = rng.uniform(1 - scale, 1 + scale) if scale else 1.0
    r[:2] = cv2.getRotationMatrix2D((0.0, 0.0), a, s)
    t = np.eye(3)
    tx, ty = rng.uniform(-translate, translate, 2) if translate else (0.0, 0.0)
    t[0, 2] = out_size[0] / 2 + tx * out_size[0]
    t[1, 2] = out_size[1] / 2 + ty * out_size[1]
    return t @ r @ c


def transform_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Boxes (continuous coordinates) through a 3x3 matrix given in cv2 pixel-index coordinates:
    the axis-aligned box around the 4 transformed corners (exact for rectangles)."""
    b = _as_boxes(boxes)
    if not len(b):
        return b.copy()
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])  # continuous = index + 0.5
    mc = half @ m @ np.linalg.inv(half)
    xs = b[:, [0, 2, 2, 0]]
    ys = b[:, [1, 1, 3, 3]]
    pts = np.stack([xs, ys, np.ones_like(xs)], axis=-1).astype(np.float64) @ mc.T  # n,4,3
    px, py = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    return np.stack([px.min(1), py.min(1), px.max(1), py.max(1)], axis=1).astype(np.float32)


def random_affine(
    img: np.ndarray,
    boxes_xyxy: np.ndarray,
    cls: np.ndarray,
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    border: int | Sequence[int] = 114,
    out_size: int | tuple[int, int] | None = None,
    rng: np.random.Generator | None = None,
    min_size: float = 2.0,
    area_thr: float = 0.2,
) -> Item:
    """Random rotation/scale/translation of `img` about its centre onto an `out_size` canvas (int, or
    (w, h); default: the input size), filling uncovered pixels with `border` (grey value or RGB).

    Boxes go through the same transform (their 4 corners), are clipped to the canvas, and are dropped
    when narrower/lower than `min_size` px or left with less than `area_thr` of their area.
    A mosaic canvas (2s x 2s) with out_size = s gives the usual centre crop of the mosaic.
    """
    if rng is None:
        rng = np.random.default_rng()
    h, w = img.shape[:2]
    if out_size is None:
        ow, oh = w, h
    elif isinstance(out_size, (int, np.integer)):
        ow = oh = int(out_size)
    else:
        ow, oh = int(out_size[0]), int(out_size[1])
    boxes = _as_boxes(boxes_xyxy)
    cls = _as_cls(cls, len(boxes))
    m = affine_matrix((w, h), (ow, oh), degrees, translate, scale, rng)
    if (ow, oh) == (w, h) and np.allclose(m, np.eye(3)):
        out = img
    else:
        out = cv2.warpAffine(img, m[:2], dsize=(ow, oh), flags=cv2.INTER_LINEAR, borderValue=_fill3(border))
    if not len(boxes):
        return out, boxes, cls
    tb = transform_boxes(boxes, m)
    clipped = tb.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, ow)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, oh)
    keep = filter_boxes(tb, clipped, min_size, area_thr)
    return out, clipped[keep], cls[keep]


def mosaic4(
    items: Sequence[Item],
    out_size: int,
    rng: np.random.Generator,
    fill: int | Sequence[int] = 114,
    min_size: float = 2.0,
    area_thr: float = 0.2,
) -> Item:
    """Four (img, boxes, cls) items (images usually resized so their long side is `out_size`) tiled
    around a random centre in U(s/2, 3s/2)^2 of a 2s x 2s canvas (s = out_size): the first image's
    bottom-right corner, the second's bottom-left, the third's top-right and the fourth's top-left meet
    at the centre. Returns the 2s x 2s canvas and its boxes; crop it back to s with `random_affine`.
    """
    if len(items) != 4:
        raise ValueError(f"mosaic4 needs 4 items, got {len(items)}")
    s = int(out_size)
    xc, yc = (int(v) for v in rng.uniform(s / 2, 3 * s / 2, 2))
    canvas = np.empty((2 * s, 2 * s, 3), np.uint8)
    canvas[...] = _fill3(fill)
    all_boxes, all_cls = [], []
    for i, (img, boxes, cls) in enumerate(items):
        h, w = img.shape[:2]
        if i == 0:  # top-left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
        elif i == 1:  # top-right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b = 0, h - (y2a - y1a)
        elif i == 2:  # bottom-left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b = w - (x2a - x1a), 0
        else:  # bottom-right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b = 0, 0
        pw, ph = x2a - x1a, y2a - y1a
        if pw <= 0 or ph <= 0:
            continue
        canvas[y1a:y2a, x1a:x2a] = img[y1b : y1b + ph, x1b : x1b + pw]
        b = _as_boxes(boxes)
        if not len(b):
            continue
        c = _as_cls(cls, len(b))
        moved = b + np.array([x1a - x1b, y1a - y1b, x1a - x1b, y1a - y1b], np.float32)
        clipped = moved.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(x1a, x2a)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(y1a, y2a)
        keep = filter_boxes(moved, clipped, min_size, area_thr)
        all_boxes.append(clipped[keep])
        all_cls.append(c[keep])
    boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4), np.float32)
    cls = np.concatenate(all_cls) if all_cls else np.zeros((0,), np.float32)
    return canvas, boxes.astype(np.float32), cls.astype(np.float32)
