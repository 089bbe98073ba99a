"""compile / upload / submit through the real kfp.Client against a fake KFP API on loopback (recorded bodies)."""

from __future__ import annotations

import json

import pytest

from kubedistill.core.errors import UserError

pytest.importorskip("kfp")

from kubedistill.pipeline import kfp_client as kc  # noqa: E402
from tests.fixtures.kfp.fake_kfp import FakeKFP  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return kc.compile_pipeline(tmp_path_factory.mktemp("pkg") / "training.yaml")


@pytest.fixture
def kfp():
    with FakeKFP() as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(kc.time, "sleep", lambda s: None)


def test_upload_creates_pipeline_and_version_once_per_content(kfp, package, tmp_path):
    client = kc.connect(kc.Endpoint(host=kfp.url))
    first = kc.upload(client, package)
    assert first["created"] and first["created_pipeline"]
    assert first["version"].startswith("v0.1.0-") and first["version"].endswith(first["sha256"][:12])
    assert kfp.uploads[first["version_id"]] == package.read_bytes()  # the multipart body carried the whole package
    pipeline = kfp.pipelines[first["pipeline_id"]]
    assert pipeline["display_name"] == "kubedistill-training" and "distill" in pipeline["description"]
    assert kc.SHA_MARK + first["sha256"] in kfp.versions[first["version_id"]]["description"]

    again = kc.upload(client, package)
    assert not again["created"] and again["version_id"] == first["version_id"]
    assert len(kfp.calls("POST", "upload_version$")) == 1 and len(kfp.calls("POST", "/pipelines$")) == 1

    changed = tmp_path / "training.yaml"
    changed.write_bytes(package.read_bytes() + b"# changed\n")
    third = kc.upload(client, changed)
    assert third["created"] and not third["created_pipeline"] and third["version_id"] != first["version_id"]
    assert third["pipeline_id"] == first["pipeline_id"]

    with pytest.raises(UserError, match="already has a version 'mine' with other content"):
        kc.upload(client, package, version="mine")  # first use of the name: fine
        kc.upload(client, changed, version="mine")


def test_submit_runs_the_newest_version_in_an_experiment_made_once(kfp, package, tmp_path):
    client = kc.connect(kc.Endpoint(host=kfp.url))
    old = kc.upload(client, package)
    changed = tmp_path / "training.yaml"
    changed.write_bytes(package.read_bytes() + b"# newer\n")
    new = kc.upload(client, changed)
    run = kc.submit(client, params={"imgsz": 320, "extra_config": {"batch": 8}}, experiment="nightly", run_name="r1")
    stored = kfp.runs[run["run_id"]]
    assert stored["pipeline_version_reference"] == {
        "pipeline_id": new["pipeline_id"],
        "pipeline_version_id": new["version_id"],
    }
    assert stored["runtime_config"]["parameters"] == {"imgsz": 320, "extra_config": {"batch": 8}}
    assert kfp.experiments[run["experiment_id"]]["display_name"] == "nightly"
    assert run["url"].endswith(f"/#/runs/details/{run['run_id']}")

    pinned = kc.submit(client, params={}, experiment="nightly", version=old["version"])
    assert kfp.runs[pinned["run_id"]]["pipeline_version_reference"]["pipeline_version_id"] == old["version_id"]
    assert pinned["experiment_id"] == run["experiment_id"]
    assert len(kfp.calls("POST", "/experiments$")) == 1  # found by name the second time

    with pytest.raises(UserError, match="has no version 'nope'"):
        kc.submit(client, params={}, version="nope")


def test_submit_a_package_directly(kfp, package):
    client = kc.connect(kc.Endpoint(host=kfp.url))
    run = kc.submit(client, params={"dataset_uri": "s3://b/ds/"}, package=package, enable_caching=False)
    stored = kfp.runs[run["run_id"]]["pipeline_spec"]
    assert stored["pipeline_spec"]["pipelineInfo"]["name"] == "kubedistill-training"
    assert "exec-train-teacher" in stored["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = stored["pipeline_spec"]["root"]["dag"]["tasks"]
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
    assert kfp.calls("POST", "/runs$")[0]["json"]["runtime_config"]["parameters"] == {"dataset_uri": "s3://b/ds/"}


def test_submit_without_an_uploaded_pipeline_says_so(kfp):
    client = kc.connect(kc.Endpoint(host=kfp.url))
    with pytest.raises(UserError, match="No pipeline 'kubedistill-training'.*pipeline upload"):
        kc.submit(client, params={})


def test_bearer_token_and_refusal():
    with FakeKFP(token="s3cret") as kfp:
        with pytest.raises(UserError) as e:
            kc.connect(kc.Endpoint(host=kfp.url))  # healthz is refused without the token
        assert "refused the credentials (401)" in str(e.value) and "--token" in str(e.value)
        client = kc.connect(kc.Endpoint(host=kfp.url, token="s3cret"))
        assert kc.pipeline_id(client, "kubedistill-training") is None
        assert kfp.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"


def test_service_account_token_file_is_sent(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("projected-sa-token")
    with FakeKFP(token="projected-sa-token") as kfp:
        client = kc.connect(kc.Endpoint(host=kfp.url, sa_token_path=str(tok)))
        kc.pipeline_id(client, "x")
    with pytest.raises(UserError, match="does not exist"):
        kc.connect(kc.Endpoint(host="http://127.0.0.1:9", sa_token_path=str(tmp_path / "missing")))


def test_reads_retry_on_503_and_creates_do_not(kfp, package):
    client = kc.connect(kc.Endpoint(host=kfp.url))
    kfp.fail("GET", r"/pipelines$", 503, times=2)
    assert kc.pipeline_id(client, "kubedistill-training") is None  # third attempt answers
    kfp.fail("POST", r"/pipelines$", 503, times=1)
    with pytest.raises(UserError, match="failed creating pipeline 'kubedistill-training' \\(503"):
        kc.upload(client, package)
    assert len(kfp.calls("POST", "/pipelines$")) == 1


def test_unreachable_endpoint_is_one_line():
    from tests.servers import free_port

    with pytest.raises(UserError) as e:
        kc.connect(kc.Endpoint(host=f"http://127.0.0.1:{free_port()}"))
    assert "Cannot reach Kubeflow Pipelines" in str(e.value) and "--host" in str(e.value)


def test_no_host_is_a_user_error(monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UserError, match="No Kubeflow Pipelines endpoint"):
        kc.connect(kc.Endpoint())


def test_cli_upload_and_submit(kfp, package, capsys, monkeypatch):
    from kubedistill.cli import main

    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp.url)
    main(["pipeline", "upload", "--package", str(package)])
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["created"] is True
    main(
        ["pipeline", "submit", "--param", "teacher_epochs=3", "--param", "skip_if_unchanged=true", "--experiment", "e1"]
    )
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{") :])
    assert kfp.runs[res["run_id"]]["runtime_config"]["parameters"] == {"teacher_epochs": 3, "skip_if_unchanged": True}
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "submit", "--param", "teacher_epoch=3"])
    assert e.value.code == 2
    assert (
        "error: Unknown pipeline parameter 'teacher_epoch' (did you mean 'teacher_epochs'?)" in capsys.readouterr().err
    )
