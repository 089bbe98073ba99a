"""distill_student: train the student with feature distillation from the teacher (`steps.train_step`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def distill_student(
    dataset: Input[Dataset],
    teacher: Input[Model],
    fingerprint: str,
    model: Output[Model],
    onnx: Output[Model],
    metrics: Output[Metrics],
    student_model: str,
    epochs: int,
    imgsz: int,
    dis: float,
    optimizer: str,
    lr0: float,
    lrf: float,
    label_smoothing: float,
    box_loss: str,
    cls_loss: str,
    extra_config: dict,
    num_nodes: int,
    gpus_per_node: int,
    mlflow_experiment: str,
):
    """Train the student with the teacher's features as an extra target (gain dis), then export it to an
    end-to-end ONNX model checked against torch. Writes best.pt and model.onnx. The training options have no
    defaults here: the pipeline passes each (its defaults are TrainConfig's)."""
    from pathlib import Path

    from kubedistill.pipeline.steps import export_step, run, train_step

    options = dict(
        model=student_model,
        epochs=epochs,
        imgsz=imgsz,
        dis=dis,
        optimizer=optimizer,
        lr0=lr0,
        lrf=lrf,
        label_smoothing=label_smoothing,
        box_loss=box_loss,
        cls_loss=cls_loss,
    )
    res = run(
        train_step,
        dataset.path,
        model.path,
        role="student",
        options=options,
        extra_config=extra_config,
        fingerprint=fingerprint,
        experiment=mlflow_experiment,
        teacher=teacher.path,
        work=Path(model.path).parent / "training",
        nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        remote={"data": dataset.uri, "teacher": teacher.uri, "upload": model.uri.rsplit("/", 1)[0] + "/trainjob"},
    )
    exp = run(export_step, model.path, onnx.path, done=res.get("onnx", ""))
    model.metadata.update(
        {
            "role": "student",
            "source": res["source"],
            "data_fingerprint": fingerprint,
            "mlflow_run_id": res["mlflow_run_id"],
            "teacher_mlflow_run_id": teacher.metadata.get("mlflow_run_id", ""),
            "framework": "kubedistill (PyTorch)",
        }
    )
    onnx.metadata.update({"imgsz": exp["imgsz"], "max_det": exp["max_det"], "framework": "onnx"})
    for k, v in res["metrics"].items():
        metrics.log_metric(k.replace("/", "_"), float(v))
