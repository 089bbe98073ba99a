"""Checkpoint I/O: plain data and state dicts only (torch.load(weights_only=True) opens them), written atomically.

Layout:
  model:       {"meta": {scale, nc, names, strides}, "state_dict": EMA weights}  -- what inference needs
  epoch, best_fitness, best_epoch, metrics, train_args, version, date
  last.pt also: train_state_dict (raw weights), ema_updates, optimizer, rng  -- what resume needs
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kubedistill.core.atomic import atomic_path
from kubedistill.core.errors import UserError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Checkpoint '{p}' does not exist", "Check the path (weights are in runs/<name>/weights/)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file
        raise UserError(
            f"Checkpoint '{p}' cannot be read ({e.__class__.__name__})",
            "Use a best.pt/last.pt written by kubedistill; a truncated file needs the run resumed or retrained",
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt.get("model", {}):
        raise UserError(f"'{p}' is not a kubedistill checkpoint", "Use a best.pt/last.pt written by kubedistill train")
    return ckpt
