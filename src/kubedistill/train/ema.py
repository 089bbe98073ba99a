"""Exponential moving average of model weights, evaluated and saved instead of the raw weights.

`update` blends every floating-point parameter and buffer as `ema = d * ema + (1 - d) * model` with a
decay that ramps up from 0: `d = decay * (1 - exp(-updates / tau))`, so early on the average follows the
model closely. Integer buffers (BatchNorm's `num_batches_tracked`) are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(unwrap_model(model)).eval()
        for m in self.ema.modules():  # hooks on the training model (distillation's feature capture) stay there
            m._forward_pre_hooks.clear()
            m._forward_hooks.clear()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates

    def decay_at(self, updates: int) -> float:
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Blend `model` into the average; returns the decay used."""
        self.updates += 1
        d = self.decay_at(self.updates)
        msd = unwrap_model(model).state_dict()
        for k, v in self.ema.state_dict().items():
            src = msd[k].detach()
            if v.dtype.is_floating_point or v.dtype.is_complex:
                v.mul_(d).add_(src.to(device=v.device, dtype=v.dtype), alpha=1.0 - d)
            else:
                v.copy_(src)
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.ema.load_state_dict(d["ema"])
        self.updates = int(d.get("updates", 0))


__all__ = ["ModelEMA", "unwrap_model"]
