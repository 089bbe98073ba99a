"""`kubedistill benchmark serve`: latency and throughput of the inference server on loopback.

Starts `kubedistill serve` in a subprocess on 127.0.0.1 (a free port), waits until it is ready,
then for each concurrency (default 1, 4, 16) posts the same image to /v1/detect `requests` times
from that many asyncio workers and reports p50/p99 latency, requests/s and the client's own CPU
time per request. Torch is never imported.

The client is aiohttp: on the 2-core machine the benchmark shares the server's cores, and httpx's
asyncio client took 3.5 ms of CPU per request against aiohttp's 1.0 ms (docs/benchmarks.md), time
that a client on another machine would not take from the server.

Concurrency 1 is compared with the same work done in this process (decode + letterbox, then the
onnxruntime `session.run` alone). The two take turns, each request followed by one in-process run
(untimed for the request's figures), so that a slow spell of the machine lands on both alike; the
server's own `timings_ms` split the rest into preprocessing, model, postprocessing and
HTTP + JSON + client.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from kubedistill.core.errors import UserError
from kubedistill.core.interrupt import process_cpu_seconds
from kubedistill.data.images import decode_image
from kubedistill.serve.config import ServeConfig
from kubedistill.serve.model import OnnxDetector
from kubedistill.serve.page import demo_image_bytes
from kubedistill.serve.resolve import resolve_model_uri


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def start_server(
    model: Path,
    port: int,
    threads: int | None,
    extra_env: dict | None = None,
    log: Path | None = None,
    args: tuple[str, ...] = (),
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "kubedistill",
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        *args,
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    env = os.environ | (extra_env or {})
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_ready(base_url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(
                f"The server exited with code {proc.returncode} before it was ready",
                "Run `kubedistill serve` to see why",
            )
        try:
            with urllib.request.urlopen(f"{base_url}/v2/health/ready", timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening yet, or 400 while the model loads
            pass
        time.sleep(0.1)
    raise UserError(f"The server was not ready after {timeout:.0f} s", "Check the model with `kubedistill serve`")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Driven:
    """What one run of `drive` saw: latencies (s), failed requests, wall time, client CPU, server timings."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.errors = 0
        self.wall = 0.0
        self.cpu = 0.0
        self.server: list[dict] = []  # each response's timings_ms


async def _multipart(data: bytes, filename: str) -> tuple[bytes, dict]:
    """The multipart/form-data request (one file part, `images`), encoded once by aiohttp and sent as is every time."""
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("images", data, filename=filename, content_type="image/jpeg")
    writer = form()
    return await writer.as_bytes(), {"Content-Type": writer.content_type}


async def _drive(session, url: str, data: bytes, filename: str, n: int, concurrency: int, after_each=None) -> Driven:
    import aiohttp

    out = Driven()
    remaining = n
    request, headers = await _multipart(data, filename)

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=request, headers=headers) as r:
                    body = await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok, body = False, b""
            out.lat.append(time.perf_counter() - t0)
            if after_each is not None:  # untimed, before the next request (concurrency 1: blocks the loop)
                after_each()
            if ok:
                try:
                    out.server.append(json.loads(body)["timings_ms"])
                except (ValueError, KeyError, TypeError):
                    ok = False
            out.errors += 0 if ok else 1

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.wall, out.cpu = time.perf_counter() - t0, time.process_time() - c0
    return out


def drive(url: str, data: bytes, filename: str, n: int, concurrency: int, after_each=None) -> Driven:
    """Post the image `n` times from `concurrency` workers over keep-alive connections; `after_each()`
    runs after every response, untimed (its time is left out of wall and CPU only at concurrency 1)."""
    import aiohttp

    async def main() -> Driven:
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await _drive(session, url, data, filename, n, concurrency, after_each)

    return asyncio.run(main())


class InProcess:
    """The served work without the server: decode + letterbox, and `session.run` alone, in this process."""

    def __init__(self, det, data: bytes) -> None:

        self.det, self.data, self.decode = det, data, decode_image
        self.prep_s: list[float] = []
        self.run_s: list[float] = []
        self.cpu = 0.0  # process CPU seconds spent in measure()
        self.measure(3)
        self.prep_s.clear()
        self.run_s.clear()
        self.cpu = 0.0

    def measure(self, n: int) -> None:
        c0 = time.process_time()
        for _ in range(n):
            t0 = time.perf_counter()
            x = self.det.prepare(self.decode(self.data)).tensor[None]
            t1 = time.perf_counter()
            self.det.run(x)
            self.prep_s.append(t1 - t0)
            self.run_s.append(time.perf_counter() - t1)
        self.cpu += time.process_time() - c0


def run_serve_benchmark(
    model: str,
    *,
    image: str | None = None,
    requests: int = 200,
    concurrency: tuple[int, ...] = (1, 4, 16),
    warmup: int = 10,
    threads: int | None = None,
    max_batch_size: int | None = None,
    max_latency_ms: float | None = None,
    echo=print,
) -> dict:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise UserError("`benchmark serve` needs aiohttp", "pip install aiohttp (or kubedistill[dev])") from None
    path = resolve_model_uri(model)
    cfg = ServeConfig.build(model_path=str(path), max_batch_size=max_batch_size, max_latency_ms=max_latency_ms)
    max_batch_size, max_latency_ms = cfg.max_batch_size, cfg.max_latency_ms
    if requests < 1 or any(c < 1 for c in concurrency):
        raise UserError("--requests and --concurrency must be positive", "e.g. --requests 200 --concurrency 1,4,16")
    det = OnnxDetector(path, threads=threads)
    if image:
        img_path = Path(image)
        if not img_path.is_file():
            raise UserError(f"Image '{img_path}' does not exist", "Pass an image file or leave --image out")
        data, filename = img_path.read_bytes(), img_path.name
    else:
        data, filename = demo_image_bytes(max(det.imgsz, 640)), "demo.jpg"
    local = InProcess(det, data)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(
        path, port, threads, args=("--max-batch-size", str(max_batch_size), "--max-latency-ms", str(max_latency_ms))
    )
    rows, c1 = [], None
    try:
        wait_ready(base, proc)
        url = f"{base}/v1/detect"
        drive(url, data, filename, max(1, warmup), min(4, max(concurrency)))
        for c in concurrency:
            cpu0 = process_cpu_seconds(proc.pid)
            if c == 1:  # a request, then the same work in process, in turn
                seen = c1 = drive(url, data, filename, requests, 1, after_each=lambda: local.measure(1))
                seen.wall -= sum(local.prep_s) + sum(local.run_s)
                seen.cpu -= local.cpu
            else:
                seen = drive(url, data, filename, requests, c)
            cpu1 = process_cpu_seconds(proc.pid)
            cores = (
                (cpu1 - cpu0) / seen.wall if cpu0 is not None and cpu1 is not None and seen.wall > 0 else float("nan")
            )
            rows.append(
                {
                    "concurrency": c,
                    "requests": len(seen.lat),
                    "errors": seen.errors,
                    "p50_ms": _pct(seen.lat, 50) * 1e3,
                    "p99_ms": _pct(seen.lat, 99) * 1e3,
                    "rps": len(seen.lat) / seen.wall if seen.wall > 0 else float("nan"),
                    "client_cpu_ms": seen.cpu / max(1, len(seen.lat)) * 1e3,
                    "server_cores": cores,
                }
            )
    finally:
        code = stop_server(proc)
    if not local.run_s:  # no concurrency-1 level: time the in-process work on its own
        local.measure(30)
    res = {
        "model": str(path),
        "image": filename,
        "image_bytes": len(data),
        "requests_per_level": requests,
        "decode_letterbox_ms": _pct(local.prep_s, 50) * 1e3,
        "model_ms": _pct(local.run_s, 50) * 1e3,
        "threads": local.det.threads,
        "imgsz": local.det.imgsz,
        "max_batch_size": max_batch_size,
        "max_latency_ms": max_latency_ms,
        "interleaved": c1 is not None,
        "server_exit_code": code,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    if c1 is not None and c1.server:
        server = {k: float(np.median([t[k] for t in c1.server])) for k in ("preprocess", "inference", "postprocess")}
        p50 = rows[[r["concurrency"] for r in rows].index(1)]["p50_ms"]
        res["c1"] = {
            "server_timings_ms": server,
            "http_json_client_ms": p50 - sum(server.values()),
            "ratio": p50 / (res["decode_letterbox_ms"] + res["model_ms"]),
        }
    echo(format_table(res))
    return res


def format_table(res: dict) -> str:
    how = "interleaved with concurrency 1" if res.get("interleaved") else "before the server ran"
    lines = [
        f"model {Path(res['model']).name} (imgsz {res['imgsz']}, {res['threads']} threads), "
        f"image {res['image']} ({res['image_bytes']} bytes)"
        + (
            f", micro-batches of up to {res['max_batch_size']} ({res['max_latency_ms']:g} ms)"
            if res.get("max_batch_size", 1) > 1
            else ""
        ),
        f"in process ({how}): decode+letterbox {res['decode_letterbox_ms']:.2f} ms, onnxruntime run {res['model_ms']:.2f} ms",
        f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'client CPU ms/req':>18}"
        f" {'server cores':>13}",
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['concurrency']:>11} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.1f}"
            f" {r['client_cpu_ms']:>18.2f} {r.get('server_cores', float('nan')):>13.2f}"
        )
    if "c1" in res:
        c1, s = res["c1"], res["c1"]["server_timings_ms"]
        lines.append(
            f"concurrency 1: p50 / (decode+letterbox + model) = {c1['ratio']:.2f}x; server: preprocess {s['preprocess']:.2f}, "
            f"model {s['inference']:.2f}, postprocess {s['postprocess']:.2f} ms; HTTP + JSON + client {c1['http_json_client_ms']:.2f} ms"
        )
    return "\n".join(lines)
