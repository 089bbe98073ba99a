"""System metrics of a training run (`kubedistill.track.system`): MLflow's collectors sampled on a thread, handed to
the run's logger as system/... metrics; a failing collector is dropped, never training."""

from __future__ import annotations

import time

from kubedistill.track.system import SystemSampler, collectors, interval_s


def test_real_collectors_are_sampled_on_a_thread_then_once_more_at_stop():
    logged: list[tuple[dict, int]] = []
    sampler = SystemSampler(lambda m, step: logged.append((m, step)), interval=0.05).start()
    deadline = time.monotonic() + 10
    while len(logged) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    sampler.stop()
    assert len(logged) >= 3  # at least two on the thread and the last one at stop
    assert [step for _, step in logged] == list(range(len(logged)))
    keys = set(logged[-1][0])
    for key in (
        "system/cpu_utilization_percentage",
        "system/system_memory_usage_megabytes",
        "system/disk_usage_percentage",
        "system/network_receive_megabytes",
    ):
        assert key in keys, keys
    assert 0 < logged[-1][0]["system/system_memory_usage_megabytes"]


def test_a_failing_collector_is_dropped_with_one_warning():
    class Broken:
        def collect_metrics(self):
            raise OSError("no /proc here")

    class Fine:
        def collect_metrics(self):
            pass

        def aggregate_metrics(self):
            return {"cpu_utilization_percentage": 12.5}

        def clear_metrics(self):
            pass

    logged, warned = [], []
    sampler = SystemSampler(
        lambda m, s: logged.append(m), interval=3600, monitors=[Broken(), Fine()], warn=warned.append
    )
    sampler.sample()
    sampler.sample()
    assert logged == [{"system/cpu_utilization_percentage": 12.5}] * 2
    assert len(warned) == 1 and "Broken stopped (OSError: no /proc here)" in warned[0]


def test_nothing_to_sample_starts_no_thread():
    sampler = SystemSampler(lambda m, s: None, monitors=[]).start()
    assert sampler._thread is None
    sampler.stop()  # a no-op


def test_interval_comes_from_mlflows_variable(monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "2.5")
    assert interval_s() == 2.5
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "soon")
    assert interval_s() == 10.0
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "-1")
    assert interval_s() == 10.0


def test_collectors_without_a_gpu_are_the_cpu_side_ones():
    names = {type(m).__name__ for m in collectors(print)}
    assert {"CPUMonitor", "DiskMonitor", "NetworkMonitor"} <= names
