"""Register a student in the MLflow model registry as a new version whose source is an MLflow LoggedModel (the
detector pyfunc holding `model.onnx` and the `.pt` checkpoint, `track.models`), tagged with the checkpoint's
sha256; the new version gets the alias `challenger`.

A tracked training run has already logged its best checkpoint as a LoggedModel: when `weights` is that file (same
sha256) in that run, the version is made from it, and nothing is uploaded twice. Otherwise the checkpoint (and its
ONNX export) is logged as a LoggedModel first: into the run given, else into a new run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubedistill.core.digest import file_sha256
from kubedistill.core.errors import UserError
from kubedistill.core.version import __version__
from kubedistill.model.export import export_onnx
from kubedistill.track.models import WEIGHTS_TAG, find_logged_model, log_detector_model
from kubedistill.track.registry import CHALLENGER, mlflow_error
from kubedistill.track.settings import client, experiment_id, import_mlflow, resolve_uri, using


def register_student(
    weights: str | Path,
    name: str,
    *,
    run_id: str | None = None,
    onnx: str | Path | None = None,
    tags: dict | None = None,
    tracking_uri: str = "",
    experiment: str = "",
) -> str:
    """Register `weights` as a new version of `name`, from its LoggedModel (see the module docstring).

    The version gets the alias `challenger` and the tags given (e.g. data_fingerprint) plus the checkpoint's
    sha256, the source run and the LoggedModel's id. Returns the version.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"Checkpoint '{weights}' does not exist", "Pass the best.pt of a finished training run")
    sha256 = file_sha256(weights)
    uri, artifacts = resolve_uri(tracking_uri)
    mlflow = import_mlflow()
    cl = client(uri)
    try:
        model = _logged_model_of(cl, run_id, sha256)
        with using(uri):
            if model is not None:
                mv = mlflow.register_model(f"models:/{model.model_id}", name)
                version, source_run, model_id = str(mv.version), run_id, model.model_id
            else:
                version, source_run, model_id = _log_and_register(
                    mlflow, cl, weights, name, sha256, run_id, onnx, experiment, artifacts
                )
    except UserError:
        raise
    except Exception as e:
        raise mlflow_error(e, f"registering '{weights}' as '{name}'", uri) from None
    all_tags = {
        "weights_sha256": sha256,
        "source_run_id": source_run,
        "logged_model_id": model_id,
        "kubedistill_version": __version__,
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    for k, v in all_tags.items():
        if v:
            cl.set_model_version_tag(name, version, k, v)
    cl.set_registered_model_alias(name, CHALLENGER, version)
    return version


def _logged_model_of(cl, run_id: str | None, sha256: str):
    """The run's LoggedModel of exactly these weights, or None."""
    if not run_id:
        return None
    experiment = cl.get_run(run_id).info.experiment_id
    return find_logged_model(cl, experiment, run_id, **{WEIGHTS_TAG: sha256})


def _log_and_register(mlflow, cl, weights, name, sha256, run_id, onnx, experiment, artifacts):
    with tempfile.TemporaryDirectory() as tmp:
        if onnx is None:
            onnx = export_onnx(weights, Path(tmp) / "model.onnx")["path"]
        onnx = Path(onnx)
        if not onnx.is_file():
            raise UserError(
                f"ONNX model '{onnx}' does not exist", "Export it with `kubedistill export` or leave it out"
            )
        exp = None if run_id else experiment_id(cl, experiment, artifacts)
        with mlflow.start_run(run_id=run_id, experiment_id=exp, run_name=None if run_id else f"register-{name}") as run:
            info = log_detector_model(
                name="model",
                checkpoint=weights,
                onnx=onnx,
                run_id=run.info.run_id,
                tags={WEIGHTS_TAG: sha256},
                metadata={WEIGHTS_TAG: sha256},
                registered_model_name=name,
            )
    return str(info.registered_model_version), run.info.run_id, info.model_id
