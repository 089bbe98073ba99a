"""`kubedistill serve` as a real process on 127.0.0.1: SIGTERM drains in-flight requests and exits 0;
the page at / draws the demo detections in headless Chromium; `benchmark serve` smoke."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")

from kubedistill.benchmark.serve import free_port  # noqa: E402
from tests.servers import http_get  # noqa: E402


@pytest.fixture(scope="module")
def onnx_model(served_model):
    return served_model[1]


def _post(url: str, data: bytes, ctype: str, timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def dynamic_onnx_model(served_dynamic_model):
    return served_dynamic_model


class Server:
    def __init__(self, model, tmp_path, env: dict | None = None, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"server-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "kubedistill",
            "serve",
            "--model",
            str(model),
            "--name",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            "1",
            "--graceful-timeout",
            "20",
            *args,
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | (env or {}))

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if http_get(f"{self.base}/v2/health/ready", 1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready: " + self.log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.parametrize("batching", [False, True])
def test_sigterm_drains_in_flight_requests(onnx_model, dynamic_onnx_model, tmp_path, batching):
    """Both requests finish after SIGTERM: the one in its 2 s model call and the one queued behind it
    (with micro-batching, it waits in the batcher for the model)."""
    model, args = (
        (dynamic_onnx_model, ("--max-batch-size", "4", "--max-latency-ms", "5")) if batching else (onnx_model, ())
    )
    srv = Server(model, tmp_path, env={"KUBEDISTILL_SERVE_TEST_DELAY_S": "2.0"}, args=args)
    try:
        srv.wait_ready()
        imgs = [cv2.imencode(".png", np.full((48, w, 3), 120, np.uint8))[1].tobytes() for w in (80, 90)]
        result = {}

        def post(i):
            result[i] = _post(f"{srv.base}/v1/detect?conf=0.01", imgs[i], "image/png")

        threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
        t0 = time.monotonic()
        threads[0].start()
        time.sleep(0.3)
        threads[1].start()  # behind the first: in the thread pool, or queued for the next batch
        time.sleep(0.5)  # the first request is inside its 2 s model call now
        t1 = time.monotonic()
        assert http_get(f"{srv.base}/v2/health/live")[0] == 200  # the event loop is free meanwhile
        assert time.monotonic() - t1 < 0.5
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.4)
        with pytest.raises(OSError):  # no new connections while draining
            http_get(f"{srv.base}/v2/health/live", 1.0)
        for t in threads:
            t.join(30)
        for i, w in enumerate((80, 90)):
            code, body = result[i]
            assert code == 200, body
            assert json.loads(body)["results"][0]["width"] == w
        assert time.monotonic() - t0 >= 2.0
        assert srv.proc.wait(30) == 0, srv.log.read_text()
        log = srv.log.read_text()
        assert "Shutting down" in log and "Traceback" not in log
    finally:
        srv.stop()


def _chromium_cmd(url: str, out_png, profile) -> list[str]:
    return [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1000,800",
        "--virtual-time-budget=5000",
        f"--screenshot={out_png}",
        url,
    ]


def _canvas_origin(shot: np.ndarray) -> tuple[int, int, int]:
    """(x, y, width) of the canvas content, found by its 1 px CSS border (#d5dae0) in the screenshot."""
    border = np.abs(shot.astype(int) - (213, 218, 224)).max(-1) <= 3
    cols = np.flatnonzero(border.sum(0) >= 300)  # the canvas's left and right border columns
    assert len(cols) >= 2, "canvas border not found in the screenshot"
    x0, x1 = int(cols[0]), int(cols[-1])
    col = np.r_[0, border[:, x0].astype(np.int8), 0]
    starts, ends = np.flatnonzero(np.diff(col) == 1), np.flatnonzero(np.diff(col) == -1)
    y0 = int(starts[np.argmax(ends - starts)])  # the longest run: the canvas edge, not the header's bottom line
    return x0 + 1, y0 + 1, x1 - x0 - 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_page_draws_demo_detections_in_chromium(onnx_model, tmp_path):
    from kubedistill.eval.predictions import class_color

    srv = Server(onnx_model, tmp_path)
    try:
        srv.wait_ready()
        demo = http_get(f"{srv.base}/demo.jpg")[1]
        res = json.loads(_post(f"{srv.base}/v1/detect?conf=0.01", demo, "image/jpeg")[1])["results"][0]
        dets = res["detections"]
        assert dets, "the tiny model found nothing on the demo image"
        scores = [d["score"] for d in dets]
        # a conf that lets the fewest boxes through, cutting between two distinct scores
        cut = next((i for i in range(1, len(scores)) if scores[i - 1] - scores[i] > 1e-5), len(scores))
        conf = (scores[cut - 1] + scores[cut]) / 2 if cut < len(scores) else 0.0
        drawn = [d for d in dets if d["score"] > conf]
        assert drawn
        out = tmp_path / "page.png"
        r = subprocess.run(
            _chromium_cmd(f"{srv.base}/?demo=1&conf={conf!r}", out, tmp_path / f"chrome-{uuid.uuid4().hex}"),
            capture_output=True,
            timeout=90,
        )
        assert out.exists(), r.stderr.decode(errors="replace")[-2000:]
        shutil.copy(out, os.environ.get("KUBEDISTILL_SCREENSHOT", tmp_path / "keep.png"))
    finally:
        srv.stop()
    shot = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert shot.shape[:2] == (800, 1000) and shot.std() > 20  # not blank
    x0, y0, width = _canvas_origin(shot)
    scale = width / res["width"]
    assert scale > 4  # the 64 px image is shown enlarged
    canvas = shot[y0 : y0 + int(res["height"] * scale), x0 : x0 + width]
    assert canvas.std() > 10
    # the last box drawn is on top: its class colour must be on each of its four edges
    last = drawn[-1]
    colour = np.array(class_color(last["class_id"]))
    bx1, by1, bx2, by2 = [v * scale for v in last["box"]]
    edges = [((bx1 + bx2) / 2, by1), ((bx1 + bx2) / 2, by2), (bx1, (by1 + by2) / 2), (bx2, (by1 + by2) / 2)]
    for ex, ey in edges:
        x, y = int(round(x0 + ex)), int(round(y0 + ey))
        patch = shot[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4].reshape(-1, 3).astype(int)
        assert (np.abs(patch - colour).max(1) <= 24).any(), f"no {colour.tolist()} pixel near edge point ({x}, {y})"
    # and a box colour appears nowhere when nothing of that class is drawn
    for cls in {0, 1} - {d["class_id"] for d in drawn}:
        near = (np.abs(canvas.astype(int) - class_color(cls)).max(-1) <= 12).sum()
        assert near < 200, f"class {cls} colour drawn although no box of that class passes conf"


@pytest.mark.slow
def test_benchmark_serve_smoke(onnx_model, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubedistill",
            "benchmark",
            "serve",
            "--model",
            str(onnx_model),
            "--requests",
            "6",
            "--concurrency",
            "1,2",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert [row["concurrency"] for row in res["rows"]] == [1, 2]
    assert all(row["errors"] == 0 and row["requests"] == 6 and row["rps"] > 0 for row in res["rows"])
    assert res["model_ms"] > 0 and res["decode_letterbox_ms"] > 0 and res["server_exit_code"] == 0
    assert all(row["client_cpu_ms"] > 0 and row["server_cores"] > 0 for row in res["rows"])
    server = res["c1"]["server_timings_ms"]
    assert server["inference"] > 0 and server["preprocess"] > 0 and res["c1"]["ratio"] > 0
    p50 = res["rows"][0]["p50_ms"]
    assert abs(res["c1"]["http_json_client_ms"] - (p50 - sum(server.values()))) < 1e-6
    assert abs(res["c1"]["ratio"] - p50 / (res["model_ms"] + res["decode_letterbox_ms"])) < 1e-6
    assert "p50 ms" in r.stdout and "server cores" in r.stdout and "HTTP + JSON + client" in r.stdout


def _exchange(port: int, chunks: list[bytes], pause: float = 0.0, timeout: float = 10.0) -> tuple[bytes, int]:
    """Send `chunks` on one connection (stopping when the server closes it), then read to EOF.
    Returns (the response bytes, the number of bytes the server took before it answered)."""
    import socket

    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for c in chunks:
            try:
                s.sendall(c)
            except OSError:  # the server answered and closed: stop sending
                break
            sent += len(c)
            time.sleep(pause)
        out = b""
        try:
            while True:
                part = s.recv(65536)
                if not part:
                    break
                out += part
        except OSError:
            pass
    return out, sent


def _status_and_json(response: bytes) -> tuple[int, dict, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body), head


def test_request_heads_are_bounded_and_refused_as_json(onnx_model, tmp_path):
    """Issue 17: uvicorn's httptools protocol took a 256 MB header (94 s, 700 MB peak), kept a half-sent head's
    connection for ever, and answered a malformed request in text/plain. Now: 431, 408 and 400, all JSON."""
    server = Server(onnx_model, tmp_path, args=("--max-header-kb", "8", "--header-timeout-s", "1"))
    try:
        server.wait_ready()
        port = server.port
        ok = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n"
        # a legitimate request with 60 headers of 100 bytes: served, twice on one keep-alive connection
        fine = ok + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 90) for i in range(60)) + b"\r\n"
        out, _ = _exchange(port, [fine, fine], pause=0.3, timeout=3)
        assert out.count(b"HTTP/1.1 200 OK") == 2, out[:300]
        # one header past 8 KiB, in one piece
        status, body, head = _status_and_json(_exchange(port, [ok + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n"])[0])
        assert status == 431 and "larger than 8 KiB" in body["error"] and b"connection: close" in head
        # more than 100 fields
        many = ok + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n"
        status, body, _ = _status_and_json(_exchange(port, [many])[0])
        assert status == 431 and body["error"] == "more than 100 header fields"
        # a 64 MiB header streamed in 64 KiB pieces: refused after the first pieces, not buffered to the end
        chunks = [ok + b"X-Huge: "] + [b"h" * 65536] * 1024
        out, sent = _exchange(port, chunks, timeout=30)
        assert _status_and_json(out)[0] == 431
        assert sent < 4 * 2**20, sent  # the connection closed long before the 64 MiB were sent
        # a malformed request line: uvicorn's 400, now JSON
        status, body, _ = _status_and_json(_exchange(port, [b"NOT HTTP AT ALL\r\n\r\n"])[0])
        assert status == 400 and body["error"].startswith("invalid HTTP request")
        # half a head, then silence: 408 after the 1 s header timeout
        t0 = time.monotonic()
        status, body, _ = _status_and_json(_exchange(port, [b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n"])[0])
        assert status == 408 and "within 1 s" in body["error"] and time.monotonic() - t0 < 5
        # a connection that sends nothing is closed after the timeout, without a response
        t0 = time.monotonic()
        assert _exchange(port, [])[0] == b"" and 0.8 < time.monotonic() - t0 < 5
        # and the server still serves
        assert http_get(f"{server.base}/v2/health/ready", 5.0)[0] == 200
    finally:
        server.stop()
