"""System metrics of a training run: CPU, memory, disk, network and (with nvidia-ml-py) GPU use, as `system/...`
metrics beside the training curves, named as MLflow's own system-metrics monitor names them.

MLflow's monitor logs through a client of its own, which would stall or drop samples while the tracking server is
down. Here a thread samples MLflow's metric collectors every `interval` seconds (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL,
default 10) and hands the averages to the run's `RunLogger`, so they are queued, spooled and resent like every other
record. A collector that fails is dropped with one warning; nothing here can stop training.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

PREFIX = "system/"
INTERVAL_ENV = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"


def collectors(warn: Callable[[str], None]) -> list:
    """MLflow's CPU/memory, disk and network collectors, and the GPU one when NVML finds a GPU."""
    out = []
    try:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    except ImportError as e:  # psutil missing: the track extra brings it
        warn(f"MLflow: system metrics are off ({e}; install kubedistill[track])")
        return out
    out += [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        out.append(GPUMonitor())
    except Exception:  # no nvidia-ml-py, or no GPU: the CPU-side figures still go
        pass
    return out


def interval_s(default: float = 10.0) -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV) or default)
    except ValueError:
        return default
    return value if value > 0 else default


class SystemSampler:
    """Samples `monitors` every `interval` s and calls `log(metrics, step)` with their averages, step 0, 1, 2, ..."""

    def __init__(
        self,
        log: Callable[[dict[str, Any], int], None],
        *,
        interval: float | None = None,
        monitors: list | None = None,
        warn: Callable[[str], None] = print,
    ):
        self.log = log
        self.warn = warn
        self.interval = interval if interval is not None else interval_s()
        self.monitors = monitors if monitors is not None else collectors(warn)
        self.step = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SystemSampler:
        if self.monitors:
            self._thread = threading.Thread(target=self._run, name="kubedistill-system-metrics", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> dict[str, Any]:
        """One sample of every collector, logged at once; the collectors that fail are dropped."""
        metrics: dict[str, Any] = {}
        for m in list(self.monitors):
            try:
                m.collect_metrics()
                metrics.update({PREFIX + k: v for k, v in m.aggregate_metrics().items()})
                m.clear_metrics()
            except Exception as e:
                self.monitors.remove(m)
                self.warn(f"MLflow: system metrics from {type(m).__name__} stopped ({e.__class__.__name__}: {e})")
        if metrics:
            self.log(metrics, self.step)
            self.step += 1
        return metrics

    def stop(self) -> None:
        """Stop the thread and take a last sample (a run shorter than the interval still gets one)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self._thread = None
        self.sample()
