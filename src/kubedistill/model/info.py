"""Model size: parameters and GFLOPs (counted by torch.utils.flop_counter, one multiply-add = 2 FLOPs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, imgsz: int = 640, train_step: bool = False) -> float:
    """FLOPs of one forward (eval mode, inference head only) for a 1x3ximgszximgsz input.

    With train_step=True: forward + backward of one image in training mode (both heads), which is
    the unit the distillation cost floor is measured in.
    """
    was_training = model.training
    p = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False)
    try:
        if train_step:
            model.train()
            with counter:
                out = model(x)
                total = sum(t.float().sum() for h in out.values() for t in h.values())
                total.backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with counter, torch.no_grad():
                model(x)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def model_info(model: nn.Module, imgsz: int = 640) -> dict:
    # Parameters that serve inference: the one-to-many branches are dropped from exports.
    head = getattr(model, "head", None)
    train_only = 0
    if head is not None and hasattr(head, "box_branch"):
        train_only = count_params(head.box_branch) + count_params(head.cls_branch)
    return {
        "params": count_params(model),
        "params_inference": count_params(model) - train_only,
        "gflops": count_flops(model, imgsz) / 1e9,
        "imgsz": imgsz,
    }
