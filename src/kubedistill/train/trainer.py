"""The training loop.

Trainer(cfg).train() runs data check -> model -> optimizer/schedule/EMA -> epochs of
(train, validate with the EMA weights, save last/best, results.csv row, callbacks).

The loss of a batch is the objective's (`kubedistill.train.objective`): detection alone, or wrapped for
distillation when `distill_model` is set. The trainer has no distillation branches.

Setup is public, step by step (`setup_run`, `setup_data`, `setup_model`, `setup_objective`, `setup_optimizer`;
`setup()` runs them all), so the LR finder builds exactly what training would.

Extension points:
- callbacks: `add_callback(event, fn)`, fn(trainer) for events in CALLBACK_EVENTS;
- the objective: override `setup_objective()` (wrap `self.objective`: extra loss terms, extra trainable modules
  via `extra_modules()`, resume state via `state_dict()`/`load_state_dict()`).

A `models:/` teacher or start checkpoint is turned into a local file by `fetch` (build_trainer passes the MLflow
registry's), so this module knows nothing of MLflow.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from kubedistill.config import TrainConfig
from kubedistill.core import device as du
from kubedistill.core.atomic import atomic_write_text
from kubedistill.core.checkpoint import atomic_torch_save, load_checkpoint
from kubedistill.core.errors import ConfigError, UserError
from kubedistill.core.interrupt import sigterm_as_interrupt
from kubedistill.core.log import LOGGER, Progress, setup_logging
from kubedistill.core.names import METRIC_NAMES
from kubedistill.core.version import __version__
from kubedistill.data.check import check_dataset
from kubedistill.data.dataset import DetectionDataset, build_dataloader
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.fetch import resolve_data
from kubedistill.eval.plots import write_run_plots
from kubedistill.eval.validator import validate
from kubedistill.model.checkpoint import model_from_checkpoint, read_checkpoint, transfer_weights
from kubedistill.model.yolo import DetectionModel, parse_scale
from kubedistill.storage import download, exists
from kubedistill.train.ema import ModelEMA
from kubedistill.train.loss_health import check_loss_health
from kubedistill.train.objective import amp_dtype, autocast, build_objective, precision_name, to_input, unwrap
from kubedistill.train.optim import NBS, build_optimizer, clipped_step, resolve_nbs
from kubedistill.train.run_folder import read_results_csv, repair_run_folder, write_metrics_json, write_results_csv
from kubedistill.train.schedule import LRSchedule

# on_train_end always runs last, also after a failure or an interrupt (trainer.error holds the exception, else None)
CALLBACK_EVENTS = (
    "on_train_start",
    "on_train_epoch_end",
    "on_fit_epoch_end",
    "on_model_save",
    "on_fit_end",
    "on_train_end",
)
MAX_NONFINITE = 10
REMOTE_CHECKPOINTS = ("models:/", "s3://")  # fetched by `fetch` before use


class TrainingDiverged(UserError):
    pass


def increment_path(path: Path, exist_ok: bool) -> Path:
    """runs/train -> runs/train2, runs/train3 ... unless exist_ok."""
    if exist_ok or not path.exists():
        return path
    for n in range(2, 10_000):
        p = path.with_name(f"{path.name}{n}")
        if not p.exists():
            return p
    raise UserError(f"Too many runs named {path}", "Pick another name=")


# options that may differ between a run and its resumption: where and how it runs, not what it trains
RUN_PLACE_OPTIONS = ("device", "workers", "verbose", "upload", "resume", "exist_ok", "project", "mlflow",
                     "mlflow_uri", "mlflow_parent", "mlflow_tags", "mlflow_experiment", "mlflow_system_metrics")  # fmt: skip


def same_training(saved_args: dict, cfg: TrainConfig) -> bool:
    """Whether a checkpoint's training options are `cfg`'s, apart from RUN_PLACE_OPTIONS."""
    now = cfg.model_dump()
    return all(saved_args.get(k) == v for k, v in now.items() if k not in RUN_PLACE_OPTIONS)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        callbacks: dict[str, list[Callable]] | None = None,
        *,
        fetch: Callable[[str, TrainConfig], str] | None = None,
    ):
        self.cfg = cfg
        self.fetch = fetch
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        for event, fns in (callbacks or {}).items():
            for fn in fns:
                self.add_callback(event, fn)
        self.rank, self.local_rank, self.world_size = du.world()
        self.main = self.rank in (-1, 0)
        self.metrics: dict[str, Any] = {}
        self.best_metrics: dict[str, Any] = {}
        self.epoch = 0
        self.stop = False
        self.objective = None
        self.best_val = None
        self.loss_history: dict[str, list[float]] = defaultdict(list)
        self.health_said: set[str] = set()
        self.plot_files: dict[str, Path] = {}
        self.error: BaseException | None = None
        self.resumed = False
        self._fresh_dir: Path | None = None  # the run folder this call made, until setup has passed

    # ----------------------------------------------------------------------------- extension points
    def add_callback(self, event: str, fn: Callable) -> None:
        if event not in CALLBACK_EVENTS:
            raise ConfigError(f"Unknown callback event '{event}'", f"Use one of {', '.join(CALLBACK_EVENTS)}")
        self.callbacks[event].append(fn)

    def run_callbacks(self, event: str) -> None:
        for fn in self.callbacks[event]:
            fn(self)

    # ----------------------------------------------------------------------------- setup
    def _resolve_resume(self) -> dict | None:
        """The checkpoint to resume from, or None. Besides `resume=`, a worker group that torchrun restarted after a
        failure (TORCHELASTIC_RESTART_COUNT > 0 on any rank) resumes its run folder (exist_ok) from its last.pt.
        Nodes share no disk, and after a restart rank 0 may be on another node than before: every rank looks at its
        own disk, and the one holding the latest last.pt hands it to the others."""
        cfg = self.cfg
        restarted = du.any_true(int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0, self.device)
        auto = cfg.resume == "auto" or (restarted and not cfg.resume and cfg.exist_ok)
        if not cfg.resume and not auto:
            return None
        try:
            mine = self._read_resume(auto)
        except UserError as e:
            mine = ("error", (e.cause, e.fix))
        epochs = du.all_gather_object(mine[1][0]["epoch"] if mine[0] == "ckpt" else -1)
        src = epochs.index(max(epochs)) if max(epochs) >= 0 else 0  # none anywhere: rank 0 says why
        kind, payload = du.broadcast_object(mine if max(self.rank, 0) == src else None, src=src)
        if kind == "error":
            raise UserError(*payload)
        if kind == "none":
            return None
        ckpt, save_dir = payload
        args = dict(ckpt["train_args"])
        # Where it runs may change on resume; what it trains may not.
        for key in ("device", "workers", "verbose", "upload"):
            args[key] = getattr(cfg, key)
        args.update(resume=False, exist_ok=True, mlflow=args.get("mlflow", False) or cfg.mlflow)
        self.cfg = TrainConfig(**args)
        self.save_dir = Path(save_dir)
        self.resumed = True
        if auto and self.main:
            why = "torchrun restarted the workers" if restarted else "resume=auto"
            LOGGER.info(f"{why}: resuming {self.save_dir} from epoch {ckpt['epoch'] + 1}")
        return ckpt

    def _read_resume(self, auto: bool) -> tuple[str, Any]:
        cfg = self.cfg
        own = Path(cfg.project) / cfg.name / "weights" / "last.pt"
        last = Path(cfg.resume) if isinstance(cfg.resume, str) and cfg.resume != "auto" else own
        if auto and not last.is_file() and cfg.upload and self.rank <= 0:
            # a node that was replaced has lost its disk: the last.pt copied to upload= after every epoch
            remote = f"{cfg.upload.rstrip('/')}/{cfg.name}/weights/last.pt"
            if exists(remote):
                last.parent.mkdir(parents=True, exist_ok=True)
                download(remote, last)
        if not last.is_file():
            if auto:  # nothing saved yet (restarted before the first epoch ended): start
                return "none", None
            raise UserError(
                f"Nothing to resume: '{last}' does not exist",
                "Give resume=path/to/last.pt or the run's project= and name=",
            )
        ckpt = load_checkpoint(last)
        if "optimizer" not in ckpt:
            raise UserError(f"'{last}' holds no training state", "Resume from a last.pt, not a best.pt")
        if auto and not same_training(ckpt["train_args"], cfg):
            LOGGER.warning(f"{last} was trained with other options: not resuming it, starting a new run in its place")
            return "none", None
        epochs = ckpt["train_args"].get("epochs", 0)
        if ckpt["epoch"] + 1 >= epochs:
            raise UserError(
                f"Run in '{last.parent.parent}' already finished all {epochs} epochs",
                "Start a new run instead of resume",
            )
        return "ckpt", (ckpt, str(last.parent.parent))

    def local_file(self, ref: str) -> str:
        """A checkpoint reference (a path, s3:// or models:/) -> a local path."""
        if ref.startswith(REMOTE_CHECKPOINTS):
            if self.fetch is None:
                raise ConfigError(f"'{ref}' needs fetching", "Build the trainer with kubedistill.train.build_trainer")
            return self.fetch(ref, self.cfg)
        return ref

    def setup(self) -> None:
        """Everything training needs, in order; resumes when cfg.resume says so."""
        ckpt = self.setup_run()
        self.setup_data()
        self.setup_model(ckpt)
        self.setup_objective()
        self.setup_optimizer()
        if ckpt is not None:
            self._load_resume_state(ckpt)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective.distribute(lambda m: nn.parallel.DistributedDataParallel(m, device_ids=ids))
            self.model = self.objective.model

    def setup_run(self) -> dict | None:
        """Device, process group, resume state (or None), run folder, seed, args.yaml."""
        self.device = du.select_device(self.cfg.device, self.local_rank)
        du.init_distributed(self.device, self.world_size)
        ckpt = self._resolve_resume()
        cfg = self.cfg
        if cfg.data is None:
            raise ConfigError(
                "No dataset given", "Pass data=path/to/data.yaml (try `kubedistill data synth demo` for a demo set)"
            )
        if ckpt is None:
            save_dir = str(increment_path(Path(cfg.project) / cfg.name, cfg.exist_ok)) if self.main else None
            self.save_dir = Path(du.broadcast_object(save_dir))
        self.wdir = self.save_dir / "weights"
        seed_everything(cfg.seed, cfg.deterministic)
        if self.main:
            if ckpt is None and not self.save_dir.exists():
                self._fresh_dir = self.save_dir
            self.wdir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.save_dir / "args.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
            if ckpt is not None:
                repair_run_folder(self.save_dir, ckpt)
                if not (self.wdir / "last.pt").is_file():  # handed over from another node
                    atomic_torch_save(ckpt, self.wdir / "last.pt")
        return ckpt

    def setup_data(self) -> None:
        """Check the data first (skip what is bad, stop only when too little is usable), then datasets and loaders."""
        cfg = self.cfg
        self.spec = load_data_yaml(resolve_data(cfg.data))  # s3:// prefixes and archives: fetched into the cache first
        report = check_dataset(self.spec, splits=("train", "val"), min_usable=cfg.min_usable)
        if self.main:
            report.write(self.save_dir / "data_check.json")
            LOGGER.info(report.summary())
        report.raise_if_unusable()
        self.data_report = report
        train_samples = report.samples["train"]
        if cfg.fraction < 1.0:
            train_samples = train_samples[: max(1, int(len(train_samples) * cfg.fraction))]
        self.train_set = DetectionDataset(train_samples, cfg.imgsz, augment=True, hyp=cfg, seed=cfg.seed)
        self.val_samples = report.samples["val"]
        self.val_set = DetectionDataset(self.val_samples, cfg.imgsz, augment=False, hyp=cfg, seed=cfg.seed)
        self.batch = max(cfg.batch // self.world_size, 1)
        self.train_loader = self._train_loader()
        self.val_loader = build_dataloader(
            self.val_set, max(self.batch, 1) * 2, cfg.workers, shuffle=False, seed=cfg.seed
        )

    def setup_model(self, ckpt: dict | None = None) -> None:
        """The network: from the resume state, from a checkpoint (`model=x.pt`, fine-tuning), or new (`model=yolo26n`)."""
        cfg = self.cfg
        names = self.spec.names
        if ckpt is not None:
            self.model = model_from_checkpoint(ckpt, weights="train")
        elif cfg.model.endswith(".pt") or cfg.model.startswith(REMOTE_CHECKPOINTS):
            # fine-tuning: every tensor that fits is transferred; on another class count the class outputs start fresh
            base = read_checkpoint(self.local_file(cfg.model))
            meta = base["model"]["meta"]
            self.model = DetectionModel(meta["scale"], nc=len(names), names=names)
            self.model.head.init_bias(cfg.imgsz)
            moved, total = transfer_weights(self.model, base)
            if self.main:
                classes = (
                    "" if meta["nc"] == len(names) else f"; {meta['nc']} -> {len(names)} classes, class outputs new"
                )
                LOGGER.info(
                    f"fine-tuning from {cfg.model} (yolo26{meta['scale']}): {moved}/{total} tensors transferred{classes}"
                )
        else:
            self.model = DetectionModel(parse_scale(cfg.model), nc=len(names), names=names)
            self.model.head.init_bias(cfg.imgsz)
        self.model.to(self.device)

    def setup_objective(self) -> None:
        """The loss of a batch: detection, wrapped for distillation when `distill_model` is set."""
        cfg = self.cfg
        teacher = self.local_file(cfg.distill_model) if cfg.distill_model else None
        self.objective = build_objective(self.model, cfg, self.device, teacher)
        if teacher and self.main:
            LOGGER.info(
                f"distilling from teacher {cfg.distill_model} (yolo26{self.objective.teacher.model.scale}), dis={cfg.dis}"
                + (f", dis_o2o={cfg.dis_o2o} (dis_temp={cfg.dis_temp})" if cfg.dis_o2o > 0 else "")
            )

    def setup_optimizer(self) -> None:
        """Optimizer (model and the objective's extra modules), LR schedule, EMA and AMP scaler."""
        cfg = self.cfg
        self.nb = len(self.train_loader)
        self.nbs, nbs_reason = resolve_nbs(cfg.nbs, cfg.batch, len(self.train_set), cfg.epochs)
        self.accumulate = max(round(self.nbs / (self.batch * self.world_size)), 1)
        # optimizer=auto chooses on Ultralytics' count (images / max(batch, nbs 64 unless given) x epochs), so it
        # picks what Ultralytics picks whatever the accumulation
        iterations = math.ceil(len(self.train_set) / max(cfg.batch, cfg.nbs or NBS)) * cfg.epochs
        opt_root = nn.ModuleDict(
            {"model": self.model, **{f"extra{i}": m for i, m in enumerate(self.objective.extra_modules())}}
        )
        self.optimizer, self.optim_info = build_optimizer(
            opt_root,
            cfg.optimizer,
            cfg.lr0,
            cfg.momentum,
            cfg.weight_decay,
            iterations,
            self.model.nc,
            cfg.batch,
            self.nbs,
        )
        if self.main:
            LOGGER.info(
                f"optimizer: {self.optim_info['optimizer']} lr0={self.optim_info['lr0']:.6g} "
                f"momentum={self.optim_info['momentum']} ({self.optim_info['reason']}); {nbs_reason}"
            )
        self.schedule = LRSchedule(
            self.optim_info["lr0"],
            cfg.lrf,
            cfg.epochs,
            self.nb,
            cfg.warmup_epochs,
            cfg.warmup_bias_lr,
            cfg.warmup_momentum,
            self.optim_info["momentum"],
            cfg.cos_lr,
        )
        self.ema = ModelEMA(self.model)
        self.amp_dtype = amp_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.best_fitness = -1.0
        self.best_epoch = -1
        self.best_record: dict | None = None  # the best epoch's checkpoint (without training state)
        self.results_rows: list[dict] = []

    def _train_loader(self):
        return build_dataloader(
            self.train_set,
            self.batch,
            self.cfg.workers,
            shuffle=True,
            seed=self.cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=len(self.train_set) >= 2 * self.batch * self.world_size,
        )

    def _load_resume_state(self, ckpt: dict) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.ema.ema.load_state_dict(ckpt["model"]["state_dict"])
        self.ema.updates = ckpt["ema_updates"]
        self.best_record = ckpt.get("best")
        rows = ckpt.get("results")  # absent in a last.pt from before: the rows on disk then
        self.results_rows = (
            list(rows) if rows is not None else read_results_csv(self.save_dir / "results.csv", ckpt["epoch"] + 1)
        )
        self.start_epoch = ckpt["epoch"] + 1
        self.best_fitness = ckpt["best_fitness"]
        self.best_epoch = ckpt.get("best_epoch", -1)
        self.best_metrics = ckpt.get("best_metrics", {})
        self.objective.load_state_dict(ckpt)
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        if self.main:
            LOGGER.info(f"resuming {self.save_dir} from epoch {self.start_epoch + 1}/{self.cfg.epochs}")

    @property
    def precision(self) -> str:
        """The step's precision as logged and tracked ("fp32", "amp-bf16" or "amp-fp16"), from `amp_dtype`."""
        return precision_name(self.amp_dtype)

    # ----------------------------------------------------------------------------- loop
    def train(self) -> dict:
        setup_logging()
        try:
            with sigterm_as_interrupt():  # a stopped pod ends the run as KILLED, like Ctrl-C
                self.setup()
                self._fresh_dir = None
                self.run_callbacks("on_train_start")
                self._fit()
        except BaseException as e:
            self.error = e
            if self._fresh_dir is not None and isinstance(e, UserError):  # bad data or model: no empty run folder left
                shutil.rmtree(self._fresh_dir, ignore_errors=True)
            raise
        finally:
            try:
                self.run_callbacks("on_train_end")
            finally:
                if self.objective is not None:
                    self.objective.close()
                du.cleanup()
        return self.results()

    def results(self) -> dict:
        return {
            "save_dir": str(self.save_dir),
            "best": str(self.wdir / "best.pt"),
            "last": str(self.wdir / "last.pt"),
            "best_epoch": self.best_epoch + 1,
            "epochs_run": self.epoch + 1,
            "metrics": self.best_metrics,
        }

    def _fit(self) -> None:
        cfg = self.cfg
        if self.main:
            LOGGER.info(
                f"training {cfg.model} on {len(self.train_set)} images ({len(self.val_samples)} val), "
                f"imgsz={cfg.imgsz} batch={cfg.batch} epochs={cfg.epochs} device={self.device} "
                f"precision={self.precision} -> {self.save_dir}"
            )
        self.nonfinite = 0
        for epoch in range(self.start_epoch, cfg.epochs):
            self.epoch = epoch
            t0 = time.perf_counter()
            if cfg.close_mosaic and epoch >= cfg.epochs - cfg.close_mosaic and self.train_set.mosaic_enabled():
                self.train_set.close_mosaic()  # the sampler carries the flag to (persistent) workers
                if self.main:
                    LOGGER.info(f"closing mosaic for the last {cfg.close_mosaic} epochs")
            self.train_set.set_epoch(epoch)
            if hasattr(self.train_loader.sampler, "set_epoch"):
                self.train_loader.sampler.set_epoch(epoch)
            weights = self.objective.set_epoch(epoch, cfg.epochs)
            train_items, n_img, lrs = self._train_epoch(epoch)
            epoch_s = time.perf_counter() - t0
            self.run_callbacks("on_train_epoch_end")
            for k, v in train_items.items():
                self.loss_history[k].append(v)
            if self.main:
                for warning in check_loss_health(self.loss_history, self.health_said):
                    LOGGER.warning(warning)

            final = epoch == cfg.epochs - 1
            metrics: dict[str, Any] = {}
            if self.main and (cfg.val or final):
                val = validate(
                    self.ema.ema,
                    self.val_loader,
                    self.val_samples,
                    self.model_names,
                    self.device,
                    nms=cfg.nms,
                    conf=cfg.conf,
                    iou=cfg.iou,
                    max_det=cfg.max_det,
                )
                metrics = {**val.metrics.to_dict(), **val.speed}
            fitness = metrics.get("mAP50-95") if metrics else None
            self.metrics = {
                "epoch": epoch + 1,
                **{f"train/{k}": v for k, v in train_items.items()},
                **{f"metrics/{k}": metrics.get(k) for k in METRIC_NAMES},
                **lrs,
                "prog/o2m": weights["one2many"],
                "prog/o2o": weights["one2one"],
                "img_s": n_img * self.world_size / max(epoch_s, 1e-9),
                "epoch_s": epoch_s,
            }
            improved = fitness is not None and fitness > self.best_fitness
            if improved:
                self.best_fitness, self.best_epoch, self.best_metrics = fitness, epoch, metrics
                self.best_val = val
            if self.main:
                self._save(epoch, improved, metrics)
                self._log_epoch()
            self.run_callbacks("on_fit_epoch_end")
            if cfg.patience and self.best_epoch >= 0 and epoch - self.best_epoch >= cfg.patience:
                self.stop = True
                if self.main:
                    LOGGER.info(
                        f"early stop: no improvement for {cfg.patience} epochs (best epoch {self.best_epoch + 1})"
                    )
            self.stop = du.broadcast_object(self.stop)
            if self.stop:
                break
        if self.main:  # metrics.json is up to date: every epoch's _save writes it
            if cfg.plots:
                self._plots()
            LOGGER.info(
                f"done: best mAP50-95 {self.best_fitness:.4f} at epoch {self.best_epoch + 1}; weights in {self.wdir}"
            )
        self.run_callbacks("on_fit_end")

    def _plots(self) -> None:
        """results.png, PR curves, confusion matrix, confidence/calibration, label statistics and a val
        mosaic of the best epoch; a plot that fails only logs a warning."""

        best = self.best_val
        out = write_run_plots(
            self.save_dir,
            results_csv=self.save_dir / "results.csv",
            metrics=best.metrics if best else None,
            gts=best.gts if best else None,
            preds=best.preds if best else None,
            samples=self.train_set.samples,
            names=self.model_names,
        )
        self.plot_files = {k: v for k, v in out.items() if isinstance(v, Path)}
        if best is not None and self.cfg.verbose:
            LOGGER.info(
                f"plots in {self.save_dir}; expected calibration error {out.get('ece', float('nan')):.3f}, "
                f"mean false-positive confidence {out.get('fp_mean_conf', float('nan')):.3f}"
            )

    @property
    def model_names(self) -> list[str]:
        return list(unwrap(self.model).names)

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], int, dict[str, float]]:
        cfg = self.cfg
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        steps, n_img = 0, 0
        lrs: dict[str, float] = {}
        bar = Progress(self.nb, f"epoch {epoch + 1}/{cfg.epochs}", enabled=self.main and cfg.verbose)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        pending = 0
        for i, batch in enumerate(self.train_loader):
            ni = epoch * self.nb + i
            lrs = self.schedule.apply(self.optimizer, ni)
            img = batch["img"] = to_input(batch["img"], self.device)
            with autocast(self.device, self.amp_dtype):
                loss, items = self.objective(batch)
            if self.world_size > 1:
                loss = loss * self.world_size  # DDP averages gradients; keep the sum over the global batch
            finite = du.all_true(bool(torch.isfinite(loss)), self.device)
            if not finite:
                self._nonfinite(ni)
                self.optimizer.zero_grad(set_to_none=True)
                pending = 0
                continue
            self.nonfinite = 0
            self.scaler.scale(loss).backward()
            pending += 1
            if pending >= self.accumulate or i == self.nb - 1:
                self._optimizer_step()
                pending = 0
            for k, v in items.items():
                sums[k] += float(v)
            steps += 1
            n_img += img.shape[0]
            if self.main and cfg.verbose:
                bar.update(
                    1,
                    **{k: sums[k] / steps for k in sums},
                    lr=lrs.get("lr/weights", 0.0),
                    img_s=n_img / max(time.perf_counter() - t0, 1e-9),
                )
        bar.close()
        return {k: v / max(steps, 1) for k, v in sums.items()}, n_img, lrs

    def _nonfinite(self, ni: int) -> None:
        self.nonfinite += 1
        if self.main:
            LOGGER.warning(
                f"warning: non-finite loss at iteration {ni}; step skipped ({self.nonfinite}/{MAX_NONFINITE})"
            )
        if self.nonfinite >= MAX_NONFINITE:
            raise TrainingDiverged(
                f"Loss was non-finite for {MAX_NONFINITE} steps in a row (training diverged)",
                f"Lower lr0 (now {self.optim_info['lr0']:.4g}), check labels with `kubedistill data check`, or resume from last.pt",
            )

    def _optimizer_step(self) -> None:
        clipped_step(self.optimizer, self.scaler)
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)

    # ----------------------------------------------------------------------------- outputs
    def _model_record(self) -> dict:
        """The EMA weights now, as a copy: on the CPU `.float().cpu()` returns the live tensor itself, which the next
        EMA update would change under a record kept for later (the best epoch's)."""
        return {
            "meta": unwrap(self.model).meta(),
            "state_dict": {
                k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
                for k, v in self.ema.ema.state_dict().items()
            },
        }

    def _save(self, epoch: int, improved: bool, metrics: dict) -> None:
        """The epoch's files, in an order that survives a kill at any moment. last.pt is the commit point and
        holds everything the other files are made from: the best epoch's weights and metrics and every
        results.csv row. It is written first; best.pt, results.csv and metrics.json follow from it, and
        `repair_run_folder` rewrites them from last.pt when a kill came in between (on resume)."""
        common = {
            "model": self._model_record(),
            "epoch": epoch,
            "best_fitness": self.best_fitness,
            "best_epoch": self.best_epoch,
            "metrics": metrics,
            "train_args": self.cfg.model_dump(),
            "version": __version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if improved or self.best_record is None:
            self.best_record = common
        self.results_rows = [r for r in self.results_rows if r["epoch"] < self.metrics["epoch"]] + [self._row()]
        last = {
            **common,
            "best_metrics": self.best_metrics,
            "best": self.best_record,
            "results": self.results_rows,
            "train_state_dict": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            **self.objective.state_dict(),
        }
        atomic_torch_save(last, self.wdir / "last.pt")
        if improved:
            atomic_torch_save(common, self.wdir / "best.pt")
        write_results_csv(self.save_dir / "results.csv", self.results_rows)
        write_metrics_json(self.save_dir, self.best_epoch, self.best_metrics)
        if self.cfg.save_period > 0 and (epoch + 1) % self.cfg.save_period == 0:
            atomic_torch_save(common, self.wdir / f"epoch{epoch + 1}.pt")
        self.run_callbacks("on_model_save")

    def _row(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.metrics.items()}

    def _log_epoch(self) -> None:
        m = self.metrics
        if self.cfg.verbose:
            LOGGER.info(
                f"epoch {m['epoch']}/{self.cfg.epochs}: "
                + " ".join(f"{k.split('/')[1]}={v:.4f}" for k, v in m.items() if k.startswith("train/"))
                + (
                    f" mAP50-95={m['metrics/mAP50-95']:.4f} mAP50={m['metrics/mAP50']:.4f}"
                    if m.get("metrics/mAP50-95") is not None
                    else ""
                )
                + f" o2m/o2o={m['prog/o2m']:.2f}/{m['prog/o2o']:.2f} {m['img_s']:.1f} img/s {m['epoch_s']:.1f}s"
            )
