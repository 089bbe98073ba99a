"""Letterbox: resize keeping the aspect ratio, pad to a square. numpy only (no cv2, never torch).

The training data pipeline, validation and the inference server all use these functions, so boxes
mapped with `boxes_to_letterbox` / `scale_boxes_to_original` match the pixels `letterbox` makes.

Mapping (pixel coordinates, x to the right, y down):  canvas = original * ratio + pad,
where pad = (left, top) is the integer offset of the resized image on the canvas.

The resize is `kubedistill.data.resize.resize` (cv2's INTER_AREA to shrink, INTER_LINEAR to enlarge,
reimplemented in numpy), one code path for training and serving: the serving image carries no OpenCV.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kubedistill.data.resize import resize


def _hw(new_shape: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(new_shape, (int, np.integer)):
        return int(new_shape), int(new_shape)
    h, w = new_shape
    return int(h), int(w)


def letterbox_params(
    shape: tuple[int, int], new_shape: int | tuple[int, int] = 640, scaleup: bool = True
) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """For an image of shape (h, w): (ratio, (new_w, new_h) resized size, (left, top) padding)."""
    h, w = int(shape[0]), int(shape[1])
    nh, nw = _hw(new_shape)
    r = min(nh / h, nw / w)
    if not scaleup:
        r = min(r, 1.0)
    rw, rh = max(1, min(nw, int(round(w * r)))), max(1, min(nh, int(round(h * r))))
    left, top = (nw - rw) // 2, (nh - rh) // 2
    return float(r), (rw, rh), (left, top)


def letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = (114, 114, 114),
    scaleup: bool = True,
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize `img` (HxWxC uint8) so it fits `new_shape` (int or (h, w)) and pad it, centred.

    Returns (canvas, ratio, (padw, padh)); padw/padh are the left/top offsets in pixels (an odd total
    padding puts the extra pixel right/bottom).
    """
    h, w = img.shape[:2]
    nh, nw = _hw(new_shape)
    r, (rw, rh), (left, top) = letterbox_params((h, w), (nh, nw), scaleup)
    if (rw, rh) != (w, h):
        img = resize(img, (rw, rh))  # area filter when shrinking (r < 1), bilinear when enlarging
    if (rw, rh) == (nw, nh):
        return np.ascontiguousarray(img), r, (float(left), float(top))
    channels = img.shape[2] if img.ndim == 3 else None
    shape = (nh, nw, channels) if channels else (nh, nw)
    canvas = np.empty(shape, dtype=img.dtype)
    canvas[...] = color[:channels] if channels else color[0]
    canvas[top : top + rh, left : left + rw] = img.reshape(rh, rw, *(() if channels is None else (channels,)))
    return canvas, r, (float(left), float(top))


def _pad4(pad: tuple[float, float]) -> np.ndarray:
    return np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float64)


def boxes_to_letterbox(boxes_xyxy_px: Any, ratio: float, pad: tuple[float, float]) -> Any:
    """Original-image pixel boxes [n,4] xyxy -> letterboxed-canvas pixel boxes (same type out)."""
    if hasattr(boxes_xyxy_px, "clone"):  # a torch tensor; torch itself is never imported here
        return boxes_xyxy_px * ratio + boxes_xyxy_px.new_tensor(_pad4(pad).tolist())
    b = np.asarray(boxes_xyxy_px)
    out = b.astype(np.float64) * ratio + _pad4(pad)
    return out.astype(b.dtype if b.dtype.kind == "f" else np.float32)


def scale_boxes_to_original(
    boxes_xyxy: Any, ratio: float, pad: tuple[float, float], orig_shape: tuple[int, int]
) -> Any:
    """Undo `letterbox` on canvas pixel boxes [n,4] xyxy and clip them to the original (h, w).

    Works on numpy arrays and (duck-typed) torch tensors; returns a new object of the same kind.
    """
    h, w = int(orig_shape[0]), int(orig_shape[1])
    if hasattr(boxes_xyxy, "clone"):
        out = (boxes_xyxy - boxes_xyxy.new_tensor(_pad4(pad).tolist())) / ratio
        out[..., 0::2] = out[..., 0::2].clamp(0, w)
        out[..., 1::2] = out[..., 1::2].clamp(0, h)
        return out
    b = np.asarray(boxes_xyxy)
    out = (b.astype(np.float64) - _pad4(pad)) / ratio
    out[..., 0::2] = out[..., 0::2].clip(0, w)
    out[..., 1::2] = out[..., 1::2].clip(0, h)
    return out.astype(b.dtype if b.dtype.kind == "f" else np.float32)
