"""Prediction outputs of ``kubedistill predict``: COCO-style json, atomic writes, drawn boxes.

numpy + OpenCV only (no torch, no faster-coco-eval).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from kubedistill.eval.coco import ImagePred

__all__ = ["to_coco_predictions_json", "draw_detections", "class_color"]


def to_coco_predictions_json(files: Sequence[str], preds: Sequence[ImagePred], names: Sequence[str]) -> list[dict]:
    """One dict per detected box, in image order then prediction order.

    ``{"image": file name as given, "image_id": 1-based position of the image in ``files`` (the
    same ids that ``build_coco_gt`` gives), "category_id": 0-based class id, "class_name": its
    name, "bbox": [x, y, w, h] in original pixels rounded to 2 decimals, "score": rounded to 5}``.
    """
    if len(files) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(files)} files")
    out: list[dict] = []
    for image_id, (file, pred) in enumerate(zip(files, preds), start=1):
        boxes = np.asarray(pred.boxes, dtype=np.float64).reshape(-1, 4)
        for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), pred.scores.tolist(), pred.classes.tolist()):
            cls = int(cls)
            out.append(
                {
                    "image": str(file),
                    "image_id": image_id,
                    "category_id": cls,
                    "class_name": str(names[cls]) if 0 <= cls < len(names) else str(cls),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
    return out


def class_color(cls: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class id (golden-ratio hue steps)."""
    hue = (int(cls) * 0.618033988749895) % 1.0
    sat = 0.85 if int(cls) % 2 == 0 else 0.65
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(img_rgb: np.ndarray, pred: ImagePred, names: Sequence[str], conf: float = 0.25) -> np.ndarray:
    """Copy of ``img_rgb`` (HxWx3 uint8, RGB) with the boxes of ``pred`` scoring >= ``conf`` drawn.

    Each box gets its class colour and a filled label "name 0.87". The input is not modified.
    """
    import cv2

    img = np.ascontiguousarray(img_rgb).copy()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    thickness = max(1, round(0.002 * (h + w) / 2 * 1.5))
    font_scale = max(0.35, thickness / 3.0)
    font_thick = max(1, thickness - 1)
    boxes = np.asarray(pred.boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.flatnonzero(np.asarray(pred.scores) >= conf)
    # Draw low scores first so the most confident boxes and labels end up on top.
    keep = keep[np.argsort(np.asarray(pred.scores)[keep], kind="mergesort")]
    for i in keep:
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        x1, x2 = sorted((min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)))
        y1, y2 = sorted((min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)))
        cls = int(pred.classes[i])
        color = class_color(cls)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness)
        name = str(names[cls]) if 0 <= cls < len(names) else str(cls)
        label = f"{name} {float(pred.scores[i]):.2f}"
        (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thick)
        th_total = th + baseline + 2
        # Label above the box when there is room, else inside its top edge.
        ty1 = y1 - th_total if y1 - th_total >= 0 else y1
        tx1 = min(x1, max(0, w - tw - 2))
        cv2.rectangle(img, (tx1, ty1), (tx1 + tw + 2, ty1 + th_total), color, -1)
        text_color = (0, 0, 0) if sum(color) / 3 > 140 else (255, 255, 255)
        cv2.putText(
            img,
            label,
            (tx1 + 1, ty1 + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            text_color,
            font_thick,
            lineType=cv2.LINE_AA,
        )
    return img
