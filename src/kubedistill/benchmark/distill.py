"""`kubedistill benchmark distill`: does distillation pay, and what does it cost?

Accuracy: on one dataset, with the same epochs and seeds, train (a) the student alone and (b) the
student distilled from a teacher trained on the same data; report both mAP50-95. Several seeds, because
on a small set one run cannot resolve a 1-point difference; several (b) arms ("dis=6",
"dis=6,dis_o2o=0.125", ...), which share the (a) runs.

Cost: time one training step of the student with and without distillation on the same batch, and
compare the ratio with its floor, 1 + teacher forward FLOPs / student training-step FLOPs (the extra
arithmetic distillation cannot avoid).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from kubedistill.benchmark.timing import time_interleaved, training_step
from kubedistill.config import TrainConfig, train_config
from kubedistill.core.device import select_device
from kubedistill.core.errors import UserError
from kubedistill.data.check import check_dataset
from kubedistill.data.dataset import DetectionDataset, build_dataloader
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.synth import make_easy
from kubedistill.model.checkpoint import load_model
from kubedistill.model.info import count_flops
from kubedistill.model.yolo import DetectionModel
from kubedistill.train import build_trainer
from kubedistill.train.objective import amp_dtype, build_objective, to_input


def _train(common: dict, **kw) -> dict:
    return build_trainer(train_config(**{**common, **kw})).train()


def step_times(
    student_scale: str, teacher_path: str, data: str, imgsz: int, batch: int, steps: int, device: str, arms: list[dict]
) -> dict:
    """Median seconds per training step (forward, loss, backward, optimizer) without distillation and with each
    arm's, timed in turn over `steps` rounds."""
    dev = select_device(device)
    spec = load_data_yaml(data)
    samples = check_dataset(spec, splits=("train",)).samples["train"]
    cfg = TrainConfig(imgsz=imgsz)
    ds = DetectionDataset(samples, imgsz, augment=True, hyp=cfg, seed=0)
    b = next(iter(build_dataloader(ds, batch, 0, shuffle=False, seed=0)))
    b["img"] = to_input(b["img"], dev)
    objectives = []
    for knobs in [None, *arms]:
        torch.manual_seed(0)
        model = DetectionModel(student_scale, nc=spec.nc, names=spec.names).to(dev).train()
        arm_cfg = TrainConfig(imgsz=imgsz, **(knobs or {}))
        objectives.append(build_objective(model, arm_cfg, dev, teacher_path if knobs is not None else None))
    try:  # plain and each arm in turn, so a busy spell on the machine affects them alike
        times = time_interleaved([training_step(o, b, amp_dtype(dev, cfg.amp)) for o in objectives], steps, dev)
    finally:
        for o in objectives:
            o.close()
    teacher, _ = load_model(teacher_path)  # its standard forward (one-to-one head); distillation runs a little less
    t_flops = count_flops(teacher.to(dev), imgsz)
    s_flops = count_flops(DetectionModel(student_scale, nc=spec.nc).to(dev), imgsz, train_step=True)
    floor = 1 + t_flops / s_flops
    per_arm = [
        {"step_s": t, "ratio": t / times[0], "over_floor_pct": 100 * (t / times[0] / floor - 1)} for t in times[1:]
    ]
    return {
        "step_s_plain": times[0],
        "floor": floor,
        "arms": per_arm,
        "teacher_gflops_fwd": t_flops / 1e9,
        "student_gflops_train_step": s_flops / 1e9,
    }


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(per_seed: list[dict]) -> dict:
    """Means over seeds, their spread, and the paired difference (distilled - alone, same seed) in points."""
    a, sd_a = _mean_sd([r["student_mAP50-95"] for r in per_seed])
    b, sd_b = _mean_sd([r["distilled_mAP50-95"] for r in per_seed])
    d, sd_d = _mean_sd([r["delta_points"] for r in per_seed])
    n = len(per_seed)
    return {
        "student_mAP50-95": a,
        "student_sd": sd_a,
        "distilled_mAP50-95": b,
        "distilled_sd": sd_b,
        "delta_points": d,
        "delta_sd": sd_d,
        "delta_se": sd_d / n**0.5 if n > 1 else None,
        "wins": sum(r["delta_points"] > 0 for r in per_seed),
        "seeds": [r["seed"] for r in per_seed],
    }


def _seed_runs(
    common: dict,
    student: str,
    epochs: int,
    seed: int,
    arms: list[dict],
    labels: list[str],
    teacher_weights: str,
    threads: int | None = None,
) -> tuple[int, float, list[float]]:
    """One seed: the student alone, then once per arm; returns (seed, mAP alone, [mAP per arm])."""
    if threads:
        torch.set_num_threads(threads)
    a = _train(common, model=f"yolo26{student}", epochs=epochs, name=f"student_s{seed}", seed=seed)["metrics"][
        "mAP50-95"
    ]
    bs = []
    for knobs, label in zip(arms, labels):
        name = "distilled_" + label.replace("=", "").replace(",", "_") + f"_s{seed}"
        bs.append(
            _train(
                common,
                model=f"yolo26{student}",
                epochs=epochs,
                name=name,
                seed=seed,
                distill_model=teacher_weights,
                **knobs,
            )["metrics"]["mAP50-95"]
        )
    return seed, a, bs


def _seed_runs_all(common, student, epochs, seeds, arms, labels, teacher_weights, jobs, echo):
    """Yield each seed's results, in seed order; `jobs` > 1 runs seeds in parallel processes."""
    if jobs == 1:
        for seed in seeds:
            echo(f"seed {seed}: yolo26{student} alone, then {len(arms)} distilled arm(s), {epochs} epochs each ...")
            yield _seed_runs(common, student, epochs, seed, arms, labels, teacher_weights)
        return

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(_seed_runs, common, student, epochs, seed, arms, labels, teacher_weights, threads)
            for seed in seeds
        ]
        for f in futures:
            yield f.result()


def parse_arm(text: str) -> dict:
    """ "dis=6,dis_o2o=0.125" -> {"dis": 6.0, "dis_o2o": 0.125}, checked as training options."""
    knobs: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise UserError(f"Arm '{text}': '{part}' is not NAME=VALUE", "Write arms like dis=6,dis_o2o=0.125")
        knobs[key.strip().replace("-", "_")] = value.strip()
    if not knobs:
        raise UserError(f"Arm '{text}' sets nothing", "Write arms like dis=6,dis_o2o=0.125")
    cfg = train_config(**knobs)  # a wrong name or value stops here, before any training
    return {k: getattr(cfg, k) for k in knobs}


def arm_label(knobs: dict) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items())


def run_distill_benchmark(
    out_dir: str | Path,
    *,
    data: str | None = None,
    student: str = "n",
    teacher: str = "s",
    teacher_weights: str | None = None,
    epochs: int = 60,
    teacher_epochs: int = 150,
    imgsz: int = 96,
    batch: int = 16,
    seeds: tuple[int, ...] = (0, 1, 2),
    arms: list[dict] | None = None,
    steps: int = 10,
    device: str = "",
    workers: int = 2,
    jobs: int = 1,
    cost_only: bool = False,
    cost_imgsz: int | None = None,
    echo=print,
    **train_kw,
) -> dict:
    """Train the teacher (unless given) once; then for each seed the student alone and once per arm
    (default one arm, `dis=6`). Returns per-seed figures, each arm's summary over seeds and step times.

    `jobs` > 1 trains that many seeds at once in separate processes, splitting the CPU threads between
    them (results do not depend on it beyond float rounding); step times are measured afterwards alone.
    `cost_only`: time the steps only (needs `teacher_weights`), at `cost_imgsz` (default `imgsz`)."""
    out = Path(out_dir)
    seeds = tuple(seeds) or (0,)
    arms = arms or [{"dis": 6.0}]
    if data is None:
        data = str(make_easy(out / "data", imgsz=imgsz))
    common = dict(
        data=data,
        imgsz=imgsz,
        batch=batch,
        nbs=batch,
        workers=workers,
        project=str(out),
        exist_ok=True,
        optimizer="AdamW",
        lr0=0.004,
        warmup_epochs=1,
        close_mosaic=5,
        verbose=False,
        device=device,
        **train_kw,
    )
    cost_imgsz = cost_imgsz or imgsz
    labels = [arm_label(k) for k in arms]
    if cost_only:
        if teacher_weights is None:
            raise UserError(
                "--cost-only times the distilled step, which needs a teacher", "Add --teacher-weights path/to/best.pt"
            )
        timing = step_times(student, teacher_weights, data, cost_imgsz, batch, steps, device, arms)
        for label, t in zip(labels, timing["arms"]):
            t["arm"] = label
        echo(
            f"step at {cost_imgsz} px, batch {batch}: plain {timing['step_s_plain'] * 1000:.1f} ms; floor {timing['floor']:.3f}x"
        )
        for t in timing["arms"]:
            echo(
                f"  {t['arm']}: {t['step_s'] * 1000:.1f} ms, ratio {t['ratio']:.3f}x ({t['over_floor_pct']:+.1f}% against the floor)"
            )
        return {"teacher_weights": str(teacher_weights), "cost_imgsz": cost_imgsz, "batch": batch, **timing}
    if teacher_weights is None:
        echo(f"training teacher yolo26{teacher} for {teacher_epochs} epochs (seed {seeds[0]}) ...")
        t = _train(common, model=f"yolo26{teacher}", epochs=teacher_epochs, name="teacher", seed=seeds[0])
        teacher_weights, t_map = t["best"], t["metrics"].get("mAP50-95")
        echo(f"teacher yolo26{teacher}: mAP50-95 {t_map:.4f}")
    else:
        t_map = None
    per_arm: list[list[dict]] = [[] for _ in arms]
    jobs = max(1, min(jobs, len(seeds)))
    if jobs > 1:
        echo(f"training {len(seeds)} seeds x {1 + len(arms)} runs in {jobs} processes ...")
    for seed, a, bs in _seed_runs_all(common, student, epochs, seeds, arms, labels, str(teacher_weights), jobs, echo):
        line = [f"seed {seed}: alone {a:.4f}"]
        for b, label, rows in zip(bs, labels, per_arm):
            rows.append({"seed": seed, "student_mAP50-95": a, "distilled_mAP50-95": b, "delta_points": 100 * (b - a)})
            line.append(f"{label}: {b:.4f} ({100 * (b - a):+.2f})")
        echo(" | ".join(line))
    timing = step_times(student, teacher_weights, data, cost_imgsz, batch, steps, device, arms)
    results = [
        {"arm": label, "options": knobs, **summarize(rows), "per_seed": rows, **t}
        for label, knobs, rows, t in zip(labels, arms, per_arm, timing.pop("arms"))
    ]
    mean_a, sd_a = results[0]["student_mAP50-95"], results[0]["student_sd"]  # (a) is shared by every arm
    res = {
        "teacher_mAP50-95": t_map,
        "teacher_weights": str(teacher_weights),
        "epochs": epochs,
        "imgsz": imgsz,
        "cost_imgsz": cost_imgsz,
        "seeds": list(seeds),
        "student_mAP50-95": mean_a,
        "student_sd": sd_a,
        "arms": results,
        **timing,
    }
    n = len(seeds)
    echo(
        f"(a) yolo26{student} alone: mAP50-95 {mean_a:.4f} (sd {sd_a:.4f}, {n} seeds); "
        f"plain step {timing['step_s_plain'] * 1000:.1f} ms; cost floor {timing['floor']:.3f}x"
    )
    for r in results:
        se = (
            f" +/- {r['delta_se']:.2f} (standard error)"
            if r["delta_se"] is not None
            else " (one seed: no error estimate)"
        )
        echo(
            f"(b) {r['arm']}: mAP50-95 {r['distilled_mAP50-95']:.4f} (sd {r['distilled_sd']:.4f}); "
            f"delta {r['delta_points']:+.2f} points{se}, "
            f"better in {r['wins']} of {n} seeds; step {r['step_s'] * 1000:.1f} ms, ratio {r['ratio']:.3f}x "
            f"({r['over_floor_pct']:+.1f}% against the floor)"
        )
    return res
