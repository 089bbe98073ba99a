"""What each pipeline step does after prepare_data, as plain functions with plain arguments.

The KFP components (`pipeline/components/`) only unpack artifacts and call these, so every step runs and
is tested without KFP. MLflow: the pipeline run's parent MLflow run is
`pipeline.tracking`'s; training, evaluation and registration become its children.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from kubedistill.config import train_config
from kubedistill.core.atomic import atomic_write_text
from kubedistill.core.cache import cache_dir
from kubedistill.core.digest import file_sha256
from kubedistill.core.errors import ConfigError, UserError
from kubedistill.core.log import LOGGER, setup_logging
from kubedistill.core.names import METRIC_NAMES, RUN_ID_ENV
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.deploy.run import deploy
from kubedistill.eval.plots import plot_pr_curves, plot_val_mosaic
from kubedistill.eval.run import validate_split
from kubedistill.images import train_image
from kubedistill.pipeline.report import eval_report
from kubedistill.pipeline.tracking import need_tracking, parent_artifacts, parent_run, parent_tags
from kubedistill.release.promote import promote
from kubedistill.storage import download
from kubedistill.track.registry import champion
from kubedistill.track.runs import end_run, log_child_run, run_info
from kubedistill.train import build_trainer, checkpoint_file
from kubedistill.trainjob.launch import TrainJobs, job_summary, run_trainjob
from kubedistill.trainjob.manifest import LaunchConfig, trainjob_manifest

TRAINJOB_POLL_S = 15.0  # how often a multi-node step reads its TrainJob's state and node 0's log

# Training options that are pipeline parameters of their own (pipeline/dag.py TRAIN_PARAMS): extra_config must not
# set them a second time.
OWN_OPTIONS = ("model", "epochs", "imgsz", "optimizer", "lr0", "lrf", "label_smoothing", "box_loss", "cls_loss", "dis")
# Set by the step itself.
RESERVED_OPTIONS = (
    "data",
    "project",
    "name",
    "exist_ok",
    "resume",
    "distill_model",
    "mlflow",
    "mlflow_uri",
    "mlflow_parent",
    "mlflow_experiment",
)


def run(fn: Callable, *args, **kwargs):
    """Call a step; a UserError ends the process with its one line on stderr and exit code 2 (no traceback)."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _log(msg: str) -> None:

    setup_logging()
    LOGGER.info(msg)


def data_yaml(dataset_path: str | Path) -> Path:
    """The data.yaml inside a Dataset artifact's folder."""
    p = Path(dataset_path)
    y = p / "data.yaml" if p.is_dir() else p
    if not y.is_file():
        raise UserError(f"The dataset artifact at '{dataset_path}' holds no data.yaml", "Run prepare_data first")
    return y


def default_store(artifact_uri: str) -> str:
    """Where prepared datasets go when the dataset_store parameter is empty: next to the pipeline's own
    artifacts on a cluster (same bucket, so KFP can read them back), else the local cache."""

    parts = urlsplit(artifact_uri or "")
    if parts.scheme in ("s3", "minio", "gs") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}/kubedistill/datasets"

    return str(cache_dir("store"))


# ------------------------------------------------------------------------------------------ data gate


def check_unchanged(
    fingerprint: str,
    model_name: str,
    *,
    skip_if_unchanged: bool,
    experiment: str = "",
    dataset_uri: str = "",
    reports: list[Path] = (),
    out_md: Path | None = None,
) -> dict:
    """Should this run train? No only when skip_if_unchanged and the champion was trained on this very data."""
    parent = parent_run(
        experiment, tags={"data_fingerprint": fingerprint, "dataset_uri": dataset_uri, "registered_model": model_name}
    )
    parent_artifacts(parent, list(reports), "data")
    res: dict[str, Any] = {"proceed": True, "fingerprint": fingerprint, "champion": None}
    if not skip_if_unchanged:
        res["reason"] = "skip_if_unchanged is off: training"
    else:
        need_tracking("skip_if_unchanged")

        champ = champion(model_name)
        if champ is None:
            res["reason"] = f"no champion of '{model_name}' yet: training"
        else:
            res["champion"] = champ["version"]
            seen = champ.get("tags", {}).get("data_fingerprint", "")
            if seen == fingerprint:
                res["proceed"] = False
                res["reason"] = (
                    f"data unchanged since champion version {champ['version']} of '{model_name}' "
                    f"(fingerprint {fingerprint[:12]}): nothing to retrain, the run ends here"
                )
            else:
                was = f"{seen[:12]}" if seen else "unknown"
                res["reason"] = (
                    f"data changed since champion version {champ['version']} (fingerprint {was} -> {fingerprint[:12]}): training"
                )
    _log(f"data gate: {res['reason']}")
    if out_md:
        atomic_write_text(
            out_md, f"# Data gate\n\n**{'Training' if res['proceed'] else 'Skipped'}**: {res['reason']}.\n"
        )
    if parent and not res["proceed"]:
        parent_tags(parent, {"outcome": "skipped: data unchanged", "champion_version": res["champion"]})
        end_run(parent, "FINISHED")
    return res


# ------------------------------------------------------------------------------------------ training


def build_train_config(extra: dict | None, **options) -> dict:
    """The training options: extra_config plus the step's own; a clash or a wrong name stops with a clear message."""
    extra = {str(k).replace("-", "_"): v for k, v in (extra or {}).items()}
    for k in extra:
        if k in OWN_OPTIONS:
            raise ConfigError(
                f"extra_config sets '{k}', which is a pipeline parameter of its own", f"Set the '{k}' parameter instead"
            )
        if k in RESERVED_OPTIONS:
            raise ConfigError(
                f"extra_config sets '{k}', which the pipeline sets itself", f"Remove '{k}' from extra_config"
            )
    # KFP passes JSON numbers as floats: 16.0 -> 16 so integer options accept them
    extra = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in extra.items()}
    return {**extra, **options}


def _check_names(weights: Path, data: Path, what: str) -> None:
    from kubedistill.model.checkpoint import read_checkpoint

    ckpt = read_checkpoint(weights)
    names = list(ckpt["model"]["meta"]["names"])
    want = load_data_yaml(data).names
    if names and list(names) != list(want):
        raise UserError(
            f"{what} was trained on classes {names}, the dataset has {list(want)}",
            "Use a teacher trained on these classes or leave teacher_uri empty to train one",
        )


def train_step(
    data: str | Path,
    out_weights: str | Path,
    *,
    role: str,
    options: dict,
    extra_config: dict | None,
    fingerprint: str,
    experiment: str = "",
    teacher: str | Path | None = None,
    teacher_uri: str = "",
    work: str | Path | None = None,
    nodes: int = 1,
    gpus_per_node: int = 0,
    remote: dict[str, str] | None = None,
    jobs=None,
) -> dict:
    """Train the teacher (or, with `teacher`, distill the student); best.pt is copied to `out_weights`.

    `options`: the training options that are pipeline parameters (OWN_OPTIONS); `extra_config`: any others.

    With `nodes` > 1 the training runs as a Kubeflow Trainer TrainJob (`trainjob_step`); `remote` then gives the
    s3:// URIs the nodes read and write: `data` (the dataset), `teacher` (the teacher's best.pt) and `upload` (the
    run folder, under the step's own artifact). `jobs`: the TrainJobs client (tests give one on a recorded API).

    With `teacher_uri` (teacher role only) nothing is trained: that checkpoint (a .pt path, s3:// or a registered
    models:/ URI; kubedistill's or Ultralytics' YOLO26) is fetched and passed on instead.
    """
    data = data_yaml(data)
    out_weights = Path(out_weights)
    if role == "teacher" and teacher_uri.strip():
        pt = checkpoint_file(teacher_uri)
        _check_names(pt, data, f"Teacher {teacher_uri}")
        out_weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pt, out_weights)
        _log(f"train_teacher: teacher_uri {teacher_uri} given: using that teacher, no training")
        return {"role": role, "source": teacher_uri.strip(), "trained": False, "metrics": {}, "mlflow_run_id": ""}

    work = (
        Path(work) if work else Path(tempfile.mkdtemp(prefix=f"kubedistill-{role}-"))
    )  # the training run folder goes here
    parent = parent_run(experiment)
    tags = {"pipeline_step": role, "data_fingerprint": fingerprint}
    unknown = set(options) - set(OWN_OPTIONS)
    if unknown:
        raise ValueError(f"train_step options {sorted(unknown)} are not pipeline parameters; pass them in extra_config")
    opts = build_train_config(
        extra_config,
        data=str(data),
        **options,
        project=str(work),
        name=role,
        exist_ok=True,
        mlflow_parent=parent or "",
        mlflow_tags=tags,
        mlflow_experiment=experiment,
    )
    if teacher is not None:
        opts.update(distill_model=str(teacher))
    if nodes > 1:
        return trainjob_step(opts, out_weights, work, role=role, nodes=nodes, gpus_per_node=gpus_per_node,
                             remote=remote or {}, jobs=jobs)  # fmt: skip
    cfg = train_config(**opts)
    model, epochs = cfg.model, cfg.epochs
    res = build_trainer(cfg).train()
    best = Path(res["best"])
    if not best.is_file():
        raise UserError(f"Training the {role} wrote no best.pt in {res['save_dir']}", "See the training log above")
    out_weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out_weights)

    info = run_info(res["save_dir"]) or {}
    onnx = best.with_suffix(".onnx")  # exported by the MLflow callback when tracking is on
    return {
        "role": role,
        "source": f"trained ({model}, {epochs} epochs)",
        "trained": True,
        "model": model,
        "onnx": str(onnx) if onnx.is_file() and onnx.stat().st_mtime >= best.stat().st_mtime else "",
        "metrics": {
            k: v for k, v in (res.get("metrics") or {}).items() if isinstance(v, (int, float)) and v is not None
        },
        "best_epoch": res.get("best_epoch"),
        "epochs_run": res.get("epochs_run"),
        "mlflow_run_id": info.get("run_id", ""),
        "run_dir": res["save_dir"],
    }


def trainjob_step(
    opts: dict, out_weights: Path, work: Path, *, role: str, nodes: int, gpus_per_node: int, remote: dict, jobs=None
) -> dict:
    """train_step on `nodes` nodes: a TrainJob reads the dataset and the teacher from S3, node 0 tracks the run in
    MLflow (under the pipeline's run, as one node would) and copies its run folder to `remote['upload']`; this step
    follows the job (node 0's log in its own), then takes best.pt from there. Cancelling the step deletes the job."""
    need = [k for k in ("data", "upload") + (("teacher",) if "distill_model" in opts else ()) if not str(
        remote.get(k, "")).startswith("s3://")]  # fmt: skip
    if need:
        raise UserError(
            f"num_nodes > 1: the nodes need s3:// URIs for {', '.join(need)}, got {[remote.get(k) for k in need]}",
            "Run the pipeline with an S3 pipeline root (on a cluster); `kubedistill run` trains on one node",
        )
    opts = {**opts, "data": remote["data"], "upload": remote["upload"]}
    if "distill_model" in opts:
        opts["distill_model"] = remote["teacher"]
    cfg = train_config(**opts)
    run_id = os.environ.get(RUN_ID_ENV, "")
    launch = LaunchConfig(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        image=train_image(),
        job_name=f"kd-{role}-{hashlib.sha256((run_id + remote['upload']).encode()).hexdigest()[:10]}",
    )
    manifest = trainjob_manifest(cfg, launch, env={RUN_ID_ENV: run_id} if run_id else {})
    result = run_trainjob(manifest, jobs or TrainJobs(), echo=_log, poll=TRAINJOB_POLL_S)
    folder = download(f"{remote['upload'].rstrip('/')}/{cfg.name}/", Path(work) / cfg.name)
    best = folder / "weights" / "best.pt"
    if not best.is_file():
        raise UserError(f"TrainJob {result.name} wrote no weights/best.pt to {remote['upload']}", "See its log above")
    out_weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out_weights)
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    info = run_info(folder) or {}
    return {
        "role": role,
        "source": f"trained ({cfg.model}, {cfg.epochs} epochs, {nodes} nodes: TrainJob {result.name})",
        "trained": True,
        "model": cfg.model,
        "onnx": "",
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "best_epoch"},
        "best_epoch": metrics.get("best_epoch"),
        "epochs_run": None,
        "mlflow_run_id": info.get("run_id", ""),
        "run_dir": str(folder),
        "trainjob": job_summary(result),
    }


def export_step(weights: str | Path, out_onnx: str | Path, *, done: str | Path = "") -> dict:
    """The end-to-end ONNX model of `weights` at `out_onnx`: a copy of `done` when that export of the same
    checkpoint exists (the MLflow callback makes one), else exported and checked against torch now."""
    from kubedistill.model.export import export_onnx

    if done and Path(done).is_file():
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(done), load_external_data=False).metadata_props}

        if meta.get("source_sha256") == file_sha256(weights):
            shutil.copyfile(done, out_onnx)
            return {
                "path": str(out_onnx),
                "imgsz": int(meta.get("imgsz", 0)),
                "max_det": int(meta.get("max_det", 0)),
                "checked_detections": None,
                "reused": str(done),
            }
    return export_onnx(weights, out_onnx)


# ------------------------------------------------------------------------------------------ evaluation


def _latency_ms(model, imgsz: int, device, iters: int) -> float:
    import torch

    from kubedistill.benchmark.timing import time_steps
    from kubedistill.model.decode import decode

    model.eval()
    model.set_eval_head(False)
    x = torch.zeros(1, 3, imgsz, imgsz, device=device)

    def step():
        with torch.no_grad():
            decode(model(x), (imgsz, imgsz), model.strides)

    return time_steps(step, iters, device) * 1000.0


def _onnx_latency_ms(path: Path, imgsz: int, iters: int) -> float:

    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.zeros((1, 3, imgsz, imgsz), np.float32)
    for _ in range(2):
        sess.run(None, {name: x})
    t0 = time.perf_counter()
    for _ in range(iters):
        sess.run(None, {name: x})
    return (time.perf_counter() - t0) / iters * 1000.0


def score_model(
    weights: str | Path,
    data: str | Path,
    *,
    batch: int = 16,
    device: str = "",
    workers: int = 2,
    latency_iters: int = 20,
):
    """(figures, Validation, names, imgsz) of a checkpoint on the val split: COCO metrics, size, speed."""
    from kubedistill.model.checkpoint import load_model
    from kubedistill.model.info import model_info

    model, ckpt = load_model(weights)
    imgsz = int(ckpt["train_args"]["imgsz"])
    val, dev = validate_split(model, data, imgsz=imgsz, batch=batch, device=device, workers=workers)
    info = model_info(model, imgsz)
    m = val.metrics.to_dict()
    fig = {k: m.get(k) for k in METRIC_NAMES}
    fig.update(
        model=f"yolo26{model.scale}",
        imgsz=imgsz,
        params_M=info["params_inference"] / 1e6,
        gflops=info["gflops"],
        latency_ms=_latency_ms(model, imgsz, dev, latency_iters),
        device=str(dev),
        file_mb=Path(weights).stat().st_size / 1e6,
        per_class=m["per_class"],
        images=len(val.gts),
    )
    return fig, val, list(model.names), imgsz


def evaluate_step(
    data: str | Path,
    student: str | Path,
    teacher: str | Path,
    *,
    student_onnx: str | Path | None = None,
    out_dir: str | Path,
    experiment: str = "",
    fingerprint: str = "",
    batch: int = 16,
    device: str = "",
    latency_iters: int = 20,
    report_html: Path | None = None,
) -> dict:
    """Teacher vs student on the val split; writes report.html, report.md and the figures into `out_dir`."""

    data = data_yaml(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, images = {}, {}
    names: list[str] = []
    for label, weights in (("teacher", teacher), ("student", student)):
        fig, val, names, imgsz = score_model(weights, data, batch=batch, device=device, latency_iters=latency_iters)
        if label == "student" and student_onnx and Path(student_onnx).is_file():
            fig["onnx_mb"] = Path(student_onnx).stat().st_size / 1e6
            fig["onnx_latency_ms"] = _onnx_latency_ms(Path(student_onnx), imgsz, latency_iters)
        results[label] = fig
        try:
            images[f"PR curves: {label}"] = plot_pr_curves(val.metrics, out / f"pr_curves_{label}.png")
            if label == "student":
                images["Sample predictions: student (ground truth left, predictions right)"] = plot_val_mosaic(
                    val.gts, val.preds, names, out / "sample_predictions.png"
                )
        except Exception as e:  # a figure must never fail the step
            _log(f"evaluate: a figure failed: {e.__class__.__name__}: {e}")
    dev = results["student"]["device"]
    note = (
        f"Validation split of {data}, {results['student']['images']} images; latency: batch 1 on {dev}, model + decode, "
        f"mean of {latency_iters} runs after warm-up."
    )
    html, md = eval_report(results, names=names, images=images, note=note)
    atomic_write_text(out / "report.html", html)
    atomic_write_text(out / "report.md", md)
    if report_html:
        atomic_write_text(report_html, html)
    flat = flat_metrics(results)
    atomic_write_text(out / "metrics.json", json.dumps({"flat": flat, "results": results}, indent=2, default=str))
    child = ""
    parent = parent_run(experiment)
    if parent:
        child = log_child_run(
            parent,
            "evaluate",
            params={"data_fingerprint": fingerprint, "latency_device": dev},
            metrics=flat,
            artifacts=[out / "report.html", out / "metrics.json", *[Path(p) for p in images.values()]],
            tags={"pipeline_step": "evaluate", "data_fingerprint": fingerprint},
            dataset={
                "name": f"{Path(data).parent.name or 'dataset'}/val",
                "digest": fingerprint or "unknown",
                "source": f"{data}#val",
                "context": "eval",
            },
        )
    _log("evaluate: " + ", ".join(f"{k} {results[k]['model']} mAP50-95 {results[k]['mAP50-95']}" for k in results))
    return {"results": results, "flat": flat, "names": names, "mlflow_run_id": child}


def flat_metrics(results: dict) -> dict[str, float]:
    """{'student_mAP50-95': .., 'teacher_latency_ms': .., 'delta_mAP50-95': ..}: numbers only, for KFP and MLflow."""
    out: dict[str, float] = {}
    keys = (*METRIC_NAMES, "params_M", "gflops", "latency_ms", "file_mb", "onnx_mb", "onnx_latency_ms")
    for label, fig in results.items():
        for k in keys:
            v = fig.get(k)
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                out[f"{label}_{k}"] = float(v)
    for k in ("mAP50-95", "mAP50"):
        if f"student_{k}" in out and f"teacher_{k}" in out:
            out[f"delta_{k}"] = out[f"student_{k}"] - out[f"teacher_{k}"]
    return out


# ------------------------------------------------------------------------------------------ registry and rollout


def register_step(
    student: str | Path,
    model_name: str,
    *,
    onnx: str | Path | None = None,
    fingerprint: str = "",
    student_run_id: str = "",
    teacher_run_id: str = "",
    metrics: dict | None = None,
    experiment: str = "",
) -> dict:
    """Register the student as a new version of `model_name` (alias challenger); returns {"version", "model_uri"}."""
    need_tracking("register")
    from kubedistill.release.register import register_student

    tags = {
        "data_fingerprint": fingerprint,
        "pipeline_run_id": os.environ.get(RUN_ID_ENV, ""),
        "teacher_run_id": teacher_run_id,
    }
    for k in ("student_mAP50-95", "teacher_mAP50-95", "student_latency_ms"):
        if metrics and k in metrics:
            tags[k] = f"{float(metrics[k]):.6f}"
    with (
        tempfile.TemporaryDirectory() as tmp
    ):  # artifact files are named after their outputs ("model"): give them suffixes
        weights = Path(tmp) / "best.pt"
        shutil.copyfile(student, weights)
        onnx_file = None
        if onnx:
            onnx_file = Path(tmp) / "model.onnx"
            shutil.copyfile(onnx, onnx_file)
        version = register_student(
            weights,
            model_name,
            run_id=student_run_id or None,
            onnx=onnx_file,
            tags={k: v for k, v in tags.items() if v},
            experiment=experiment,
        )
    parent_tags(
        parent_run(experiment),
        {
            "registered_model": model_name,
            "registered_version": version,
            "student_run_id": student_run_id,
            "teacher_run_id": teacher_run_id,
        },
    )
    _log(f"register: {model_name} version {version} (alias challenger)")
    return {"version": version, "model_uri": f"models:/{model_name}/{version}"}


def gate_step(
    model_name: str,
    version: str,
    data: str | Path,
    *,
    metric: str = "mAP50-95",
    min_delta: float = 0.0,
    experiment: str = "",
    out_md: Path | None = None,
) -> dict:
    """The promotion gate (`track.promote.promote`): champion and candidate scored now on this data."""
    need_tracking("The promotion gate")

    res = promote(model_name, str(version), data_yaml(data), metric=metric, min_delta=float(min_delta))
    champ = res.get("champion") or {}
    parent_tags(
        parent_run(experiment), {"promoted": str(bool(res["promoted"])).lower(), "promotion_reason": res["reason"]}
    )
    line = f"version {version} {'promoted to champion' if res['promoted'] else 'not promoted'}: {res['reason']}"
    _log(f"promotion gate: {line}")
    if out_md:
        rows = [f"| candidate v{version} | {res['candidate']['value']:.4f} |"]
        if champ:
            rows.append(f"| champion v{champ.get('version')} | {float(champ.get('value') or float('nan')):.4f} |")
        atomic_write_text(
            out_md,
            f"# Promotion gate\n\n**{line}**\n\n| model | {metric} |\n|---|---|\n"
            + "\n".join(rows)
            + f"\n\nmin_delta {min_delta:g}\n",
        )
    return res


def deploy_step(model_name: str, version: str, *, release: str, namespace: str, mode: str = "deployment") -> dict:
    """Roll the pinned version out with the Helm chart (`kubedistill.deploy.run.deploy`), as the chart's Deployment
    or (mode "kserve") a KServe InferenceService."""

    uri = f"models:/{model_name}/{version}"
    _log(f"deploy: {uri} -> release {release} in namespace {namespace} ({mode})")
    res = deploy(release, namespace, uri, mode=mode)
    if res.get("status") != "deployed":  # a failed rollout fails the step (and the run), like `kubedistill deploy`
        back = " (rolled back)" if res.get("rolled_back") else ""
        raise UserError(
            f"Rollout of {uri} as release '{release}' in '{namespace}' ended '{res.get('status')}'{back}: "
            f"{res.get('reason') or 'no reason given'}",
            "See the deploy step's log and docs/deploy.md",
        )
    return res
