"""A ground-truth | prediction mosaic of validation images."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kubedistill.core.log import LOGGER
from kubedistill.data.images import read_image
from kubedistill.eval.coco import ImageGT, ImagePred
from kubedistill.eval.plots.figure import _no_data_figure, _save_array
from kubedistill.eval.predictions import draw_detections

_HEADER = 18  # px of the caption strip above each tile


_GAP = 4  # px between tiles


def _tile(img: np.ndarray | None, tile: int, caption: str) -> np.ndarray:
    import cv2

    out = np.full((tile + _HEADER, tile, 3), 255, dtype=np.uint8)
    if img is None:
        out[_HEADER:] = 200
        cv2.putText(
            out, "unreadable", (8, _HEADER + tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (90, 90, 90), 1, cv2.LINE_AA
        )
    else:
        h, w = img.shape[:2]
        out[_HEADER:] = 114
        y0 = _HEADER + (tile - h) // 2
        x0 = (tile - w) // 2
        out[y0 : y0 + h, x0 : x0 + w] = img
    # Caption: shrink the font until it fits.
    scale = 0.42
    (tw, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while tw > tile - 6 and len(caption) > 4:
        caption = caption[:-4] + "..."
        (tw, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(out, caption, (3, _HEADER - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def plot_val_mosaic(
    gts: Sequence[ImageGT],
    preds: Sequence[ImagePred],
    names: Sequence[str],
    out_png: str | os.PathLike[str],
    n: int = 8,
    conf: float = 0.25,
    tile: int = 320,
) -> Path:
    """The first ``n`` validation images in a grid, each twice side by side: ground truth (left,
    labelled "name 1.00") | predictions with ``score >= conf`` (right). Every image is scaled to fit a
    ``tile`` x ``tile`` cell (down for large images, up for tiny ones) before the boxes are drawn."""
    import cv2

    title = "validation images"
    count = min(int(n), len(gts), len(preds))
    if count <= 0:
        return _no_data_figure(out_png, title, "no validation images")
    names = list(names)
    tiles: list[np.ndarray] = []
    for gt, pred in list(zip(gts, preds))[:count]:
        file = Path(gt.file_name).name
        try:
            img = read_image(gt.file_name)
        except Exception as exc:  # an unreadable image must not lose the whole mosaic
            LOGGER.debug("val mosaic: cannot read %s: %s", gt.file_name, exc)
            tiles += [_tile(None, tile, f"GT {file}"), _tile(None, tile, "pred")]
            continue
        h, w = img.shape[:2]
        r = tile / max(h, w, 1)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
        gt_draw = ImagePred(gt.boxes * r, np.ones(len(gt.boxes)), gt.classes)
        pred_draw = ImagePred(pred.boxes * r, pred.scores, pred.classes)
        n_pred = int((pred.scores >= conf).sum())
        tiles.append(_tile(draw_detections(img, gt_draw, names, conf=0.0), tile, f"GT ({len(gt.boxes)}) {file}"))
        tiles.append(_tile(draw_detections(img, pred_draw, names, conf=conf), tile, f"pred ({n_pred}, conf>={conf:g})"))

    pairs_per_row = 2 if count > 1 else 1
    cols = 2 * pairs_per_row
    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    canvas = np.full(
        (rows * (th + _GAP) + _GAP, cols * (tw + _GAP) + _GAP + (pairs_per_row - 1) * _GAP, 3), 255, dtype=np.uint8
    )
    for k, t in enumerate(tiles):
        rr, cc = divmod(k, cols)
        extra = (cc // 2) * _GAP  # a wider gap between image pairs
        y = _GAP + rr * (th + _GAP)
        x = _GAP + cc * (tw + _GAP) + extra
        canvas[y : y + th, x : x + tw] = t
    return _save_array(canvas, out_png)
