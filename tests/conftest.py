"""Shared fixtures: tiny synthetic datasets (made once per session)."""

from __future__ import annotations

import pytest

from kubedistill.data.synth import make_synth


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """16 train / 8 val images at 64 px: enough to run training steps, not to learn."""
    return make_synth(tmp_path_factory.mktemp("tiny"), train=16, val=8, imgsz=64, seed=0, names=("circle", "square"), min_size=8)


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory):
    """The learning test's set: 2 classes, objects of 12 px and up, at most 3 per image, 96 px."""
    return make_synth(tmp_path_factory.mktemp("easy"), train=160, val=40, imgsz=96, seed=1,
                      names=("circle", "square"), min_size=12, max_objects=3)


TINY_TRAIN = dict(imgsz=64, batch=8, nbs=8, workers=0, optimizer="AdamW", lr0=0.002, warmup_epochs=0.5, verbose=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible store (SeaweedFS `weed mini`) on loopback, shared by the session."""
    from tests.servers import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 (and MLflow's S3 client) at the loopback store for one test."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real `mlflow server` (sqlite backend, artifacts proxied to the SeaweedFS store), shared by the session."""
    from tests.servers import mlflow_server as start

    with start(tmp_path_factory.mktemp("mlflow-server"), s3_server) as server:
        yield server
