"""Shared fixtures: tiny synthetic datasets (made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubedistill.data.synth import make_easy, make_synth


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """16 train / 8 val images at 64 px: enough to run training steps, not to learn."""
    return make_synth(
        tmp_path_factory.mktemp("tiny"), train=16, val=8, imgsz=64, seed=0, names=("circle", "square"), min_size=8
    )


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory):
    """The learning test's set: 2 classes, objects of 12 px and up, at most 3 per image, 96 px."""
    return make_easy(tmp_path_factory.mktemp("easy"))


TINY_TRAIN = dict(imgsz=64, batch=8, nbs=8, workers=0, optimizer="AdamW", lr0=0.002, warmup_epochs=0.5, verbose=False)


@pytest.fixture(scope="session")
def tiny_cfg():
    """tiny_cfg(data, project, name="run", **options) -> the TrainConfig of a tiny, fast training run (64 px, batch 8,
    no workers, quiet); `options` override any of it."""
    from kubedistill.config import train_config

    def make(data, project, name="run", **options):
        return train_config(data=str(data), project=str(project), name=name, **{**TINY_TRAIN, **options})

    return make


@pytest.fixture(scope="session")
def tiny_train(tiny_cfg):
    """tiny_train(project, data, name="run", callbacks=None, **options) -> (trainer, results) of a tiny training run,
    built as `kubedistill train` builds it (build_trainer: MLflow tracking when configured)."""
    from kubedistill.train import build_trainer

    def run(project, data, name="run", callbacks=None, **options):
        trainer = build_trainer(tiny_cfg(data, project, name, **options), callbacks)
        return trainer, trainer.train()

    return run


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


@pytest.fixture(scope="session")
def served_model(tmp_path_factory, tiny_data, tiny_train):
    """(weights.pt, model.onnx) of a 1-epoch model on the tiny set (64 px, classes circle/square), made once per session.

    Its BatchNorm statistics are then measured afresh on the training images. As trained for one
    epoch, the model gives the same answer for every image (its eval-mode activations fade out), and
    then "served equals predict" would hold even if the server fed the model the wrong pixels.
    Recalibrated, its scores spread over 0-0.6 and differ from image to image.
    """
    import numpy as np
    import torch

    from kubedistill.core.checkpoint import load_checkpoint
    from kubedistill.data.images import read_image
    from kubedistill.data.letterbox import letterbox
    from kubedistill.model.checkpoint import model_from_checkpoint
    from kubedistill.model.export import export_onnx

    tmp = tmp_path_factory.mktemp("serve_model")
    ckpt = load_checkpoint(tiny_train(tmp, tiny_data, "m", epochs=1)[1]["best"])
    model = model_from_checkpoint(ckpt)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    model.train()
    train = sorted((tiny_data.parent / "images" / "train").glob("*.jpg"))
    x = np.stack([letterbox(read_image(f), 64)[0] for f in train])
    with torch.no_grad():
        model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)  # one batch of all 16
    ckpt["model"]["state_dict"] = model.state_dict()
    weights = tmp / "calibrated.pt"
    torch.save(ckpt, weights)
    onnx_path = Path(export_onnx(weights, tmp / "tiny.onnx")["path"])  # max_det 300: [1, 168, 6] at 64 px
    return weights, onnx_path


@pytest.fixture(scope="session")
def served_dynamic_model(served_model):
    """The same model exported with a dynamic batch (for micro-batching), once per session."""
    from kubedistill.model.export import export_onnx

    weights = served_model[0]
    return Path(export_onnx(weights, weights.parent / "tiny_dyn.onnx", dynamic=True)["path"])
