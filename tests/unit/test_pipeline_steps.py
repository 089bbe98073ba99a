"""Step logic without KFP: the data gate of scheduled retraining, the pipeline's MLflow run, training options."""

from __future__ import annotations

import pytest

from kubedistill.core.errors import ConfigError, UserError
from kubedistill.pipeline import steps
from kubedistill.pipeline import tracking as pipeline_tracking

pytest.importorskip("mlflow")


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A real MLflow (sqlite) with a registered model whose champion was trained on data 'fp-old'."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(steps.RUN_ID_ENV, "kfp-run-1")
    from mlflow import MlflowClient

    cl = MlflowClient(uri, uri)
    cl.create_registered_model("det")
    run = cl.create_run(cl.create_experiment("training", artifact_location=(tmp_path / "art").as_uri()))
    mv = cl.create_model_version(
        "det", source=(tmp_path / "art" / "model").as_uri(), run_id=run.info.run_id, tags={"data_fingerprint": "fp-old"}
    )
    cl.set_registered_model_alias("det", "champion", mv.version)
    return cl


def _parent(cl, rid="kfp-run-1"):
    runs = cl.search_runs(
        [cl.get_experiment_by_name("kubedistill").experiment_id],
        filter_string=f"tags.pipeline_run_id = '{rid}' and tags.{pipeline_tracking.KIND_TAG} = 'pipeline'",
    )
    assert len(runs) == 1
    return runs[0]


def test_unchanged_data_ends_the_run_early(tracking, tmp_path):
    report = tmp_path / "report.html"
    report.write_text("<html>data</html>")
    res = steps.check_unchanged(
        "fp-old",
        "det",
        skip_if_unchanged=True,
        dataset_uri="s3://d/x",
        reports=[report],
        out_md=tmp_path / "decision.md",
    )
    assert res["proceed"] is False and res["champion"] == "1"
    assert "data unchanged since champion version 1" in res["reason"] and "the run ends here" in res["reason"]
    assert "**Skipped**" in (tmp_path / "decision.md").read_text()
    parent = _parent(tracking)
    assert parent.info.status == "FINISHED" and parent.data.tags["outcome"] == "skipped: data unchanged"
    assert parent.data.tags["data_fingerprint"] == "fp-old" and parent.data.tags["dataset_uri"] == "s3://d/x"
    assert [a.path for a in tracking.list_artifacts(parent.info.run_id, "data")] == ["data/report.html"]
    # the exit step leaves a finished run as it is
    assert pipeline_tracking.finish_tracking("SUCCEEDED")["status"] == "FINISHED"


def test_changed_data_or_no_skip_trains(tracking, tmp_path, monkeypatch):
    res = steps.check_unchanged("fp-new", "det", skip_if_unchanged=True)
    assert res["proceed"] and "data changed since champion version 1" in res["reason"]
    assert _parent(tracking).info.status == "RUNNING"
    assert steps.check_unchanged("fp-old", "det", skip_if_unchanged=False)["proceed"]  # same parent run, found by tag
    assert steps.check_unchanged("fp-old", "other-model", skip_if_unchanged=True)["reason"].startswith("no champion")
    done = pipeline_tracking.finish_tracking("FAILED", error="evaluate: boom")
    parent = _parent(tracking)
    assert (
        done["status"] == "FAILED"
        and parent.info.status == "FAILED"
        and parent.data.tags["pipeline_error"] == "evaluate: boom"
    )


def test_skip_if_unchanged_needs_the_registry(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert steps.check_unchanged("fp", "det", skip_if_unchanged=False)["proceed"]  # no tracking, no gate: fine
    with pytest.raises(UserError, match="skip_if_unchanged needs the MLflow model registry"):
        steps.check_unchanged("fp", "det", skip_if_unchanged=True)
    assert pipeline_tracking.parent_run() is None and pipeline_tracking.finish_tracking("SUCCEEDED") == {
        "parent_run_id": None,
        "status": None,
    }


def test_train_options():
    opts = steps.build_train_config({"batch": 16.0, "close-mosaic": 2, "mosaic": 0.5}, epochs=3)
    assert opts == {"batch": 16, "close_mosaic": 2, "mosaic": 0.5, "epochs": 3} and isinstance(opts["batch"], int)
    with pytest.raises(ConfigError, match="extra_config sets 'epochs', which is a pipeline parameter"):
        steps.build_train_config({"epochs": 5})
    with pytest.raises(ConfigError, match="extra_config sets 'distill_model', which the pipeline sets itself"):
        steps.build_train_config({"distill_model": "x.pt"})


def test_a_step_user_error_is_one_line(capsys):
    def bad():
        raise UserError("Dataset 'x' does not exist", "Pass a folder")

    with pytest.raises(SystemExit) as e:
        steps.run(bad)
    assert e.value.code == 2 and capsys.readouterr().err == "error: Dataset 'x' does not exist. Pass a folder.\n"
    assert steps.run(lambda a, b=1: a + b, 1, b=2) == 3


def test_deploy_step_pins_the_version_and_fails_on_a_rolled_back_rollout(monkeypatch):

    calls = []

    def fake_deploy(
        release, namespace, model_uri, **kw
    ):  # no cluster here: the rollout itself is tested in test_deploy.py
        calls.append((release, namespace, model_uri, kw.get("mode")))
        return {"status": outcome["status"], "rolled_back": outcome["status"] != "deployed", "reason": "pods not ready"}

    outcome = {"status": "deployed"}
    monkeypatch.setattr(steps, "deploy", fake_deploy)  # the name steps.deploy_step calls
    assert steps.deploy_step("det", "7", release="r", namespace="serving")["status"] == "deployed"
    assert calls == [("r", "serving", "models:/det/7", "deployment")]
    steps.deploy_step("det", "7", release="r", namespace="serving", mode="kserve")
    assert calls[-1] == ("r", "serving", "models:/det/7", "kserve")
    outcome["status"] = "rolled-back"
    with pytest.raises(UserError, match="ended 'rolled-back' \\(rolled back\\): pods not ready"):
        steps.deploy_step("det", "8", release="r", namespace="serving")
