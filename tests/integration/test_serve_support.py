"""Shared by the serving tests: one tiny trained + exported model per test session (no tests here).

Pytest fixtures cannot be shared between test modules without conftest.py, so the serving test
modules call `served_model` from their own module-scoped fixtures; the result is cached here, so
the model is trained and exported once per session whichever module asks first.
"""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, tuple[Path, Path]] = {}


def served_model(tmp_path_factory, tiny_data) -> tuple[Path, Path]:
    """(weights.pt, model.onnx) of a 1-epoch model on the tiny set (64 px, classes circle/square).

    Its BatchNorm statistics are then measured afresh on the training images. As trained for one
    epoch, the model gives the same answer for every image (its eval-mode activations fade out), and
    then "served equals predict" would hold even if the server fed the model the wrong pixels.
    Recalibrated, its scores spread over 0-0.6 and differ from image to image.
    """
    if "model" not in _CACHE:
        import numpy as np
        import torch

        from kubedistill.config import train_config
        from kubedistill.data.images import read_image
        from kubedistill.data.letterbox import letterbox
        from kubedistill.model.export import export_onnx
        from kubedistill.train import build_trainer
        from kubedistill.core.checkpoint import load_checkpoint
        from kubedistill.model.checkpoint import model_from_checkpoint
        from tests.conftest import TINY_TRAIN

        tmp = tmp_path_factory.mktemp("serve_model")
        cfg = train_config(data=str(tiny_data), project=str(tmp), name="m", epochs=1, **TINY_TRAIN)
        ckpt = load_checkpoint(build_trainer(cfg).train()["best"])
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
        _CACHE["model"] = (weights, onnx_path)
    return _CACHE["model"]


def served_dynamic_model(tmp_path_factory, tiny_data) -> Path:
    """The same model exported with a dynamic batch (for micro-batching), once per session."""
    if "dynamic" not in _CACHE:
        from kubedistill.model.export import export_onnx

        weights = served_model(tmp_path_factory, tiny_data)[0]
        _CACHE["dynamic"] = Path(export_onnx(weights, weights.parent / "tiny_dyn.onnx", dynamic=True)["path"])
    return _CACHE["dynamic"]


def wait_ready(client, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("model not ready in time")
