"""Shared by the serving tests (no tests here): waiting for a server's readiness. The served test model itself is the
session fixture `served_model` in tests/conftest.py."""

from __future__ import annotations


def wait_ready(client, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("model not ready in time")
