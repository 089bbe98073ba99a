"""Register a student in the MLflow model registry: an MLflow pyfunc (`serve.pyfunc`) holding `model.onnx` and
the `.pt` checkpoint, tagged with the checkpoint's sha256; a new version gets the alias `challenger`."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubedistill.core.digest import file_sha256
from kubedistill.core.errors import UserError
from kubedistill.core.version import __version__
from kubedistill.model.export import export_onnx
from kubedistill.serve.pyfunc import OnnxDetectorModel, pyfunc_signature
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
    """Log `weights` (and its ONNX export) as a pyfunc model and register it as a new version of `name`.

    Logged into run `run_id` when given (the training run), else into a new run. The version gets the alias
    `challenger` and the tags given (e.g. data_fingerprint) plus the checkpoint's sha256. Returns the version.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"Checkpoint '{weights}' does not exist", "Pass the best.pt of a finished training run")
    sha256 = file_sha256(weights)
    uri, artifacts = resolve_uri(tracking_uri)
    mlflow = import_mlflow()
    with tempfile.TemporaryDirectory() as tmp:
        if onnx is None:
            onnx = export_onnx(weights, Path(tmp) / "model.onnx")["path"]
        onnx = Path(onnx)
        if not onnx.is_file():
            raise UserError(
                f"ONNX model '{onnx}' does not exist", "Export it with `kubedistill export` or leave it out"
            )
        cl = client(uri)
        try:
            exp = None if run_id else experiment_id(cl, experiment, artifacts)
            with (
                using(uri),
                mlflow.start_run(run_id=run_id, experiment_id=exp, run_name=None if run_id else f"register-{name}"),
            ):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=OnnxDetectorModel(),
                    artifacts={"onnx": str(onnx), "checkpoint": str(weights)},
                    pip_requirements=[f"kubedistill[serve]=={__version__}", "pandas"],
                    registered_model_name=name,
                    metadata={"kubedistill_version": __version__, "weights_sha256": sha256},
                    signature=pyfunc_signature(),
                )
                active_run = mlflow.active_run().info.run_id
        except UserError:
            raise
        except Exception as e:
            raise mlflow_error(e, f"registering '{weights}' as '{name}'", uri) from None
    version = str(info.registered_model_version)
    all_tags = {
        "weights_sha256": sha256,
        "source_run_id": active_run,
        "kubedistill_version": __version__,
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    for k, v in all_tags.items():
        cl.set_model_version_tag(name, version, k, v)
    cl.set_registered_model_alias(name, CHALLENGER, version)
    return version
