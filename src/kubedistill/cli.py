"""`kubedistill` command line. A user's error prints one line (cause, then fix) and exits 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import typer

try:  # typer 0.16+ carries its own copy of click
    from typer._click import exceptions as _vendored_click
except ImportError:  # older typer: click itself
    _vendored_click = None

from kubedistill.benchmark.onnx import onnx_times
from kubedistill.benchmark.peer import run_peer_train_benchmark
from kubedistill.benchmark.serve import run_serve_benchmark
from kubedistill.config import TrainConfig, check_infer_options, parse_cli_overrides, train_config
from kubedistill.core.atomic import atomic_write_text, write_json_atomic
from kubedistill.core.errors import UserError
from kubedistill.core.names import METRIC_NAMES
from kubedistill.data.check import check_dataset
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.fetch import fetch_dataset, resolve_data
from kubedistill.data.images import read_image
from kubedistill.deploy.helm import user_values
from kubedistill.deploy.run import deploy, dry_run_text, log_to_stderr
from kubedistill.detector import Detector
from kubedistill.eval.predictions import draw_detections, to_coco_predictions_json
from kubedistill.images import train_image
from kubedistill.pipeline.cli import add_pipeline_commands
from kubedistill.release.promote import promote
from kubedistill.serve.config import option_help
from kubedistill.track.logger import sync
from kubedistill.track.runs import run_info
from kubedistill.train import build_trainer
from kubedistill.train.lr_finder import find_lr
from kubedistill.trainjob.launch import submit_training
from kubedistill.trainjob.manifest import LaunchConfig

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Train, distill, evaluate and serve YOLO-style detectors."
)
data_app = typer.Typer(
    no_args_is_help=True, help="Datasets: a built-in demo set, fetching (S3, archives) and a checker."
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (figures go to docs/benchmarks.md).")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="benchmark")
app.add_typer(
    tune_app := typer.Typer(no_args_is_help=True, help="Tuning helpers: the learning-rate finder."), name="tune"
)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset into."),
    train: int = typer.Option(200, help="Training images."),
    val: int = typer.Option(50, help="Validation images."),
    imgsz: int = typer.Option(320, help="Image size (square)."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    classes: int = typer.Option(4, help="Number of shape classes (1-8)."),
    min_size: int = typer.Option(4, help="Smallest object side in pixels."),
    max_objects: int = typer.Option(6, help="Most objects in one image."),
):
    """Write the built-in demo dataset (shape classes, tiny to large objects, clutter)."""
    from kubedistill.data.synth import SHAPES, make_synth

    if not 1 <= classes <= len(SHAPES):
        raise UserError(f"--classes {classes} is out of range", f"Use 1 to {len(SHAPES)}")
    try:
        path = make_synth(
            out,
            train=train,
            val=val,
            imgsz=imgsz,
            seed=seed,
            names=SHAPES[:classes],
            min_size=min_size,
            max_objects=max_objects,
        )
    except ValueError as e:
        raise UserError(f"Cannot make the demo set: {e}", "Adjust the options named") from None
    typer.echo(f"wrote {path} ({train} train, {val} val images at {imgsz}px)")


@data_app.command("fetch")
def data_fetch(
    uri: str = typer.Argument(
        ..., help="s3://bucket/prefix/, a local or s3:// .zip/.tar/.tar.gz archive, or a local data.yaml or folder."
    ),
    dest: Path = typer.Argument(..., help="Folder to fetch into (unchanged files are reused on the next fetch)."),
):
    """Fetch a dataset (S3 prefix or archive, extracted safely) into DEST; prints the path of its data.yaml."""

    typer.echo(str(fetch_dataset(uri, dest)))


@data_app.command("check")
def data_check(
    data: str = typer.Argument(
        ..., help="data.yaml, a folder holding one, an s3:// prefix or an archive (fetched into the cache first)."
    ),
    splits: str = typer.Option("train,val", help="Comma-separated splits to check."),
    min_usable: float = typer.Option(0.5, help="Fail when less than this fraction of a split is usable."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the full report as JSON."),
):
    """Check a dataset: every problem with file and line; exit 2 when too little is usable."""

    spec = load_data_yaml(resolve_data(data))
    wanted = tuple(s for s in splits.split(",") if s)
    report = check_dataset(spec, splits=tuple(s for s in wanted if s in spec.splits), min_usable=min_usable)
    for p in report.problems:
        where = f"{p.file}:{p.line}" if p.line else f"{p.file}"
        typer.echo(f"{p.severity:7s} {p.split:5s} {where}: {p.kind}: {p.message}")
    typer.echo(report.summary())
    if json_out:
        report.write(json_out)
    report.raise_if_unusable()


# `kubedistill train` options that are not training options: where it runs, and the CLI's own switches
LAUNCH_OPTIONS = (*LaunchConfig.model_fields, "submit", "dry_run", "kubeconfig", "kube_context")


def _train_help() -> str:

    lines = [
        "Usage: kubedistill train [--cfg FILE.yaml] [--name value | name=value ...]",
        "",
        "Train a detector. Options use the Ultralytics trainer's names; a YAML file (--cfg) gives",
        "defaults that flags override. Example:",
        "  kubedistill train --data demo/data.yaml --model yolo26n --epochs 30 --imgsz 320",
        "",
        "Options:",
    ]
    for name, f in TrainConfig.model_fields.items():
        default = f.get_default(call_default_factory=True)
        lines.append(f"  --{name.replace('_', '-'):<18} {f.description} [default: {default!r}]")
    lines += ["", "On a cluster, across nodes (a Kubeflow Trainer TrainJob; docs/pipeline.md):"]
    for name, f in LaunchConfig.model_fields.items():
        default = f.get_default(call_default_factory=True)
        lines.append(f"  --{name.replace('_', '-'):<18} {f.description} [default: {default!r}]")
    lines += [
        f"  --{'submit':<18} Create the TrainJob and follow it to its end (node 0's log here).",
        f"  --{'dry-run':<18} Print the TrainJob instead.",
        f"  --{'kubeconfig':<18} Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the pod's account).",
        f"  --{'kube-context':<18} Kubeconfig context.",
    ]
    return "\n".join(lines)


@app.command(
    "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def train_cmd(ctx: typer.Context):
    """Train a detector (run `kubedistill train --help` for every option)."""

    args = list(ctx.args)
    if "--help" in args or "-h" in args:
        typer.echo(_train_help())
        raise typer.Exit(0)
    overrides = parse_cli_overrides(args)
    cfg_file = overrides.pop("cfg", None)
    launch = {k: overrides.pop(k) for k in list(overrides) if k in LAUNCH_OPTIONS}
    cfg = train_config(cfg_file, **overrides)
    if launch:  # --nodes N --submit / --dry-run: a TrainJob on a cluster
        for flag in ("submit", "dry_run"):
            if flag in launch:
                launch[flag] = str(launch[flag]).lower() in ("true", "1", "yes")
        launch.setdefault("image", train_image())  # the pinned image the pipeline runs, not a moving tag
        res = submit_training(cfg, echo=typer.echo, **launch)
        if isinstance(res, dict):
            return
        typer.echo(f"run folder: {cfg.upload.rstrip('/')}/{cfg.name}/")
        return
    res = build_trainer(cfg).train()
    typer.echo(f"best weights: {res['best']}")


@app.command("val")
def val_cmd(
    weights: Path = typer.Option(..., help="Checkpoint (best.pt/last.pt)."),
    data: str | None = typer.Option(None, help="data.yaml (default: the one the model was trained on)."),
    imgsz: int | None = typer.Option(None, help="Image size (default: training imgsz)."),
    batch: int = typer.Option(16),
    conf: float = typer.Option(0.001, help="Score threshold."),
    iou: float = typer.Option(0.7, help="NMS IoU threshold (--nms only)."),
    max_det: int = typer.Option(300),
    nms: bool = typer.Option(False, "--nms", help="One-to-many head + NMS instead of the NMS-free head."),
    split: str = typer.Option("val"),
    device: str = typer.Option(""),
    workers: int = typer.Option(2),
    out: Path = typer.Option(Path("metrics.json"), help="Where to write metrics.json."),
):
    """COCO metrics (faster-coco-eval) of a checkpoint on a dataset split."""
    check_infer_options(imgsz=imgsz, batch=batch, conf=conf, iou=iou, max_det=max_det, workers=workers)
    res = Detector(str(weights)).val(
        data,
        imgsz=imgsz,
        batch=batch,
        device=device,
        conf=conf,
        iou=iou,
        max_det=max_det,
        nms=nms,
        split=split,
        workers=workers,
        out=out,
    )
    keys = (*METRIC_NAMES, "ms_per_img")
    _echo_json({k: res[k] for k in keys})
    typer.echo(f"wrote {out}")


@app.command("predict")
def predict_cmd(
    weights: Path = typer.Option(..., help="Checkpoint (best.pt)."),
    source: Path = typer.Option(..., help="Image file or folder."),
    out: Path = typer.Option(Path("preds.json"), help="COCO results JSON to write."),
    conf: float = typer.Option(0.25),
    imgsz: int | None = typer.Option(None, help="Image size (default: training imgsz)."),
    max_det: int = typer.Option(300),
    nms: bool = typer.Option(False, "--nms", help="One-to-many head + NMS instead of the NMS-free head."),
    iou: float = typer.Option(0.7),
    device: str = typer.Option(""),
    save_images: bool = typer.Option(False, "--save-images", help="Also draw boxes into OUT_images/."),
):
    """Detect objects in images; writes COCO-format results (boxes in original pixels)."""
    check_infer_options(conf=conf, iou=iou, max_det=max_det, imgsz=imgsz)
    det = Detector(str(weights))
    files = det.images(source)
    preds = det.predict(files, conf=conf, imgsz=imgsz, max_det=max_det, nms=nms, iou=iou, device=device)
    write_json_atomic(out, to_coco_predictions_json([str(f) for f in files], preds, det.names))
    n = sum(len(p.scores) for p in preds)
    typer.echo(f"{n} detections in {len(files)} images -> {out}")
    if save_images:
        import cv2

        img_dir = out.parent / f"{out.stem}_images"
        img_dir.mkdir(parents=True, exist_ok=True)
        for f, p in zip(files, preds):
            drawn = draw_detections(read_image(f), p, det.names, conf=conf)
            cv2.imwrite(str(img_dir / f"{f.stem}.jpg"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        typer.echo(f"drawn images in {img_dir}")


@app.command("export")
def export_cmd(
    weights: Path = typer.Option(..., help="Checkpoint (best.pt)."),
    format: str = typer.Option("onnx", help="Export format (onnx)."),
    out: Path | None = typer.Option(None, help="Output file (default: next to the weights, .onnx)."),
    imgsz: int | None = typer.Option(None, help="Input size (default: training imgsz)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch dimension."),
    half: bool = typer.Option(
        False,
        "--half",
        help="fp16 weights and input: for GPU serving (onnxruntime on a CPU runs it, slower than fp32).",
    ),
    max_det: int = typer.Option(300, help="Detections per image in the output."),
    opset: int = typer.Option(18),
    device: str = typer.Option(""),
):
    """Export an end-to-end (NMS-free) ONNX model, checked against torch in onnxruntime."""
    if format.lower() != "onnx":
        raise UserError(f"Unknown export format '{format}'", "Use --format onnx")
    from kubedistill.model.export import export_onnx

    res = export_onnx(
        weights, out, imgsz=imgsz, dynamic=dynamic, half=half, max_det=max_det, opset=opset, device=device
    )
    typer.echo(
        f"wrote {res['path']} (imgsz {res['imgsz']}, max_det {res['max_det']}, dynamic={res['dynamic']}); "
        f"matches torch on {res['checked_detections']} detections (score atol {res['score_atol']}, box atol {res['box_atol_px']} px)"
    )


@app.command("info")
def info_cmd(
    model: str = typer.Argument(
        "yolo26n", help="Scale name (yolo26n/s/m/l/x) or checkpoint (kubedistill or Ultralytics .pt)."
    ),
    imgsz: int = typer.Option(640),
    nc: int = typer.Option(80, help="Classes (scale names only)."),
):
    """Parameters and GFLOPs (torch.utils.flop_counter) at an image size."""
    from kubedistill.model.checkpoint import load_model
    from kubedistill.model.info import model_info
    from kubedistill.model.yolo import DetectionModel, parse_scale

    if model.endswith(".pt"):
        m, _ = load_model(model)
    else:
        m = DetectionModel(parse_scale(model), nc=nc)
    info = model_info(m, imgsz)
    typer.echo(
        f"yolo26{m.scale}: {info['params'] / 1e6:.2f} M params ({info['params_inference'] / 1e6:.2f} M in the inference graph), "
        f"{info['gflops']:.1f} GFLOPs at {imgsz}, {m.nc} classes"
    )


def _int_list(text: str, option: str, example: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(
            f"{option} '{text}' is not a comma-separated list of integers", f"Write it like {option} {example}"
        ) from None


@bench_app.command("train")
def bench_train(
    scales: str = typer.Option("n,s,m,l", help="Comma-separated scales."),
    imgsz: str = typer.Option("320,640", help="Comma-separated image sizes."),
    batch: int = typer.Option(8),
    iters: int = typer.Option(5, help="Timed iterations per measurement (after 2 warm-up)."),
    workers: int = typer.Option(2, help="DataLoader workers for the loader measurement."),
    device: str = typer.Option(""),
    out: Path | None = typer.Option(None, help="Also write the figures as JSON."),
    peer_python: str | None = typer.Option(
        None,
        help="The Ultralytics venv's python (../shared/peer/make-ultralytics-venv.sh): time its step side by side.",
    ),
    peer_script: Path | None = typer.Option(None, help="The peer script (default: benchmarks/peer in the repository)."),
    rounds: int = typer.Option(5, help="With --peer-python: interleaved rounds of --iters steps each."),
    amp: bool = typer.Option(True, help="Our step in training's mixed precision (option amp); --no-amp: fp32."),
):
    """Forward+backward img/s and data-loader img/s for each scale and size (and Ultralytics' on the same batch)."""
    from kubedistill.benchmark.train import run_train_benchmark

    rows = run_train_benchmark(
        [s for s in scales.split(",") if s],
        list(_int_list(imgsz, "--imgsz", "320,640")),
        batch=batch,
        iters=iters,
        workers=workers,
        device=device,
        echo=typer.echo,
        peer_python=peer_python,
        peer_script=peer_script,
        rounds=rounds,
        amp=amp,
    )
    if out:
        write_json_atomic(out, rows)


@bench_app.command("distill")
def bench_distill(
    out: Path = typer.Option(Path("runs/benchmark_distill"), help="Work folder (runs and the demo data)."),
    data: str | None = typer.Option(None, help="data.yaml (default: an easy built-in demo set)."),
    student: str = typer.Option("n", help="Student scale."),
    teacher: str = typer.Option("s", help="Teacher scale (trained here unless --teacher-weights)."),
    teacher_weights: str | None = typer.Option(None, help="Use this teacher checkpoint instead of training one."),
    epochs: int = typer.Option(60, help="Student epochs, the same for (a) and (b)."),
    teacher_epochs: int = typer.Option(150),
    imgsz: int = typer.Option(96),
    batch: int = typer.Option(16),
    seeds: str = typer.Option(
        "0,1,2", help="Seeds, comma-separated: every arm trains once per seed; the summary gives the spread."
    ),
    arm: list[str] = typer.Option(
        [], "--arm", help="A distilled arm's options, e.g. dis=6,dis_o2o=0.125 (repeatable; default: --dis)."
    ),
    dis: float = typer.Option(6.0, help="Feature distillation gain of the single arm when no --arm is given."),
    steps: int = typer.Option(10, help="Timed steps for the cost measurement."),
    jobs: int = typer.Option(1, help="Seeds trained at once, in separate processes sharing the CPU threads."),
    cost_only: bool = typer.Option(
        False, "--cost-only", help="Only time the training step, plain and per arm (needs --teacher-weights)."
    ),
    cost_imgsz: int | None = typer.Option(None, help="Image size for the step timing (default: --imgsz)."),
    device: str = typer.Option(""),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON."),
):
    """Student alone vs distilled (mAP50-95 at equal epochs, over seeds) and the step-time cost against its floor."""
    from kubedistill.benchmark.distill import parse_arm, run_distill_benchmark

    seed_list = _int_list(seeds, "--seeds", "0,1,2")
    arms = [parse_arm(a) for a in arm] or [parse_arm(f"dis={dis}")]
    res = run_distill_benchmark(
        out,
        data=data,
        student=student,
        teacher=teacher,
        teacher_weights=teacher_weights,
        epochs=epochs,
        teacher_epochs=teacher_epochs,
        imgsz=imgsz,
        batch=batch,
        seeds=seed_list,
        arms=arms,
        steps=steps,
        device=device,
        jobs=jobs,
        cost_only=cost_only,
        cost_imgsz=cost_imgsz,
        echo=typer.echo,
    )
    if json_out:
        write_json_atomic(json_out, res)


@tune_app.command("lr", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tune_lr(
    ctx: typer.Context,
    start_lr: float = typer.Option(1e-6, help="First learning rate of the sweep."),
    end_lr: float = typer.Option(1.0, help="Last learning rate of the sweep (reached unless it diverges first)."),
    steps: int = typer.Option(100, help="Optimizer steps (lr rises exponentially from --start-lr to --end-lr)."),
    smooth: float = typer.Option(0.05, help="Weight of the newest loss in the smoothed curve (1: no smoothing)."),
    diverge: float = typer.Option(4.0, help="Stop when the smoothed loss exceeds this x the best so far."),
    out: Path | None = typer.Option(
        None, help="Output folder (default: runs/lr_find, made unique like runs: lr_find2, ...)."
    ),
):
    """Learning-rate range test: sweep lr up, suggest lr0 (steepest loss descent).

    Takes every training option as `kubedistill train` does (--data D --model yolo26n --batch 16 --optimizer SGD ...
    or name=value). Writes lr_find.json and lr_find.png; keeps no weights. See docs/lr_finder.md.
    """

    overrides = parse_cli_overrides(list(ctx.args))
    cfg = train_config(overrides.pop("cfg", None), **overrides)

    res = find_lr(cfg, start_lr=start_lr, end_lr=end_lr, steps=steps, smooth=smooth, diverge=diverge, out=out)
    s = res.suggestion
    stop = f"; stopped early: {res.stop_reason}" if res.stopped_early else ""
    typer.echo(
        f"suggested lr0={s.lr:.3g} ({s.method}; min-loss lr {s.min_lr:.3g}, min/10 {s.min_lr_div10:.3g}; "
        f"{len(res.lrs)} steps{stop}) -> {res.out_dir}"
    )
    typer.echo(f"use it: {res.train_command}")


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(
        ...,
        help="Model: a local .onnx file, s3://bucket/key.onnx, or a registered model models:/NAME/VERSION (or @ALIAS).",
    ),
    host: str | None = typer.Option(None, help=option_help("host"), show_default=False),
    port: int | None = typer.Option(None, help=option_help("port"), show_default=False),
    workers: int | None = typer.Option(None, help=option_help("workers"), show_default=False),
    threads: int | None = typer.Option(None, help=option_help("threads"), show_default=False),
    name: str | None = typer.Option(None, help=option_help("name"), show_default=False),
    max_body_mb: float | None = typer.Option(None, help=option_help("max_body_mb"), show_default=False),
    max_images: int | None = typer.Option(None, help=option_help("max_images"), show_default=False),
    max_header_kb: int | None = typer.Option(None, help=option_help("max_header_kb"), show_default=False),
    header_timeout_s: float | None = typer.Option(None, help=option_help("header_timeout_s"), show_default=False),
    max_batch_size: int | None = typer.Option(None, help=option_help("max_batch_size"), show_default=False),
    max_latency_ms: float | None = typer.Option(None, help=option_help("max_latency_ms"), show_default=False),
    graceful_timeout: int | None = typer.Option(None, help=option_help("graceful_timeout"), show_default=False),
    log_level: str | None = typer.Option(None, help=option_help("log_level"), show_default=False),
    access_log: bool | None = typer.Option(
        None, "--access-log/--no-access-log", help=option_help("access_log"), show_default=False
    ),
):
    """Serve an exported ONNX model over HTTP: /v1/detect, Open Inference Protocol v2, /metrics and a page at /.

    Every option's default and range are those of `kubedistill.serve.config.ServeConfig`."""
    from kubedistill.serve.server import serve

    serve(
        model,
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        name=name,
        max_body_mb=max_body_mb,
        max_images=max_images,
        max_header_kb=max_header_kb,
        header_timeout_s=header_timeout_s,
        max_batch_size=max_batch_size,
        max_latency_ms=max_latency_ms,
        graceful_timeout=graceful_timeout,
        log_level=log_level,
        access_log=access_log,
    )


@bench_app.command("onnx")
def bench_onnx(
    model: list[Path] = typer.Option(..., help="An .onnx file; give it once per model to compare (the first is 1.0x)."),
    rounds: int = typer.Option(50, help="Timed runs per model, interleaved."),
    warmup: int = typer.Option(5, help="Untimed runs per model first."),
    threads: int | None = typer.Option(None, help="onnxruntime threads (default: the CPU cores)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON."),
):
    """Model time of ONNX files side by side (onnxruntime, batch 1, interleaved): e.g. kubedistill's and Ultralytics'
    export of the same checkpoint."""
    rows = onnx_times([str(m) for m in model], rounds=rounds, warmup=warmup, threads=threads, echo=typer.echo)
    if json_out:
        write_json_atomic(json_out, rows)


@bench_app.command("peer-train")
def bench_peer_train(
    peer_python: str = typer.Option(
        ..., help="The Ultralytics venv's python (../shared/peer/make-ultralytics-venv.sh)."
    ),
    data: str | None = typer.Option(None, help="data.yaml (default: the easy built-in set, 160 + 40 images at 96 px)."),
    model: str = typer.Option("yolo26n", help="A scale (from scratch) or a .pt checkpoint (fine-tuning it in both)."),
    epochs: int = typer.Option(30),
    imgsz: int = typer.Option(96),
    batch: int = typer.Option(16),
    out: Path | None = typer.Option(None, help="Work folder (both runs; default: a temporary one)."),
    peer_script: Path | None = typer.Option(None, help="The peer script (default: benchmarks/peer in the repository)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON."),
    seeds: str = typer.Option("0", help="Comma-separated seeds: both train once per seed; the figures are means."),
    ours: list[str] = typer.Option(
        [], "--ours", help="An option of kubedistill's run only, as KEY=VALUE (repeatable): e.g. --ours nbs=64."
    ),
):
    """Train the same model on the same data and epochs with kubedistill and with Ultralytics, one after the other;
    both final models scored by kubedistill's val."""
    if data is None:
        from kubedistill.data.synth import make_easy

        data = str(make_easy(Path(out or "runs/benchmark_peer") / "easy"))
    res = run_peer_train_benchmark(
        peer_python,
        data,
        model=model,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        out=out,
        peer_script=peer_script,
        echo=typer.echo,
        seeds=_int_list(seeds, "--seeds", "0,1,2"),
        ours_options=parse_cli_overrides(list(ours)),
    )
    if json_out:
        write_json_atomic(json_out, res)


@bench_app.command("serve")
def bench_serve(
    model: str = typer.Option(..., help="Exported .onnx model."),
    image: Path | None = typer.Option(None, help="Image to post (default: a synthetic 640 px sample)."),
    requests: int = typer.Option(200, help="Requests per concurrency level."),
    concurrency: str = typer.Option("1,4,16", help="Comma-separated concurrency levels."),
    threads: int | None = typer.Option(None, help="onnxruntime threads of the server and the in-process timing."),
    warmup: int = typer.Option(10, help="Untimed requests before the first level."),
    max_batch_size: int | None = typer.Option(
        None, help="The server's --max-batch-size: " + option_help("max_batch_size"), show_default=False
    ),
    max_latency_ms: float | None = typer.Option(
        None, help="The server's --max-latency-ms: " + option_help("max_latency_ms"), show_default=False
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON."),
):
    """Latency (p50/p99) and requests/s of `kubedistill serve` on loopback, beside the raw model and preprocessing time."""

    levels = _int_list(concurrency, "--concurrency", "1,4,16")
    res = run_serve_benchmark(
        model,
        image=str(image) if image else None,
        requests=requests,
        concurrency=levels,
        warmup=warmup,
        threads=threads,
        max_batch_size=max_batch_size,
        max_latency_ms=max_latency_ms,
        echo=typer.echo,
    )
    if json_out:
        write_json_atomic(json_out, res)


mlflow_app = typer.Typer(
    no_args_is_help=True, help="MLflow helpers: send records kept locally while the server was down."
)
app.add_typer(mlflow_app, name="mlflow")
_TRACKING = typer.Option(
    "", "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in ./runs)."
)


@app.command("register")
def register_cmd(
    weights: Path = typer.Option(..., help="Student checkpoint (best.pt)."),
    model_name: str = typer.Option(..., help="Registered model name."),
    onnx: Path | None = typer.Option(None, help="Its ONNX export (default: exported now)."),
    run_id: str | None = typer.Option(
        None, help="Log the model into this MLflow run (default: the training run's, if any)."
    ),
    tag: list[str] = typer.Option([], help="Version tag KEY=VALUE (repeatable)."),
    tracking_uri: str = _TRACKING,
):
    """Register a student in the MLflow registry (a pyfunc running its ONNX model); the version gets alias `challenger`."""
    from kubedistill.release.register import register_student

    tags = {}
    for t in tag:
        if "=" not in t:
            raise UserError(f"--tag '{t}' is not KEY=VALUE", "e.g. --tag data_fingerprint=abc123")
        k, v = t.split("=", 1)
        tags[k] = v
    if run_id is None:  # weights/best.pt of a tracked run: register into that run
        info = run_info(weights.resolve().parent.parent)
        run_id = info["run_id"] if info and (not tracking_uri or info["tracking_uri"] == tracking_uri) else None
    version = register_student(weights, model_name, run_id=run_id, onnx=onnx, tags=tags, tracking_uri=tracking_uri)
    _echo_json(
        {
            "model_name": model_name,
            "version": version,
            "model_uri": f"models:/{model_name}/{version}",
            "alias": "challenger",
        }
    )


@app.command("promote")
def promote_cmd(
    model_name: str = typer.Option(..., help="Registered model name."),
    version: str = typer.Option(..., help="Candidate version."),
    data: str = typer.Option(..., help="Validation data (data.yaml) both models are scored on now."),
    metric: str = typer.Option("mAP50-95", help="Metric the gate compares."),
    min_delta: float = typer.Option(0.0, help="Candidate must reach champion + min_delta."),
    imgsz: int | None = typer.Option(None, help="Evaluation size (default: each model's training size)."),
    batch: int = typer.Option(16),
    workers: int = typer.Option(2),
    device: str = typer.Option(""),
    tracking_uri: str = _TRACKING,
):
    """The promotion gate: evaluate champion and candidate now; move `champion` only if the candidate is not worse."""

    _echo_json(
        promote(
            model_name,
            version,
            data,
            metric=metric,
            min_delta=min_delta,
            tracking_uri=tracking_uri,
            imgsz=imgsz,
            batch=batch,
            workers=workers,
            device=device,
        )
    )


@mlflow_app.command("sync")
def mlflow_sync_cmd(
    run_dir: Path = typer.Argument(..., help="Training run folder holding mlflow_pending.jsonl."),
    tracking_uri: str = _TRACKING,
):
    """Send the MLflow records a training run kept locally while the tracking server was unreachable."""

    if not run_dir.is_dir():
        raise UserError(f"Run folder '{run_dir}' does not exist", "Pass runs/<name>")
    res = sync(run_dir, tracking_uri or None, log=typer.echo)
    _echo_json(res)
    if not res["ok"]:
        raise UserError(
            f"{res['pending']} record(s) still pending: the tracking server did not accept them", "Try again later"
        )


@app.command("deploy")
def deploy_cmd(
    release: str = typer.Option(..., "--release", help="Helm release name."),
    namespace: str = typer.Option(..., "--namespace", "-n", help="Kubernetes namespace."),
    model_uri: str = typer.Option(
        ..., "--model-uri", help="Pinned model: models:/NAME/VERSION or s3://bucket/key.onnx (no @alias, no latest)."
    ),
    canary_uri: str | None = typer.Option(
        None,
        "--canary-uri",
        help="Candidate model: a canary Deployment behind the same Service, or (kserve) the InferenceService's new spec.",
    ),
    canary_weight: int | None = typer.Option(
        None,
        "--canary-weight",
        help="The canary's share of requests in percent (1-99): replica counts, or (kserve) canaryTrafficPercent.",
    ),
    mode: str | None = typer.Option(
        None,
        "--mode",
        help="deployment (the chart's Deployment and Service) or kserve (a KServe InferenceService); "
        "default: serving.mode of the values, else deployment.",
    ),
    ingress: str | None = typer.Option(
        None,
        "--ingress",
        help="kserve: send the check inference to this address (e.g. http://GATEWAY_IP) with the "
        "InferenceService's host name as Host header, when its URL does not resolve where deploy runs.",
    ),
    values_files: list[Path] = typer.Option(
        [], "--values", "-f", help="Chart values file (repeatable; later ones win)."
    ),
    sets: list[str] = typer.Option(
        [], "--set", help="Chart value name=value, Helm syntax (repeatable; after the files)."
    ),
    chart: Path | None = typer.Option(
        None, "--chart", help="Chart folder (default: $KUBEDISTILL_CHART, else the chart shipped with kubedistill)."
    ),
    timeout: float = typer.Option(300, help="Seconds for the rollout, and again for the helm test."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the values and the rendered manifests; contact no cluster."
    ),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig", help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster)."
    ),
    kube_context: str | None = typer.Option(None, "--kube-context", help="kubeconfig context."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary as JSON."),
):
    """helm upgrade --install the server chart with a pinned model, wait for the rollout (or the InferenceService),
    check one inference; roll back on failure (docs/deploy.md)."""

    log_to_stderr()
    res = deploy(
        release,
        namespace,
        model_uri,
        canary_uri=canary_uri,
        canary_weight=canary_weight,
        values=user_values(values_files, sets),
        mode=mode,
        ingress=ingress,
        dry_run=dry_run,
        timeout=timeout,
        chart=chart,
        kubeconfig=str(kubeconfig) if kubeconfig else None,
        kube_context=kube_context,
    )
    if json_out:
        atomic_write_text(json_out, json.dumps(res, indent=2, default=str))
    if dry_run:
        typer.echo(dry_run_text(res), nl=False)
        return
    _echo_json(res)
    if res["status"] != "deployed":
        raise typer.Exit(1)


# `kubedistill run`, `kubedistill pipeline ...`, `kubedistill schedule ...` (kubedistill/pipeline/cli.py)
add_pipeline_commands(app)


# optional packages -> the extra that brings them
_EXTRA_OF = {
    "torch": "train",
    "cv2": "train",
    "matplotlib": "train",
    "faster_coco_eval": "train",
    "onnx": "train",
    "onnxscript": "train",
    "mlflow": "track",
    "boto3": "track",
    "botocore": "track",
    "kfp": "pipeline",
    "kubernetes": "deploy",
    "helm_python": "deploy",
    "onnxruntime": "serve",
    "fastapi": "serve",
    "uvicorn": "serve",
}


INTERRUPTED = "interrupted; finished training epochs are kept in weights/last.pt (continue with resume=True)"


def _click_classes(name: str) -> tuple[type, ...]:
    """Click's exception class `name`, and typer's own copy of it (typer 0.16+ carries click inside, as typer._click:
    an unknown option raised that copy's NoSuchOption, which `except click...` missed: a traceback)."""
    found = [getattr(m, name, None) for m in (click.exceptions, typer, _vendored_click) if m is not None]
    return tuple({c for c in found if isinstance(c, type)})


_USAGE_ERRORS = _click_classes("ClickException")
_EXITS = _click_classes("Exit")
_ABORTS = _click_classes("Abort")


def main(argv: list[str] | None = None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        rc = 130
    except ModuleNotFoundError as e:  # a command whose extra is not installed (e.g. training in the serve image)
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        typer.echo(
            f"error: this command needs the '{e.name}' package, which is not installed. "
            f"Install it with: pip install 'kubedistill[{extra}]'.",
            err=True,
        )
        sys.exit(2)
    except SystemExit:
        raise
    except OSError as e:  # a path the OS refuses (no such folder, permission, a folder where a file goes, disk full)
        if os.environ.get("KUBEDISTILL_TRACEBACK"):
            raise
        where = f": {e.filename}" if e.filename else ""
        typer.echo(
            f"error: {e.strerror or e.__class__.__name__}{where}. Check the path and its permissions "
            "(KUBEDISTILL_TRACEBACK=1 shows where it happened).",
            err=True,
        )
        sys.exit(2)
    except Exception as e:  # usage errors come as exceptions with standalone_mode=False
        if isinstance(e, _USAGE_ERRORS):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, _EXITS):
            sys.exit(e.exit_code)
        if isinstance(e, _ABORTS):
            sys.exit(1)
        raise
    if rc == 130:  # typer turns KeyboardInterrupt (Ctrl-C, or SIGTERM in training and `run`) into exit code 130
        typer.echo(INTERRUPTED, err=True)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
