"""Micro-batching in the server (--max-batch-size): concurrent requests share model calls and get the
answers they would get alone; a fixed-batch model is refused with the fix; bad settings are user errors."""

from __future__ import annotations

import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from kubedistill.serve.app import create_app  # noqa: E402
from kubedistill.serve.model import OnnxDetector  # noqa: E402
from tests.integration.test_serve_support import wait_ready  # noqa: E402

CONF = 0.05


@pytest.fixture(scope="module")
def models(served_model, served_dynamic_model):
    """(fixed-batch export, dynamic-batch export) of the served test model (its answers depend on the image)."""
    return served_model[1], served_dynamic_model


@pytest.fixture(scope="module")
def images(tiny_data):
    files = sorted((tiny_data.parent / "images" / "val").glob("*.jpg"))[:4]
    assert len(files) == 4
    return [f.read_bytes() for f in files]


def _detect(client, data: bytes) -> list[dict]:
    r = client.post("/v1/detect", params={"conf": CONF}, content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["detections"]


def _same(a: list[dict], b: list[dict]) -> None:
    """Same detections up to float noise of a batched run (and scores within 1e-4 of conf on either side)."""
    sure = [d for d in a if d["score"] > CONF + 1e-4]
    assert len(b) >= len(sure) and len(b) <= len(a) + sum(abs(d["score"] - CONF) <= 1e-4 for d in b)
    for d in sure:
        twins = [
            e
            for e in b
            if e["class_id"] == d["class_id"]
            and abs(e["score"] - d["score"]) <= 1e-4
            and max(abs(x - y) for x, y in zip(e["box"], d["box"])) <= 0.01
        ]
        assert twins, f"{d} has no twin in the batched answer"


def test_concurrent_requests_share_model_calls_and_get_their_own_answers(models, images):
    dynamic = models[1]
    with TestClient(create_app(dynamic, name="tiny", background_load=False)) as alone:
        expected = [_detect(alone, data) for data in images]
    assert all(expected) and len({str(e[:3]) for e in expected}) == len(images), "images must get different answers"
    # each model call sleeps 0.3 s, so requests pile up behind the first one
    app = create_app(
        dynamic, name="tiny", background_load=False, max_batch_size=4, max_latency_ms=50, inference_delay_s=0.3
    )
    order = [i % len(images) for i in range(10)]
    with TestClient(app) as c:
        wait_ready(c)
        with ThreadPoolExecutor(10) as pool:
            got = list(pool.map(lambda i: _detect(c, images[i]), order))
        metrics = c.get("/metrics").text
    for i, dets in zip(order, got):
        _same(expected[i], dets)
    sizes = app.state.serve.batcher.batches
    assert sum(sizes) == len(order) and max(sizes) > 1 and all(s <= 4 for s in sizes), sizes

    def value(name: str) -> float:
        return float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith(name)))

    assert value("kubedistill_inference_batch_size_count") == len(sizes) < len(order)
    assert value("kubedistill_batch_wait_seconds_count") == len(order)  # one wait per request
    assert value("kubedistill_batch_wait_seconds_sum") > 0.3  # requests queued behind a 0.3 s model call


def test_v2_infer_requests_are_batched_too(models):
    dynamic = models[1]
    det = OnnxDetector(dynamic, threads=1)
    rng = np.random.default_rng(0)
    inputs = [rng.random((n, 3, 64, 64), dtype=np.float32) for n in (1, 2, 1, 3)]
    app = create_app(
        dynamic, name="tiny", background_load=False, max_batch_size=8, max_latency_ms=50, inference_delay_s=0.3
    )

    def infer(x):
        body = {"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        r = c.post("/v2/models/tiny/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])

    with TestClient(app) as c:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(infer, inputs))
    for x, y in zip(inputs, got):
        ref = det.run(x)
        assert y.shape == ref.shape
        np.testing.assert_allclose(y[..., 4], ref[..., 4], atol=1e-4)  # scores; boxes of near-zero scores may reorder
        keep = ref[..., 4] > 0.01
        np.testing.assert_allclose(y[..., :4][keep], ref[..., :4][keep], atol=0.01)
    assert max(app.state.serve.batcher.batches) > 1


def test_a_fixed_batch_model_is_refused_with_the_fix(models):
    with TestClient(create_app(models[0], name="tiny", background_load=False, max_batch_size=4)) as c:
        r = c.get("/v2/health/live")
        assert r.status_code == 400
        assert "fixed batch" in r.json()["error"] and "--dynamic" in r.json()["error"]
        assert c.post("/v1/detect", content=b"x", headers={"content-type": "image/png"}).status_code == 503


@pytest.mark.parametrize("flag,value", [("--max-batch-size", "0"), ("--max-latency-ms", "-1")])
def test_bad_batching_flags_are_one_line_errors(models, tmp_path, flag, value):
    r = subprocess.run(
        [sys.executable, "-m", "kubedistill", "serve", "--model", str(models[1]), flag, value],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and flag in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("max_batch_size", [1, 4])
def test_the_app_serves_again_after_a_restart(models, images, max_batch_size):
    """Stopping the app shuts its thread pools and batcher down; starting it again (a TestClient
    entered twice) makes new ones instead of failing on the old."""
    app = create_app(models[1], name="tiny", background_load=False, max_batch_size=max_batch_size)
    for _ in range(2):
        with TestClient(app) as c:
            wait_ready(c)
            assert _detect(c, images[0]) and c.get("/demo.jpg").status_code == 200
