"""MLflow tracking, registry and the promotion gate, against MLflow's real stores.

Most tests use the embedded default (a sqlite file in the runs folder); the `server` tests use a real
`mlflow server` on loopback whose artifacts live in SeaweedFS (S3).
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest

pytestmark = pytest.mark.slow

mlflow = pytest.importorskip("mlflow")  # the `track` extra; installed by `make install`


def _zero_head(src, dst):
    """A copy of a checkpoint whose head is zeroed: it detects nothing, so it scores 0 on any data."""
    import torch

    from kubedistill.core.checkpoint import atomic_torch_save, load_checkpoint

    ckpt = load_checkpoint(src)
    sd = ckpt["model"]["state_dict"]
    for k, v in sd.items():
        if k.startswith("head.") and v.is_floating_point():
            sd[k] = torch.zeros_like(v)
    atomic_torch_save(
        {k: v for k, v in ckpt.items() if k in ("model", "train_args", "version", "epoch", "metrics")}, dst
    )
    return dst


@pytest.fixture(scope="module")
def tracked(tiny_data, tmp_path_factory, monkeypatch_module, tiny_train):
    """One tiny training run tracked into the embedded default store (no env: mlflow=True)."""
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path_factory.mktemp("tracked") / "runs"
    trainer = tiny_train(
        project,
        tiny_data,
        "student",
        epochs=3,
        exist_ok=True,
        plots=True,
        mlflow=True,
        mlflow_tags={"pipeline_run_id": "run-42"},
    )[0]
    uri = f"sqlite:///{project.resolve() / 'mlflow.db'}"
    return trainer, uri, project


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_training_run_is_tracked_in_the_embedded_store(tracked):
    trainer, uri, project = tracked
    assert (project / "mlflow.db").is_file() and (project / "mlartifacts").is_dir()
    info = trainer.mlflow_run
    assert info["tracking_uri"] == uri and info["run_id"]
    cl = mlflow.MlflowClient(uri)
    run = cl.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    # params: the full resolved config
    for key in (
        "epochs",
        "imgsz",
        "lr0",
        "lrf",
        "optimizer",
        "box_loss",
        "dis",
        "label_smoothing",
        "mlflow_tags.pipeline_run_id",
    ):
        assert key in run.data.params, key
    assert run.data.params["epochs"] == "3" and run.data.params["optimizer"] == "AdamW"
    # what the run used, beside what was asked: the resolved nbs and the precision
    assert run.data.params["nbs"] == str(trainer.nbs) and run.data.params["precision"] == trainer.precision
    # metrics each epoch with the epoch as step
    for key in (
        "train/box_loss",
        "train/cls_loss",
        "lr/weights",
        "metrics/mAP50-95",
        "metrics/mAP50",
        "metrics/AP_small",
        "img_s",
        "epoch_s",
    ):
        hist = cl.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == [0, 1, 2], key
    assert run.data.metrics["best/mAP50-95"] == pytest.approx(trainer.best_metrics["mAP50-95"])
    # system metrics beside the curves (on by default)
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in run.data.metrics, key
    # tags
    tags = run.data.tags
    assert tags["pipeline_run_id"] == "run-42" and len(tags["data_fingerprint"]) == 64 and tags["kubedistill.version"]
    # dataset input with the content fingerprint
    ds = run.inputs.dataset_inputs[0]
    assert tags["data_fingerprint"].startswith(ds.dataset.digest)
    assert {t.key: t.value for t in ds.tags}["fingerprint"] == tags["data_fingerprint"]
    assert "data.yaml" in ds.dataset.source
    # artifacts; the weights are LoggedModels, not plain files
    top = {a.path for a in cl.list_artifacts(run.info.run_id)}
    assert {"results.csv", "args.yaml", "metrics.json", "data_check.json", "plots"} <= top and "weights" not in top
    assert any(a.path.endswith("results.png") for a in cl.list_artifacts(run.info.run_id, "plots"))
    assert not (trainer.save_dir / "mlflow_pending.jsonl").exists()
    # the val split as a second dataset input, the one the checkpoints' metrics point at
    inputs = {d.dataset.name: {t.key: t.value for t in d.tags} for d in run.inputs.dataset_inputs}
    val_name = f"{trainer.spec.yaml_path.parent.name}/val"
    assert inputs[val_name]["mlflow.data.context"] == "eval"
    assert_logged_models(cl, run, trainer, val_name)


def assert_logged_models(cl, run, trainer, val_name: str) -> dict:
    """The run's best and last checkpoints as LoggedModels: the detector pyfunc logged as code with the ONNX model
    and the .pt, its validation metrics tied to the model and the val split; returns {name: LoggedModel}."""
    from kubedistill.core.digest import file_sha256

    found = cl.search_logged_models(experiment_ids=[run.info.experiment_id])
    models = {m.name: m for m in found if m.source_run_id == run.info.run_id}
    assert sorted(models) == ["best", "last"]
    digest = run.data.tags["data_fingerprint"][:36]
    for name, m in models.items():
        assert m.model_type == "object-detection" and m.tags["checkpoint"] == name
        assert m.tags["weights_sha256"] == file_sha256(trainer.wdir / f"{name}.pt")
        assert m.params["imgsz"] == str(trainer.cfg.imgsz)
        by_key = {x.key: x for x in m.metrics}
        assert {"mAP50-95", "mAP50", "precision", "recall"} <= set(by_key)
        assert {(x.dataset_name, x.dataset_digest) for x in m.metrics if x.key == "mAP50-95"} == {(val_name, digest)}
        files = {a.path for a in cl.list_logged_model_artifacts(m.model_id)}
        assert "MLmodel" in files and "input_example.json" in files and not any(f.endswith(".pkl") for f in files)
    best = {x.key: x.value for x in models["best"].metrics}
    assert best["mAP50-95"] == pytest.approx(trainer.best_metrics["mAP50-95"])
    assert {x.step for x in models["best"].metrics} == {trainer.best_epoch}
    # best first when ordered by the metric
    ordered = cl.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        order_by=[{"field_name": "metrics.mAP50-95", "ascending": False}],
    )
    values = [next(x.value for x in m.metrics if x.key == "mAP50-95") for m in ordered]
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(best["mAP50-95"])
    return models


def test_a_retried_log_models_record_makes_each_model_once(tracked):
    """A record sent again (its first try failed after the models were made) finds them; gone files are skipped."""
    from kubedistill.track.models import OP_TAG, log_checkpoints_op

    trainer, uri, _ = tracked
    cl = mlflow.MlflowClient(uri)
    run_id = trainer.mlflow_run["run_id"]
    item = {"checkpoint": str(trainer.wdir / "best.pt"), "onnx": str(trainer.wdir / "best.onnx"), "step": 0}
    op = {
        "id": "retry-test",
        "models": [
            {**item, "name": "again", "metrics": {"mAP50": 0.5}},
            {**item, "name": "gone", "onnx": str(trainer.wdir / "nope.onnx")},
        ],
        "dataset": None,
        "params": {},
    }
    first = log_checkpoints_op(cl, uri, run_id, op)
    assert first["again"].startswith("m-") and first["gone"] is None
    assert log_checkpoints_op(cl, uri, run_id, op) == first
    exp = cl.get_run(run_id).info.experiment_id
    same = cl.search_logged_models(experiment_ids=[exp], filter_string=f"tags.`{OP_TAG}` = 'retry-test'")
    assert [m.model_id for m in same] == [first["again"]]


def test_a_killed_run_is_marked_killed_and_resume_logs_into_the_same_run(tiny_data, tmp_path, monkeypatch, tiny_cfg):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from kubedistill.config import train_config
    from kubedistill.train import build_trainer

    def kill_after_second_epoch(trainer):
        if trainer.epoch == 1:
            raise KeyboardInterrupt

    cfg = tiny_cfg(tiny_data, tmp_path / "runs", "r", epochs=3, mlflow=True, plots=False, mlflow_system_metrics=False)
    first = build_trainer(cfg, {"on_fit_epoch_end": [kill_after_second_epoch]})
    with pytest.raises(KeyboardInterrupt):
        first.train()
    cl = mlflow.MlflowClient(first.mlflow_run["tracking_uri"])
    run_id = first.mlflow_run["run_id"]
    assert cl.get_run(run_id).info.status == "KILLED"

    second = build_trainer(train_config(resume=str(first.wdir / "last.pt"), mlflow=True))
    second.train()
    assert second.mlflow_run["run_id"] == run_id
    run = cl.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert sorted({m.step for m in cl.get_metric_history(run_id, "train/box_loss")}) == [0, 1, 2]
    assert not [k for k in run.data.metrics if k.startswith("system/")]  # turned off, and resume kept it off


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again at once: connections are refused


def test_server_down_never_loses_the_run_and_sync_sends_it_later(
    tiny_data, tmp_path, monkeypatch, mlflow_server, tiny_train
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_dead_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    trainer = tiny_train(tmp_path / "runs", tiny_data, "offline", epochs=2, exist_ok=True, plots=False)[0]
    d = trainer.save_dir
    # training finished and kept everything locally
    assert (d / "weights" / "best.pt").is_file() and (d / "results.csv").is_file()
    spool = d / "mlflow_pending.jsonl"
    ops = [json.loads(line) for line in spool.read_text().splitlines()]
    kinds = [op["op"] for op in ops]
    assert kinds[0] == "create_run" and kinds[-1] == "end" and kinds.count("log_artifact") >= 4
    assert [[m["name"] for m in op["models"]] for op in ops if op["op"] == "log_models"] == [["best", "last"]]
    assert sum(len(op.get("metrics", [])) for op in ops) > 10
    assert json.loads((d / "mlflow.json").read_text())["run_id"] is None
    # the server is back (another address here): `kubedistill mlflow sync` sends everything, in order
    from kubedistill.cli import main

    main(["mlflow", "sync", str(d), "--tracking-uri", mlflow_server.uri])
    assert not spool.exists()
    info = json.loads((d / "mlflow.json").read_text())
    cl = mlflow.MlflowClient(mlflow_server.uri)
    run = cl.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in cl.get_metric_history(run.info.run_id, "train/box_loss")) == [0, 1]
    assert "system/cpu_utilization_percentage" in run.data.metrics  # spooled with the rest
    # the checkpoints went in as LoggedModels when the spool was replayed; served by model id
    models = assert_logged_models(cl, run, trainer, f"{trainer.spec.yaml_path.parent.name}/val")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    from kubedistill.serve.model import OnnxDetector
    from kubedistill.serve.resolve import resolve_model_uri

    onnx = resolve_model_uri(f"models:/{models['best'].model_id}")
    assert onnx.suffix == ".onnx" and models["best"].model_id in str(onnx)
    assert OnnxDetector(onnx).names == ["circle", "square"]


def test_registry_and_promotion_gate_on_a_real_server(
    tracked, tmp_path, monkeypatch, mlflow_server, s3_server, tiny_data
):
    """register -> pyfunc predict from models:/NAME@champion; a worse model is never promoted."""
    trainer, _, _ = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    from kubedistill.release.promote import promote
    from kubedistill.release.register import register_student
    from kubedistill.track.registry import champion

    name = "student-gate"
    good = trainer.wdir / "best.pt"
    v1 = register_student(good, name, onnx=trainer.wdir / "best.onnx", tags={"data_fingerprint": "abc"})
    cl = mlflow.MlflowClient(mlflow_server.uri)
    assert str(cl.get_model_version_by_alias(name, "challenger").version) == v1
    mv1 = cl.get_model_version(name, v1)  # no run given: a new run logged the checkpoint as a LoggedModel
    assert mv1.tags["logged_model_id"].startswith("m-") and mv1.source == f"models:/{mv1.tags['logged_model_id']}"
    assert cl.get_run(mv1.run_id).info.run_name == f"register-{name}"
    assert champion(name) is None
    first = promote(name, v1, tiny_data)
    assert first["promoted"] and first["champion"] is None and first["reason"] == "no champion yet"
    assert champion(name)["version"] == v1 and champion(name)["tags"]["data_fingerprint"] == "abc"
    good_score = first["candidate"]["value"]
    assert good_score > 0

    # the artifacts went to the S3 store behind the server
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.endswith("model.onnx") or k.endswith("best.onnx") for k in keys)

    # a worse candidate: rejected, champion unchanged, both figures and the decision on the version
    bad = _zero_head(good, tmp_path / "bad.pt")
    v2 = register_student(bad, name)
    res = promote(name, v2, tiny_data)
    assert res["promoted"] is False and res["candidate"]["value"] < res["champion"]["value"]
    assert res["champion"] == {"version": v1, "value": pytest.approx(good_score)}
    assert champion(name)["version"] == v1
    tags = cl.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "rejected" and tags["promotion.champion_version"] == v1
    assert float(tags["promotion.candidate_value"]) == pytest.approx(res["candidate"]["value"], abs=1e-6)

    # an equal candidate passes at min_delta 0 and fails at min_delta 0.01
    v3 = register_student(good, name)
    assert promote(name, v3, tiny_data, min_delta=0.01)["promoted"] is False
    assert champion(name)["version"] == v1
    res = promote(name, v3, tiny_data, min_delta=0.0)
    assert res["promoted"] is True and champion(name)["version"] == v3
    assert str(cl.get_model_version_by_alias(name, "previous-champion").version) == v1

    # the champion as a pyfunc: predict(images) returns detections
    from kubedistill.data.images import read_image

    images = sorted((tiny_data.parent / "images" / "val").iterdir())[:2]
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = model.predict([str(p) for p in images], params={"conf": 0.0, "max_det": 5})
    assert list(out.columns) == ["image", "class_id", "class_name", "score", "x1", "y1", "x2", "y2"]
    assert set(out["image"]) == {0, 1} and (out.groupby("image").size() <= 5).all()
    assert set(out["class_name"]) <= {"circle", "square"}
    arr = np.stack([read_image(images[0])])
    assert len(model.predict(arr, params={"conf": 0.0})) > 5  # default max_det is larger than 5
    # the server resolves a registered model to its ONNX file (cached per server, name and version)
    from kubedistill.serve.model import OnnxDetector
    from kubedistill.serve.resolve import resolve_model_uri

    onnx = resolve_model_uri(f"models:/{name}@champion")
    assert onnx.suffix == ".onnx" and f"{name}-v{v3}" in str(onnx) and str(tmp_path / "cache") in str(onnx)
    assert OnnxDetector(onnx).names == ["circle", "square"]
    assert resolve_model_uri(f"models:/{name}/{v3}") == onnx
    # the .pt checkpoint sits beside the ONNX model
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{v3}", dst_path=str(tmp_path / "dl"))
    assert sorted(p.suffix for p in __import__("pathlib").Path(local).rglob("*") if p.suffix in (".pt", ".onnx")) == [
        ".onnx",
        ".pt",
    ]


def test_distill_from_a_registered_teacher_logs_dis_loss(tracked, tmp_path, monkeypatch, tiny_data, tiny_train):
    trainer, uri, project = tracked
    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from kubedistill.release.register import register_student

    v = register_student(trainer.wdir / "best.pt", "teacher", tracking_uri=uri, onnx=trainer.wdir / "best.onnx")
    student = tiny_train(
        project,
        tiny_data,
        "distilled",
        epochs=1,
        exist_ok=True,
        mlflow=True,
        distill_model=f"models:/teacher/{v}",
        plots=False,
    )[0]
    cl = mlflow.MlflowClient(uri)
    run = cl.get_run(student.mlflow_run["run_id"])
    assert "train/dis_loss" in run.data.metrics
    assert run.data.tags["teacher"] == f"models:/teacher/{v}"


def test_cli_promote_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from kubedistill.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(SystemExit) as e:
        main(["promote", "--model-name", "nope", "--version", "1", "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert (
        e.value.code == 2
        and err
        == f"error: No MLflow registry at sqlite:///{tmp_path / 'm.db'}. Set MLFLOW_TRACKING_URI (or --tracking-uri) to your MLflow server."
    )
    import mlflow as _mlflow

    _mlflow.MlflowClient(
        f"sqlite:///{tmp_path / 'm.db'}"
    ).search_experiments()  # now the store exists, the model does not
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["promote", "--model-name", "nope", "--version", "1", "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: models:/nope/1: not found in the registry") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["promote", "--model-name", "nope", "--version", "1", "--data", str(tmp_path), "--metric", "mAP42"])
    assert e.value.code == 2 and "Unknown promotion metric 'mAP42'" in capsys.readouterr().err


def test_register_cli_uses_the_training_run(tracked, capsys, monkeypatch):
    trainer, uri, project = tracked
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(project.parent)  # the default store is ./runs/mlflow.db
    from kubedistill.cli import main

    main(
        [
            "register",
            "--weights",
            str(trainer.wdir / "best.pt"),
            "--model-name",
            "cli-model",
            "--onnx",
            str(trainer.wdir / "best.onnx"),
            "--tag",
            "k=v",
        ]
    )
    stdout = capsys.readouterr().out
    out = json.loads(stdout[stdout.index("{") :])
    assert out["model_uri"] == f"models:/cli-model/{out['version']}" and out["alias"] == "challenger"
    cl = mlflow.MlflowClient(uri)
    mv = cl.get_model_version_by_alias("cli-model", "challenger")
    assert str(mv.version) == out["version"] and mv.run_id == trainer.mlflow_run["run_id"] and mv.tags["k"] == "v"
    # made from the run's "best" LoggedModel (same weights): nothing uploaded again
    run = cl.get_run(trainer.mlflow_run["run_id"])
    best = next(
        m
        for m in cl.search_logged_models(experiment_ids=[run.info.experiment_id])
        if m.name == "best" and m.source_run_id == run.info.run_id
    )
    assert mv.tags["logged_model_id"] == best.model_id and mv.source == f"models:/{best.model_id}"


def test_import_track_is_cheap():
    import subprocess
    import sys

    code = "import kubedistill.track, kubedistill.track.settings, sys; print('mlflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True
    ).stdout.split()
    assert out == ["False", "False"]
