"""Run a model over a validation loader and score it with COCO metrics (faster-coco-eval).

The same code serves validation during training and `kubedistill val`. Detections are mapped from the
letterboxed input back to original-image pixels before scoring, so figures match what `predict`
returns.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch

from kubedistill.data.letterbox import scale_boxes_to_original
from kubedistill.eval.coco import DetectionMetrics, ImageGT, ImagePred, evaluate
from kubedistill.model.decode import decode


def ground_truth(samples) -> list[ImageGT]:
    """Dataset samples (normalised cx, cy, w, h labels) -> original-pixel xyxy ground truth."""
    out = []
    for s in samples:
        h, w = s.shape
        lab = np.asarray(s.labels, dtype=np.float64).reshape(-1, 5)
        cx, cy, bw, bh = lab[:, 1] * w, lab[:, 2] * h, lab[:, 3] * w, lab[:, 4] * h
        boxes = np.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), 1)
        out.append(
            ImageGT(file_name=str(s.im_file), width=int(w), height=int(h), boxes=boxes, classes=lab[:, 0].astype(int))
        )
    return out


def to_image_preds(dets: list[torch.Tensor], ratio_pads, ori_shapes) -> list[ImagePred]:
    out = []
    for d, (ratio, pad), shape in zip(dets, ratio_pads, ori_shapes):
        d = d.float().cpu().numpy()
        boxes = scale_boxes_to_original(d[:, :4].copy(), ratio, pad, shape)
        out.append(ImagePred(boxes=boxes, scores=d[:, 4], classes=d[:, 5].astype(int)))
    return out


@torch.no_grad()
def predict_loader(model, loader, device, *, nms=False, conf=0.001, iou=0.7, max_det=300, half=False):
    """-> (files, ImagePred list, seconds of model+decode per image)."""
    model.eval()
    core = model.module if hasattr(model, "module") else model
    core.set_eval_head(nms)
    files, preds = [], []
    t_model, n = 0.0, 0
    for batch in loader:
        img = batch["img"].to(device, non_blocking=True)
        img = (img.half() if half else img.float()) / 255.0
        t0 = time.perf_counter()
        out = model(img)
        dets = decode(out, tuple(img.shape[2:]), core.strides, nms=nms, conf=conf, iou=iou, max_det=max_det)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_model += time.perf_counter() - t0
        n += img.shape[0]
        preds += to_image_preds(dets, batch["ratio_pad"], batch["ori_shape"])
        files += list(batch["im_file"])
    core.set_eval_head(False)
    return files, preds, t_model / max(n, 1)


class Validation(NamedTuple):
    metrics: DetectionMetrics
    speed: dict  # {"ms_per_img": model + decode time per image}
    gts: list[ImageGT]
    preds: list[ImagePred]  # same order as gts


def validate(
    model, loader, samples, names, device, *, nms=False, conf=0.001, iou=0.7, max_det=300, half=False
) -> Validation:
    """Score `model` on `loader` (built over `samples`, same order)."""
    files, preds, sec = predict_loader(model, loader, device, nms=nms, conf=conf, iou=iou, max_det=max_det, half=half)
    gts = ground_truth(samples)
    by_file = dict(zip(files, preds))
    ordered = [by_file[g.file_name] for g in gts]
    return Validation(evaluate(gts, ordered, names), {"ms_per_img": sec * 1000.0}, gts, ordered)
