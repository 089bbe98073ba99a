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
from kubedistill.serve.config import ENV_CONFIG, ServeConfig
from kubedistill.serve.model import default_threads
from kubedistill.serve.resolve import resolve_model_uri
from kubedistill.serve.state import check_model_name, default_model_name


def serve(model: str, **options) -> None:
    """Serve `model` (a --model value: resolved to a local .onnx file) with ServeConfig's options as keywords
    (None: the default)."""
    import uvicorn

    from kubedistill.serve.http import BoundedHttpProtocol

    path = resolve_model_uri(model)
    cfg = ServeConfig.build(model_path=str(path), **options)
    cfg = cfg.model_copy(
        update={
            "name": check_model_name(cfg.name or default_model_name(path)),
            "threads": cfg.threads or default_threads(cfg.workers),
        }
    )
    os.environ[ENV_CONFIG] = cfg.to_json()  # read by app_from_env in this process or in each worker
    logging.getLogger("kubedistill.serve").setLevel(cfg.log_level.upper())
    logging.basicConfig(level=cfg.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    previous = {s: signal.signal(s, _absorb) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(
            "kubedistill.serve.app:app_from_env",
            factory=True,
            http=BoundedHttpProtocol,
            host=cfg.host,
            port=cfg.port,
            workers=cfg.workers,
            timeout_graceful_shutdown=cfg.graceful_timeout,
            log_level=cfg.log_level,
            access_log=cfg.access_log,
            proxy_headers=True,
            server_header=False,
        )
    except OSError as e:
        raise UserError(
            f"Cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e})", "Pick another --port or --host"
        ) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _absorb(signum, frame) -> None:  # the signal uvicorn re-raises after its graceful shutdown
    pass
