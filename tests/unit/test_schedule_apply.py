"""Declarative schedules: apply / replace / unchanged / enable / prune / delete / trigger against a fake KFP API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubedistill.core.errors import ConfigError, UserError

pytest.importorskip("kfp")

from kubedistill.pipeline import kfp_client as kc  # noqa: E402
from kubedistill.pipeline import schedule as sch  # noqa: E402
from tests.fixtures.kfp.fake_kfp import FakeKFP  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipelines" / "compiled" / "training.yaml"


@pytest.fixture
def kfp():
    with FakeKFP() as fake:
        fake.max_page = 2  # the client must follow next_page_token
        yield fake


@pytest.fixture
def client(kfp):
    c = kc.connect(kc.Endpoint(host=kfp.url))
    kc.upload(c, PACKAGE)
    return c


def write(tmp_path: Path, schedules: list[dict], **top) -> Path:
    p = tmp_path / "schedules.yaml"
    p.write_text(yaml.safe_dump({"experiment": "retrain", **top, "schedules": schedules}))
    return p


NIGHTLY = {"name": "nightly", "cron": "0 3 * * *", "params": {"dataset_uri": "s3://d/x/", "skip_if_unchanged": True}}
WEEKLY = {"name": "weekly", "interval": "7d", "params": {"teacher_epochs": "150"}, "enabled": False}


def test_example_file_is_valid():
    spec = sch.load_schedules(ROOT / "pipelines" / "schedules.yaml", PACKAGE)
    assert [s.name for s in spec.schedules] == ["nightly-retrain", "weekly-full"]
    assert spec.schedules[0].cron == "0 0 3 * * *" and spec.schedules[1].interval == 7 * 86400


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"name": "a", "cron": "0 3 * *"}, "has 4 fields"),
        ({"name": "a", "cron": "0 3 * * *", "interval": 60}, "exactly one of cron or interval"),
        ({"name": "a"}, "exactly one of cron or interval"),
        ({"name": "a", "interval": "30s"}, "shorter than a minute"),
        ({"name": "a", "interval": "often"}, "is not a period"),
        ({"name": "a", "interval": 3600, "max_concurrency": 0}, "max_concurrency"),
        ({"name": "a", "interval": 3600, "catchup": True}, "catchup"),
        ({"name": "a", "interval": 3600, "params": {"epochs": 3}}, "Unknown pipeline parameter 'epochs'"),
        ({"name": "a", "interval": 3600, "params": {"imgsz": "big"}}, "'imgsz' = 'big' is not a whole number"),
    ],
)
def test_bad_schedules_are_named(tmp_path, entry, message):
    with pytest.raises(ConfigError) as e:
        sch.load_schedules(write(tmp_path, [entry]), PACKAGE)
    assert message in str(e.value)


def test_duplicate_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="appears twice"):
        sch.load_schedules(write(tmp_path, [NIGHTLY, {**NIGHTLY}]), PACKAGE)


def test_apply_creates_then_leaves_unchanged_ones_alone(kfp, client, tmp_path):
    spec = sch.load_schedules(write(tmp_path, [NIGHTLY, WEEKLY]), PACKAGE)
    plan = sch.apply(client, spec, echo=lambda s: None)
    assert [(e["name"], e["action"]) for e in plan] == [("nightly", "created"), ("weekly", "created")]
    rrs = {r["display_name"]: r for r in kfp.recurring.values()}
    assert rrs["nightly"]["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert rrs["nightly"]["runtime_config"]["parameters"] == {"dataset_uri": "s3://d/x/", "skip_if_unchanged": True}
    assert (
        rrs["nightly"]["mode"] == "ENABLE"
        and rrs["nightly"]["no_catchup"] is True
        and rrs["nightly"]["max_concurrency"] == "1"
    )
    assert rrs["weekly"]["trigger"]["periodic_schedule"]["interval_second"] == str(7 * 86400)
    assert rrs["weekly"]["mode"] == "DISABLE" and rrs["weekly"]["runtime_config"]["parameters"] == {
        "teacher_epochs": 150
    }
    newest = max(kfp.versions.values(), key=lambda v: v["created_at"])
    assert rrs["nightly"]["pipeline_version_reference"]["pipeline_version_id"] == newest["pipeline_version_id"]
    assert sch.SPEC_MARK in rrs["nightly"]["description"]

    posts = len(kfp.calls("POST", "/recurringruns$"))
    plan = sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY, WEEKLY]), PACKAGE), echo=lambda s: None)
    assert [e["action"] for e in plan] == ["unchanged", "unchanged"]
    assert len(kfp.calls("POST", "/recurringruns$")) == posts and not kfp.calls("DELETE", "/recurringruns/")


def test_a_changed_spec_replaces_new_first_then_old(kfp, client, tmp_path):
    sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY]), PACKAGE), echo=lambda s: None)
    (old_id,) = kfp.recurring
    changed = {**NIGHTLY, "params": {**NIGHTLY["params"], "student_epochs": 50}}
    plan = sch.apply(client, sch.load_schedules(write(tmp_path, [changed]), PACKAGE), echo=lambda s: None)
    assert plan[0]["action"] == "replaced" and plan[0]["replaces"] == [old_id]
    (new_id,) = kfp.recurring
    assert new_id != old_id and kfp.recurring[new_id]["runtime_config"]["parameters"]["student_epochs"] == 50
    order = [(r["method"], r["path"]) for r in kfp.requests if "recurringruns" in r["path"] and r["method"] != "GET"]
    assert order == [
        ("POST", "/apis/v2beta1/recurringruns"),
        ("POST", "/apis/v2beta1/recurringruns"),
        ("DELETE", f"/apis/v2beta1/recurringruns/{old_id}"),
    ]


def test_a_new_pipeline_version_replaces_schedules_on_latest(kfp, client, tmp_path):
    sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY]), PACKAGE), echo=lambda s: None)
    newer = tmp_path / "training.yaml"
    newer.write_bytes(PACKAGE.read_bytes() + b"# v2\n")
    v2 = kc.upload(client, newer)
    plan = sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY]), PACKAGE), echo=lambda s: None)
    assert plan[0]["action"] == "replaced" and plan[0]["version"] == v2["version"]
    (rr,) = kfp.recurring.values()
    assert rr["pipeline_version_reference"]["pipeline_version_id"] == v2["version_id"]


def test_enabled_flips_in_place(kfp, client, tmp_path):
    sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY]), PACKAGE), echo=lambda s: None)
    (rid,) = kfp.recurring
    plan = sch.apply(
        client, sch.load_schedules(write(tmp_path, [{**NIGHTLY, "enabled": False}]), PACKAGE), echo=lambda s: None
    )
    assert plan[0]["action"] == "disabled" and list(kfp.recurring) == [rid] and kfp.recurring[rid]["mode"] == "DISABLE"
    assert kfp.calls("POST", rf"/recurringruns/{rid}:disable$")


def test_dry_run_changes_nothing(kfp, client, tmp_path):
    lines = []
    plan = sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY]), PACKAGE), dry_run=True, echo=lines.append)
    assert plan[0]["action"] == "created" and not kfp.recurring and "would be" in lines[0]


def test_prune_deletes_only_ours(kfp, client, tmp_path):
    sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY, WEEKLY]), PACKAGE), echo=lambda s: None)
    exp_id = kc.experiment_id(client, "retrain")
    pid = kc.pipeline_id(client, "kubedistill-training")
    vid = kc.find_version(client, pid).pipeline_version_id
    client.create_recurring_run(exp_id, "hand-made", interval_second=3600, pipeline_id=pid, version_id=vid)  # not ours
    plan = sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY]), PACKAGE), echo=lambda s: None)
    assert ("weekly", "not in file") in [(e["name"], e["action"]) for e in plan] and len(kfp.recurring) == 3
    plan = sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY]), PACKAGE), prune=True, echo=lambda s: None)
    assert ("weekly", "deleted") in [(e["name"], e["action"]) for e in plan]
    assert sorted(r["display_name"] for r in kfp.recurring.values()) == ["hand-made", "nightly"]


def test_list_delete_and_trigger(kfp, client, tmp_path):
    sch.apply(client, sch.load_schedules(write(tmp_path, [NIGHTLY, WEEKLY]), PACKAGE), echo=lambda s: None)
    listed = {d["name"]: d for d in sch.list_schedules(client, "retrain")}
    assert (
        listed["nightly"]["trigger"] == "cron 0 0 3 * * *"
        and listed["nightly"]["enabled"]
        and listed["nightly"]["managed"]
    )
    assert listed["weekly"]["trigger"] == f"every {7 * 86400}s" and not listed["weekly"]["enabled"]

    res = sch.trigger(client, "retrain", "nightly")
    run = kfp.runs[res["run_id"]]
    rr = next(r for r in kfp.recurring.values() if r["display_name"] == "nightly")
    assert run["runtime_config"]["parameters"] == {"dataset_uri": "s3://d/x/", "skip_if_unchanged": True}
    assert run["pipeline_version_reference"] == rr["pipeline_version_reference"]
    assert run["experiment_id"] == rr["experiment_id"] and "triggered" in run["display_name"]

    assert sch.delete(client, "retrain", "weekly")["action"] == "deleted"
    assert [r["display_name"] for r in kfp.recurring.values()] == ["nightly"]
    with pytest.raises(UserError, match="No recurring run 'weekly'"):
        sch.trigger(client, "retrain", "weekly")


def test_trigger_a_recurring_run_made_from_a_package(kfp, client):
    exp_id = kc.experiment_id(client, "retrain")
    client.create_recurring_run(
        exp_id, "from-package", cron_expression="0 0 1 * * *", pipeline_package_path=str(PACKAGE), params={"imgsz": 320}
    )
    res = sch.trigger(client, "retrain", "from-package")
    run = kfp.runs[res["run_id"]]
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kubedistill-training"
    assert run["runtime_config"]["parameters"] == {"imgsz": 320}


def test_cli_apply_and_list(kfp, client, tmp_path, capsys, monkeypatch):
    from kubedistill.cli import main

    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp.url)
    f = write(tmp_path, [NIGHTLY])
    main(["schedule", "apply", "-f", str(f), "--package", str(PACKAGE)])
    assert "created  nightly" in capsys.readouterr().out
    main(["schedule", "apply", "-f", str(f), "--package", str(PACKAGE)])
    assert "unchanged  nightly" in capsys.readouterr().out
    main(["schedule", "list", "-f", str(f)])
    out = capsys.readouterr().out
    assert json.loads(out[out.index("[") :])[0]["name"] == "nightly"
