"""kubedistill.train: the training loop and its parts (objective, assigner, losses, optimizer, schedule, EMA)."""

from __future__ import annotations

from pathlib import Path

from kubedistill.core.cache import cache_dir
from kubedistill.core.errors import UserError
from kubedistill.core.log import LOGGER
from kubedistill.storage import download_cached, upload
from kubedistill.track.callback import MlflowCallback
from kubedistill.track.registry import fetch_model
from kubedistill.track.settings import resolve_uri, tracking_enabled


def checkpoint_file(ref: str, *, tracking_uri: str = "", project: str = "runs") -> Path:
    """A checkpoint reference -> a local .pt: a path as is; s3://bucket/key.pt fetched into the model cache (again
    only when the object changed); a registered model (models:/NAME/VERSION or @ALIAS) from the tracking server."""
    ref = str(ref).strip()
    if ref.startswith("models:/"):
        return fetch_model(ref, kind="pt", tracking_uri=resolve_uri(tracking_uri, project)[0])
    if ref.startswith("s3://"):
        if ref.endswith("/"):
            raise UserError(f"'{ref}' is a prefix, not a checkpoint", "Name the .pt object itself")
        return download_cached(ref, cache_dir("models"))
    return Path(ref)


def fetch_checkpoint(ref: str, cfg) -> str:
    """The trainer's `fetch`: a remote checkpoint reference -> a local file, with `cfg`'s tracking server."""
    return str(checkpoint_file(ref, tracking_uri=cfg.mlflow_uri, project=cfg.project))


def upload_run_folder(trainer) -> None:
    """Copy the run folder to `upload` when training ends, also after a failure (what was finished is kept); only
    the main process, and only once the run folder exists."""
    if not trainer.main or getattr(trainer, "wdir", None) is None or not trainer.save_dir.is_dir():
        return
    uri = upload(trainer.save_dir, trainer.cfg.upload.rstrip("/") + "/" + trainer.save_dir.name)
    LOGGER.info(f"run folder copied to {uri}")


def upload_last(trainer) -> None:
    """After every epoch: last.pt to `upload`, so that a run whose node was replaced resumes (resume=auto). A
    failed copy is a warning: training goes on, and its end copies the whole folder again."""
    if not trainer.main:
        return
    target = f"{trainer.cfg.upload.rstrip('/')}/{trainer.save_dir.name}/weights/last.pt"
    try:
        upload(trainer.wdir / "last.pt", target)
    except UserError as e:
        LOGGER.warning(f"could not copy last.pt to {target} ({e}); training goes on")


def build_trainer(cfg, callbacks=None):
    """The trainer for this config: `models:/` checkpoints fetched from the MLflow registry, and MLflow tracking
    attached when `mlflow=True` or MLFLOW_TRACKING_URI is set; `models:/` and `s3://` checkpoints are fetched."""
    from kubedistill.train.trainer import Trainer

    trainer = Trainer(cfg, fetch=fetch_checkpoint)
    if tracking_enabled(cfg.mlflow):  # first, so an epoch is logged before a user callback can stop the run
        MlflowCallback().attach(trainer)
    if cfg.upload:
        trainer.add_callback("on_model_save", upload_last)
        trainer.add_callback("on_train_end", upload_run_folder)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    return trainer
