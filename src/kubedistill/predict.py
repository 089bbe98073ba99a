"""Run a trained detector on images: detections in original-image pixels, COCO results JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kubedistill.core.errors import UserError
from kubedistill.data.images import IMG_FORMATS, read_image
from kubedistill.data.letterbox import letterbox
from kubedistill.eval.coco import ImagePred
from kubedistill.eval.validator import to_image_preds
from kubedistill.model.decode import decode


def list_images(source: str | Path) -> list[Path]:
    p = Path(source)
    if p.is_file():
        if p.suffix.lower() not in IMG_FORMATS:
            raise UserError(f"'{p}' is not an image ({p.suffix})", f"Use one of {', '.join(IMG_FORMATS)} or a folder")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_FORMATS)
        if not files:
            raise UserError(f"No images in '{p}'", f"Put {', '.join(IMG_FORMATS)} files there")
        return files
    raise UserError(f"Source '{p}' does not exist", "Give an image file or a folder of images")


@torch.no_grad()
def predict_arrays(
    model, images: list[np.ndarray], imgsz: int, device, *, conf=0.25, iou=0.7, max_det=300, nms=False
) -> list[ImagePred]:
    """RGB uint8 images -> detections mapped back to each image's pixels."""
    model.eval()
    model.set_eval_head(nms)
    tensors, ratio_pads, shapes = [], [], []
    for im in images:
        lb, ratio, pad = letterbox(im, imgsz)
        tensors.append(torch.from_numpy(np.ascontiguousarray(lb.transpose(2, 0, 1))))
        ratio_pads.append((ratio, pad))
        shapes.append(im.shape[:2])
    x = torch.stack(tensors).to(device).float() / 255.0
    dets = decode(model(x), (imgsz, imgsz), model.strides, nms=nms, conf=conf, iou=iou, max_det=max_det)
    model.set_eval_head(False)
    return to_image_preds(dets, ratio_pads, shapes)


def predict_files(model, files: list[Path], imgsz: int, device, batch: int = 8, **kw) -> list[ImagePred]:
    preds: list[ImagePred] = []
    for i in range(0, len(files), batch):
        ims = [read_image(f) for f in files[i : i + batch]]
        preds += predict_arrays(model, ims, imgsz, device, **kw)
    return preds
