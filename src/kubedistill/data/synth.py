"""A built-in demo dataset: shapes on a cluttered background, in YOLO format, made in seconds.

Each image has a noisy two-colour gradient background with clutter that is not an object (thin
lines, soft low-contrast smudges), then 1..6 filled shapes in random colours; the class is the
shape (circle, square, triangle, cross, ...), never the colour. Sizes are log-uniform from 4 px to
half the image. Shapes may overlap, but every object keeps at least half of its pixels visible, and
its box is the tight box of its visible pixels. Output is byte-identical for the same arguments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "hexagon", "star", "ring")
MIN_SIZE = 4  # px
MIN_VISIBLE = 0.5  # fraction of an object's pixels that must stay visible
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _shape_kinds(names: Sequence[str]) -> list[str]:
    """Shape drawn for each class: the shape named like the class, else the next unused shape."""
    if not names:
        raise ValueError("names must not be empty")
    if len(names) > len(SHAPES):
        raise ValueError(f"at most {len(SHAPES)} classes ({', '.join(SHAPES)}), got {len(names)}")
    kinds: list[str | None] = [n if n in SHAPES else None for n in names]
    free = [s for s in SHAPES if s not in kinds]
    return [k if k is not None else free.pop(0) for k in kinds]


def _draw(mask: np.ndarray, kind: str, x1: int, y1: int, s: int) -> None:
    """Draw shape `kind` filling the s x s square at (x1, y1) into `mask` (value 255, no anti-aliasing)."""
    x2, y2 = x1 + s - 1, y1 + s - 1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if kind == "circle":
        r = (s - 1) / 2
        cv2.ellipse(
            mask,
            (int(round(cx * 16)), int(round(cy * 16))),
            (int(round(r * 16)),) * 2,
            0,
            0,
            360,
            255,
            -1,
            cv2.LINE_8,
            4,
        )
    elif kind == "square":
        cv2.rectangle(mask, (x1, y1), (x2, y2), 255, -1)
    elif kind == "triangle":
        pts = np.array([[round(cx), y1], [x2, y2], [x1, y2]], np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_8)
    elif kind == "cross":
        t = max(1, round(s / 3.5))
        a = x1 + (s - t) // 2
        b = y1 + (s - t) // 2
        cv2.rectangle(mask, (a, y1), (a + t - 1, y2), 255, -1)
        cv2.rectangle(mask, (x1, b), (x2, b + t - 1), 255, -1)
    elif kind == "diamond":
        pts = np.array([[round(cx), y1], [x2, round(cy)], [round(cx), y2], [x1, round(cy)]], np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_8)
    elif kind == "hexagon":
        r = (s - 1) / 2
        pts = [[cx + r * math.cos(a), cy + r * math.sin(a)] for a in np.arange(6) * math.pi / 3]
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255, cv2.LINE_8)
    elif kind == "star":
        r = (s - 1) / 2
        pts = [
            [
                cx + (r if i % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
                cy + (r if i % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5),
            ]
            for i in range(10)
        ]
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255, cv2.LINE_8)
    elif kind == "ring":
        r = (s - 1) / 2
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 255, -1)
        if s >= 8:
            cv2.circle(mask, (int(round(cx)), int(round(cy))), max(1, int(round(r * 0.5))), 0, -1)
    else:  # pragma: no cover
        raise ValueError(kind)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    c0, c1 = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    r = np.linspace(-0.35, 0.35, n, dtype=np.float32)
    t = (np.float32(math.cos(ang)) * r[None, :] + np.float32(math.sin(ang)) * r[:, None]) + np.float32(0.5)
    img = c0 + (c1 - c0) * t[..., None]
    # soft low-contrast smudges: blurred ellipses, too faint and blurry to pass for an object
    # (drawn and blurred at a quarter of the resolution, then scaled up: cheap and smooth)
    q = max(4, n // 4)
    smudge = np.zeros((q, q, 3), np.float32)
    for _ in range(int(rng.integers(2, 7))):
        centre = (int(rng.integers(0, q)), int(rng.integers(0, q)))
        axes = (int(rng.integers(1, max(2, q // 6))), int(rng.integers(1, max(2, q // 6))))
        cv2.ellipse(smudge, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(-35, 35, 3).tolist(), -1)
    smudge = cv2.GaussianBlur(smudge, (0, 0), sigmaX=max(0.8, q / 80))
    img = cv2.add(img, cv2.resize(smudge, (n, n), interpolation=cv2.INTER_LINEAR))
    img = np.clip(img, 0, 255).astype(np.uint8)
    # thin lines (1 px) across the picture
    mean = (c0 + c1) / 2
    for _ in range(int(rng.integers(2, 8))):
        p = rng.integers(-n // 4, n + n // 4, 4)
        col = np.clip(mean + rng.uniform(-60, 60, 3), 0, 255).tolist()
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col, 1, cv2.LINE_AA)
    return img


def _contrasting_colour(rng: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(12):
        col = rng.integers(0, 256, 3).astype(np.float32)
        d = float(np.abs(col - ref).sum())
        if d > best_d:
            best, best_d = col, d
        if d >= 150:
            break
    return best


def _make_image(
    rng: np.random.Generator, n: int, kinds: list[str], min_size: int = MIN_SIZE, max_objects: int = 6
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]], np.ndarray]:
    """One image, its labels (class, cx, cy, w, h normalised) and its object-id map (0: background,
    k + 1: the object of label k)."""
    img = _background(rng, n)
    idmap = np.zeros((n, n), np.int16)
    areas: list[int] = []  # original pixel count of object k (id k+1)
    visible = np.zeros(0, np.int64)  # pixels of each object still visible
    squares: list[tuple[int, int, int]] = []
    classes: list[int] = []
    mask = np.zeros((n, n), np.uint8)
    smax = max(min_size + 1, n // 2)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(8):
            s = int(round(math.exp(rng.uniform(math.log(min_size), math.log(smax)))))
            s = min(max(s, min_size), n)
            x1, y1 = int(rng.integers(0, n - s + 1)), int(rng.integers(0, n - s + 1))
            c = int(rng.integers(0, len(kinds)))
            mask[y1 : y1 + s, x1 : x1 + s] = 0
            _draw(mask, kinds[c], x1, y1, s)
            m = mask[y1 : y1 + s, x1 : x1 + s] > 0
            sub = idmap[y1 : y1 + s, x1 : x1 + s]
            covered = np.bincount(sub[m], minlength=len(areas) + 1)[1:]
            if len(areas) and np.any(visible - covered < MIN_VISIBLE * np.asarray(areas)):
                continue
            ref = img[y1 : y1 + s, x1 : x1 + s][m].mean(0)
            col = _contrasting_colour(rng, ref)
            img[y1 : y1 + s, x1 : x1 + s][m] = col.astype(np.uint8)
            sub[m] = len(areas) + 1
            visible = np.append(visible - covered, int(m.sum()))
            areas.append(int(m.sum()))
            squares.append((x1, y1, s))
            classes.append(c)
            break
    # mild sensor noise over everything
    noisy = img.astype(np.int16)
    noisy += rng.integers(-6, 7, img.shape, dtype=np.int16)
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    labels = []
    for k, c in enumerate(classes):
        x1, y1, s = squares[k]
        ys, xs = np.nonzero(idmap[y1 : y1 + s, x1 : x1 + s] == k + 1)
        bx1, bx2, by1, by2 = x1 + xs.min(), x1 + xs.max() + 1, y1 + ys.min(), y1 + ys.max() + 1
        labels.append((c, (bx1 + bx2) / 2 / n, (by1 + by2) / 2 / n, (bx2 - bx1) / n, (by2 - by1) / n))
    return img, labels, idmap


def make_synth(
    out_dir: str | Path,
    train: int = 200,
    val: int = 50,
    imgsz: int = 320,
    seed: int = 0,
    names: Sequence[str] = ("circle", "square", "triangle", "cross"),
    ext: str = ".jpg",
    min_size: int = MIN_SIZE,
    max_objects: int = 6,
) -> Path:
    """Write the demo dataset under `out_dir` (images/, labels/, data.yaml); return the data.yaml path.

    `min_size` (px) is the smallest object side, `max_objects` the most objects in one image: raise
    the first and lower the second for an easier set.

    Files are named `<split>_<index>.jpg`; stale files of that pattern from an earlier, larger run
    are removed, nothing else is touched.
    """
    if train < 1 or val < 1:
        raise ValueError("train and val must each be at least 1")
    if imgsz < 16:
        raise ValueError("imgsz must be at least 16")
    if not 1 <= min_size < imgsz // 2 or max_objects < 1:
        raise ValueError("need 1 <= min_size < imgsz / 2 and max_objects >= 1")
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in (".jpg", ".png"):
        raise ValueError("ext must be .jpg or .png")
    kinds = _shape_kinds(list(names))
    out = Path(out_dir)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext.lower() == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    for split, count in (("train", train), ("val", val)):
        idir, ldir = out / "images" / split, out / "labels" / split
        idir.mkdir(parents=True, exist_ok=True)
        ldir.mkdir(parents=True, exist_ok=True)
        pat = re.compile(rf"^{split}_(\d{{6}})\.(jpg|png|txt)$")
        for d in (idir, ldir):
            for f in d.iterdir():
                mt = pat.match(f.name)
                if mt and (int(mt.group(1)) >= count or (d is idir and f.suffix != ext)):
                    f.unlink()
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            img, labels, _ = _make_image(rng, imgsz, kinds, min_size, max_objects)
            ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
            if not ok:  # pragma: no cover
                raise RuntimeError("image encoding failed")
            (idir / f"{split}_{i:06d}{ext}").write_bytes(buf.tobytes())
            text = "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in labels)
            (ldir / f"{split}_{i:06d}.txt").write_text(text)
    data = {"path": ".", "train": "images/train", "val": "images/val", "names": [str(n) for n in names]}
    yml = out / "data.yaml"
    yml.write_text(yaml.safe_dump(data, sort_keys=False))
    return yml


def make_easy(out_dir: str | Path, imgsz: int = 96, seed: int = 1) -> Path:
    """The easy set: 160 + 40 images, circles and squares of 12 px and up, at most 3 per image. yolo26n learns it
    to mAP50 0.5 in a few dozen epochs on a CPU: the learning test, `benchmark distill` and `benchmark peer-train`
    use it."""
    return make_synth(
        out_dir, train=160, val=40, imgsz=imgsz, seed=seed, names=("circle", "square"), min_size=12, max_objects=3
    )
