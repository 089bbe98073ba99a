"""Timing a callable the way every benchmark here does: warm up, synchronise the GPU, time, per call; and the
training step that the training benchmarks time (the trainer's objective, backward, an optimizer step)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def time_steps(step: Callable[[], None], iters: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / iters


def time_interleaved(
    steps: list[Callable[[], None]], rounds: int, device: torch.device, warmup: int = 2
) -> list[float]:
    """Median seconds per call of each callable, timed in turn (A, B, C, A, B, C, ...).

    Interleaving puts the callables under the same conditions: on a shared machine a slow spell slows
    them all alike instead of landing on whichever ran at that moment, and the median drops outliers.
    """
    for _ in range(warmup):
        for step in steps:
            step()
    samples: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for step, out in zip(steps, samples):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out.append(time.perf_counter() - t0)
    return [sorted(x)[len(x) // 2] for x in samples]


def training_step(objective, batch: dict, precision: torch.dtype | None = None) -> Callable[[], None]:
    """One training step of `objective` on a fixed batch (image already the network's input): forward and loss
    in the trainer's autocast context (`precision`: `kubedistill.train.objective.amp_dtype`), backward, SGD step
    over the model and the objective's extra modules (a distillation projector)."""
    from kubedistill.train.objective import autocast

    device = batch["img"].device
    params = [p for m in (objective.model, *objective.extra_modules()) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, _ = objective(batch)
        loss.backward()
        opt.step()

    return step
