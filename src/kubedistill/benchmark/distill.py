"""`kubedistill benchmark distill`: does distillation pay, and what does it cost?

Accuracy: on one dataset, with the same epochs and seed, train (a) the student alone and (b) the
student distilled from a teacher trained on the same data; report both mAP50-95.

Cost: time one training step of the student with and without distillation on the same batch, and
compare the ratio with its floor, 1 + teacher forward FLOPs / student training-step FLOPs (the extra
arithmetic distillation cannot avoid).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kubedistill.benchmark.timing import time_steps
from kubedistill.config import TrainConfig, train_config
from kubedistill.data.check import check_dataset
from kubedistill.data.dataset import DetectionDataset, build_dataloader
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.synth import make_synth
from kubedistill.model.head import HEADS
from kubedistill.model.info import count_flops
from kubedistill.model.yolo import DetectionModel
from kubedistill.train import build_trainer
from kubedistill.train.checkpoint import load_model
from kubedistill.train.dist import select_device
from kubedistill.train.distill import FeatureDistiller
from kubedistill.train.losses import DetectionLoss


def _train(common: dict, **kw) -> dict:
    return build_trainer(train_config(**{**common, **kw})).train()


def step_times(student_scale: str, teacher_path: str, data: str, imgsz: int, batch: int, steps: int, device: str, dis: float) -> dict:
    """Seconds per training step (forward, loss, backward, optimizer) without and with distillation."""
    dev = select_device(device)
    spec = load_data_yaml(data)
    samples = check_dataset(spec, splits=("train",)).samples["train"]
    cfg = TrainConfig(imgsz=imgsz)
    ds = DetectionDataset(samples, imgsz, augment=True, hyp=cfg, seed=0)
    b = next(iter(build_dataloader(ds, batch, 0, shuffle=False, seed=0)))
    b["img"] = b["img"].to(dev).float() / 255.0
    out = {}
    for mode in ("plain", "distill"):
        torch.manual_seed(0)
        model = DetectionModel(student_scale, nc=spec.nc, names=spec.names).to(dev).train()
        loss_fn = DetectionLoss(model.nc, model.strides, cfg)
        distiller = FeatureDistiller(teacher_path, model, dis, dev) if mode == "distill" else None
        params = list(model.parameters()) + (list(distiller.projector.parameters()) if distiller else [])
        opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_fn(model(b["img"]), b, {"one2many": 0.5, "one2one": 0.5})
            if distiller is not None:
                loss = loss + distiller.loss(b["img"]) * batch
            loss.backward()
            opt.step()

        out[mode] = time_steps(step, steps, dev)
        if distiller is not None:
            distiller.close()
    teacher, _ = load_model(teacher_path)
    teacher.head.eval_heads = HEADS  # distillation runs both teacher heads
    t_flops = count_flops(teacher.to(dev), imgsz)
    s_flops = count_flops(DetectionModel(student_scale, nc=spec.nc).to(dev), imgsz, train_step=True)
    floor = 1 + t_flops / s_flops
    ratio = out["distill"] / out["plain"]
    return {"step_s_plain": out["plain"], "step_s_distill": out["distill"], "ratio": ratio, "floor": floor,
            "over_floor_pct": 100 * (ratio / floor - 1), "teacher_gflops_fwd": t_flops / 1e9, "student_gflops_train_step": s_flops / 1e9}


def run_distill_benchmark(out_dir: str | Path, *, data: str | None = None, student: str = "n", teacher: str = "s",
                          teacher_weights: str | None = None, epochs: int = 30, teacher_epochs: int = 60, imgsz: int = 96,
                          batch: int = 16, seed: int = 0, dis: float = 6.0, steps: int = 10, device: str = "",
                          workers: int = 2, echo=print, **train_kw) -> dict:
    out = Path(out_dir)
    if data is None:
        data = str(make_synth(out / "data", train=160, val=40, imgsz=imgsz, seed=1, names=("circle", "square"), min_size=12, max_objects=3))
    common = dict(data=data, imgsz=imgsz, batch=batch, nbs=batch, seed=seed, workers=workers, project=str(out), exist_ok=True,
                  optimizer="AdamW", lr0=0.004, warmup_epochs=1, close_mosaic=5, verbose=False, device=device, **train_kw)
    if teacher_weights is None:
        echo(f"training teacher yolo-{teacher} for {teacher_epochs} epochs ...")
        t = _train(common, model=f"yolo-{teacher}", epochs=teacher_epochs, name="teacher")
        teacher_weights, t_map = t["best"], t["metrics"].get("mAP50-95")
    else:
        t_map = None
    echo(f"training yolo-{student} alone for {epochs} epochs ...")
    plain = _train(common, model=f"yolo-{student}", epochs=epochs, name="student")
    echo(f"training yolo-{student} distilled from {teacher_weights} (dis={dis}) for {epochs} epochs ...")
    dist = _train(common, model=f"yolo-{student}", epochs=epochs, name="student_distilled", distill_model=teacher_weights, dis=dis)
    a, b = plain["metrics"]["mAP50-95"], dist["metrics"]["mAP50-95"]
    timing = step_times(student, teacher_weights, data, imgsz, batch, steps, device, dis)
    res = {"teacher_mAP50-95": t_map, "student_mAP50-95": a, "distilled_mAP50-95": b, "delta_points": 100 * (b - a),
           "epochs": epochs, "imgsz": imgsz, "seed": seed, **timing}
    if t_map is not None:
        echo(f"teacher yolo-{teacher}: mAP50-95 {t_map:.4f}")
    echo(f"(a) yolo-{student} alone:     mAP50-95 {a:.4f}")
    echo(f"(b) yolo-{student} distilled: mAP50-95 {b:.4f}   delta {100 * (b - a):+.2f} points")
    echo(f"step time: plain {timing['step_s_plain'] * 1000:.1f} ms, distilled {timing['step_s_distill'] * 1000:.1f} ms, "
         f"ratio {timing['ratio']:.3f}x; floor 1 + teacher fwd / student step FLOPs = {timing['floor']:.3f}x "
         f"({timing['over_floor_pct']:+.1f}% over the floor)")
    return res
