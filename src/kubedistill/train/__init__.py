"""kubedistill.train: the training loop and its parts (objective, assigner, losses, optimizer, schedule, EMA)."""

from __future__ import annotations

from kubedistill.track.callback import MlflowCallback
from kubedistill.track.registry import fetch_model
from kubedistill.track.settings import resolve_uri, tracking_enabled


def fetch_checkpoint(uri: str, cfg) -> str:
    """A registered model (models:/NAME/VERSION or @ALIAS) -> its checkpoint, fetched once into the model cache,
    from the tracking server `cfg` names."""
    return str(fetch_model(uri, kind="pt", tracking_uri=resolve_uri(cfg.mlflow_uri, cfg.project)[0]))


def build_trainer(cfg, callbacks=None):
    """The trainer for this config: `models:/` checkpoints fetched from the MLflow registry, and MLflow tracking
    attached when `mlflow=True` or MLFLOW_TRACKING_URI is set."""
    from kubedistill.train.trainer import Trainer

    trainer = Trainer(cfg, fetch=fetch_checkpoint)
    if tracking_enabled(cfg.mlflow):  # first, so an epoch is logged before a user callback can stop the run
        MlflowCallback().attach(trainer)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    return trainer
