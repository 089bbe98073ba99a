"""kubedistill.train: the training loop and its parts (assigner, losses, optimizer, schedule, EMA)."""

from __future__ import annotations


def build_trainer(cfg, callbacks=None):
    """The trainer for this config, with MLflow tracking attached when `mlflow=True` or MLFLOW_TRACKING_URI is set."""
    from kubedistill.train.trainer import Trainer

    from kubedistill.track.settings import tracking_enabled

    trainer = Trainer(cfg)
    if tracking_enabled(cfg.mlflow):  # first, so an epoch is logged before a user callback can stop the run
        from kubedistill.track.callback import MlflowCallback

        MlflowCallback().attach(trainer)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    return trainer
