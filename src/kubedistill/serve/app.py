"""The inference server: FastAPI app factory `create_app(model_path, ...)`. Never imports torch or OpenCV.

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
(`kubedistill.serve.batching`). Every error is JSON {"error": "..."}; bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kubedistill.core.errors import UserError
from kubedistill.core.version import __version__
from kubedistill.serve import protocol
from kubedistill.serve.batching import MicroBatcher
from kubedistill.serve.metrics import MetricsMiddleware, ServeMetrics
from kubedistill.serve.model import OnnxDetector, default_threads
from kubedistill.serve.page import DEMO_SIZE, demo_image_bytes, page_html
from kubedistill.serve.protocol import ServeError
from kubedistill.serve.uploads import IMAGE_MEDIA, decode_upload, media_type, read_body

log = logging.getLogger("kubedistill.serve")

ENV_CONFIG = "KUBEDISTILL_SERVE_CONFIG"  # JSON ServeConfig, read by `app_from_env` (uvicorn workers)
ENV_TEST_DELAY = "KUBEDISTILL_SERVE_TEST_DELAY_S"  # tests only: seconds of sleep added to each model call


@dataclass
class ServeConfig:
    model_path: str
    name: str | None = None
    threads: int | None = None
    max_body_mb: float = 20.0
    max_images: int = 32  # per /v1/detect request
    max_batch: int = 64  # per v2 infer request
    max_image_pixels: int = 40_000_000  # per decoded image (w * h)
    max_batch_size: int = 1  # images per model call across requests (1: no micro-batching)
    max_latency_ms: float = 5.0  # longest a request waits for others to fill a batch
    work_threads: int | None = None  # threads that decode and run requests (default: 4 per core, at least 4)
    background_load: bool = True
    inference_delay_s: float = 0.0  # tests only

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


def default_model_name(path: str | Path) -> str:
    """The v2 model name: the file name without .onnx, reduced to URL-safe characters."""
    stem = Path(path).name.removesuffix(".onnx")
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-.")
    return name or "model"


def check_model_name(name: str) -> str:
    if not name or len(name) > 128 or any(not (c.isalnum() or c in "._-") for c in name) or name.startswith("."):
        raise UserError(f"Model name '{name}' is not usable in URLs", "Use letters, digits, '.', '_' and '-'")
    return name


class ModelHolder:
    """The detector, loaded once (in a background thread), and its state for the health endpoints."""

    def __init__(self, path: str, threads: int | None, metrics: ServeMetrics, name: str, max_batch_size: int = 1) -> None:
        self.path, self.threads, self.metrics, self.name = path, threads, metrics, name
        self.max_batch_size = max_batch_size
        self.detector: OnnxDetector | None = None
        self.error: str | None = None
        self.loaded = threading.Event()
        self._lock = threading.Lock()
        self._started = False

    def load(self) -> None:
        try:
            det = OnnxDetector(self.path, threads=self.threads)
            if self.max_batch_size > 1 and det.fixed_batch is not None:
                raise UserError(f"Model '{Path(self.path).name}' takes a fixed batch of {det.fixed_batch}, so it cannot run "
                                f"micro-batches (--max-batch-size {self.max_batch_size})",
                                "Export it with `kubedistill export --dynamic`, or leave --max-batch-size at 1")
            self.detector = det
            info = det.info() | {"name": self.name, "path": det.path.name}
            self.metrics.set_model(info)
            self.metrics.load_seconds.set(det.load_seconds)
            self.metrics.ready.set(1)
            log.info("model '%s' (%s, version %s, imgsz %d, %d classes) loaded in %.2f s with %d threads", self.name,
                     det.arch or "?", det.version or "-", det.imgsz, len(det.names), det.load_seconds, det.threads)
        except Exception as e:  # a bad file must not kill the server: it reports not-ready / not-live
            self.error = str(e) if isinstance(e, UserError) else f"{e.__class__.__name__}: {e}"
            log.error("model '%s' failed to load: %s", self.name, self.error)
        finally:
            self.loaded.set()

    def start(self, background: bool) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        if background:
            threading.Thread(target=self.load, name="kubedistill-model-load", daemon=True).start()
        else:
            self.load()

    @property
    def ready(self) -> bool:
        return self.detector is not None

    def require(self) -> OnnxDetector:
        if self.detector is not None:
            return self.detector
        if self.error:
            raise ServeError(503, f"model '{self.name}' failed to load: {self.error}")
        raise ServeError(503, f"model '{self.name}' is still loading; retry shortly", {"Retry-After": "1"})


def check_batching(max_batch_size: int, max_latency_ms: float) -> None:
    if not 1 <= max_batch_size <= 256:
        raise UserError(f"--max-batch-size {max_batch_size} is out of range", "Use 1 (no micro-batching) to 256, e.g. 8")
    if not 0 <= max_latency_ms <= 1000:
        raise UserError(f"--max-latency-ms {max_latency_ms} is out of range", "Use 0-1000 ms, e.g. 5")


def create_app(
    model_path: str | Path,
    *,
    name: str | None = None,
    threads: int | None = None,
    max_body_mb: float = 20.0,
    max_images: int = 32,
    max_batch: int = 64,
    max_image_pixels: int = 40_000_000,
    max_batch_size: int = 1,
    max_latency_ms: float = 5.0,
    work_threads: int | None = None,
    background_load: bool = True,
    inference_delay_s: float | None = None,
) -> FastAPI:
    """The FastAPI app serving one ONNX model. The model loads when the app starts (lifespan)."""
    model_name = check_model_name(name or default_model_name(model_path))
    check_batching(max_batch_size, max_latency_ms)
    max_bytes = int(max_body_mb * 2**20)
    delay = float(os.environ.get(ENV_TEST_DELAY, "0") or 0) if inference_delay_s is None else float(inference_delay_s)
    metrics = ServeMetrics()
    holder = ModelHolder(str(model_path), threads, metrics, model_name, max_batch_size)
    # Decoding and model calls run in `pools[0]`. More threads than cores: while one request waits for the
    # model, others decode (4 per core measured best on 2 cores; docs/benchmarks.md). Made on first use and
    # shut down when the app stops, so an app started again (tests) gets a new one.
    pools: list[ThreadPoolExecutor] = []
    batcher = None
    if max_batch_size > 1:  # one batch at a time, on a thread of its own
        batcher = MicroBatcher(lambda batch: _infer(holder.require(), batch), max_batch_size, max_latency_ms / 1e3,
                               ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubedistill-batch"), on_wait=metrics.batch_wait.observe)

    async def run_work(fn, *args):
        if not pools:
            pools.append(ThreadPoolExecutor(max_workers=work_threads or max(4, 4 * default_threads()),
                                            thread_name_prefix="kubedistill-work"))
        return await asyncio.get_running_loop().run_in_executor(pools[0], partial(fn, *args))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start(background_load)
        yield
        log.info("shutting down: model '%s'", model_name)
        if batcher is not None:
            await batcher.close()
        while pools:
            pools.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="kubedistill inference server", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.holder = holder
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.model_name = model_name
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # -- errors: always {"error": "..."} ------------------------------------------------------
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no such endpoint: {request.url.path[:200]}"
        elif exc.status_code == 405:
            msg = f"method {request.method} is not allowed on {request.url.path[:200]}"
        return JSONResponse({"error": msg}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errs = exc.errors()[:3]
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errs)
        return JSONResponse({"error": f"invalid request: {msg}"}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):  # a bug: logged, answered as JSON
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error ({exc.__class__.__name__})"}, status_code=500)

    def _check_name(name: str) -> None:
        if name != model_name:
            raise ServeError(404, f"unknown model '{name[:100]}'; this server serves '{model_name}'")

    def _check_version(det: OnnxDetector, version: str | None) -> None:
        if version is not None and version != det.version:
            have = f"'{det.version}'" if det.version else "none"
            raise ServeError(404, f"unknown version '{version[:100]}' of model '{model_name}' (available: {have})")

    def _infer(det: OnnxDetector, batch: np.ndarray) -> np.ndarray:
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        raw = det.run(batch)
        metrics.inference.observe(time.perf_counter() - t0)
        metrics.batch_size.observe(len(batch))
        return raw

    # -- page and demo -----------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @app.get("/demo.jpg", include_in_schema=False)
    async def demo_jpg():
        det = holder.detector
        data = await run_work(demo_image_bytes, det.imgsz if det else DEMO_SIZE)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @app.get("/metrics", include_in_schema=False)
    async def prom_metrics():
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    # -- /v1 ---------------------------------------------------------------------------------
    @app.get("/v1/model")
    async def v1_model():
        det = holder.require()
        return det.info() | {"name": model_name, "path": Path(det.path).name}

    @app.post("/v1/detect")
    async def v1_detect(request: Request):
        det = holder.require()
        ctype = media_type(request)
        accepted = ("multipart/form-data", "application/json") + IMAGE_MEDIA
        if ctype not in accepted and not ctype.startswith("image/"):
            raise ServeError(415, f"unsupported Content-Type '{ctype[:80] or '(none)'}'; send multipart/form-data (image files), "
                                  "application/json ({\"images\": [base64, ...]}) or a raw image body (image/jpeg, image/png, ...)")
        fields = dict(request.query_params)
        body = await read_body(request, max_bytes)
        blobs: list[tuple[str, bytes]] = []
        if ctype == "multipart/form-data":
            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            form = await Request(request.scope, replay).form(max_files=2 * max_images + 8, max_fields=16)
            try:
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        fields[key] = value
                    else:
                        blobs.append((value.filename or key, await value.read()))
            finally:
                await form.close()
            if not blobs:
                raise ServeError(400, "no image file in the form; attach images as file parts, e.g. -F images=@photo.jpg")
        elif ctype == "application/json":
            obj = protocol.load_json(body)
            if not isinstance(obj, dict):
                raise ServeError(400, "JSON body must be an object {\"images\": [base64, ...]}")
            unknown = set(obj) - {"images", "image", "conf", "max_det"}
            if unknown:
                raise ServeError(400, f"unknown field(s) {sorted(unknown)[:5]}; use images, conf, max_det")
            imgs = obj.get("images", [obj["image"]] if "image" in obj else None)
            if not isinstance(imgs, list) or not imgs:
                raise ServeError(400, "'images' must be a non-empty list of base64-encoded images")
            if len(imgs) > max_images:
                raise ServeError(413, f"{len(imgs)} images in one request; the limit is {max_images}")
            blobs = [(f"images[{i}]", protocol.decode_base64_image(v, i)) for i, v in enumerate(imgs)]
            fields.update({k: obj[k] for k in ("conf", "max_det") if k in obj})
        else:
            blobs = [("image", body)]
        if len(blobs) > max_images:
            raise ServeError(413, f"{len(blobs)} images in one request; the limit is {max_images}")
        conf = protocol.parse_conf(fields["conf"]) if "conf" in fields else 0.25
        max_det = min(protocol.parse_max_det(fields["max_det"]), det.max_det) if "max_det" in fields else det.max_det

        def prepare() -> tuple[list, np.ndarray]:
            preps = []
            for i, (label, data) in enumerate(blobs):
                ti = time.perf_counter()
                what = f"image {i} ('{label[:80]}')" if len(blobs) > 1 or label != "image" else "the request body"
                preps.append(det.prepare(decode_upload(data, what, max_image_pixels)))
                metrics.preprocess.observe(time.perf_counter() - ti)
            return preps, np.stack([p.tensor for p in preps])

        def work() -> tuple[list, np.ndarray, list[float]]:  # all of it on one thread: one hop from the event loop
            t0 = time.perf_counter()
            preps, x = prepare()
            t1 = time.perf_counter()
            return preps, _infer(det, x), [t0, t1, time.perf_counter()]

        if batcher is None:
            preps, raw, (t0, t1, t2) = await run_work(work)
        else:  # decode here, then wait for a batch (the timing's "inference" includes that wait)
            t0 = time.perf_counter()
            with batcher.coming():
                preps, x = await run_work(prepare)
            t1 = time.perf_counter()
            raw = await batcher.submit(x)
            t2 = time.perf_counter()
        dets = [det.postprocess(r, p, conf, max_det) for r, p in zip(raw, preps)]
        ms = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "postprocess": (time.perf_counter() - t2) * 1e3}
        timings = {k: round(v, 3) for k, v in ms.items()}
        metrics.images.labels("/v1/detect").inc(len(dets))
        results = [{"index": i, "file": label, "width": d.width, "height": d.height, "detections": d.to_json(det.names)}
                   for i, ((label, _), d) in enumerate(zip(blobs, dets))]
        return JSONResponse({"model_name": model_name, "model_version": det.version, "conf": conf, "max_det": max_det,
                             "results": results, "timings_ms": timings})

    # -- /v2 (Open Inference Protocol) --------------------------------------------------------
    @app.get("/v2")
    async def v2_server_metadata():
        return protocol.ServerMetadataResponse(name="kubedistill", version=__version__, extensions=[]).model_dump()

    @app.get("/v2/health/live")
    async def v2_live():
        if holder.error:
            return JSONResponse({"live": False, "error": f"model '{model_name}' failed to load: {holder.error}"}, status_code=400)
        return {"live": True}

    def _ready_response(extra: dict) -> JSONResponse:
        if holder.ready:
            return JSONResponse(extra | {"ready": True})
        why = f"model '{model_name}' failed to load: {holder.error}" if holder.error else f"model '{model_name}' is still loading"
        return JSONResponse(extra | {"ready": False, "error": why}, status_code=400)  # spec: 4xx means false

    @app.get("/v2/health/ready")
    async def v2_ready():
        return _ready_response({})

    async def _model_ready(name: str, version: str | None = None):
        _check_name(name)
        if holder.detector is not None:
            _check_version(holder.detector, version)
        return _ready_response({"name": model_name})

    async def _model_metadata(name: str, version: str | None = None):
        _check_name(name)
        det = holder.require()
        _check_version(det, version)
        resp = protocol.ModelMetadataResponse(
            name=model_name, versions=[det.version] if det.version else None, platform=protocol.PLATFORM,
            # the batch dimension is variable here even for a fixed-batch file: the server runs bigger batches in chunks
            inputs=[protocol.MetadataTensor(name=det.input_name, datatype=det.input_datatype, shape=[-1, *det.input_shape[1:]])],
            outputs=[protocol.MetadataTensor(name=det.output_name, datatype="FP32", shape=[-1, *det.output_shape[1:]])],
        )
        return resp.model_dump(exclude_none=True)

    async def _infer_endpoint(request: Request, name: str, version: str | None = None):
        _check_name(name)
        det = holder.require()
        _check_version(det, version)
        ctype = media_type(request)
        if ctype not in ("application/json", ""):
            raise ServeError(415, f"unsupported Content-Type '{ctype[:80]}'; send the inference request as application/json")
        body = await read_body(request, max_bytes)

        def parse():
            req = protocol.parse_infer_request(body)
            outputs = protocol.requested_outputs(req, [det.output_name])
            dtypes = tuple(dict.fromkeys(("FP32", det.input_datatype)))
            return req, outputs, protocol.input_tensor(req, det.input_name, dtypes, [-1, *det.input_shape[1:]], max_batch)

        def work():
            req, outputs, batch = parse()
            return req, outputs, _infer(det, batch)

        if batcher is None:
            req, outputs, raw = await run_work(work)
        else:
            with batcher.coming():
                req, outputs, batch = await run_work(parse)
            raw = await batcher.submit(batch)
        if not np.isfinite(raw).all():
            raise ServeError(400, "the model's output is not finite for this input; input values should be in 0..1")
        metrics.images.labels("/v2/models/{name}/infer").inc(len(raw))
        resp = {"model_name": model_name}
        if det.version:
            resp["model_version"] = det.version
        if req.id is not None:
            resp["id"] = req.id
        resp["outputs"] = [protocol.response_output(o, raw) for o in outputs]
        return JSONResponse(resp)

    # separate functions per path, so that `version` is a path parameter or absent (never a query one)
    async def model_metadata(name: str):
        return await _model_metadata(name)

    async def model_metadata_v(name: str, version: str):
        return await _model_metadata(name, version)

    async def model_ready(name: str):
        return await _model_ready(name)

    async def model_ready_v(name: str, version: str):
        return await _model_ready(name, version)

    async def infer(request: Request, name: str):
        return await _infer_endpoint(request, name)

    async def infer_v(request: Request, name: str, version: str):
        return await _infer_endpoint(request, name, version)

    app.add_api_route("/v2/models/{name}", model_metadata, methods=["GET"])
    app.add_api_route("/v2/models/{name}/versions/{version}", model_metadata_v, methods=["GET"])
    app.add_api_route("/v2/models/{name}/ready", model_ready, methods=["GET"])
    app.add_api_route("/v2/models/{name}/versions/{version}/ready", model_ready_v, methods=["GET"])
    app.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"])
    app.add_api_route("/v2/models/{name}/versions/{version}/infer", infer_v, methods=["POST"])
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (`kubedistill.serve.app:app_from_env`): the config comes from $KUBEDISTILL_SERVE_CONFIG."""
    text = os.environ.get(ENV_CONFIG)
    if not text:
        raise RuntimeError(f"${ENV_CONFIG} is not set; start the server with `kubedistill serve`")
    cfg = ServeConfig.from_json(text)
    return create_app(cfg.model_path, name=cfg.name, threads=cfg.threads, max_body_mb=cfg.max_body_mb, max_images=cfg.max_images,
                      max_batch=cfg.max_batch, max_image_pixels=cfg.max_image_pixels, max_batch_size=cfg.max_batch_size,
                      max_latency_ms=cfg.max_latency_ms, work_threads=cfg.work_threads, background_load=cfg.background_load,
                      inference_delay_s=cfg.inference_delay_s or None)
