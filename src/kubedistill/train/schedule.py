"""Learning-rate and momentum schedule: linear warmup, then linear or cosine decay from lr0 to lr0 * lrf.

The schedule is a pure function of the global iteration (optimizer step) number, so a resumed run
continues with exactly the values it would have had. The decay is evaluated per iteration (smooth, not
stepped per epoch): iteration `i` of `total = epochs * iters_per_epoch` maps to the fractional epoch
`e = epochs * i / (total - 1)`, so iteration 0 uses factor 1 and the last iteration (`total - 1`) uses
exactly `lrf` (this differs from `i / iters_per_epoch` by less than one iteration's worth).

Warmup (`i < warmup_iters`): lr rises linearly from 0 (bias groups: from `warmup_bias_lr`) to
`initial_lr * factor(e)`, and momentum from `warmup_momentum` to `momentum`.
`warmup_iters = max(round(warmup_epochs * iters_per_epoch), 100)` when `warmup_epochs > 0` (else 0),
clamped to at most half of all iterations so short runs still spend most of their time training.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer


def _interp(t: float, start: float, end: float) -> float:
    return start + (end - start) * t


def is_bias_group(group: dict[str, Any]) -> bool:
    return str(group.get("name", "")).startswith("bias")


class LRSchedule:
    def __init__(
        self,
        lr0: float,
        lrf: float,
        epochs: int,
        iters_per_epoch: int,
        warmup_epochs: float = 3.0,
        warmup_bias_lr: float = 0.1,
        warmup_momentum: float = 0.8,
        momentum: float = 0.937,
        cos_lr: bool = False,
    ) -> None:
        if epochs < 1 or iters_per_epoch < 1:
            raise ValueError(f"epochs ({epochs}) and iters_per_epoch ({iters_per_epoch}) must be >= 1")
        self.lr0 = lr0
        self.lrf = lrf
        self.epochs = epochs
        self.iters_per_epoch = iters_per_epoch
        self.warmup_epochs = warmup_epochs
        self.warmup_bias_lr = warmup_bias_lr
        self.warmup_momentum = warmup_momentum
        self.momentum = momentum
        self.cos_lr = cos_lr
        self.total_iters = epochs * iters_per_epoch
        w = max(round(warmup_epochs * iters_per_epoch), 100) if warmup_epochs > 0 else 0
        self.warmup_iters = min(w, self.total_iters // 2)

    # ---- pure functions of the iteration

    def lr_factor(self, epoch: float) -> float:
        """Multiplier of the initial lr at fractional epoch `epoch` (1 at 0, `lrf` at `epochs`)."""
        x = min(max(epoch / self.epochs, 0.0), 1.0)
        if self.cos_lr:
            return self.lrf + (1.0 - self.lrf) * (1.0 + math.cos(math.pi * x)) / 2.0
        return (1.0 - x) * (1.0 - self.lrf) + self.lrf

    def epoch_at(self, iteration: int) -> float:
        """Fractional epoch used for the decay at `iteration` (0 -> 0, total_iters - 1 -> epochs)."""
        return self.epochs * min(max(iteration, 0), self.total_iters - 1) / max(self.total_iters - 1, 1)

    def lr_at(self, iteration: int, initial_lr: float | None = None, bias: bool = False) -> float:
        """Learning rate at `iteration` for a group starting at `initial_lr` (default lr0)."""
        base = (self.lr0 if initial_lr is None else initial_lr) * self.lr_factor(self.epoch_at(iteration))
        if iteration < self.warmup_iters:
            t = max(iteration, 0) / self.warmup_iters
            return _interp(t, self.warmup_bias_lr if bias else 0.0, base)
        return base

    def momentum_at(self, iteration: int) -> float:
        if iteration < self.warmup_iters:
            return _interp(max(iteration, 0) / self.warmup_iters, self.warmup_momentum, self.momentum)
        return self.momentum

    # ---- applying to an optimizer

    def apply(self, optimizer: Optimizer, iteration: int) -> dict[str, float]:
        """Set lr and momentum (SGD/MuSGD `momentum`, Adam `betas[0]`) of every group for `iteration`.

        Returns `{"lr/<group name>": lr, ..., "momentum": m}` for logging (unnamed groups: `pg<i>`).
        """
        out: dict[str, float] = {}
        m = self.momentum_at(iteration)
        for i, group in enumerate(optimizer.param_groups):
            initial = group.get("initial_lr", self.lr0)
            lr = self.lr_at(iteration, initial, bias=is_bias_group(group))
            group["lr"] = lr
            if "betas" in group:
                group["betas"] = (m, *tuple(group["betas"])[1:])
            elif "momentum" in group:
                group["momentum"] = m
            out[f"lr/{group.get('name', f'pg{i}')}"] = lr
        out["momentum"] = m
        return out

    def __repr__(self) -> str:
        kind = "cosine" if self.cos_lr else "linear"
        return (
            f"LRSchedule({kind}, lr0={self.lr0}, lrf={self.lrf}, epochs={self.epochs}, "
            f"iters_per_epoch={self.iters_per_epoch}, warmup_iters={self.warmup_iters})"
        )


def lr_at(
    iteration: int,
    *,
    lr0: float,
    lrf: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: float = 3.0,
    warmup_bias_lr: float = 0.1,
    cos_lr: bool = False,
    bias: bool = False,
) -> float:
    """Stand-alone lr at `iteration` (for plots): same as `LRSchedule(...).lr_at(iteration, bias=bias)`."""
    s = LRSchedule(lr0, lrf, epochs, iters_per_epoch, warmup_epochs, warmup_bias_lr, cos_lr=cos_lr)
    return s.lr_at(iteration, bias=bias)


__all__ = ["LRSchedule", "is_bias_group", "lr_at"]
