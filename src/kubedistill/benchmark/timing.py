"""Timing a callable the way every benchmark here does: warm up, synchronise the GPU, time, per call."""

from __future__ import annotations

import time
from typing import Callable

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


def time_interleaved(steps: list[Callable[[], None]], rounds: int, device: torch.device, warmup: int = 2) -> list[float]:
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
