"""What every route of the server shares: the model (loaded once, in a background thread), the metrics, the work
thread pool, the micro-batcher, and the checks of a request's model name and version."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from kubedistill.core.errors import UserError
from kubedistill.serve.batching import MicroBatcher
from kubedistill.serve.config import ServeConfig
from kubedistill.serve.metrics import ServeMetrics
from kubedistill.serve.model import OnnxDetector, default_threads
from kubedistill.serve.protocol import ServeError

log = logging.getLogger("kubedistill.serve")

ENV_TEST_DELAY = "KUBEDISTILL_SERVE_TEST_DELAY_S"  # tests only: seconds of sleep added to each model call


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

    def __init__(
        self, path: str, threads: int | None, metrics: ServeMetrics, name: str, max_batch_size: int = 1
    ) -> None:
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
                raise UserError(
                    f"Model '{Path(self.path).name}' takes a fixed batch of {det.fixed_batch}, so it cannot run "
                    f"micro-batches (--max-batch-size {self.max_batch_size})",
                    "Export it with `kubedistill export --dynamic`, or leave --max-batch-size at 1",
                )
            self.detector = det
            info = det.info() | {"name": self.name, "path": det.path.name}
            self.metrics.set_model(info)
            self.metrics.load_seconds.set(det.load_seconds)
            self.metrics.ready.set(1)
            log.info(
                "model '%s' (%s, version %s, imgsz %d, %d classes) loaded in %.2f s with %d threads",
                self.name,
                det.arch or "?",
                det.version or "-",
                det.imgsz,
                len(det.names),
                det.load_seconds,
                det.threads,
            )
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


class ServeState:
    """One app's shared state (`app.state.serve`)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.model_name = check_model_name(cfg.name or default_model_name(cfg.model_path))
        self.max_bytes = int(cfg.max_body_mb * 2**20)
        self.delay = cfg.inference_delay_s or float(os.environ.get(ENV_TEST_DELAY, "0") or 0)
        self.metrics = ServeMetrics()
        self.holder = ModelHolder(cfg.model_path, cfg.threads, self.metrics, self.model_name, cfg.max_batch_size)
        # Decoding and model calls run in `pools[0]`. More threads than cores: while one request waits for the
        # model, others decode (4 per core measured best on 2 cores; docs/benchmarks.md). Made on first use and
        # shut down when the app stops, so an app started again (tests) gets a new one.
        self.pools: list[ThreadPoolExecutor] = []
        self.batcher = None
        if cfg.max_batch_size > 1:  # one batch at a time, on a thread of its own
            self.batcher = MicroBatcher(
                lambda batch: self.infer(self.holder.require(), batch),
                cfg.max_batch_size,
                cfg.max_latency_ms / 1e3,
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubedistill-batch"),
                on_wait=self.metrics.batch_wait.observe,
            )

    async def run_work(self, fn, *args):
        """Run `fn(*args)` on the work pool, off the event loop."""
        if not self.pools:
            self.pools.append(
                ThreadPoolExecutor(
                    max_workers=self.cfg.work_threads or max(4, 4 * default_threads()),
                    thread_name_prefix="kubedistill-work",
                )
            )
        return await asyncio.get_running_loop().run_in_executor(self.pools[0], partial(fn, *args))

    def infer(self, det: OnnxDetector, batch: np.ndarray) -> np.ndarray:
        if self.delay > 0:
            time.sleep(self.delay)
        t0 = time.perf_counter()
        raw = det.run(batch)
        self.metrics.inference.observe(time.perf_counter() - t0)
        self.metrics.batch_size.observe(len(batch))
        return raw

    def check_name(self, name: str) -> None:
        if name != self.model_name:
            raise ServeError(404, f"unknown model '{name[:100]}'; this server serves '{self.model_name}'")

    def check_version(self, det: OnnxDetector, version: str | None) -> None:
        if version is not None and version != det.version:
            have = f"'{det.version}'" if det.version else "none"
            raise ServeError(404, f"unknown version '{version[:100]}' of model '{self.model_name}' (available: {have})")

    async def close(self) -> None:
        log.info("shutting down: model '%s'", self.model_name)
        if self.batcher is not None:
            await self.batcher.close()
        while self.pools:
            self.pools.pop().shutdown(wait=False, cancel_futures=True)
