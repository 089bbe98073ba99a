"""Checkpoints as MLflow 3 LoggedModels: the detector pyfunc, logged as code, holding the ONNX model and the `.pt`.

    info = log_detector_model(run_id=..., name="best", checkpoint=best_pt, onnx=best_onnx, step=best_epoch)
    link_metrics(client, run_id, info.model_id, {"mAP50-95": 0.41, ...}, step=best_epoch, dataset=("coco8/val", d))

A LoggedModel is addressable as `models:/<model_id>` (m-...), found with `mlflow.search_logged_models`, and
registered with `mlflow.register_model("models:/<model_id>", NAME)`. The pyfunc is MLflow's models-from-code:
`serve/pyfunc_model.py` is stored with the model and run when it loads (no pickled object); its predict method
runs the ONNX model with onnxruntime (`serve.pyfunc.OnnxDetectorModel`). The file and the input example image are
named by path: the serve layer sits above tracking, and only MLflow runs that code.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

from kubedistill.core.version import __version__
from kubedistill.track.settings import using

SERVE_DIR = Path(__file__).resolve().parents[1] / "serve"
MODEL_CODE = SERVE_DIR / "pyfunc_model.py"
EXAMPLE_IMAGE = SERVE_DIR / "demo.jpg"
MODEL_TYPE = "object-detection"
OP_TAG = "kubedistill.op_id"  # a retried log_models record finds the models it already made
WEIGHTS_TAG = "weights_sha256"
OUTPUT_COLUMNS = (
    ("image", "long"),
    ("class_id", "long"),
    ("class_name", "string"),
    ("score", "double"),
    ("x1", "double"),
    ("y1", "double"),
    ("x2", "double"),
    ("y2", "double"),
)


def pyfunc_signature():
    """Inputs are free-form (a DataFrame with an `image` column of encoded bytes, arrays, paths); the output is one
    row per detection; the params `conf` and `max_det` are declared so MLflow passes them."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS]),
        params=ParamSchema([ParamSpec("conf", "float", 0.25), ParamSpec("max_det", "long", 300)]),
    )


def input_example():
    """One encoded JPEG in an `image` column, and the params: MLflow runs it through the model when logging."""
    import pandas as pd

    return pd.DataFrame({"image": [EXAMPLE_IMAGE.read_bytes()]}), {"conf": 0.25}


def log_detector_model(
    *,
    name: str,
    checkpoint: str | Path,
    onnx: str | Path,
    run_id: str,
    step: int = 0,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    registered_model_name: str | None = None,
):
    """Log one checkpoint as a LoggedModel of run `run_id`, in the run's experiment (MLflow's tracking URI must be
    set); returns ModelInfo.

    The LoggedModel is made first, in the run's experiment: `Model.log(run_id=...)` alone puts it in the active (or
    default) experiment instead, which for a run logged from a background thread is not the run's."""
    import mlflow
    from mlflow.models import Model

    client = mlflow.MlflowClient()
    model = client.create_logged_model(
        experiment_id=client.get_run(run_id).info.experiment_id,
        name=name,
        source_run_id=run_id,
        tags=tags,
        params={k: str(v) for k, v in (params or {}).items()},
        model_type=MODEL_TYPE,
    )
    with _quiet():
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            flavor_name="pyfunc.ModelFromCode",
            run_id=run_id,
            model_id=model.model_id,
            python_model=str(MODEL_CODE),
            artifacts={"onnx": str(onnx), "checkpoint": str(checkpoint)},
            pip_requirements=[f"kubedistill[serve]=={__version__}", "pandas"],
            signature=pyfunc_signature(),
            input_example=input_example(),
            metadata={"kubedistill_version": __version__, **(metadata or {})},
            step=step,
            registered_model_name=registered_model_name,
        )


def link_metrics(
    client, run_id: str, model_id: str, metrics: dict[str, Any], *, step: int, dataset: tuple[str, str] | None
) -> int:
    """Log `metrics` to the run, tied to the LoggedModel and (name, digest) dataset they were measured with; returns
    how many. Values that are not numbers are left out."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    name, digest = dataset if dataset else (None, None)
    rows = [
        Metric(k, float(v), ts, step, model_id=model_id, dataset_name=name, dataset_digest=digest)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    ]
    if rows:
        client.log_batch(run_id, metrics=rows)
    return len(rows)


def find_logged_model(client, experiment_id: str, run_id: str | None = None, **tags: str):
    """The newest READY LoggedModel of the experiment (made by run `run_id`, when given) carrying all `tags`; None
    when there is none."""
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if run_id:
        clauses.append(f"source_run_id = '{run_id}'")
    found = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=" AND ".join(clauses) if clauses else None,
        order_by=[{"field_name": "creation_time", "ascending": False}],
    )
    ready = [m for m in found if str(getattr(m.status, "name", m.status)).upper().endswith("READY")]
    return ready[0] if ready else None


@contextlib.contextmanager
def _quiet():
    """While MLflow logs a model: no download progress bars in the training log, and not pandas' deprecation notice
    about MLflow's own code (mlflow/models/utils.py compares columns with a range), which a user cannot act on."""
    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Operation with range is deprecated", module="mlflow")
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved


def log_checkpoints_op(client, uri: str, run_id: str, op: dict) -> dict[str, str | None]:
    """The run logger's `log_models` record: each checkpoint as a LoggedModel of the run (found again, not made
    twice, when an earlier try got that far), then the metrics of each. Returns {name: model id, or None when its
    files are gone}."""
    experiment = client.get_run(run_id).info.experiment_id
    ids: dict[str, str | None] = {}
    for item in op["models"]:
        checkpoint, onnx = Path(item["checkpoint"]), Path(item["onnx"])
        if not checkpoint.is_file() or not onnx.is_file():
            ids[item["name"]] = None
            continue
        found = find_logged_model(client, experiment, run_id, **{OP_TAG: op["id"], "checkpoint": item["name"]})
        if found is not None:
            ids[item["name"]] = found.model_id
            continue
        sha = item.get("sha256") or ""
        tags = {OP_TAG: op["id"], "checkpoint": item["name"], **({WEIGHTS_TAG: sha} if sha else {})}
        with using(uri):
            info = log_detector_model(
                name=item["name"],
                checkpoint=checkpoint,
                onnx=onnx,
                run_id=run_id,
                step=item["step"],
                params=op.get("params"),
                tags=tags,
                metadata={WEIGHTS_TAG: sha},
            )
        ids[item["name"]] = info.model_id
    dataset = tuple(op["dataset"]) if op.get("dataset") else None
    for item in op["models"]:
        if ids.get(item["name"]):
            link_metrics(
                client, run_id, ids[item["name"]], item.get("metrics") or {}, step=item["step"], dataset=dataset
            )
    return ids
