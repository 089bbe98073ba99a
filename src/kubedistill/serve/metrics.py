"""Prometheus metrics of the inference server (prometheus-client, one registry per app).

Routes are labelled by their template (`/v2/models/{name}/infer`), never by the raw path, so the
number of series stays fixed; requests that match no route are labelled `unmatched`.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServeMetrics:
    def __init__(self, namespace: str = "kubedistill") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route, method and status code.",
            ["route", "method", "code"],
            namespace=ns,
            registry=r,
        )
        self.errors = Counter(
            "http_request_errors",
            "HTTP responses with status >= 400 by route and code.",
            ["route", "code"],
            namespace=ns,
            registry=r,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request start to the end of the response, by route.",
            ["route"],
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.in_flight = Gauge("http_requests_in_flight", "Requests being handled now.", namespace=ns, registry=r)
        self.inference = Histogram(
            "inference_duration_seconds",
            "onnxruntime session.run time per model call.",
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.preprocess = Histogram(
            "preprocess_duration_seconds",
            "Decode + letterbox time per image (/v1/detect).",
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Images per model call (request batch size).",
            namespace=ns,
            registry=r,
            buckets=BATCH_BUCKETS,
        )
        self.batch_wait = Histogram(
            "batch_wait_seconds",
            "Time a request waited in the queue for its micro-batch to start (--max-batch-size > 1 only).",
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.images = Counter("images", "Images run through the model.", ["route"], namespace=ns, registry=r)
        self.ready = Gauge("model_ready", "1 when the model is loaded and serving.", namespace=ns, registry=r)
        self.load_seconds = Gauge("model_load_seconds", "Seconds the model took to load.", namespace=ns, registry=r)
        self.model = Info("model", "The served model.", namespace=ns, registry=r)

    def set_model(self, info: dict) -> None:
        self.model.info(
            {
                "name": str(info.get("name", "")),
                "version": str(info.get("model_version", "")),
                "architecture": str(info.get("model", "")),
                "imgsz": str(info.get("imgsz", "")),
                "source_sha256": str(info.get("source_sha256", "")),
                "path": str(info.get("path", "")),
            }
        )

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.requests.labels(route, method, str(code)).inc()
        if code >= 400:
            self.errors.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request by route template, method and status."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        t0 = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            self.metrics.observe_request(label, method, status["code"], time.perf_counter() - t0)
