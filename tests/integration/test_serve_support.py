"""Shared by the serving tests: one tiny trained + exported model per test session (no tests here).

Pytest fixtures cannot be shared between test modules without conftest.py, so the serving test
modules call `served_model` from their own module-scoped fixtures; the result is cached here, so
the model is trained and exported once per session whichever module asks first.
"""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, tuple[Path, Path]] = {}


def served_model(tmp_path_factory, tiny_data) -> tuple[Path, Path]:
    """(best.pt, model.onnx) of a 1-epoch model on the tiny set (64 px, classes circle/square)."""
    if "model" not in _CACHE:
        from kubedistill.config import train_config
        from kubedistill.model.export import export_onnx
        from kubedistill.train import build_trainer
        from tests.conftest import TINY_TRAIN

        tmp = tmp_path_factory.mktemp("serve_model")
        cfg = train_config(data=str(tiny_data), project=str(tmp), name="m", epochs=1, **TINY_TRAIN)
        weights = Path(build_trainer(cfg).train()["best"])
        onnx_path = Path(export_onnx(weights, tmp / "tiny.onnx")["path"])  # max_det 300: [1, 168, 6] at 64 px
        _CACHE["model"] = (weights, onnx_path)
    return _CACHE["model"]


def wait_ready(client, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("model not ready in time")
