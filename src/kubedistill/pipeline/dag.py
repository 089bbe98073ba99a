"""The Kubeflow pipeline: prepare_data -> check_unchanged -> train_teacher -> distill_student -> evaluate ->
register -> promotion_gate -> deploy, inside an exit handler that closes the MLflow run.

    prepare_data ─ check_unchanged ─┬─ (data changed or skip_if_unchanged off)
                                    │   importer(dataset by fingerprint) ─ train_teacher ─ distill_student
                                    │   ─ evaluate ─ register ─ promotion_gate ─┬─ (promoted) ─┬─ (deploy on) ─ deploy
    finish_tracking (exit handler: always runs last)

The same function runs on a cluster (compiled: `kubedistill pipeline compile`, committed as
pipelines/compiled/training.yaml) and locally (`kubedistill run`, through kfp.local). Locally the Kubernetes
settings (resources, GPU, PVC, Secrets, node selector, tolerations, retries) are ignored by kfp.local;
everything else, conditions included, runs as on the cluster.

Conditions test the return value of a step (`task.outputs["Output"]`): kfp 2.17's local runner resolves only those in a
dsl.If; it cannot resolve a named output of a multi-output step there.

No `from __future__ import annotations` here: KFP reads the pipeline's real parameter annotations.
"""

from kfp import dsl, kubernetes

from kubedistill.config import TrainConfig
from kubedistill.core.names import (
    CACHE_PVC,
    MLFLOW_OPTIONAL,
    MLFLOW_REQUIRED,
    MLFLOW_SECRET,
    PROMOTION_METRICS,
    PVC_CACHE,
    RUN_ID_ENV,
    S3_OPTIONAL,
    S3_REQUIRED,
    S3_SECRET,
    SERVING_MODES,
    SHM_SIZE,
)
from kubedistill.pipeline import PIPELINE_NAME
from kubedistill.pipeline.components import (
    check_unchanged,
    deploy,
    distill_student,
    evaluate,
    finish_tracking,
    prepare_data,
    promotion_gate,
    register,
    train_teacher,
)

CACHE_MOUNT = PVC_CACHE  # prepare_data keeps fetched datasets there when it is mounted
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"  # KFP labels every pod of a run with its run id
# A pod's /dev/shm is 64 MB, too small for PyTorch DataLoader workers (they die with a bus error): the steps
# that load images mount a Memory emptyDir there (SHM_SIZE, counted against the memory limit). `--runner docker`
# gives its containers the same size.
SHM_STEPS = ("train-teacher", "distill-student", "evaluate", "promotion-gate")

# Per step: (cpu request, cpu limit, memory request, memory limit, gpus, retries).
RESOURCES = {
    "prepare-data": ("1", "4", "2Gi", "8Gi", 0, 3),
    "check-unchanged": ("250m", "1", "512Mi", "2Gi", 0, 2),
    "train-teacher": ("4", "8", "16Gi", "32Gi", 1, 0),
    "distill-student": ("4", "8", "16Gi", "32Gi", 1, 0),
    "evaluate": ("2", "8", "8Gi", "16Gi", 1, 0),
    "register": ("500m", "2", "2Gi", "4Gi", 0, 3),
    "promotion-gate": ("2", "8", "8Gi", "16Gi", 1, 2),  # scores champion and candidate on the val split
    "deploy": ("250m", "1", "512Mi", "1Gi", 0, 1),
    "finish-tracking": ("100m", "500m", "256Mi", "1Gi", 0, 2),
}
CACHED = ("train-teacher", "distill-student", "evaluate")  # keyed on the dataset (by fingerprint) and the config


# The pipeline's training options, each a TrainConfig field: its default and description come from there (one
# declaration); parameter name -> (TrainConfig field, what the pipeline adds to the description).
TRAIN_PARAMS = {
    "imgsz": ("imgsz", ""),
    "teacher_epochs": ("epochs", "Teacher "),
    "student_epochs": ("epochs", "Student "),
    "student_model": ("model", "Student (smaller than the teacher): "),
    "dis": ("dis", "Student "),
    "optimizer": ("optimizer", ""),
    "lr0": ("lr0", ""),
    "lrf": ("lrf", ""),
    "label_smoothing": ("label_smoothing", ""),
    "box_loss": ("box_loss", ""),
    "cls_loss": ("cls_loss", ""),
}
TRAIN_DEFAULTS = {name: field.default for name, field in TrainConfig.model_fields.items()}
# The pipeline's own parameters.
PARAM_DOCS = {
    "dataset_uri": "The dataset: a data.yaml or folder, an s3:// prefix, a .zip/.tar archive (local or s3://), or 'demo' "
    "(the built-in synthetic set; demo?train=160&val=40&imgsz=96&classes=2 sets its size).",
    "class_names": "Comma-separated class names. For 'demo' they choose the shapes; otherwise, when given, they must equal "
    "the dataset's names. Empty: the dataset's own.",
    "teacher_model": "Teacher scale: yolo26n, yolo26s, yolo26m, yolo26l or yolo26x.",
    "teacher_uri": "A teacher to use as is, no teacher training: a .pt path, s3://bucket/key.pt, or a registered model "
    "models:/NAME/VERSION (or @ALIAS); kubedistill's or an Ultralytics YOLO26 one (yolo26s.pt). It must know the "
    "dataset's classes. Empty: train one.",
    "extra_config": 'Any other training options as a JSON object, e.g. {"batch": 32, "mosaic": 0.5} (the names of '
    "`kubedistill train --help`).",
    "registered_model_name": "Name of the student in the MLflow model registry.",
    "promotion_metric": "Metric of the promotion gate: " + ", ".join(PROMOTION_METRICS) + ".",
    "promotion_min_delta": "The new version must reach the champion's score plus this to be promoted.",
    "deploy_model": "Roll the promoted version out with the Helm chart.",
    "release": "Helm release name for the rollout.",
    "namespace": "Kubernetes namespace of the rollout.",
    "serving_mode": "How the rollout serves the model: "
    + " or ".join(SERVING_MODES)
    + " (docs/deploy.md, Serving modes).",
    "skip_if_unchanged": "For scheduled retraining: end the run early when the data's fingerprint equals the one the "
    "champion was trained on.",
    "dataset_store": "Where prepared datasets are kept by fingerprint (s3://, minio:// or a folder). Empty: the pipeline "
    "root's bucket, under kubedistill/datasets.",
    "mlflow_experiment": "MLflow experiment of the runs.",
    "num_nodes": "Nodes the teacher and the student train on. More than 1: each training step runs a Kubeflow Trainer "
    "TrainJob (the torch-distributed runtime) and follows it; the pipeline root must be on S3 (docs/pipeline.md).",
    "gpus_per_node": "GPUs per node of a multi-node training (one process each); 0 trains on CPUs.",
}


def _docstring() -> str:
    """The pipeline function's docstring, whose Args KFP shows as the parameters' descriptions."""
    docs = dict(PARAM_DOCS)
    for param, (name, prefix) in TRAIN_PARAMS.items():
        text = TrainConfig.model_fields[name].description
        docs[param] = prefix + text[0].lower() + text[1:] if prefix else text
    args = "\n".join(f"    {name}: {text}" for name, text in docs.items())
    return (
        f"Teacher -> distilled student -> evaluation -> registry -> promotion gate -> Helm rollout.\n\nArgs:\n{args}\n"
    )


def configure(
    task: dsl.PipelineTask,
    step: str,
    *,
    s3: bool = True,
    mlflow: bool = True,
    pvc: bool = False,
    retry: bool = True,
    env: dict[str, str] | None = None,
) -> dsl.PipelineTask:
    """Resources, GPU scheduling, Secrets as env, shared memory, retries and caching for one step (see RESOURCES);
    `env`: environment variables set on the task itself (what `kubedistill run --runner docker` passes)."""
    cpu, cpu_max, mem, mem_max, gpus, retries = RESOURCES[step]
    task.set_cpu_request(cpu).set_cpu_limit(cpu_max).set_memory_request(mem).set_memory_limit(mem_max)
    if gpus:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
        kubernetes.add_node_selector(task, *GPU_NODE_LABEL)
        kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    if retries and retry:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")
    task.set_caching_options(step in CACHED)
    if s3:
        kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_REQUIRED})
        kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_OPTIONAL}, optional=True)
    if mlflow:
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_REQUIRED})
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_OPTIONAL}, optional=True)
        kubernetes.use_field_path_as_env(task, RUN_ID_ENV, RUN_ID_FIELD)
    if pvc:
        kubernetes.mount_pvc(task, pvc_name=CACHE_PVC, mount_path=CACHE_MOUNT)
    if step in SHM_STEPS:
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
        )
    for k, v in (env or {}).items():
        task.set_env_variable(k, v)
    return task.set_display_name(step.replace("-", " "))


def make_pipeline(*, retries: bool = True, env: dict[str, str] | None = None):
    """The pipeline function; `retries=False` (what `kubedistill run` uses) leaves out the retry policies, so a
    local mistake fails at once instead of after minutes of backoff. `env` sets environment variables on every
    task (`kubedistill run --runner docker`: a container sees no other). Nothing else differs."""

    def step(task: dsl.PipelineTask, name: str, **kw) -> dsl.PipelineTask:
        return configure(task, name, retry=retries, env=env, **kw)

    def training_pipeline(
        dataset_uri: str = "demo",
        class_names: str = "",
        imgsz: int = TRAIN_DEFAULTS["imgsz"],
        teacher_model: str = "yolo26s",
        teacher_epochs: int = TRAIN_DEFAULTS["epochs"],
        teacher_uri: str = "",
        student_model: str = TRAIN_DEFAULTS["model"],
        student_epochs: int = TRAIN_DEFAULTS["epochs"],
        dis: float = TRAIN_DEFAULTS["dis"],
        optimizer: str = TRAIN_DEFAULTS["optimizer"],
        lr0: float = TRAIN_DEFAULTS["lr0"],
        lrf: float = TRAIN_DEFAULTS["lrf"],
        label_smoothing: float = TRAIN_DEFAULTS["label_smoothing"],
        box_loss: str = TRAIN_DEFAULTS["box_loss"],
        cls_loss: str = TRAIN_DEFAULTS["cls_loss"],
        extra_config: dict = {},  # noqa: B006 (KFP reads the literal default; nothing mutates it)
        registered_model_name: str = "kubedistill-student",
        promotion_metric: str = "mAP50-95",
        promotion_min_delta: float = 0.0,
        deploy_model: bool = False,
        release: str = "kubedistill",
        namespace: str = "kubedistill",
        serving_mode: str = "deployment",
        skip_if_unchanged: bool = False,
        dataset_store: str = "",
        mlflow_experiment: str = "kubedistill",
        num_nodes: int = 1,
        gpus_per_node: int = 1,
    ):
        exit_task = step(finish_tracking(mlflow_experiment=mlflow_experiment), "finish-tracking", s3=False)
        with dsl.ExitHandler(exit_task, name="kubedistill"):
            prep = step(
                prepare_data(dataset_uri=dataset_uri, class_names=class_names, dataset_store=dataset_store),
                "prepare-data",
                mlflow=False,
                pvc=True,
            )
            gate_data = step(
                check_unchanged(
                    fingerprint=prep.outputs["fingerprint"],
                    dataset_uri=prep.outputs["dataset_uri"],
                    data_report=prep.outputs["report"],
                    registered_model_name=registered_model_name,
                    skip_if_unchanged=skip_if_unchanged,
                    mlflow_experiment=mlflow_experiment,
                ),
                "check-unchanged",
            )
            with dsl.If(gate_data.outputs["Output"] == True, name="data-changed"):  # noqa: E712 (a KFP condition, not a Python test)
                dataset = dsl.importer(
                    artifact_uri=prep.outputs["dataset_uri"],
                    artifact_class=dsl.Dataset,
                    reimport=False,
                    metadata={"fingerprint": prep.outputs["fingerprint"]},
                )
                dataset.set_display_name("dataset (by fingerprint)")
                train_args = dict(
                    imgsz=imgsz,
                    optimizer=optimizer,
                    lr0=lr0,
                    lrf=lrf,
                    label_smoothing=label_smoothing,
                    box_loss=box_loss,
                    cls_loss=cls_loss,
                    extra_config=extra_config,
                    mlflow_experiment=mlflow_experiment,
                    num_nodes=num_nodes,
                    gpus_per_node=gpus_per_node,
                )
                teacher = step(
                    train_teacher(
                        dataset=dataset.output,
                        fingerprint=prep.outputs["fingerprint"],
                        teacher_model=teacher_model,
                        epochs=teacher_epochs,
                        teacher_uri=teacher_uri,
                        **train_args,
                    ),
                    "train-teacher",
                )
                student = step(
                    distill_student(
                        dataset=dataset.output,
                        teacher=teacher.outputs["model"],
                        fingerprint=prep.outputs["fingerprint"],
                        student_model=student_model,
                        epochs=student_epochs,
                        dis=dis,
                        **train_args,
                    ),
                    "distill-student",
                )
                scores = step(
                    evaluate(
                        dataset=dataset.output,
                        student=student.outputs["model"],
                        student_onnx=student.outputs["onnx"],
                        teacher=teacher.outputs["model"],
                        fingerprint=prep.outputs["fingerprint"],
                        mlflow_experiment=mlflow_experiment,
                    ),
                    "evaluate",
                )
                version = step(
                    register(
                        student=student.outputs["model"],
                        student_onnx=student.outputs["onnx"],
                        metrics=scores.outputs["metrics"],
                        fingerprint=prep.outputs["fingerprint"],
                        registered_model_name=registered_model_name,
                        mlflow_experiment=mlflow_experiment,
                    ),
                    "register",
                )
                gate = step(
                    promotion_gate(
                        dataset=dataset.output,
                        version=version.output,
                        registered_model_name=registered_model_name,
                        promotion_metric=promotion_metric,
                        promotion_min_delta=promotion_min_delta,
                        mlflow_experiment=mlflow_experiment,
                    ),
                    "promotion-gate",
                )
                with dsl.If(gate.outputs["Output"] == True, name="promoted"):  # noqa: E712
                    with dsl.If(deploy_model == True, name="deploy-on"):  # noqa: E712
                        step(
                            deploy(
                                version=version.output,
                                registered_model_name=registered_model_name,
                                release=release,
                                namespace=namespace,
                                serving_mode=serving_mode,
                            ),
                            "deploy",
                            s3=False,
                        )

    training_pipeline.__doc__ = _docstring()
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="Train a teacher, distill a small student from it, evaluate both, register the "
        "student in MLflow, promote it if it is not worse than the champion, and optionally roll it out with Helm.",
    )(training_pipeline)


training_pipeline = make_pipeline()
