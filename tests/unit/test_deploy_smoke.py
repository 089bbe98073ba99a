"""The chart's `helm test` program (`python -m kubedistill.deploy.smoke`) against a real `kubedistill serve`
on loopback: it waits for readiness, then runs one inference; it fails with the reason otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from kubedistill.deploy import smoke


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    """`kubedistill serve` in its own process; the model loads while the smoke test is already polling."""
    onnx = served_model[1]
    port = free_port()
    log = tmp_path_factory.mktemp("smoke") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "kubedistill",
        "serve",
        "--model",
        str(onnx),
        "--name",
        "detector",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        "1",
        "--no-access-log",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc, log
    finally:
        proc.kill()
        proc.wait(10)


def run_smoke(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kubedistill.deploy.smoke", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_smoke_waits_for_ready_then_runs_one_inference(server):
    url, proc, log = server
    res = run_smoke(
        "--url", url, "--model", "detector", "--timeout", "60"
    )  # started right after the server: it must wait
    assert res.returncode == 0, res.stdout + res.stderr + log.read_text()
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ready after ") and lines[0].endswith(url)
    assert lines[1].startswith("model detector version")
    assert (
        lines[2].startswith("one inference: ") and "detection(s) in" in lines[2] and "(model_name detector)" in lines[2]
    )
    assert lines[-1] == "ok" and proc.poll() is None


def test_smoke_fails_on_a_wrong_model_name(server):
    url, _, _ = server
    res = run_smoke("--url", url, "--model", "other", "--timeout", "60")
    assert res.returncode == 1 and res.stderr.startswith("error: model 'other' is not served: 404")


def test_smoke_times_out_when_nothing_answers():
    port = free_port()  # closed again: nothing listens
    t0 = time.monotonic()
    res = run_smoke("--url", f"http://127.0.0.1:{port}", "--model", "detector", "--timeout", "2")
    assert res.returncode == 1 and time.monotonic() - t0 < 30
    assert res.stderr.startswith(
        f"error: http://127.0.0.1:{port}/v2/health/ready not ready after 2 s (last: URLError: "
    )


def test_smoke_imports_nothing_heavy():
    """The test pod runs it in the serve image: standard library only at import (no torch, no Helm, no kubernetes)."""
    code = (
        "import sys, kubedistill.deploy.smoke; "
        "print(sorted(m for m in ('torch', 'helm_python', 'kubernetes', 'yaml', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "[]"
    assert smoke.main(["--url", "http://127.0.0.1:9", "--model", "x", "--timeout", "0"]) == 1
