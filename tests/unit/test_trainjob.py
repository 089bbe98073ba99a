"""The multi-node TrainJob: its manifest against the published TrainJob API models (kubeflow-trainer-api), and the
launcher (create, follow, fail, cancel) through the real kubernetes client against recorded API responses."""

from __future__ import annotations

import pytest
import yaml

pytest.importorskip("kubernetes")

from kubedistill.config import train_config  # noqa: E402
from kubedistill.core.errors import UserError  # noqa: E402
from kubedistill.trainjob.launch import TrainJobFailed, TrainJobs, run_trainjob  # noqa: E402
from kubedistill.trainjob.manifest import LaunchConfig, train_args, trainjob_manifest  # noqa: E402
from tests.k8s_api import RecordedApiServer  # noqa: E402

NAME = "kd-teacher-0a1b2c3d"
JOBS = r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/ml/trainjobs"
JOB = JOBS + "/" + NAME
PODS = r"/api/v1/namespaces/ml/pods"
LOG = PODS + r"/kd-teacher-0a1b2c3d-node-0-0-x7k2p/log"


def _manifest(**launch) -> dict:
    cfg = train_config(
        data="s3://data/ds/", model="yolo26s", epochs=3, imgsz=320, name="teacher", batch=64, upload="s3://runs/p1"
    )
    opts = dict(nodes=2, gpus_per_node=4, namespace="ml", job_name=NAME, image="kubedistill/train:latest")
    return trainjob_manifest(cfg, LaunchConfig(**{**opts, **launch}), env={"KUBEDISTILL_PIPELINE_RUN_ID": "r-1"})


def test_the_manifest_is_a_valid_trainjob_by_the_published_models():
    """Round trip through kubeflow-trainer-api's TrainJob model: a field it does not know, or a wrong type, would
    be dropped or refused, and the dicts would differ."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    for launch in ({}, {"gpus_per_node": 0, "cache_pvc": "kubedistill-dataset-cache", "service_account": "trainer"}):
        m = _manifest(**launch)
        model = TrainerV1alpha1TrainJob.from_dict(m)
        assert model.to_dict() == m
    bad = _manifest()
    bad["spec"]["trainer"]["numNodes"] = "2"
    with pytest.raises(ValueError):
        TrainerV1alpha1TrainJob.from_dict(bad)
    bad = _manifest()
    bad["spec"]["trainer"]["nodes"] = 2  # not a TrainJob field: dropped by the model, so the round trip differs
    assert TrainerV1alpha1TrainJob.from_dict(bad).to_dict() != bad


def test_the_manifest_says_what_each_node_runs():
    m = _manifest()
    t = m["spec"]["trainer"]
    assert m["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    assert t["numNodes"] == 2 and t["numProcPerNode"] == 4 and t["image"] == "kubedistill/train:latest"
    assert t["command"][:2] == ["torchrun", "--max-restarts=3"]
    assert "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)" in t["command"]
    assert t["command"][-3:] == ["-m", "kubedistill", "train"]
    args = dict(a.split("=", 1) for a in t["args"])
    assert args["data"] == "s3://data/ds/" and args["model"] == "yolo26s" and args["epochs"] == "3"
    assert args["project"] == "/work/runs" and args["exist_ok"] == "True" and args["upload"] == "s3://runs/p1"
    assert args["resume"] == "auto"  # a replaced node resumes from upload=
    assert "lr0" not in args  # defaults are left to the image's kubedistill
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    env = {e["name"]: e for e in t["env"]}
    assert env["KUBEDISTILL_PIPELINE_RUN_ID"]["value"] == "r-1"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "kubedistill-s3",
        "key": "AWS_ACCESS_KEY_ID",
        "optional": True,
    }
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["name"] == "kubedistill-mlflow"
    assert not any(k.startswith("PET_") for k in env)  # the runtime sets those
    pod = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    spec = pod["template"]["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in spec["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in spec["containers"][0]["volumeMounts"]
    # the config a node parses back is the config given
    cfg = train_config(**dict(a.split("=", 1) for a in train_args(train_config(name="x", mlflow_tags={"a": "1"}))))
    assert cfg.name == "x" and cfg.mlflow_tags == {"a": "1"}
    with pytest.raises(ValueError, match="PET_NNODES"):
        trainjob_manifest(
            train_config(upload="s3://b/p"), LaunchConfig(nodes=2, image="kd/train:1"), env={"PET_NNODES": "3"}
        )
    with pytest.raises(UserError, match="upload=''.* keep nothing.*upload=s3://"):
        trainjob_manifest(train_config(), LaunchConfig(nodes=2, image="kubedistill/train:0.1.0"))
    with pytest.raises(UserError, match="No train image given"):
        trainjob_manifest(train_config(upload="s3://b/p"), LaunchConfig(nodes=2))


def test_cli_dry_run_runs_the_pinned_train_image(capsys):
    """`kubedistill train ... --nodes 2 --dry-run`: the TrainJob runs the image the pipeline runs, not a moving tag."""
    import kubedistill.images
    from kubedistill.cli import main

    main(["train", "data=s3://d/ds/", "upload=s3://r/p", "name=t", "--nodes", "2", "--dry-run"])
    job = yaml.safe_load(capsys.readouterr().out)
    assert job["spec"]["trainer"]["image"] == kubedistill.images.train_image() != "kubedistill/train:latest"


@pytest.mark.parametrize(
    "launch,match",
    [
        ({"nodes": 0}, "greater than or equal to 1"),
        ({"job_name": "Bad_Name"}, "DNS-1035"),
        ({"gpus_per_node": -1}, "greater than or equal to 0"),
    ],
)
def test_launch_options_are_checked(launch, match):
    with pytest.raises(ValueError, match=match):
        LaunchConfig(**launch)
    assert LaunchConfig(secrets="a, b").secrets == ["a", "b"]  # --secrets a,b on the command line


def _run(api: RecordedApiServer, tmp_path, **kw):
    lines: list[str] = []
    jobs = TrainJobs(kubeconfig=str(api.kubeconfig(tmp_path)))
    res = run_trainjob(_manifest(), jobs, poll=0.01, echo=lines.append, **kw)
    return res, lines


def test_a_job_that_completes_is_followed_with_node_0s_log(tmp_path):
    routes = {
        ("POST", JOBS): ["trainjob/trainjob_created.json"],
        ("GET", JOB): [
            "trainjob/trainjob_created.json",
            "trainjob/trainjob_running.json",
            "trainjob/trainjob_complete.json",
        ],
        ("GET", PODS): ["trainjob/pods_node0.json"],
        ("GET", LOG): ["trainjob/node0_log_1.txt", "trainjob/node0_log_2.txt"],
    }
    with RecordedApiServer(routes, namespace="ml") as api:
        res, lines = _run(api, tmp_path)
    assert res.state == "Complete" and "JobsCompleted" in res.reason
    logged = [line for line in lines if line.startswith("[node 0]")]
    assert [line.split()[3] for line in logged if "epoch" in line] == ["1/3", "2/3", "3/3"]  # each line once
    assert res.log_lines == 4
    created = api.calls("POST", "trainjobs")[0][3]
    assert created["metadata"]["name"] == NAME and created["spec"]["trainer"]["numNodes"] == 2
    assert not api.calls("DELETE")  # a finished job is left for its logs; its pods are done
    selector = api.calls("GET", "/pods$")[0][2]["labelSelector"][0]
    assert "jobset.sigs.k8s.io/jobset-name=kd-teacher-0a1b2c3d" in selector and "job-completion-index=0" in selector


def test_a_failed_node_fails_the_step_with_the_jobs_reason_and_deletes_it(tmp_path):
    routes = {
        ("POST", JOBS): ["trainjob/trainjob_created.json"],
        ("GET", JOB): ["trainjob/trainjob_running.json", "trainjob/trainjob_failed.json"],
        ("GET", PODS): ["trainjob/pods_node0.json"],
        ("GET", LOG): ["trainjob/node0_log_1.txt"],
        ("DELETE", JOB): ["trainjob/status_deleted.json"],
    }
    with RecordedApiServer(routes, namespace="ml") as api:
        with pytest.raises(TrainJobFailed, match="failed: FailedJobs .*node-0 has failed .*BackoffLimitExceeded"):
            _run(api, tmp_path)
    deletes = api.calls("DELETE", NAME)
    _method, _path, query, body = deletes[0]
    assert len(deletes) == 1 and "Foreground" in (
        query.get("propagationPolicy", []) + [(body or {}).get("propagationPolicy")]
    )


def test_a_cancelled_run_deletes_its_trainjob(tmp_path):
    """Stopping the pipeline's step (SIGTERM, turned into KeyboardInterrupt) must not leave GPU nodes running."""
    routes = {
        ("POST", JOBS): ["trainjob/trainjob_created.json"],
        ("GET", JOB): ["trainjob/trainjob_running.json"],
        ("GET", PODS): ["trainjob/pods_node0.json"],
        ("GET", LOG): ["trainjob/node0_log_1.txt"],
        ("DELETE", JOB): ["trainjob/status_deleted.json"],
    }
    polls = []

    def sleep(_s):
        polls.append(1)
        if len(polls) == 3:
            raise KeyboardInterrupt

    with RecordedApiServer(routes, namespace="ml") as api:
        with pytest.raises(KeyboardInterrupt):
            _run(api, tmp_path, sleep=sleep)
    assert len(api.calls("DELETE", NAME)) == 1


def test_a_timeout_deletes_the_job_and_says_so(tmp_path):
    routes = {
        ("POST", JOBS): ["trainjob/trainjob_created.json"],
        ("GET", JOB): [(503, "etcdserver: leader changed"), "trainjob/trainjob_created.json"],
        ("GET", PODS): [(200, "")],
        ("DELETE", JOB): ["trainjob/status_deleted.json"],
    }
    with RecordedApiServer(routes, namespace="ml") as api:
        with pytest.raises(TrainJobFailed, match="not done after 0 s"):
            _run(api, tmp_path, timeout=0.05, follow_logs=False)
    assert len(api.calls("DELETE", NAME)) == 1


def test_create_conflicts_and_refusals(tmp_path):
    # an earlier try of the same step left the job: followed, not created twice
    routes = {
        ("POST", JOBS): ["trainjob/status_conflict.json"],
        ("GET", JOB): ["trainjob/trainjob_complete.json"],
    }
    with RecordedApiServer(routes, namespace="ml") as api:
        res, _ = _run(api, tmp_path, follow_logs=False)
    assert res.state == "Complete"
    # a job of that name that is not ours
    routes[("GET", JOB)] = ["trainjob/trainjob_foreign.json"]
    with RecordedApiServer(routes, namespace="ml") as api:
        with pytest.raises(UserError, match="exists and is not kubedistill's"):
            _run(api, tmp_path, follow_logs=False)
    assert not api.calls("DELETE")  # never delete what is not ours
    # Kubeflow Trainer not installed
    with RecordedApiServer({("POST", JOBS): ["trainjob/status_no_api.json"]}, namespace="ml") as api:
        with pytest.raises(UserError, match=r"TrainJob API \(trainer.kubeflow.org/v1alpha1\) is not installed"):
            _run(api, tmp_path, follow_logs=False)
    # no right to read it: RBAC named in the fix, and the created job is removed again
    routes = {
        ("POST", JOBS): ["trainjob/trainjob_created.json"],
        ("GET", JOB): ["trainjob/status_forbidden.json"],
        ("DELETE", JOB): ["trainjob/status_deleted.json"],
    }
    with RecordedApiServer(routes, namespace="ml") as api:
        with pytest.raises(UserError, match="403 Forbidden .*pipeline-runner.*docs/pipeline.md"):
            _run(api, tmp_path, follow_logs=False)
    assert api.calls("DELETE", NAME)
    assert set(r[1] for r in api.requests) <= {
        "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs",
        "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs/" + NAME,
    }


def test_the_shipped_rbac_is_valid_and_covers_every_call_the_launcher_makes():
    """pipelines/rbac/trainjob.yaml: valid Kubernetes (strict), and it grants each verb the launcher uses."""
    from pathlib import Path

    import kubernetes_validate
    import yaml

    docs = list(yaml.safe_load_all((Path(__file__).parents[2] / "pipelines" / "rbac" / "trainjob.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    needed = {
        ("trainer.kubeflow.org", "trainjobs", "create"),
        ("trainer.kubeflow.org", "trainjobs", "get"),
        ("trainer.kubeflow.org", "trainjobs", "delete"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    }
    assert needed <= granted, needed - granted
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
