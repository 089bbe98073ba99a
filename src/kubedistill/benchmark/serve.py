"""`kubedistill benchmark serve`: latency and throughput of the inference server on loopback.

Starts `kubedistill serve` in a subprocess on 127.0.0.1 (a free port), waits until it is ready,
then for each concurrency (default 1, 4, 16) posts the same image to /v1/detect `requests` times
from that many asyncio workers (httpx) and reports p50/p99 latency and requests/s. Beside it, for
the same image in this process: the onnxruntime `session.run` time alone and the decode + letterbox
time, so the HTTP/JSON overhead can be read off. Torch is never imported.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from kubedistill.errors import UserError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def start_server(model: Path, port: int, threads: int | None, extra_env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kubedistill", "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = os.environ | (extra_env or {})
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_ready(base_url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"The server exited with code {proc.returncode} before it was ready", "Run `kubedistill serve` to see why")
        try:
            if httpx.get(f"{base_url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
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


async def _drive(url: str, data: bytes, filename: str, n: int, concurrency: int) -> tuple[list[float], int, float]:
    import httpx

    lat: list[float] = []
    errors = 0
    remaining = n

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                r = await client.post(url, files={"images": (filename, data, "image/jpeg")})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            lat.append(time.perf_counter() - t0)
            errors += 0 if ok else 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return lat, errors, wall


def in_process_times(model: Path, data: bytes, threads: int | None, repeats: int = 30) -> dict:
    """Median ms of decode + letterbox and of session.run alone, for the same image, in this process."""
    from kubedistill.data.images import decode_image
    from kubedistill.serve.model import OnnxDetector

    det = OnnxDetector(model, threads=threads)
    prep_ms, run_ms = [], []
    for _ in range(3):  # warm-up
        det.run(det.prepare(decode_image(data)).tensor[None])
    for _ in range(repeats):
        t0 = time.perf_counter()
        prep = det.prepare(decode_image(data))
        t1 = time.perf_counter()
        det.run(prep.tensor[None])
        t2 = time.perf_counter()
        prep_ms.append((t1 - t0) * 1e3)
        run_ms.append((t2 - t1) * 1e3)
    return {"decode_letterbox_ms": float(np.median(prep_ms)), "model_ms": float(np.median(run_ms)), "threads": det.threads,
            "imgsz": det.imgsz}


def run_serve_benchmark(model: str, *, image: str | None = None, requests: int = 200, concurrency: tuple[int, ...] = (1, 4, 16),
                        warmup: int = 10, threads: int | None = None, echo=print) -> dict:
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise UserError("`benchmark serve` needs httpx", "pip install httpx (or kubedistill[dev])") from None
    from kubedistill.serve.resolve import resolve_model_uri

    path = resolve_model_uri(model)
    if requests < 1 or any(c < 1 for c in concurrency):
        raise UserError("--requests and --concurrency must be positive", "e.g. --requests 200 --concurrency 1,4,16")
    if image:
        img_path = Path(image)
        if not img_path.is_file():
            raise UserError(f"Image '{img_path}' does not exist", "Pass an image file or leave --image out")
        data, filename = img_path.read_bytes(), img_path.name
    else:
        from kubedistill.serve.app import demo_image_bytes
        from kubedistill.serve.model import OnnxDetector

        det = OnnxDetector(path, threads=1)
        data, filename = demo_image_bytes(max(det.imgsz, 640)), "demo.jpg"
        del det
    local = in_process_times(path, data, threads)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(path, port, threads)
    rows = []
    try:
        wait_ready(base, proc)
        url = f"{base}/v1/detect"
        asyncio.run(_drive(url, data, filename, max(1, warmup), min(4, max(concurrency))))
        for c in concurrency:
            lat, errors, wall = asyncio.run(_drive(url, data, filename, requests, c))
            rows.append({"concurrency": c, "requests": len(lat), "errors": errors, "p50_ms": _pct(lat, 50) * 1e3,
                         "p99_ms": _pct(lat, 99) * 1e3, "rps": len(lat) / wall if wall > 0 else float("nan")})
    finally:
        code = stop_server(proc)
    res = {"model": str(path), "image": filename, "image_bytes": len(data), "requests_per_level": requests, **local,
           "server_exit_code": code, "cpu_count": os.cpu_count(), "rows": rows}
    echo(format_table(res))
    return res


def format_table(res: dict) -> str:
    lines = [
        f"model {Path(res['model']).name} (imgsz {res['imgsz']}, {res['threads']} threads), image {res['image']} ({res['image_bytes']} bytes)",
        f"in process: decode+letterbox {res['decode_letterbox_ms']:.2f} ms, onnxruntime run {res['model_ms']:.2f} ms",
        f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}",
    ]
    for r in res["rows"]:
        lines.append(f"{r['concurrency']:>11} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.1f}")
    return "\n".join(lines)
