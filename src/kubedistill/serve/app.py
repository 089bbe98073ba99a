"""The inference server: FastAPI app factory `create_app(model_path, **options)` (options: `serve.config.ServeConfig`).
Never imports torch or OpenCV.

Endpoints (docs/serving.md has curl examples):

    GET  /                                  page to try the model (?demo=1: runs on /demo.jpg)
    GET  /demo.jpg                          a sample image (shapes on clutter) at the model's size
    POST /v1/detect                         images (multipart, JSON base64 or a raw image body) -> detections
    GET  /v1/model                          model metadata (class names, imgsz, version, ...)
    GET  /metrics                           Prometheus metrics
    GET  /v2                                Open Inference Protocol v2: server metadata
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready      model readiness
    POST /v2/models/{name}[/versions/{v}]/infer      tensor in (`images`), tensor out (`detections`)

The model loads in a background thread started by the lifespan hook, so /v2/health/live answers
at once and /v2/health/ready turns true when the session is ready. Decoding, letterboxing and
`session.run` happen in a pool of worker threads (the event loop stays free); with
`max_batch_size` > 1 the model runs the images of concurrent requests together
(`kubedistill.serve.batching`). Every error is JSON {"error": "..."} (`serve.errors`); bad input is a 4xx, never a
500. Routes by protocol: `routes_page` (/, /demo.jpg, /metrics), `routes_v1`, `routes_v2`; their shared state
(model, pools, batcher, metrics) is `serve.state.ServeState`.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from kubedistill.core.version import __version__
from kubedistill.serve.config import ENV_CONFIG, ServeConfig
from kubedistill.serve.errors import add_error_handlers
from kubedistill.serve.metrics import MetricsMiddleware
from kubedistill.serve.routes_page import page_router
from kubedistill.serve.routes_v1 import v1_router
from kubedistill.serve.routes_v2 import v2_router
from kubedistill.serve.state import ServeState


def create_app(model_path: str | Path | None = None, *, config: ServeConfig | None = None, **options) -> FastAPI:
    """The FastAPI app serving one ONNX model: from `config`, or from `model_path` and ServeConfig's options as
    keywords. The model loads when the app starts (lifespan)."""
    cfg = config if config is not None else ServeConfig.build(model_path=str(model_path), **options)
    state = ServeState(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.holder.start(cfg.background_load)
        yield
        await state.close()

    app = FastAPI(
        title="kubedistill inference server",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.serve = state
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    add_error_handlers(app)
    for router in (page_router(state), v1_router(state), v2_router(state)):
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (`kubedistill.serve.app:app_from_env`): the config comes from $KUBEDISTILL_SERVE_CONFIG."""
    text = os.environ.get(ENV_CONFIG)
    if not text:
        raise RuntimeError(f"${ENV_CONFIG} is not set; start the server with `kubedistill serve`")
    return create_app(config=ServeConfig.from_json(text))
