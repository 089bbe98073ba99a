"""`kubedistill run` end to end on tiny data: the real pipeline through kfp.local, every artifact and MLflow record.

One full run (about 2-3 minutes on 2 CPU cores) is shared by the tests here; a second run with
skip_if_unchanged must stop after the data gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("mlflow")

TINY = {
    "imgsz": 64,
    "teacher_model": "yolo-n",
    "teacher_epochs": 1,
    "student_model": "yolo-n",
    "student_epochs": 1,
    "optimizer": "AdamW",
    "lr0": 0.002,
    "extra_config": {"batch": 8, "nbs": 8, "workers": 0, "warmup_epochs": 0.5, "plots": False},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBEDISTILL_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield mp


@pytest.fixture(scope="module")
def first(env, tiny_data, tmp_path_factory):
    from kubedistill.pipeline.local import run_local
    from kubedistill.pipeline.params import check_params, pipeline_parameters

    out = tmp_path_factory.mktemp("run")
    lines: list[str] = []
    params = check_params({**TINY, "dataset_uri": str(tiny_data)}, pipeline_parameters())
    res = run_local(params, out, echo=lines.append)
    return res, out, lines


def _mlflow(res):
    from mlflow import MlflowClient

    return MlflowClient(res["tracking_uri"], res["tracking_uri"])


@pytest.mark.slow
def test_summary_and_console(first):
    res, out, lines = first
    assert res["seconds"] < 300
    text = "\n".join(res["summary"])
    assert (
        "teacher yolo26n: mAP50-95" in text
        and "student yolo26n: mAP50-95" in text
        and "GFLOPs" in text
        and "ms/img" in text
    )
    assert "registered: models:/kubedistill-student/1" in text
    assert "promoted to champion: yes (no champion yet)" in text
    assert f"report: {res['report']}" in text and "serve it: MLFLOW_TRACKING_URI=sqlite:///" in text
    assert "kubedistill serve --model models:/kubedistill-student/1" in text
    console = "\n".join(lines)
    assert "Executing task 'train-teacher'" in console and "data gate: skip_if_unchanged is off" in console
    assert "Got executor_input" not in console and '"inputs": {' not in console  # KFP's JSON dumps stay in the log file
    assert "Got executor_input" in Path(res["log"]).read_text()


@pytest.mark.slow
def test_dataset_and_data_report(first, tiny_data):
    res, out, _ = first
    stored = Path(res["dataset_uri"])
    assert stored.parent == out / "datasets" and stored.name == res["fingerprint"]
    assert yaml.safe_load((stored / "data.yaml").read_text())["names"] == ["circle", "square"]
    html = Path(res["data_report"]).read_text()
    assert "Dataset report" in html and res["fingerprint"] in html and str(tiny_data) in html
    assert "Objects per class" in html and "Box sizes" in html and "No problems found" in html


@pytest.mark.slow
def test_models_onnx_and_evaluation(first):
    import numpy as np
    import onnxruntime as ort

    from kubedistill.core.checkpoint import load_checkpoint

    res, _, _ = first
    run_dir = Path(res["run_dir"])
    for step in ("train-teacher", "distill-student"):
        ckpt = load_checkpoint(run_dir / step / "model")
        assert ckpt["model"]["meta"]["names"] == ["circle", "square"] and ckpt["model"]["meta"]["scale"] == "n"
    student = res["steps"]["distill-student"]["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert student["role"] == "student" and student["mlflow_run_id"] and student["teacher_mlflow_run_id"]
    sess = ort.InferenceSession(res["onnx"], providers=["CPUExecutionProvider"])
    (det,) = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)})
    assert det.shape[0] == 1 and det.shape[2] == 6

    m = res["metrics"]
    for who in ("teacher", "student"):
        for k in ("mAP50-95", "mAP50", "AP_small", "params_M", "gflops", "latency_ms", "file_mb"):
            assert isinstance(m[f"{who}_{k}"], float), f"{who}_{k}"
    assert m["student_onnx_mb"] > 1 and m["student_onnx_latency_ms"] > 0
    assert m["delta_mAP50-95"] == pytest.approx(m["student_mAP50-95"] - m["teacher_mAP50-95"])
    report = Path(res["report"]).read_text()
    assert "Teacher vs student" in report and "Per-class AP" in report and "PR curves: student" in report
    assert "Sample predictions" in report and report.count("data:image/png;base64,") >= 3
    assert ">circle<" in report and ">square<" in report and "latency (ms/img)" in report and "GFLOPs" in report


@pytest.mark.slow
def test_mlflow_records(first):
    res, _, _ = first
    cl = _mlflow(res)
    exp = cl.get_experiment_by_name("kubedistill")
    runs = cl.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kubedistill_kind") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline_run_id"] == res["run_id"]
    assert parent.data.tags["registered_version"] == "1" and parent.data.tags["promoted"] == "true"
    assert parent.data.tags["data_fingerprint"] == res["fingerprint"]
    children = {
        r.data.tags.get("pipeline_step"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"teacher", "student", "evaluate"}
    assert children["student"].data.tags["data_fingerprint"] == res["fingerprint"]
    assert children["student"].data.params["distill_model"].endswith("/train-teacher/model")
    assert (
        children["teacher"].data.params["distill_model"] == "null"
        and "train/dis_loss" in children["student"].data.metrics
    )
    assert children["evaluate"].data.metrics["student_mAP50-95"] == pytest.approx(res["metrics"]["student_mAP50-95"])
    assert {a.path for a in cl.list_artifacts(children["evaluate"].info.run_id)} >= {"report.html", "metrics.json"}
    mv = cl.get_model_version("kubedistill-student", "1")
    assert mv.tags["data_fingerprint"] == res["fingerprint"] and mv.tags["promotion.decision"] == "promoted"
    assert mv.run_id == children["student"].info.run_id  # the model lives in the student's training run
    # made from the student run's "best" LoggedModel; the teacher's checkpoints are LoggedModels too
    models = cl.search_logged_models(experiment_ids=[exp.experiment_id])
    by_run = {(m.source_run_id, m.name): m.model_id for m in models}
    assert mv.tags["logged_model_id"] == by_run[(children["student"].info.run_id, "best")]
    assert (children["teacher"].info.run_id, "last") in by_run
    # the evaluation's dataset as an input of its run
    (ev,) = cl.get_run(children["evaluate"].info.run_id).inputs.dataset_inputs
    assert {t.key: t.value for t in ev.tags}["mlflow.data.context"] == "eval"
    assert ev.dataset.digest == res["fingerprint"][:36]
    assert str(cl.get_model_version_by_alias("kubedistill-student", "champion").version) == "1"


@pytest.mark.slow
def test_scheduled_rerun_on_unchanged_data_stops_early(first, tiny_data):
    from kubedistill.pipeline.local import run_local
    from kubedistill.pipeline.params import check_params, pipeline_parameters

    res, out, _ = first
    params = check_params({**TINY, "dataset_uri": str(tiny_data), "skip_if_unchanged": True}, pipeline_parameters())
    again = run_local(params, out, echo=lambda s: None)
    assert again["trained"] is False and again["fingerprint"] == res["fingerprint"]
    assert "stopped early: data unchanged since champion version 1" in "\n".join(again["summary"])
    assert sorted(again["steps"]) == ["check-unchanged", "finish-tracking", "prepare-data"]
    cl = _mlflow(res)
    assert [str(v.version) for v in cl.search_model_versions("name='kubedistill-student'")] == ["1"]
    parent = [
        r
        for r in cl.search_runs([cl.get_experiment_by_name("kubedistill").experiment_id])
        if r.data.tags.get("pipeline_run_id") == again["run_id"] and r.data.tags.get("kubedistill_kind") == "pipeline"
    ]
    assert parent[0].info.status == "FINISHED" and parent[0].data.tags["outcome"] == "skipped: data unchanged"


@pytest.mark.slow
def test_cli_failure_is_one_line(env, tmp_path, capsys):
    from kubedistill.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--data", str(tmp_path / "missing"), "--set", "imgsz=64", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Pipeline step 'prepare-data' failed: Dataset ")
    assert "does not exist" in err[0] and "full log:" in err[0]
    log = next((tmp_path / "out" / "logs").iterdir()).read_text()
    assert "prepare-data" in log and json.dumps("missing")[1:-1] in log


@pytest.mark.slow
def test_the_pipeline_starts_from_the_users_ultralytics_files(env, tiny_data, tmp_path_factory):
    """The student fine-tunes from an Ultralytics yolo26n.pt and learns from an Ultralytics yolo26s.pt teacher given
    as teacher_uri (no teacher training); the run registers and promotes the student."""
    from kubedistill.core.checkpoint import load_checkpoint
    from kubedistill.pipeline.local import run_local
    from kubedistill.pipeline.params import check_params, pipeline_parameters

    fix = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
    out = tmp_path_factory.mktemp("run_ultralytics")
    lines: list[str] = []
    given = {
        **TINY,
        "dataset_uri": str(tiny_data),
        "student_model": str(fix / "yolo26n-tiny.pt"),
        "teacher_uri": str(fix / "yolo26s-tiny.pt"),
    }
    res = run_local(check_params(given, pipeline_parameters()), out, echo=lines.append)
    text = "\n".join(res["summary"])
    assert "teacher yolo26s: mAP50-95" in text and "student yolo26n: mAP50-95" in text
    assert "registered: models:/kubedistill-student/1" in text and "promoted to champion: yes" in text
    log = Path(res["log"]).read_text()
    assert f"teacher_uri {fix / 'yolo26s-tiny.pt'} given: using that teacher, no training" in log
    assert "yolo26n-tiny.pt (yolo26n): 708/708 tensors transferred" in log
    student = load_checkpoint(Path(res["run_dir"]) / "distill-student" / "model")
    assert student["model"]["meta"]["scale"] == "n" and student["model"]["meta"]["names"] == ["circle", "square"]
