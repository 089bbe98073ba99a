"""The TrainJob of a multi-node training run, from the training config and where to run it.

Kubeflow Trainer's `torch-distributed` runtime runs one pod per node (container `node`) and gives each the
torchrun settings as `PET_*` variables (number of nodes, processes per node, node rank, the address and port of
node 0). The command is torchrun with the c10d rendezvous at node 0, so a failed worker restarts the group
(`--max-restarts`) and the training resumes from its last epoch. Everything else the pipeline's steps have is
patched into the runtime's pod: the Secrets as environment variables, a memory-backed /dev/shm, a work folder, the
dataset cache PVC. Node 0 (rank 0) writes the run folder and copies it to `upload` (an s3:// prefix) at the end.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kubedistill.config import TrainConfig
from kubedistill.core.errors import ConfigError
from kubedistill.core.names import MLFLOW_SECRET, PVC_CACHE, S3_SECRET, SECRET_KEYS, SHM_SIZE

API_GROUP, API_VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE_CONTAINER = "node"  # the runtime's trainer container (Kubeflow Trainer's constants.Node)
WORK_DIR = "/work"  # an emptyDir on every node: the run folder, then uploaded from node 0
MANAGER = "kubedistill"  # the runtime patch's owner
GPU_RESOURCE = "nvidia.com/gpu"
LABEL_RUN = "kubedistill.io/run"  # the launcher's own handle on its jobs
# torchrun's settings that the runtime sets itself: a TrainJob may not set them (the Torch plugin refuses it)
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


class LaunchConfig(BaseModel):
    """Where and how a training runs on a cluster; `kubedistill train --nodes N --submit` and the pipeline."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    nodes: int = Field(1, ge=1, le=1024, description="Nodes to train on; more than 1 runs a Kubeflow Trainer TrainJob.")
    gpus_per_node: int = Field(0, ge=0, le=64, description="GPUs per node (0: CPU, one process per node).")
    cpu: str = Field("4", description="CPU request per node (Kubernetes quantity).")
    memory: str = Field("16Gi", description="Memory request and limit per node (Kubernetes quantity).")
    image: str = Field(
        "",
        description="The train image every node runs; the CLI's default is this release's pinned train image "
        "(trainImage in charts/kubedistill/values.yaml).",
    )
    namespace: str = Field("", description="Namespace of the TrainJob (default: the kubeconfig's, or the pod's).")
    runtime: str = Field("torch-distributed", description="The ClusterTrainingRuntime to run on.")
    max_restarts: int = Field(3, ge=0, le=100, description="torchrun restarts of the worker group after a failure.")
    shm_size: str = Field(SHM_SIZE, description="Size of the memory-backed /dev/shm on every node.")
    secrets: list[str] = Field(
        default_factory=lambda: [S3_SECRET, MLFLOW_SECRET],
        description="Secrets whose keys become environment variables on every node (optional if absent).",
    )
    cache_pvc: str = Field("", description="A PVC mounted at the dataset cache (docs/pipeline.md), or ''.")
    service_account: str = Field("", description="Service account of the training pods ('' : the runtime's).")
    job_name: str = Field("", description="TrainJob name ('': made from the run's name and a hash of its config).")

    @field_validator("secrets", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v  # --secrets a,b

    @field_validator("job_name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if v and not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", v):
            raise ValueError("must be a DNS-1035 label of at most 40 characters (a-z, 0-9, '-')")
        return v


def train_args(cfg: TrainConfig) -> list[str]:
    """`kubedistill train` options (name=value) for every option that differs from its default, plus the run
    folder under WORK_DIR: what each node runs."""
    defaults = TrainConfig()
    values = cfg.model_dump()
    values.update(project=f"{WORK_DIR}/runs", exist_ok=True, resume="auto")  # a replaced node resumes from upload=
    out = []
    for key, value in values.items():
        if key not in ("project", "exist_ok", "resume") and value == getattr(defaults, key):
            continue
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        out.append(f"{key}={value}")
    return out


def job_name(cfg: TrainConfig, launch: LaunchConfig) -> str:
    if launch.job_name:
        return launch.job_name
    digest = hashlib.sha256(repr((cfg.model_dump(), launch.model_dump())).encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]+", "-", cfg.name.lower()).strip("-")[:24] or "train"
    return f"kd-{stem}-{digest}".replace("--", "-")


def _image(ref: str) -> str:
    if not ref.strip():
        raise ConfigError(
            "No train image given for the TrainJob",
            "Pass --image REPO:TAG (the CLI defaults to trainImage of charts/kubedistill/values.yaml)",
        )
    return ref


def trainjob_manifest(
    cfg: TrainConfig, launch: LaunchConfig, *, env: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The TrainJob (a dict, as the API server takes it) that trains `cfg` on `launch.nodes` nodes."""
    name = job_name(cfg, launch)
    if not cfg.upload.startswith("s3://"):
        raise ConfigError(
            f"upload={cfg.upload!r}: a TrainJob's nodes keep nothing when it ends",
            "Set upload=s3://bucket/prefix to receive the run folder",
        )
    env = dict(env or {})
    bad = sorted(set(env) & set(RESERVED_ENV))
    if bad:
        raise ValueError(f"{bad} are set by the torch-distributed runtime")
    command = [
        "torchrun",
        f"--max-restarts={launch.max_restarts}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)",  # Kubernetes expands these from the runtime's env
        f"--rdzv-id={name}",
        "-m",
        "kubedistill",
        "train",
    ]
    env_list: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in sorted(env.items())]
    env_list += [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # each rendezvous round gets its own store: with the agents' shared one, a restart after one node's worker
        # died never formed the new group (measured on loopback; tests/integration/test_multinode.py)
        {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"},
    ]
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": launch.cpu, "memory": launch.memory},
        "limits": {"memory": launch.memory},
    }
    if launch.gpus_per_node:
        resources["requests"][GPU_RESOURCE] = str(launch.gpus_per_node)
        resources["limits"][GPU_RESOURCE] = str(launch.gpus_per_node)
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": launch.shm_size}},
        {"name": "work", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "work", "mountPath": WORK_DIR}]
    if launch.cache_pvc:
        volumes.append({"name": "dataset-cache", "persistentVolumeClaim": {"claimName": launch.cache_pvc}})
        mounts.append({"name": "dataset-cache", "mountPath": PVC_CACHE})
    pod_spec: dict[str, Any] = {
        "volumes": volumes,
        "containers": [{"name": NODE_CONTAINER, "volumeMounts": mounts}],
    }
    if launch.service_account:
        pod_spec["serviceAccountName"] = launch.service_account
    envfrom_secret = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for secret in launch.secrets
        for key in SECRET_KEYS.get(secret, ())
    ]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            **({"namespace": launch.namespace} if launch.namespace else {}),
            "labels": {"app.kubernetes.io/managed-by": MANAGER, LABEL_RUN: name, **(labels or {})},
        },
        "spec": {
            "runtimeRef": {"apiGroup": API_GROUP, "kind": "ClusterTrainingRuntime", "name": launch.runtime},
            "trainer": {
                "image": _image(launch.image),
                "command": command,
                "args": train_args(cfg),
                "numNodes": launch.nodes,
                "numProcPerNode": max(1, launch.gpus_per_node),
                "resourcesPerNode": resources,
                "env": env_list + envfrom_secret,
            },
            "runtimePatches": [
                {
                    "manager": MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {"name": NODE_CONTAINER, "template": {"spec": {"template": {"spec": pod_spec}}}}
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }
