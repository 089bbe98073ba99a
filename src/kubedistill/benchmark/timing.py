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
