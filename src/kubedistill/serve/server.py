"""Run the inference server with uvicorn: graceful shutdown on SIGTERM/SIGINT, then exit 0.

On SIGTERM uvicorn stops accepting connections, lets in-flight requests finish (at most
`graceful_timeout` seconds), runs the app's shutdown and returns. uvicorn re-raises the signal it
caught once it is done; the handlers installed here absorb it, so `kubedistill serve` exits 0
after a clean drain (what Kubernetes expects from a pod being stopped).
"""

from __future__ import annotations

import logging
import os
import signal

from kubedistill.core.errors import UserError
from kubedistill.serve.app import ENV_CONFIG, ServeConfig, check_batching, check_model_name, default_model_name
from kubedistill.serve.model import default_threads
from kubedistill.serve.resolve import resolve_model_uri


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    threads: int | None = None,
    name: str | None = None,
    max_body_mb: float = 20.0,
    max_images: int = 32,
    max_batch_size: int = 1,
    max_latency_ms: float = 5.0,
    graceful_timeout: int = 30,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    import uvicorn

    path = resolve_model_uri(model)
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1", "Use --workers 1 (scale with replicas)")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} must be at least 1", "Leave it out to use the CPU cores")
    if not 0 < max_body_mb <= 4096:
        raise UserError(f"--max-body-mb {max_body_mb} is out of range", "Use a value in (0, 4096]")
    check_batching(max_batch_size, max_latency_ms)
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is out of range", "Use 1-65535")
    cfg = ServeConfig(
        model_path=str(path), name=check_model_name(name or default_model_name(path)),
        threads=threads or default_threads(workers), max_body_mb=max_body_mb, max_images=max_images,
        max_batch_size=max_batch_size, max_latency_ms=max_latency_ms,
    )
    os.environ[ENV_CONFIG] = cfg.to_json()  # read by app_from_env in this process or in each worker
    logging.getLogger("kubedistill.serve").setLevel(log_level.upper())
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    previous = {s: signal.signal(s, _absorb) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run("kubedistill.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    timeout_graceful_shutdown=graceful_timeout, log_level=log_level, access_log=access_log,
                    proxy_headers=True, server_header=False)
    except OSError as e:
        raise UserError(f"Cannot listen on {host}:{port} ({e.strerror or e})", "Pick another --port or --host") from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _absorb(signum, frame) -> None:  # the signal uvicorn re-raises after its graceful shutdown
    pass
