"""The container tests (marker `container`; `make test-container`, CI's container stage): they build the images
with docker/build.py (which reuses them when their sources are unchanged) and need a docker engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.container.pods import ROOT, docker


@pytest.fixture(scope="session")
def images():
    """{"serve": ref, "train": ref}, built (or reused) once per session."""
    from kubedistill.images import serve_image, train_image

    docker("info")  # fails here, with the engine's answer, when none runs
    res = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "build.py"), "serve", "train"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return {"serve": serve_image(), "train": train_image(), "build_log": res.stdout}
