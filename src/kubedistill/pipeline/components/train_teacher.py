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
    teacher_model: str,
    epochs: int,
    imgsz: int,
    optimizer: str,
    lr0: float,
    lrf: float,
    label_smoothing: float,
    box_loss: str,
    cls_loss: str,
    extra_config: dict,
    num_nodes: int,
    gpus_per_node: int,
    teacher_uri: str,
    mlflow_experiment: str,
):
    """Train the teacher detector on the dataset; with teacher_uri (models:/NAME/VERSION or @alias) no training:
    that registered teacher is fetched and passed on. Writes best.pt to the Model artifact. The training options
    have no defaults here: the pipeline passes each (its defaults are TrainConfig's). With num_nodes > 1 the
    training runs as a Kubeflow Trainer TrainJob on that many nodes (docs/pipeline.md)."""
    from pathlib import Path

    from kubedistill.pipeline.steps import run, train_step

    options = dict(
        model=teacher_model,
        epochs=epochs,
        imgsz=imgsz,
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
        role="teacher",
        options=options,
        extra_config=extra_config,
        fingerprint=fingerprint,
        experiment=mlflow_experiment,
        teacher_uri=teacher_uri,
        work=Path(model.path).parent / "training",
        nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        remote={"data": dataset.uri, "upload": model.uri.rsplit("/", 1)[0] + "/trainjob"},
    )
    model.metadata.update(
        {
            "role": "teacher",
            "source": res["source"],
            "data_fingerprint": fingerprint,
            "mlflow_run_id": res["mlflow_run_id"],
            "framework": "kubedistill (PyTorch)",
        }
    )
    for k, v in res["metrics"].items():
        metrics.log_metric(k.replace("/", "_"), float(v))
