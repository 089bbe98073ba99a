"""Checkpoints as models: kubedistill's own (`best.pt`, `last.pt`) and Ultralytics YOLO26 ones (`yolo26n.pt` ...),
read safely (`read_checkpoint`) and rebuilt as a `DetectionModel` (`model_from_checkpoint`, `load_model`). The file
I/O of kubedistill's own format is `kubedistill.core.checkpoint`; Ultralytics' is `kubedistill.model.ultralytics`."""

from __future__ import annotations

from pathlib import Path

from kubedistill.core.checkpoint import load_checkpoint
from kubedistill.core.errors import UserError
from kubedistill.model.ultralytics import SUPPORTED, foreign_globals, is_ultralytics, load_ultralytics, restricted_load
from kubedistill.model.yolo import ARCH, DetectionModel


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint to start from or to run: kubedistill's own, or an Ultralytics YOLO26 detect one (converted to
    kubedistill's layout). Nothing in the file is run; kubedistill downloads nothing."""
    p = Path(path)
    if not p.is_file():
        fix = (
            f"kubedistill downloads nothing: put Ultralytics' {p.name} (or your own best.pt) at {p}"
            if p.name.lower().startswith("yolo")
            else "Check the path (weights are in runs/<name>/weights/)"
        )
        raise UserError(f"Checkpoint '{p}' does not exist", fix)
    found = foreign_globals(p)
    if is_ultralytics(found):
        return load_ultralytics(p, found)
    if found:  # refused when it asks for anything beyond inert data; else it is simply not a checkpoint we know
        restricted_load(p, found)
        raise UserError(
            f"'{p}' is neither a kubedistill nor an Ultralytics checkpoint", f"kubedistill takes {SUPPORTED}"
        )
    return load_checkpoint(p)


def check_arch(meta: dict) -> None:
    if meta.get("arch") != ARCH:
        raise UserError(
            "This checkpoint was written by an earlier kubedistill, whose detector was not YOLO26",
            "Train it again, or fine-tune from a YOLO26 checkpoint (model=yolo26n.pt)",
        )


def model_from_checkpoint(ckpt: dict, weights: str = "model") -> DetectionModel:
    """Rebuild the network; weights='model' takes the EMA (inference) weights, 'train' the raw ones."""
    meta = ckpt["model"]["meta"]
    check_arch(meta)
    model = DetectionModel(meta["scale"], nc=meta["nc"], names=meta["names"])
    sd = ckpt["train_state_dict"] if weights == "train" else ckpt["model"]["state_dict"]
    model.load_state_dict(sd)
    return model


def load_model(path: str | Path) -> tuple[DetectionModel, dict]:
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt


def transfer_weights(model: DetectionModel, ckpt: dict) -> tuple[int, int]:
    """Load every tensor of `ckpt`'s model whose name and shape match `model`'s (fine-tuning: on another class
    count the class outputs keep their fresh initialisation). Returns (tensors transferred, tensors in `model`)."""
    check_arch(ckpt["model"]["meta"])
    own = model.state_dict()
    fits = {k: v for k, v in ckpt["model"]["state_dict"].items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fits, strict=False)
    return len(fits), len(own)
