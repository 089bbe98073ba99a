"""train_teacher: train the teacher, or take a registered one (`kubedistill.pipeline.steps.train_step`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def train_teacher(
    dataset: Input[Dataset],
    fingerprint: str,
    model: Output[Model],
    metrics: Output[Metrics],
    teacher_model: str = "yolo-s",
    epochs: int = 100,
    imgsz: int = 640,
    optimizer: str = "auto",
    lr0: float = 0.01,
    lrf: float = 0.01,
    label_smoothing: float = 0.0,
    box_loss: str = "ciou",
    cls_loss: str = "bce",
    extra_config: dict = {},
    teacher_uri: str = "",
    mlflow_experiment: str = "kubedistill",
):
    """Train the teacher detector on the dataset; with teacher_uri (models:/NAME/VERSION or @alias) no training:
    that registered teacher is fetched and passed on. Writes best.pt to the Model artifact."""
    from pathlib import Path

    from kubedistill.pipeline.steps import run, train_step

    res = run(train_step, dataset.path, model.path, role="teacher", model=teacher_model, epochs=epochs, imgsz=imgsz,
              optimizer=optimizer, lr0=lr0, lrf=lrf, label_smoothing=label_smoothing, box_loss=box_loss, cls_loss=cls_loss,
              extra_config=extra_config, fingerprint=fingerprint, experiment=mlflow_experiment, teacher_uri=teacher_uri,
              work=Path(model.path).parent / "training")
    model.metadata.update({"role": "teacher", "source": res["source"], "data_fingerprint": fingerprint,
                           "mlflow_run_id": res["mlflow_run_id"], "framework": "kubedistill (PyTorch)"})
    for k, v in res["metrics"].items():
        metrics.log_metric(k.replace("/", "_"), float(v))
