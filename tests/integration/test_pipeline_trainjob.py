"""The pipeline's training step with num_nodes > 1 (issue 18): it creates a TrainJob whose nodes read the dataset
and the teacher from S3 and copy their run folder under the step's artifact, follows it, and hands best.pt on as
the one-node step does. The Kubernetes API is recorded (no cluster here); S3 is a real SeaweedFS on loopback."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("kubernetes")

from kubedistill import storage  # noqa: E402
from kubedistill.core.errors import UserError  # noqa: E402
from kubedistill.pipeline.steps import train_step  # noqa: E402
from kubedistill.storage import s3 as storage_s3  # noqa: E402
from kubedistill.trainjob.launch import TrainJobs  # noqa: E402
from tests.k8s_api import RecordedApiServer  # noqa: E402

JOBS = r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/ml/trainjobs"


@pytest.fixture
def store(s3_env, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KUBEDISTILL_PIPELINE_RUN_ID", "run-7")
    monkeypatch.setattr("kubedistill.pipeline.steps.TRAINJOB_POLL_S", 0.01)
    storage_s3._client.cache_clear()
    s3_env.bucket("kd-tj")
    yield s3_env
    storage_s3._client.cache_clear()


def _node0_uploads(tmp_path, upload: str, role: str) -> bytes:
    """What node 0 copies to `upload` when its training ends (upload=): the run folder."""
    run = tmp_path / "node0" / role
    (run / "weights").mkdir(parents=True)
    weights = b"best weights of the multi-node run"
    (run / "weights" / "best.pt").write_bytes(weights)
    (run / "metrics.json").write_text(json.dumps({"best_epoch": 3, "metrics/mAP50-95(B)": 0.41, "note": "x"}))
    (run / "mlflow.json").write_text(json.dumps({"run_id": "abc123", "tracking_uri": "http://mlflow:5000"}))
    storage.upload(run, f"{upload}/{role}")
    return weights


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_the_training_step_runs_a_trainjob_and_hands_best_pt_on(role, store, tiny_data, tmp_path):
    data = storage.upload(tiny_data.parent, "s3://kd-tj/datasets/tiny")
    upload = f"s3://kd-tj/root/run-7/{role}/abc/trainjob"
    weights = _node0_uploads(tmp_path, upload, role)
    remote = {"data": data, "upload": upload}
    if role == "student":
        remote["teacher"] = "s3://kd-tj/root/run-7/teacher/abc/model"
    routes = {
        ("POST", JOBS): ["trainjob/trainjob_created.json"],
        ("GET", JOBS + r"/kd-[a-z]+-[0-9a-f]{10}"): [
            "trainjob/trainjob_running.json",
            "trainjob/trainjob_complete.json",
        ],
        ("GET", r"/api/v1/namespaces/ml/pods"): ["trainjob/pods_node0.json"],
        ("GET", r"/api/v1/namespaces/ml/pods/.*/log"): ["trainjob/node0_log_2.txt"],
    }
    with RecordedApiServer(routes, namespace="ml") as api:
        jobs = TrainJobs(kubeconfig=str(api.kubeconfig(tmp_path)))
        res = train_step(
            tiny_data,
            tmp_path / "out" / "model",
            role=role,
            options={"model": "yolo26n", "epochs": 3, "imgsz": 64},
            extra_config={"batch": 32},
            fingerprint="fp1",
            teacher=tmp_path / "teacher.pt" if role == "student" else None,
            work=tmp_path / "work",
            nodes=2,
            gpus_per_node=1,
            remote=remote,
            jobs=jobs,
        )
        job = api.calls("POST", "trainjobs")[0][3]
    assert (tmp_path / "out" / "model").read_bytes() == weights
    assert res["mlflow_run_id"] == "abc123" and res["metrics"] == {"metrics/mAP50-95(B)": 0.41}
    assert "2 nodes: TrainJob kd-" in res["source"] and res["trainjob"]["state"] == "Complete"
    args = dict(a.split("=", 1) for a in job["spec"]["trainer"]["args"])
    assert args["data"] == data and args["upload"] == upload and args["name"] == role and args["batch"] == "32"
    assert args.get("distill_model") == remote.get("teacher")  # the teacher the nodes read, not this pod's file
    assert args["mlflow_tags"] == f"pipeline_step={role},data_fingerprint=fp1"
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["numProcPerNode"] == 1
    env = {e["name"]: e.get("value") for e in job["spec"]["trainer"]["env"]}
    assert env["KUBEDISTILL_PIPELINE_RUN_ID"] == "run-7"
    assert job["metadata"]["name"].startswith(f"kd-{role}-")


def test_a_local_pipeline_root_cannot_train_on_several_nodes(store, tiny_data, tmp_path):
    with pytest.raises(UserError, match=r"num_nodes > 1: the nodes need s3:// URIs for upload"):
        train_step(
            tiny_data,
            tmp_path / "model",
            role="teacher",
            options={"model": "yolo26n"},
            extra_config={},
            fingerprint="fp",
            work=tmp_path / "w",
            nodes=2,
            remote={"data": "s3://kd-tj/datasets/tiny/", "upload": str(tmp_path / "local-root")},
        )
