"""register: the student as a new version in the MLflow registry (`kubedistill.pipeline.steps.register_step`)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def register(
    student: Input[Model],
    student_onnx: Input[Model],
    metrics: Input[Metrics],
    fingerprint: str,
    registered_model_name: str,
    mlflow_experiment: str = "kubedistill",
) -> str:
    """Register the student (ONNX pyfunc + checkpoint) as a new version with alias challenger, tagged with the
    data fingerprint and the evaluation figures; returns the version."""
    from kubedistill.pipeline.steps import register_step, run

    res = run(
        register_step,
        student.path,
        registered_model_name,
        onnx=student_onnx.path,
        fingerprint=fingerprint,
        student_run_id=student.metadata.get("mlflow_run_id", ""),
        teacher_run_id=student.metadata.get("teacher_mlflow_run_id", ""),
        metrics=dict(metrics.metadata),
        experiment=mlflow_experiment,
    )
    return res["version"]
