"""Scoring a model on a dataset split with the same code as validation during training: `validate_split` (what
`kubedistill val`, the pipeline's evaluate step and the promotion gate share) and `run_val` (`kubedistill val`)."""

from __future__ import annotations

from pathlib import Path

from kubedistill.core.atomic import write_json_atomic
from kubedistill.core.errors import DataError
from kubedistill.data.check import check_dataset
from kubedistill.data.dataset import DetectionDataset, build_dataloader
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.fetch import resolve_data


def validate_split(
    model,
    data: str | Path,
    *,
    imgsz: int,
    split: str = "val",
    batch: int = 16,
    device: str = "",
    workers: int = 2,
    nms: bool = False,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
):
    """(Validation, device) of `model` on the usable images of `split` of `data`. The model must predict the
    dataset's classes; the model is moved to the device."""
    from kubedistill.core.device import select_device
    from kubedistill.eval.validator import validate

    spec = load_data_yaml(resolve_data(data))
    if split not in spec.splits:
        raise DataError(f"Split '{split}' is not in {data}", f"Use one of: {', '.join(spec.splits)}")
    if list(spec.names) != list(model.names):
        raise DataError(
            f"The model's classes {list(model.names)} differ from the dataset's {list(spec.names)}",
            "Validate on the dataset the model was trained for",
        )
    samples = check_dataset(spec, splits=(split,), min_usable=0.0).samples[split]
    if not samples:
        raise DataError(f"No usable images in split '{split}' of {data}", f"Run `kubedistill data check {data}`")
    dev = select_device(device)
    model.to(dev)
    loader = build_dataloader(
        DetectionDataset(samples, imgsz, augment=False, hyp=None, seed=0), batch, workers, shuffle=False, seed=0
    )
    return validate(model, loader, samples, list(model.names), dev, nms=nms, conf=conf, iou=iou, max_det=max_det), dev


def run_val(
    model,
    data: str | Path,
    *,
    imgsz: int = 640,
    batch: int = 16,
    device: str = "",
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    nms: bool = False,
    split: str = "val",
    workers: int = 2,
    out: str | Path | None = None,
) -> dict:
    """-> metrics dict (COCO metrics, per-class AP, P/R at best F1, ms/img); also written to `out` if given."""
    from kubedistill.model.info import count_params

    val, _ = validate_split(
        model,
        data,
        imgsz=imgsz,
        split=split,
        batch=batch,
        device=device,
        workers=workers,
        nms=nms,
        conf=conf,
        iou=iou,
        max_det=max_det,
    )
    result = {
        **val.metrics.to_dict(),
        **val.speed,
        "imgsz": imgsz,
        "split": split,
        "images": len(val.gts),
        "params": count_params(model),
        "head": "one2many+NMS" if nms else "one2one (NMS-free)",
    }
    if out is not None:
        write_json_atomic(out, result)
    return result
