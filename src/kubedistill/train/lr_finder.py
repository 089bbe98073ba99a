"""Learning-rate range test (the fast.ai "lr finder").

From a freshly built model (or the checkpoint in `model=x.pt`), train for up to `steps` optimizer steps
while the learning rate of every parameter group (bias groups too) rises exponentially from
`start_lr` to `end_lr`. Momentum stays at the optimizer's value; there is no warmup, no EMA and no
validation. Each step records the raw training loss (per image, averaged over the step's
gradient-accumulation batches) and its exponentially smoothed, bias-corrected value

    avg_i = (1 - smooth) * avg_{i-1} + smooth * loss_i,    smoothed_i = avg_i / (1 - (1 - smooth) ** (i + 1))

The sweep stops early when the smoothed loss exceeds `diverge` x the best smoothed loss so far, when the
loss is not finite, or when it collapses to ~0 (below `COLLAPSE` x the best smoothed loss: at very high lr
the detector can push every score to ~0, the assigner then finds no positives and the loss reads 0).
The step that stops the sweep is recorded only when it diverged (so the plot shows the rise). The model and
optimizer are thrown away afterwards: only `lr_find.json` and `lr_find.png` are written.

The suggestion (`suggest_lr`) is the lr of steepest descent of the smoothed loss against log10(lr)
(`numpy.gradient`), searched between the end of the first `skip_start` fraction of the curve and the
minimum of the smoothed loss (past the minimum lies the diverging tail). The lr at the minimum and
minimum / 10 are reported too.

The model, data loader, objective (distillation terms count) and optimizer come from `Trainer.setup()`, so they
match what `kubedistill train` would use with the same options. The trainer's own run folder goes to a temporary
directory that is deleted afterwards.
"""

from __future__ import annotations

import math
import os
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.config import TrainConfig
from kubedistill.core.atomic import atomic_path, write_json_atomic
from kubedistill.core.errors import ConfigError, UserError
from kubedistill.core.log import LOGGER, Progress, setup_logging
from kubedistill.train import build_trainer

LR_FIND_JSON = "lr_find.json"
LR_FIND_PNG = "lr_find.png"
SKIP_START = 0.1
# A step loss below this fraction of the best smoothed loss is a collapse, not progress: at very high lr the
# detector can drive every score to ~0, the assigner then finds no positives and the loss drops to exactly 0.
COLLAPSE = 1e-3
# training options that name the run folder or resume a run: meaningless for a sweep
_RUN_KEYS = ("resume", "project", "name", "exist_ok")


@dataclass
class LRSuggestion:
    """What `suggest_lr` found. `index`/`min_index` point into the curve; `method` says how `lr` was chosen."""

    lr: float
    index: int | None
    method: str
    slope: float | None
    min_lr: float
    min_index: int
    min_lr_div10: float
    window: tuple[int, int]


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    grad_norms: list[float]
    suggestion: LRSuggestion
    stopped_early: bool
    stop_reason: str | None
    settings: dict[str, Any]
    train_command: str
    elapsed_s: float
    out_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        s = self.suggestion
        return {
            "suggestion": s.lr,
            "suggestion_index": s.index,
            "suggestion_method": s.method,
            "suggestion_slope": s.slope,
            "min_lr": s.min_lr,
            "min_index": s.min_index,
            "min_lr_div10": s.min_lr_div10,
            "search_window": list(s.window),
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "steps_run": len(self.lrs),
            "lrs": self.lrs,
            "losses": self.losses,
            "smoothed": self.smoothed,
            "grad_norms": self.grad_norms,
            "settings": self.settings,
            "train_command": self.train_command,
            "elapsed_s": round(self.elapsed_s, 3),
        }


# ----------------------------------------------------------------------------------------------------------------
# pure parts: lr sequence, smoothing, suggestion


def check_sweep(start_lr: float, end_lr: float, steps: int, smooth: float, diverge: float) -> None:
    """Raise ConfigError for sweep settings that cannot work."""
    bad = []
    if not (math.isfinite(start_lr) and start_lr > 0):
        bad.append(f"--start-lr {start_lr} must be > 0")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        bad.append(f"--end-lr {end_lr} must be larger than --start-lr {start_lr}")
    if steps < 5:
        bad.append(f"--steps {steps} must be at least 5")
    if not 0.0 < smooth <= 1.0:
        bad.append(f"--smooth {smooth} must be in (0, 1] (1: no smoothing)")
    if not diverge > 1.0:
        bad.append(f"--diverge {diverge} must be > 1")
    if bad:
        raise ConfigError("Invalid lr finder setting: " + "; ".join(bad), "Fix the option(s) named")


def exp_lrs(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """`steps` learning rates from `start_lr` to `end_lr` (both included), evenly spaced in log scale."""
    return start_lr * (end_lr / start_lr) ** (np.arange(steps) / max(steps - 1, 1))


def smooth_losses(losses, smooth: float = 0.05) -> np.ndarray:
    """Exponential moving average with weight `smooth` on the newest value, bias-corrected (no pull to 0)."""
    beta = 1.0 - smooth
    out = np.empty(len(losses), dtype=np.float64)
    avg = 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + smooth * float(v)
        out[i] = avg / (1.0 - beta ** (i + 1)) if beta > 0 else avg
    return out


def suggest_lr(lrs, smoothed, skip_start: float = SKIP_START) -> LRSuggestion:
    """The lr of steepest descent of `smoothed` w.r.t. log10(lr), plus the lr at the minimum and minimum/10.

    The search skips the first `skip_start` fraction of the points (noisy start) and everything after the
    minimum of the smoothed loss (the diverging tail). With no descending stretch left (the loss only rises,
    or the curve is too short), the suggestion falls back to min/10 and `method` says so.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    sm = np.asarray(smoothed, dtype=np.float64)
    if lrs.shape != sm.shape or lrs.ndim != 1 or len(lrs) == 0:
        raise ValueError(f"lrs and smoothed must be 1-D and the same length, got {lrs.shape} and {sm.shape}")
    finite = np.isfinite(sm)
    n = int(np.argmin(finite)) if not finite.all() else len(sm)  # stop at the first non-finite value
    if n == 0:
        raise ValueError("no finite loss to suggest from")
    lrs, sm = lrs[:n], sm[:n]
    start = min(int(round(n * skip_start)), n - 1)
    min_index = start + int(np.argmin(sm[start:]))
    min_lr = float(lrs[min_index])
    base = dict(min_lr=min_lr, min_index=min_index, min_lr_div10=min_lr / 10.0, window=(start, min_index))
    if n >= 3 and min_index - start >= 2:
        grad = np.gradient(sm, np.log10(lrs))
        idx = start + int(np.argmin(grad[start : min_index + 1]))
        if grad[idx] < 0:
            return LRSuggestion(lr=float(lrs[idx]), index=idx, method="steepest", slope=float(grad[idx]), **base)
    return LRSuggestion(lr=min_lr / 10.0, index=None, method="min/10 (no descending stretch found)", slope=None, **base)


# ----------------------------------------------------------------------------------------------------------------
# outputs


def plot_lr_find(
    path: str | os.PathLike[str], lrs, losses, smoothed, suggestion: LRSuggestion, title: str = ""
) -> Path:
    """Loss against lr (log x): raw loss faint, smoothed loss bold, markers at the suggestion and the minimum.

    Written atomically (`kubedistill.core.atomic.atomic_path`) with matplotlib's Agg canvas (no pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lrs = np.asarray(lrs, dtype=np.float64)
    raw = np.asarray(losses, dtype=np.float64)
    sm = np.asarray(smoothed, dtype=np.float64)
    ax.plot(lrs, raw, color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax.plot(lrs, sm, color="tab:blue", lw=2, label="smoothed loss")
    lo, hi = suggestion.window
    if hi > lo:
        ax.axvspan(lrs[lo], lrs[hi], color="tab:green", alpha=0.08, label="search window")
    if suggestion.index is not None:
        ax.plot(
            [suggestion.lr], [sm[suggestion.index]], "o", color="tab:red", ms=9, label=f"steepest: {suggestion.lr:.3g}"
        )
    else:
        ax.axvline(suggestion.lr, color="tab:red", ls="--", label=f"suggestion: {suggestion.lr:.3g}")
    ax.plot(
        [suggestion.min_lr],
        [sm[suggestion.min_index]],
        "v",
        color="tab:orange",
        ms=8,
        label=f"min: {suggestion.min_lr:.3g} (/10: {suggestion.min_lr_div10:.3g})",
    )
    ax.set_xscale("log")
    finite = sm[np.isfinite(sm)]
    if finite.size:  # keep the diverged tail from squashing the interesting part
        top = float(np.max(finite[: max(suggestion.min_index + 1, 1)]))
        bottom = float(np.min(finite))
        span = max(top - bottom, 1e-12)
        ax.set_ylim(bottom - 0.1 * span, top + 0.6 * span)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss per image")
    ax.set_title(title or "lr finder")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def train_command(cfg: TrainConfig, optimizer: str, lr0: float) -> str:
    """`kubedistill train ...` with the options the user set, the resolved optimizer and the suggested lr0.

    The optimizer is spelled out because `optimizer=auto` picks its own lr and would ignore lr0.
    """
    parts = ["kubedistill", "train"]
    for key in type(cfg).model_fields:
        if key in cfg.model_fields_set and key not in ("optimizer", "lr0", *_RUN_KEYS):
            parts.append(f"{key}={getattr(cfg, key)}")
    parts += [f"optimizer={optimizer}", f"lr0={lr0:.3g}"]
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------------------------------------------
# the sweep


@dataclass
class _Curve:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    stop_reason: str | None = None


def _batches(loader, dataset):
    """The training loader, epoch after epoch (new shuffle and augmentation each pass), forever."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _sweep(trainer, lrs_plan: np.ndarray, smooth: float, diverge: float, verbose: bool) -> _Curve:
    """Train `trainer`'s model with lr `lrs_plan[i]` at step i (every group); stop on divergence or collapse.

    One step = `trainer.accumulate` batches (as in training), gradient clipping as in training, no EMA,
    no schedule. The recorded loss is per image, averaged over the step's batches.
    """
    from kubedistill.train.objective import autocast, to_input
    from kubedistill.train.optim import clipped_step

    objective, optimizer, scaler, device = trainer.objective, trainer.optimizer, trainer.scaler, trainer.device
    stream = _batches(trainer.train_loader, trainer.train_set)
    curve = _Curve()
    bar = Progress(len(lrs_plan), "lr find", enabled=verbose)
    best, avg, beta = math.inf, 0.0, 1.0 - smooth
    trainer.model.train()
    try:
        for i, lr in enumerate(float(x) for x in lrs_plan):
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(trainer.accumulate):
                batch = next(stream)
                img = batch["img"] = to_input(batch["img"], device)
                with autocast(device, trainer.amp_dtype):
                    loss, _ = objective(batch)
                value = float(loss.detach()) / img.shape[0]
                if not math.isfinite(value):
                    curve.stop_reason = f"non-finite loss at step {i} (lr {lr:.3g})"
                    return curve
                scaler.scale(loss).backward()
                step_loss += value / trainer.accumulate
            if i > 0 and step_loss <= COLLAPSE * best:
                curve.stop_reason = (
                    f"loss collapsed at step {i} (lr {lr:.3g}): {step_loss:.3g} <= {COLLAPSE:g} x best "
                    f"{best:.4g} (the model predicts no objects, so no anchors are assigned)"
                )
                return curve
            grad_norm = clipped_step(optimizer, scaler)
            avg = beta * avg + smooth * step_loss
            sm = avg / (1.0 - beta ** (i + 1)) if beta > 0 else avg
            curve.lrs.append(lr)
            curve.losses.append(step_loss)
            curve.smoothed.append(sm)
            curve.grad_norms.append(float(grad_norm))
            bar.update(1, lr=lr, loss=step_loss, smoothed=sm)
            if i > 0 and sm > diverge * best:
                curve.stop_reason = (
                    f"diverged at step {i} (lr {lr:.3g}): smoothed loss {sm:.4g} > {diverge:g} x best {best:.4g}"
                )
                return curve
            best = min(best, sm)
    except KeyboardInterrupt:
        curve.stop_reason = f"interrupted at step {len(curve.lrs)}"
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
    return curve


def find_lr(
    cfg: TrainConfig,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    steps: int = 100,
    smooth: float = 0.05,
    diverge: float = 4.0,
    out: str | os.PathLike[str] | None = None,
    skip_start: float = SKIP_START,
) -> LRFindResult:
    """Run the lr range test for training config `cfg` and write `lr_find.json` and `lr_find.png`.

    `out`: the folder for the outputs, used as given; None: `<project>/lr_find`, incremented (lr_find2, ...)
    like training runs unless `exist_ok`. Returns the curves and the suggestion.
    """
    import torch

    from kubedistill.core import device as du
    from kubedistill.train.optim import GRAD_CLIP
    from kubedistill.train.trainer import increment_path

    check_sweep(start_lr, end_lr, steps, smooth, diverge)
    if cfg.resume:
        raise ConfigError(
            "resume= does not apply to the lr finder", "Start from a checkpoint's weights with model=path/to/last.pt"
        )
    if du.world()[2] > 1:
        raise ConfigError("The lr finder runs in one process", "Run `kubedistill tune lr` without torchrun")
    setup_logging()
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="kubedistill-lr-find-") as tmp:
        # the trainer writes args.yaml / data_check.json into its run folder: keep that out of the user's runs
        run_cfg = cfg.model_copy(update={"project": tmp, "name": "setup", "exist_ok": True, "resume": False})
        trainer = build_trainer(run_cfg)
        try:
            trainer.setup()  # the objective starts at epoch 0's ProgLoss weights, as training does
            info = trainer.optim_info
            LOGGER.info(
                f"lr finder: {info['optimizer']} (momentum {info['momentum']}), lr {start_lr:g} -> {end_lr:g} over "
                f"{steps} steps of {trainer.accumulate} x {trainer.batch} images, {len(trainer.train_set)} training images"
            )
            curve = _sweep(trainer, exp_lrs(start_lr, end_lr, steps), smooth, diverge, cfg.verbose)
        finally:
            if trainer.objective is not None:  # as Trainer.train(): release the distillation hook
                trainer.objective.close()
            du.cleanup()
        batch, accumulate, nbs, device = trainer.batch, trainer.accumulate, trainer.nbs, trainer.device
        del trainer  # model, optimizer and data go with it
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if len(curve.lrs) < 3:
        raise UserError(
            f"The lr finder stopped after {len(curve.lrs)} step(s): {curve.stop_reason or 'too few steps'}",
            "Lower --start-lr, or check the data with `kubedistill data check`",
        )
    suggestion = suggest_lr(curve.lrs, curve.smoothed, skip_start)
    settings = {
        "start_lr": start_lr,
        "end_lr": end_lr,
        "steps": steps,
        "smooth": smooth,
        "diverge": diverge,
        "skip_start": skip_start,
        "collapse": COLLAPSE,
        "optimizer": info["optimizer"],
        "optimizer_requested": cfg.optimizer,
        "momentum": info["momentum"],
        "weight_decay": info["weight_decay"],
        "batch": batch,
        "nbs": nbs,
        "accumulate": accumulate,
        "images_per_step": accumulate * batch,
        "grad_clip": GRAD_CLIP,
        "model": cfg.model,
        "data": cfg.data,
        "imgsz": cfg.imgsz,
        "device": str(device),
        "train_args": {k: v for k, v in cfg.model_dump().items() if k not in _RUN_KEYS},
    }
    result = LRFindResult(
        lrs=curve.lrs,
        losses=curve.losses,
        smoothed=curve.smoothed,
        grad_norms=curve.grad_norms,
        suggestion=suggestion,
        stopped_early=curve.stop_reason is not None,
        stop_reason=curve.stop_reason,
        settings=settings,
        train_command=train_command(cfg, info["optimizer"], suggestion.lr),
        elapsed_s=time.perf_counter() - t_start,
    )
    out_dir = Path(out) if out is not None else increment_path(Path(cfg.project) / "lr_find", cfg.exist_ok)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_json_atomic(out_dir / LR_FIND_JSON, result.to_dict())
    title = f"lr finder: {cfg.model}, {info['optimizer']}, batch {batch}x{accumulate}, imgsz {cfg.imgsz}"
    png_path = plot_lr_find(out_dir / LR_FIND_PNG, curve.lrs, curve.losses, curve.smoothed, suggestion, title)
    result.out_dir = out_dir
    result.files = {"json": str(json_path), "png": str(png_path)}
    return result


__all__ = [
    "LRFindResult",
    "LRSuggestion",
    "exp_lrs",
    "find_lr",
    "plot_lr_find",
    "smooth_losses",
    "suggest_lr",
    "train_command",
]
