"""evaluate: teacher vs student on the val split (`kubedistill.pipeline.steps.evaluate_step`)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def evaluate(
    dataset: Input[Dataset],
    student: Input[Model],
    student_onnx: Input[Model],
    teacher: Input[Model],
    fingerprint: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    mlflow_experiment: str = "kubedistill",
):
    """Score teacher and student on the val split: mAP, AP by size, params, GFLOPs, latency, file size,
    per-class AP, PR curves and sample predictions (the HTML report); the numbers go to the Metrics too."""
    from pathlib import Path

    from kubedistill.pipeline.steps import evaluate_step, run

    res = run(
        evaluate_step,
        dataset.path,
        student.path,
        teacher.path,
        student_onnx=student_onnx.path,
        out_dir=Path(report.path).parent / "evaluation",
        experiment=mlflow_experiment,
        fingerprint=fingerprint,
        report_html=report.path,
    )
    for k, v in res["flat"].items():
        metrics.log_metric(k, v)
    metrics.metadata.update(
        {
            "mlflow_run_id": res["mlflow_run_id"],
            "classes": ",".join(res["names"]),
            "student_model": res["results"]["student"]["model"],
            "teacher_model": res["results"]["teacher"]["model"],
        }
    )
