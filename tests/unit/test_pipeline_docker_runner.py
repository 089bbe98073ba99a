"""`kubedistill run --runner docker`'s settings, without an engine: mounts of local paths, the env passed on,
sizes, and a one-line error when no engine answers (the runs themselves: tests/container/)."""

from __future__ import annotations

import pytest

pytest.importorskip("kfp")
pytest.importorskip("docker")

from kubedistill.core.errors import UserError  # noqa: E402
from kubedistill.core.names import RUN_ID_ENV  # noqa: E402
from kubedistill.pipeline import docker_runner  # noqa: E402


def test_sizes_in_docker_units():
    assert docker_runner._docker_size("2Gi") == "2g" and docker_runner._docker_size("512Mi") == "512m"


def test_local_paths_become_absolute_mounts(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.yaml").write_text("names: [a]\n")
    (out / "teacher.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    params, mounts = docker_runner.host_paths(
        {"dataset_uri": "data/data.yaml", "teacher_uri": str(out / "teacher.pt"), "dataset_store": "store"}, out
    )
    assert params["dataset_uri"] == str(data / "data.yaml")  # absolute: the container's cwd is its HOME
    assert (tmp_path / "store").is_dir() and params["dataset_store"] == str(tmp_path / "store")
    # read-only data, a writable store; the teacher is under --out, which is mounted anyway
    assert mounts == [(data / "data.yaml", False), (tmp_path / "store", True)]
    for remote in ("demo", "demo?train=8", "s3://b/k/", "models:/t/1", ""):
        p, m = docker_runner.host_paths({"dataset_uri": remote, "teacher_uri": remote}, out)
        assert p["dataset_uri"] == remote and m == []


def test_step_env_passes_only_what_is_set(monkeypatch):
    for k in docker_runner.PASS_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("UNRELATED_SECRET", "no")
    env = docker_runner.step_env("run123", "http://127.0.0.1:5000")
    assert env == {"AWS_ACCESS_KEY_ID": "key", RUN_ID_ENV: "run123", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}


def test_no_engine_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    with pytest.raises(UserError, match="No docker engine answers") as e:
        docker_runner.docker_client()
    assert "--runner subprocess" in e.value.fix


def test_a_local_mlflow_store_outside_out_is_mounted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert docker_runner.tracking_mount(f"sqlite:///{out / 'mlflow.db'}", out) == []  # --out is mounted anyway
    assert docker_runner.tracking_mount(f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}", out) == [(tmp_path / "ml", True)]
    assert (tmp_path / "ml").is_dir()
    assert docker_runner.tracking_mount(f"file://{tmp_path / 'runs'}", out) == [(tmp_path / "runs", True)]
    for remote in ("http://127.0.0.1:5000", "databricks", "", None):
        assert docker_runner.tracking_mount(remote, out) == []
