"""MLflow tracking of a training run, as trainer callbacks (attached by `build_trainer` when tracking is on).

- params: the full resolved training config;
- metrics each epoch with step=epoch: every sub-loss (dis_loss included), lr per group, mAP50-95, mAP50,
  AP by size, P/R, ProgLoss weights, img/s, epoch seconds; the best epoch's figures as `best/...` at the end;
- the dataset as an MLflow dataset input (content fingerprint as digest, source URI);
- system metrics (CPU, memory, disk, network, GPU when present) as `system/...` every 10 s, unless
  mlflow_system_metrics=False (`track.system.SystemSampler`);
- tags: git commit, pipeline run id, teacher, kubedistill version, data fingerprint, plus `mlflow_tags`;
- artifacts at the end: results.csv, args.yaml, metrics.json, data_check.json, plots;
- the best and the last checkpoint as MLflow LoggedModels "best" and "last" (the detector pyfunc with the ONNX
  export and the .pt, `track.models`), their validation metrics tied to the model and to the val split, which is
  logged as a second dataset input (context eval).
Only the main process logs. Nothing here can stop training: see `track.logger.RunLogger`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kubedistill.core.digest import file_sha256
from kubedistill.core.log import LOGGER
from kubedistill.core.names import METRIC_NAMES, RUN_ID_ENV
from kubedistill.core.version import __version__
from kubedistill.data.check import fingerprint
from kubedistill.track.logger import RunLogger, flatten, read_run_file
from kubedistill.track.settings import git_commit, resolve_uri
from kubedistill.track.system import SystemSampler


class MlflowCallback:
    def __init__(self, close_timeout: float = 120.0):
        self.logger: RunLogger | None = None
        self.val_dataset = "dataset/val"
        self.digest = ""
        self.sampler: SystemSampler | None = None
        self.close_timeout = close_timeout

    def attach(self, trainer) -> None:
        for event in ("on_train_start", "on_fit_epoch_end", "on_fit_end", "on_train_end"):
            trainer.add_callback(event, getattr(self, event))

    # ------------------------------------------------------------------ events
    def on_train_start(self, trainer) -> None:
        if not trainer.main:
            return

        cfg = trainer.cfg
        uri, artifacts = resolve_uri(cfg.mlflow_uri, cfg.project)
        previous = read_run_file(trainer.save_dir) if trainer.resumed else None
        digest = self.digest = fingerprint(trainer.spec)
        tags = {
            "kubedistill.version": _version(),
            "git_commit": git_commit(),
            "data_fingerprint": digest,
            "model_scale": str(cfg.model),
            **({"pipeline_run_id": os.environ[RUN_ID_ENV]} if os.environ.get(RUN_ID_ENV) else {}),
            **({"teacher": cfg.distill_model} if cfg.distill_model else {}),
            **({"mlflow.parentRunId": cfg.mlflow_parent} if cfg.mlflow_parent else {}),
            **{str(k): str(v) for k, v in cfg.mlflow_tags.items()},
        }
        tags = {k: v for k, v in tags.items() if v}
        self.logger = RunLogger(
            trainer.save_dir,
            uri,
            experiment=cfg.mlflow_experiment,
            artifact_location=artifacts,
            run_name=trainer.save_dir.name,
            run_id=(previous or {}).get("run_id"),
            tags=tags,
            log=LOGGER.info,
        )
        if previous and previous.get("run_id"):
            self.logger.set_tags({"resumed": "true"})
        else:
            # what the run used where a default is resolved at start (nbs), and the precision it trains in
            used = {"nbs": getattr(trainer, "nbs", cfg.nbs), "precision": getattr(trainer, "precision", "")}
            self.logger.log_params(flatten({**cfg.model_dump(), **used}))
        if cfg.mlflow_system_metrics:
            logger = self.logger
            self.sampler = SystemSampler(lambda m, step: logger.log_metrics(m, step=step), warn=LOGGER.warning).start()
        source = str(cfg.mlflow_tags.get("data_source") or Path(cfg.data).expanduser().resolve())
        name = Path(trainer.spec.yaml_path).parent.name or "dataset"
        self.logger.log_dataset(name, digest, source)
        # the split the checkpoints' metrics are measured on: their LoggedModels point at it
        self.val_dataset = f"{name}/val"
        self.logger.log_dataset(self.val_dataset, digest, f"{source}#val", context="eval")
        LOGGER.info(
            f"MLflow: tracking to {uri} (experiment {cfg.mlflow_experiment or os.environ.get('MLFLOW_EXPERIMENT_NAME') or 'kubedistill'})"
        )

    def on_fit_epoch_end(self, trainer) -> None:
        if self.logger is None:
            return
        m = {k: v for k, v in trainer.metrics.items() if k != "epoch"}
        self.logger.log_metrics(m, step=trainer.epoch)

    def on_fit_end(self, trainer) -> None:
        if self.logger is None:
            return

        best = {f"best/{k}": v for k, v in trainer.best_metrics.items() if not isinstance(v, (dict, list))}
        self.logger.log_metrics({**best, "best/epoch": trainer.best_epoch + 1}, step=trainer.epoch)
        d = trainer.save_dir
        for name in ("results.csv", "args.yaml", "metrics.json", "data_check.json"):
            self.logger.log_artifact(d / name)
        for png in sorted(d.glob("*.png")):
            self.logger.log_artifact(png, "plots")
        digest = self.digest
        params = {"model": str(trainer.cfg.model), "imgsz": trainer.cfg.imgsz, "epochs": trainer.cfg.epochs}
        last = {k: trainer.metrics.get(f"metrics/{k}") for k in METRIC_NAMES}
        checkpoints = []
        for name, epoch, metrics in [("best", trainer.best_epoch, trainer.best_metrics), ("last", trainer.epoch, last)]:
            pt = trainer.wdir / f"{name}.pt"
            if not pt.exists() or epoch < 0:
                continue
            sha = file_sha256(pt)
            same = next((c for c in checkpoints if c["sha256"] == sha), None)
            try:
                from kubedistill.model.export import export_onnx

                onnx = trainer.wdir / f"{name}.onnx"
                if same is not None:  # last is best: the same weights, the same export
                    shutil.copyfile(same["onnx"], onnx)
                else:
                    onnx = export_onnx(pt, onnx, imgsz=trainer.cfg.imgsz)["path"]
            except Exception as e:  # the run's results stay logged; the model can be exported and logged later
                LOGGER.warning(
                    f"MLflow: ONNX export of {pt} failed ({e.__class__.__name__}: {str(e)[:200]}); not logged"
                )
                continue
            checkpoints.append(
                {
                    "name": name,
                    "checkpoint": pt,
                    "onnx": onnx,
                    "step": epoch,
                    "metrics": {k: v for k, v in (metrics or {}).items() if k in METRIC_NAMES},
                    "sha256": sha,
                }
            )
        if checkpoints:
            self.logger.log_models(checkpoints, dataset=(self.val_dataset, digest[:36]), params=params)

    def on_train_end(self, trainer) -> None:
        if self.logger is None:
            return
        if self.sampler is not None:
            self.sampler.stop()
        err = trainer.error
        status = "FINISHED" if err is None else ("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if err is not None:
            self.logger.set_tags({"error": f"{err.__class__.__name__}: {str(err)[:500]}"})
        self.logger.end(status)
        self.logger.close(self.close_timeout)
        trainer.mlflow_run = read_run_file(trainer.save_dir)


def _version() -> str:

    return __version__
