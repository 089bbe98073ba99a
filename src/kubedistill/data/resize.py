"""Resize uint8 images as OpenCV's `cv2.resize` does, in numpy: INTER_AREA to shrink, INTER_LINEAR to enlarge.

Letterboxing (training, validation, `predict` and the inference server) goes through `resize`, so the
server needs no OpenCV and sees the pixels training saw: the result is within one grey level of
`cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)`
(tests/unit/test_data_letterbox.py checks this against cv2 where it is installed).

Both filters are separable and run one axis at a time, in float32:

- area (shrink, source/destination scale s >= 1): destination pixel d averages the source interval
  [d*s, (d+1)*s), partial pixels weighted by their overlap (cv2's `computeResizeAreaTab`, including its
  1e-3 cut-off). Whole pixels are added row by row from the uint8 input (one pass per pixel of the
  longest run), so no float copy of a large input is made.
- linear (enlarge, s <= 1): half-pixel centres, source x = (d + 0.5) * s - 0.5, clamped at the borders.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _area_table(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """cv2 INTER_AREA along one axis (n_in >= n_out), per destination index: whole-pixel run [start, stop),
    left partial pixel (index, weight), right partial pixel (index, weight) and 1 / cell width."""
    scale = n_in / n_out
    f1 = np.arange(n_out, dtype=np.float64) * scale
    f2 = f1 + scale
    cell = np.minimum(scale, n_in - f1)
    stop = np.minimum(np.floor(f2).astype(np.int64), n_in)
    start = np.minimum(np.ceil(f1).astype(np.int64), stop)
    lw = np.where(start - f1 > 1e-3, start - f1, 0.0)
    rw = np.where((stop < n_in) & (f2 - stop > 1e-3), np.minimum(np.minimum(f2 - stop, 1.0), cell), 0.0)
    return (
        start,
        stop,
        np.maximum(start - 1, 0),
        lw.astype(np.float32),
        np.minimum(stop, n_in - 1),
        rw.astype(np.float32),
        (1.0 / cell).astype(np.float32),
    )


def _along(v: np.ndarray, axis: int) -> np.ndarray:
    """A per-index vector shaped to broadcast along `axis` of an (H, W, C) array."""
    return v[:, None, None] if axis == 0 else v[None, :, None]


def _area(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Area-shrink `axis` (0 or 1) of an (H, W, C) uint8/float32 array to n_out; float32 out."""
    start, stop, left, lw, right, rw, inv = _area_table(a.shape[axis], n_out)
    n_in = a.shape[axis]
    step = n_in // n_out if n_in % n_out == 0 else 0  # an integer scale: every run is a strided view
    out = None
    # whole pixels: add the k-th pixel of every run, k = 0 .. longest run - 1 (ceil(scale) passes at most)
    for k in range(int((stop - start).max())):
        idx = start + k
        if step:
            part = a[(slice(None),) * axis + (slice(k, n_in, step),)]
        elif (idx < stop).all():
            part = np.take(a, idx, axis=axis)
        else:
            part = np.take(a, np.minimum(idx, n_in - 1), axis=axis) * _along((idx < stop).astype(np.float32), axis)
        if out is None:
            out = part.astype(np.float32)
        else:
            out += part
    if out is None:  # no whole pixel anywhere (scale below 2 with every run empty)
        out = np.zeros(a.shape[:axis] + (n_out,) + a.shape[axis + 1 :], np.float32)
    if lw.any():
        out += np.take(a, left, axis=axis) * _along(lw, axis)
    if rw.any():
        out += np.take(a, right, axis=axis) * _along(rw, axis)
    out *= _along(inv, axis)
    return out


@lru_cache(maxsize=64)
def _linear_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2 INTER_LINEAR along one axis, per destination index: the two source indices and the weight of the second."""
    f = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(f).astype(np.int64)
    w = f - i0
    w[i0 < 0] = 0.0
    i0 = np.clip(i0, 0, n_in - 1)
    w[i0 >= n_in - 1] = 0.0
    return i0, np.minimum(i0 + 1, n_in - 1), w.astype(np.float32)


def _linear(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Bilinear-resize `axis` (0 or 1) of an (H, W, C) uint8/float32 array to n_out; float32 out."""
    i0, i1, w = _linear_table(a.shape[axis], n_out)
    lo = np.take(a, i0, axis=axis).astype(np.float32)
    out = np.take(a, i1, axis=axis).astype(np.float32)
    out -= lo
    out *= _along(w, axis)
    out += lo
    return out


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW or HxWxC uint8 image to `size` = (width, height): the area filter when no side grows,
    bilinear otherwise (cv2 INTER_AREA / INTER_LINEAR, within one grey level). Returns a new uint8 array."""
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise ValueError(f"resize to {w}x{h}: both sides must be at least 1")
    src = np.asarray(img)
    if src.dtype != np.uint8 or src.ndim not in (2, 3) or 0 in src.shape:
        raise ValueError(f"resize takes a non-empty HxW[xC] uint8 image, got {src.dtype} {src.shape}")
    H, W = src.shape[:2]
    a = src if src.ndim == 3 else src[:, :, None]
    fn = _area if (h <= H and w <= W) else _linear
    # the axis that shrinks most goes first: less data for the second pass
    for axis in sorted((0, 1), key=lambda ax: (h / H, w / W)[ax]):
        n = (h, w)[axis]
        if a.shape[axis] != n:
            a = fn(a, n, axis)
    if a.dtype == np.uint8:
        return a.copy() if src.ndim == 3 else a[:, :, 0].copy()
    a += 0.5  # round half up; the filters are convex combinations, so 0 <= a <= 255 up to float error
    out = a.astype(np.uint8)
    return out if src.ndim == 3 else out[:, :, 0]
