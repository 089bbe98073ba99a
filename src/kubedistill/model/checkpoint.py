"""A detection model rebuilt from a kubedistill checkpoint (the file I/O is `kubedistill.core.checkpoint`)."""

from __future__ import annotations

from pathlib import Path

from kubedistill.core.checkpoint import load_checkpoint
from kubedistill.model.yolo import DetectionModel


def model_from_checkpoint(ckpt: dict, weights: str = "model") -> DetectionModel:
    """Rebuild the network; weights='model' takes the EMA (inference) weights, 'train' the raw ones."""
    meta = ckpt["model"]["meta"]
    model = DetectionModel(meta["scale"], nc=meta["nc"], names=meta["names"])
    sd = ckpt["train_state_dict"] if weights == "train" else ckpt["model"]["state_dict"]
    model.load_state_dict(sd)
    return model


def load_model(path: str | Path) -> tuple[DetectionModel, dict]:
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
