"""`kubedistill run`: the training pipeline run here, step by step, through kfp.local.

Same DAG, same components, same step code as on a cluster. Two runners:
- `subprocess` (the default, faster): `kfp.local.SubprocessRunner(use_venv=False)`, the steps run with this
  Python, which has kubedistill installed;
- `docker`: each step in the train image, as on a cluster (`pipeline/docker_runner.py` says what it adds).
What differs from a cluster, and why:
- the Kubernetes settings (resources, GPUs, PVC, Secrets, node selector, tolerations) do not apply: kfp.local
  ignores them;
- no retries (`dag.make_pipeline(retries=False)`): a mistake fails at once instead of after minutes of backoff;
- MLflow is the local sqlite default (`<out>/mlflow.db`, artifacts in `<out>/mlartifacts/`) unless
  MLFLOW_TRACKING_URI is set; the pipeline run id is made here (KUBEDISTILL_PIPELINE_RUN_ID);
- prepared datasets are stored under `<out>/datasets/` unless dataset_store is given.

The defaults here are small (LOCAL_DEFAULTS: the demo set at 96 px, 16 epochs each) so the whole run fits in
minutes on a CPU; a --config file or --set values override them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubedistill.core.errors import UserError
from kubedistill.core.interrupt import sigterm_as_interrupt, terminate_children
from kubedistill.core.names import RUN_ID_ENV
from kubedistill.images import train_image
from kubedistill.pipeline import docker_runner
from kubedistill.pipeline.tracking import finish_tracking

# Small enough for a laptop CPU (docs/pipeline.md has the measured time), big enough to learn something.
LOCAL_DEFAULTS: dict[str, Any] = {
    "dataset_uri": "demo",
    "imgsz": 96,
    "teacher_model": "yolo26s",
    "teacher_epochs": 16,
    "student_model": "yolo26n",
    "student_epochs": 16,
    "optimizer": "AdamW",
    "lr0": 0.004,
    "extra_config": {"batch": 16, "nbs": 16, "warmup_epochs": 1, "close_mosaic": 4, "workers": 2},
}
STEPS = (
    "prepare-data",
    "check-unchanged",
    "train-teacher",
    "distill-student",
    "evaluate",
    "register",
    "promotion-gate",
    "deploy",
    "finish-tracking",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - ")


class _LogFilter:
    """A stdout stand-in during the run: every line to the log file, the readable ones to `echo`.

    Left out of the console: KFP's executor chatter and its JSON dump of each step's inputs, the per-task
    output listings and separators. Lines starting with `error: ` (a step's UserError) are remembered.
    """

    def __init__(self, log, echo: Callable[[str], None], console):
        self.log, self.echo, self.console = log, echo, console
        self.buf = ""
        self.skip_json = False
        self.skip_outputs = False
        self.errors: list[str] = []

    def write(self, s: str) -> int:
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(line)
        return len(s)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        self.log.write(line + "\n")
        text = line.strip()
        if self.skip_json:
            if line.rstrip() == "    }":
                self.skip_json = False
            return
        if self.skip_outputs:
            if not (_STAMP.match(line) or text.startswith("---")):
                return
            self.skip_outputs = False
        if text.endswith("Got executor_input:"):
            self.skip_json = True
            return
        if re.search(r"Task '.*' outputs:$", text):
            self.skip_outputs = True
            return
        if "[KFP Executor" in line or not text or text.startswith("---") or text.endswith("Streamed logs:"):
            return
        if text.startswith("error: "):
            self.errors.append(text[len("error: ") :])
        with contextlib.redirect_stdout(self.console):  # echo may print: to the real stdout, not back into here
            self.echo(line)


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _outputs(task_dir: Path) -> dict:
    f = task_dir / "executor_output.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _artifact(out: dict, name: str) -> dict:
    arts = (out.get("artifacts", {}).get(name) or {}).get("artifacts") or [{}]
    return arts[0]


def collect(run_dir: Path) -> dict:
    """What a finished local run produced, read from each step's executor_output.json in its folder."""
    res: dict[str, Any] = {"run_dir": str(run_dir), "steps": {}}
    for step in STEPS:
        d = run_dir / step
        if d.is_dir():
            res["steps"][step] = _outputs(d)
    s = res["steps"]
    if "prepare-data" in s:
        res["fingerprint"] = s["prepare-data"].get("parameterValues", {}).get("fingerprint")
        res["dataset_uri"] = s["prepare-data"].get("parameterValues", {}).get("dataset_uri")
        res["data_report"] = _artifact(s["prepare-data"], "report").get("uri")
    if "check-unchanged" in s:
        dec = _artifact(s["check-unchanged"], "decision").get("metadata", {})
        res["trained"] = bool(s["check-unchanged"].get("parameterValues", {}).get("Output"))
        res["data_gate"] = dec.get("reason")
    if "evaluate" in s:
        res["metrics"] = _artifact(s["evaluate"], "metrics").get("metadata", {})
        res["report"] = _artifact(s["evaluate"], "report").get("uri")
    if "distill-student" in s:
        res["onnx"] = _artifact(s["distill-student"], "onnx").get("uri")
        res["student_weights"] = _artifact(s["distill-student"], "model").get("uri")
    if "register" in s:
        res["version"] = s["register"].get("parameterValues", {}).get("Output")
    if "promotion-gate" in s:
        res["promoted"] = bool(s["promotion-gate"].get("parameterValues", {}).get("Output"))
        res["promotion"] = _artifact(s["promotion-gate"], "decision").get("metadata", {}).get("reason")
    if "deploy" in s:
        res["deploy_status"] = s["deploy"].get("parameterValues", {}).get("Output")
    return res


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def summary_lines(res: dict, params: dict, seconds: float) -> list[str]:
    """The closing summary of `kubedistill run`."""
    m = res.get("metrics") or {}
    lines = [f"pipeline finished in {seconds / 60:.1f} min; step outputs in {res['run_dir']}"]
    lines.append(
        f"  data: {params.get('dataset_uri')} -> fingerprint {str(res.get('fingerprint') or '-')[:12]} "
        f"(report: {res.get('data_report')})"
    )
    if not res.get("trained", True):
        lines.append(f"  stopped early: {res.get('data_gate')}")
        return lines
    for who in ("teacher", "student"):
        if f"{who}_mAP50-95" not in m:
            continue
        onnx = (
            f", ONNX {m[f'{who}_onnx_mb']:.1f} MB ({_fmt(m.get(f'{who}_onnx_latency_ms'), 1)} ms/img CPU)"
            if f"{who}_onnx_mb" in m
            else ""
        )
        lines.append(
            f"  {who} {m.get(f'{who}_model', '?')}: mAP50-95 {_fmt(m.get(f'{who}_mAP50-95'))}, mAP50 {_fmt(m.get(f'{who}_mAP50'))}, "
            f"{_fmt(m.get(f'{who}_params_M'), 2)} M params, {_fmt(m.get(f'{who}_gflops'), 2)} GFLOPs, "
            f"{_fmt(m.get(f'{who}_latency_ms'), 1)} ms/img, {_fmt(m.get(f'{who}_file_mb'), 1)} MB{onnx}"
        )
    if "delta_mAP50-95" in m:
        lines.append(f"  student - teacher: mAP50-95 {m['delta_mAP50-95']:+.3f}")
    name = params.get("registered_model_name", "kubedistill-student")
    if res.get("version"):
        lines.append(f"  registered: models:/{name}/{res['version']} (MLflow at {res.get('tracking_uri')})")
    if "promoted" in res:
        lines.append(f"  promoted to champion: {'yes' if res['promoted'] else 'no'} ({res.get('promotion')})")
    if res.get("deploy_status"):
        lines.append(f"  deployed: {res['deploy_status']}")
    if res.get("report"):
        lines.append(f"  report: {res['report']}")
    if res.get("version"):
        env = "" if res.get("user_tracking_uri") else f"MLFLOW_TRACKING_URI={res.get('tracking_uri')} "
        lines.append(f"  serve it: {env}kubedistill serve --model models:/{name}/{res['version']}")
    elif res.get("onnx"):
        lines.append(f"  serve it: kubedistill serve --model {res['onnx']}")
    return lines


def _end_tracking(experiment: str, echo: Callable[[str], None]) -> None:
    """End the pipeline's MLflow run as KILLED after an interrupt (what the exit handler does on a cluster)."""

    try:
        finish_tracking("CANCELLED", experiment=experiment, error="kubedistill run was interrupted")
    except Exception as e:  # the tracking server is down: say so, the interrupt goes on
        echo(f"could not end the pipeline's MLflow run ({e.__class__.__name__}: {str(e)[:200]}); it stays RUNNING")


RUNNERS = ("subprocess", "docker")


def run_local(
    params: dict[str, Any], out: str | Path, *, echo: Callable[[str], None] = print, runner: str = "subprocess"
) -> dict:
    """Run the pipeline with `params` (already checked against its parameters) under `out`, its steps as
    subprocesses or in the train image (`runner`); returns `collect()` plus "params", "seconds", "log" and
    "summary" (the lines printed last)."""
    try:
        from kfp import local
    except ImportError:
        raise UserError("`kubedistill run` needs kfp", "pip install 'kubedistill[pipeline]'") from None
    from kubedistill.pipeline.dag import make_pipeline

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = dict(params)
    params.setdefault("dataset_store", str(out / "datasets"))
    run_id = uuid.uuid4().hex
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    env = {RUN_ID_ENV: run_id}
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
    root = out / "pipeline_root"
    log_path = out / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:8]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if runner not in RUNNERS:
        raise UserError(f"Unknown runner '{runner}'", "Use --runner " + " or --runner ".join(RUNNERS))
    root.mkdir(parents=True, exist_ok=True)
    stop_steps: Callable[[], None] = terminate_children
    containers: contextlib.AbstractContextManager = contextlib.nullcontext()
    if runner == "docker":
        image = train_image()
        tracking_uri = env.get("MLFLOW_TRACKING_URI") or user_uri
        kfp_runner, params = docker_runner.make_runner(out, params, run_id, image, tracking_uri)
        step_env = docker_runner.step_env(run_id, tracking_uri)
        pipeline = make_pipeline(retries=False, env=step_env)
        stop_steps = lambda: docker_runner.stop_containers(run_id)  # noqa: E731
        containers = docker_runner.step_containers()
        where = f"in containers of {image}"
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
        pipeline = make_pipeline(retries=False)
        where = "as subprocesses"
    before = set(root.glob("*"))
    t0 = time.monotonic()
    echo(f"running the pipeline locally, steps {where} (run {run_id[:8]}); full log: {log_path}")
    with open(log_path, "w") as log, _env(env), containers:
        filt = _LogFilter(log, echo, sys.stdout)
        local.init(runner=kfp_runner, pipeline_root=str(root), raise_on_error=True)
        failure = None
        with warnings.catch_warnings(), contextlib.redirect_stdout(filt):
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            try:
                with sigterm_as_interrupt(before=stop_steps):  # the running step stops with us
                    pipeline(**params)
            except RuntimeError as e:
                failure = _ANSI.sub("", str(e))
            except (
                KeyboardInterrupt
            ):  # Ctrl-C or SIGTERM: the exit-handler step does not run, so end its MLflow run here
                if runner == "docker":  # containers get no Ctrl-C from this terminal
                    stop_steps()
                _end_tracking(params.get("mlflow_experiment", "kubedistill"), echo)
                raise
        sys.stdout.flush()
        if filt.buf:
            filt._line(filt.buf)
        seconds = time.monotonic() - t0
        if failure:
            m = re.search(r"Inner task failed: '([^']+)'", failure)
            step = m.group(1) if m else "a step"
            cause = filt.errors[-1] if filt.errors else f"see {log_path}"
            raise UserError(f"Pipeline step '{step}' failed: {cause}", f"Fix that and run again (full log: {log_path})")
        new = sorted((p for p in root.glob("*") if p.is_dir() and p not in before), key=lambda p: p.stat().st_mtime)
        if not new:
            raise UserError(f"The local run left no outputs in {root}", f"See {log_path}")
        res = collect(new[-1])
        res.update(
            runner=runner,
            params=params,
            seconds=seconds,
            log=str(log_path),
            run_id=run_id,
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI"),
            user_tracking_uri=user_uri,
        )
        res["summary"] = summary_lines(res, params, seconds)
    return res
