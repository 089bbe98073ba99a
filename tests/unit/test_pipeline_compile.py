"""The compiled pipeline: no drift from the source, and the structure a cluster run depends on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "pipelines" / "compiled" / "training.yaml"
GPU_STEPS = ("train-teacher", "distill-student", "evaluate", "promotion-gate")
MLFLOW_STEPS = (
    "check-unchanged",
    "train-teacher",
    "distill-student",
    "evaluate",
    "register",
    "promotion-gate",
    "deploy",
    "finish-tracking",
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from kubedistill.pipeline.kfp_client import compile_components, compile_pipeline

    out = tmp_path_factory.mktemp("compiled")
    pipeline = compile_pipeline(out / "training.yaml")
    comps = compile_components(out / "components")
    return pipeline, comps


@pytest.fixture(scope="module")
def docs():
    spec, platform = list(yaml.safe_load_all(COMMITTED.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict:
    """Every task of every DAG (root, exit handler, conditions) by name."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update((comp.get("dag") or {}).get("tasks") or {})
    return out


def test_committed_pipeline_matches_the_source(compiled):
    pipeline, _ = compiled
    assert COMMITTED.is_file(), "run `kubedistill pipeline compile --components-dir components`"
    assert pipeline.read_bytes() == COMMITTED.read_bytes(), (
        "pipelines/compiled/training.yaml drifted from kubedistill.pipeline.dag: "
        "run `kubedistill pipeline compile --components-dir components` and commit the result"
    )


def test_committed_components_match_the_source(compiled):
    _, comps = compiled
    assert len(comps) == 9
    for c in comps:
        committed = ROOT / "components" / c.name
        assert committed.is_file(), f"components/{c.name} is missing"
        assert c.read_bytes() == committed.read_bytes(), (
            f"components/{c.name} drifted: recompile with --components-dir components"
        )


def test_every_step_runs_the_train_image_with_no_installs(docs):
    from kubedistill.images import train_image

    spec, _ = docs
    containers = {k: v["container"] for k, v in spec["deploymentSpec"]["executors"].items() if "container" in v}
    assert len(containers) == 9
    for name, c in containers.items():
        assert c["image"] == train_image(), name
        script = " ".join(c["command"])
        assert "pip install" not in script, f"{name} installs packages at run time"
        assert "kubedistill" in c["command"][-1], f"{name}'s body does not call kubedistill"


def test_resources_and_gpu_scheduling(docs):
    spec, k8s = docs
    execs = spec["deploymentSpec"]["executors"]
    for step in GPU_STEPS:
        res = execs[f"exec-{step}"]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
        assert res["resourceCpuRequest"] and res["resourceMemoryRequest"].endswith("Gi")
        assert k8s[f"exec-{step}"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s[f"exec-{step}"][
            "tolerations"
        ]
    for step in ("prepare-data", "check-unchanged", "register", "deploy", "finish-tracking"):
        res = execs[f"exec-{step}"]["container"]["resources"]
        assert "accelerator" not in res, step
        assert res["resourceCpuRequest"] and res["resourceMemoryLimit"], step
        assert "nodeSelector" not in k8s[f"exec-{step}"] and "tolerations" not in k8s[f"exec-{step}"], step
    assert execs["exec-train-teacher"]["container"]["resources"]["resourceMemoryRequest"] == "16Gi"


def test_secrets_pvc_and_run_id(docs):
    _, k8s = docs
    for step, ex in ((s, k8s[f"exec-{s}"]) for s in MLFLOW_STEPS):
        by_secret = {}
        for s in ex["secretAsEnv"]:
            by_secret.setdefault(s["secretName"], []).extend((m["envVar"], s["optional"]) for m in s["keyToEnv"])
        assert ("MLFLOW_TRACKING_URI", False) in by_secret["kubedistill-mlflow"], step
        assert ("MLFLOW_TRACKING_PASSWORD", True) in by_secret["kubedistill-mlflow"], step
        assert ex["fieldPathAsEnv"] == [
            {"name": "KUBEDISTILL_PIPELINE_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"}
        ]
    prep = k8s["exec-prepare-data"]
    assert {s["secretName"] for s in prep["secretAsEnv"]} == {"kubedistill-s3"}  # data only: no MLflow
    assert ("AWS_SECRET_ACCESS_KEY", False) in [
        (m["envVar"], s["optional"]) for s in prep["secretAsEnv"] for m in s["keyToEnv"]
    ]
    assert prep["pvcMount"][0]["mountPath"] == "/var/cache/kubedistill"
    assert prep["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "kubedistill-dataset-cache"
    assert all("pvcMount" not in k8s[f"exec-{s}"] for s in MLFLOW_STEPS)
    assert {s["secretName"] for s in k8s["exec-train-teacher"]["secretAsEnv"]} == {
        "kubedistill-s3",
        "kubedistill-mlflow",
    }


def test_conditions_retries_and_caching(docs):
    spec, _ = docs
    tasks = _tasks(spec)
    conds = {
        name: t.get("triggerPolicy", {}).get("condition") for name, t in tasks.items() if name.startswith("condition-")
    }
    assert sorted(conds.values()) == sorted(
        [
            "inputs.parameter_values['pipelinechannel--check-unchanged-Output'] == true",
            "inputs.parameter_values['pipelinechannel--promotion-gate-Output'] == true",
            "inputs.parameter_values['pipelinechannel--deploy_model'] == true",
        ]
    )
    # deploy sits under both promoted and deploy-on; training only under data-changed
    inner = {name for name, comp in spec["components"].items() if "deploy" in (comp.get("dag") or {}).get("tasks", {})}
    assert inner == {"comp-condition-4"}
    assert "train-teacher" in spec["components"]["comp-condition-2"]["dag"]["tasks"]
    retries = {
        name: t.get("retryPolicy", {}).get("maxRetryCount", 0)
        for name, t in tasks.items()
        if not name.startswith(("condition", "exit"))
    }
    assert retries["prepare-data"] == 3 and retries["register"] == 3 and retries["promotion-gate"] == 2
    assert retries["train-teacher"] == retries["distill-student"] == retries["evaluate"] == 0
    assert tasks["prepare-data"]["retryPolicy"]["backoffDuration"] == "30s"
    cached = {name for name, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"importer", "train-teacher", "distill-student", "evaluate"}
    # cache keys follow the data's content: the dataset is imported by its fingerprint URI, never re-imported
    imp = spec["deploymentSpec"]["executors"]["exec-importer"]["importer"]
    assert imp["artifactUri"] == {"runtimeParameter": "uri"} and not imp.get("reimport")
    assert tasks["importer"]["inputs"]["parameters"]["uri"] == {
        "componentInputParameter": "pipelinechannel--prepare-data-dataset_uri"
    }
    assert tasks["condition-2"]["inputs"]["parameters"]["pipelinechannel--prepare-data-dataset_uri"] == {
        "taskOutputParameter": {"outputParameterKey": "dataset_uri", "producerTask": "prepare-data"}
    }
    for step in ("train-teacher", "distill-student", "evaluate"):
        assert tasks[step]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == "importer"
        assert "fingerprint" in tasks[step]["inputs"]["parameters"]
    # the exit step always runs
    fin = spec["root"]["dag"]["tasks"]["finish-tracking"]
    assert fin["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_parameters_have_defaults_and_descriptions(docs):
    spec, _ = docs
    params = spec["root"]["inputDefinitions"]["parameters"]
    want = {
        "dataset_uri",
        "class_names",
        "imgsz",
        "teacher_model",
        "teacher_epochs",
        "teacher_uri",
        "student_model",
        "student_epochs",
        "dis",
        "optimizer",
        "lr0",
        "lrf",
        "label_smoothing",
        "box_loss",
        "cls_loss",
        "extra_config",
        "registered_model_name",
        "promotion_metric",
        "promotion_min_delta",
        "deploy_model",
        "release",
        "namespace",
        "skip_if_unchanged",
        "dataset_store",
        "mlflow_experiment",
        "num_nodes",
        "gpus_per_node",
        "serving_mode",
    }
    assert set(params) == want
    for name, p in params.items():
        assert "defaultValue" in p or p["parameterType"] == "STRING", name
        assert len(p.get("description", "")) > 10, f"{name} has no description for the dashboard"
    assert params["imgsz"]["parameterType"] == "NUMBER_INTEGER" and params["extra_config"]["parameterType"] == "STRUCT"
    assert params["skip_if_unchanged"]["defaultValue"] is False and params["deploy_model"]["defaultValue"] is False


def test_report_and_metric_outputs_are_typed(docs):
    spec, _ = docs
    comps = spec["components"]

    def outs(c):
        return {
            k: v["artifactType"]["schemaTitle"] for k, v in comps[c]["outputDefinitions"].get("artifacts", {}).items()
        }

    assert outs("comp-prepare-data") == {"report": "system.HTML", "summary": "system.Markdown"}
    assert outs("comp-train-teacher") == {"model": "system.Model", "metrics": "system.Metrics"}
    assert outs("comp-distill-student") == {
        "model": "system.Model",
        "onnx": "system.Model",
        "metrics": "system.Metrics",
    }
    assert outs("comp-evaluate") == {"metrics": "system.Metrics", "report": "system.HTML"}
    assert comps["comp-register"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"
    assert comps["comp-promotion-gate"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "BOOLEAN"


def test_local_variant_only_drops_retries():
    from google.protobuf import json_format

    from kubedistill.pipeline.dag import make_pipeline, training_pipeline

    a = json_format.MessageToDict(training_pipeline.pipeline_spec)
    b = json_format.MessageToDict(make_pipeline(retries=False).pipeline_spec)
    assert "retryPolicy" in str(a) and "retryPolicy" not in str(b)

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k != "retryPolicy"}
        if isinstance(d, list):
            return [strip(x) for x in d]
        return d

    assert strip(a) == strip(b)


def test_image_loading_steps_get_a_memory_dev_shm(docs):
    """A pod's /dev/shm is 64 MB: DataLoader workers need a Memory emptyDir there (docs/deploy.md)."""
    from kubedistill.pipeline.dag import SHM_SIZE, SHM_STEPS

    _, k8s = docs
    assert set(SHM_STEPS) == set(GPU_STEPS)
    for name, ex in k8s.items():
        mounts = ex.get("emptyDirMounts", [])
        if name.removeprefix("exec-") in SHM_STEPS:
            assert mounts == [
                {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": SHM_SIZE, "volumeName": "dshm"}
            ]
        else:
            assert mounts == [], name


def test_env_reaches_every_task_of_the_docker_variant():
    """`kubedistill run --runner docker` sets its settings on every task: a container sees no other env."""
    from google.protobuf import json_format

    from kubedistill.pipeline.dag import make_pipeline

    spec = json_format.MessageToDict(make_pipeline(retries=False, env={"A": "1", "B": "two"}).pipeline_spec)
    executors = {k: v for k, v in spec["deploymentSpec"]["executors"].items() if "container" in v}
    assert len(executors) == 9  # every step (the dataset importer runs no container)
    for name, ex in executors.items():
        assert {"name": "A", "value": "1"} in ex["container"]["env"], name
        assert {"name": "B", "value": "two"} in ex["container"]["env"], name
    plain = json_format.MessageToDict(make_pipeline(retries=False).pipeline_spec)
    assert all("env" not in ex.get("container", {}) for ex in plain["deploymentSpec"]["executors"].values())


def test_num_nodes_reaches_the_training_steps_and_their_trainjob_path(docs):
    """Issue 18: the compiled pipeline takes num_nodes and gpus_per_node and passes them to both training steps,
    whose code hands them to train_step with the S3 URIs the nodes need (steps.trainjob_step)."""
    spec, _ = docs
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["num_nodes"]["defaultValue"] == 1 and params["gpus_per_node"]["defaultValue"] == 1
    tasks = _tasks(spec)
    for step in ("train-teacher", "distill-student"):
        inputs = tasks[step]["inputs"]["parameters"]
        for p in ("num_nodes", "gpus_per_node"):
            assert inputs[p]["componentInputParameter"] == f"pipelinechannel--{p}", (step, p)
        code = "\n".join(spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["command"])
        assert "nodes=num_nodes" in code and "gpus_per_node=gpus_per_node" in code
        assert '"upload": model.uri.rsplit("/", 1)[0] + "/trainjob"' in code and '"data": dataset.uri' in code
        if step == "distill-student":
            assert '"teacher": teacher.uri' in code
