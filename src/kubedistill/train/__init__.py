"""kubedistill.train: the training loop and its parts (assigner, losses, optimizer, schedule, EMA)."""

from __future__ import annotations


def build_trainer(cfg, callbacks=None):
    """The trainer for this config (a distillation trainer when `distill_model` is set)."""
    from kubedistill.train.trainer import Trainer

    return Trainer(cfg, callbacks)
