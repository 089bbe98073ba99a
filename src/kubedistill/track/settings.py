"""Where tracking goes: the tracking URI, the experiment, and an MLflow client that fails fast.

Tracking is on when `mlflow=True` or `MLFLOW_TRACKING_URI` is set. With no URI the embedded default is a
sqlite file `PROJECT/mlflow.db` with artifacts in `PROJECT/mlartifacts/`, so it works with no server:
`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from kubedistill.core.env import env_number
from kubedistill.core.errors import UserError

DEFAULT_EXPERIMENT = "kubedistill"

# MLflow's own HTTP client retries 7 times with a factor-2 backoff and a 120 s timeout: minutes per call
# against a dead server. Our logger retries on its own (track/logger.py), so calls should fail fast.
_FAST_FAIL = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def import_mlflow():
    """mlflow, or a UserError saying how to install it."""
    for k, v in _FAST_FAIL.items():
        os.environ.setdefault(k, v)
    if not sys.stderr.isatty():  # pipeline logs: no download progress bars
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # "Creating initial MLflow database tables..."
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import mlflow
    except ImportError:
        raise UserError("MLflow tracking needs the mlflow package", "pip install 'kubedistill[track]'") from None
    return mlflow


def request_timeout() -> float:
    """MLflow's HTTP request timeout in seconds (MLFLOW_HTTP_REQUEST_TIMEOUT, 30 unless set): the longest a
    tracking server that never answers holds up the end of training (track/logger.py)."""
    return env_number("MLFLOW_HTTP_REQUEST_TIMEOUT", float(_FAST_FAIL["MLFLOW_HTTP_REQUEST_TIMEOUT"]), strict=True)


def tracking_enabled(flag: bool = False) -> bool:
    return bool(flag) or bool(os.environ.get("MLFLOW_TRACKING_URI"))


def local_store(project: str | Path) -> tuple[str, str]:
    """The embedded default: (sqlite tracking URI, artifact folder URI) inside the project folder."""
    root = Path(project).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def resolve_uri(uri: str = "", project: str | Path = "runs") -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments or None to let the server decide)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            # relative sqlite paths resolve against the cwd of whoever opens them: make it absolute once
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
        artifacts = None
        if uri.startswith("sqlite:"):
            artifacts = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
        return uri, artifacts
    return local_store(project)


def client(uri: str):
    mlflow = import_mlflow()
    if uri.startswith("sqlite:///"):  # the folder of a new local store (readers check the file exists first)
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def using(uri: str):
    """MLflow's global tracking and registry URIs set to `uri` for the fluent API, then put back exactly as
    they were (mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment)."""
    mlflow = import_mlflow()
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def experiment_id(cl, name: str = "", artifact_location: str | None = None) -> str:
    """The id of experiment `name` (default MLFLOW_EXPERIMENT_NAME, else 'kubedistill'), created when missing."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment '{name}' is deleted", "Restore it in the MLflow UI or use another mlflow_experiment"
            )
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return cl.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a concurrent run
        exp = cl.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(cwd: str | Path = ".") -> str:
    """KUBEDISTILL_GIT_COMMIT (set in our images), else `git rev-parse HEAD` here, else ''."""
    if os.environ.get("KUBEDISTILL_GIT_COMMIT"):
        return os.environ["KUBEDISTILL_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def explain(e: BaseException, uri: str) -> str:
    """One line saying why a tracking call failed."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return f"{e.__class__.__name__}: {text[:200]} (tracking URI {uri})"
