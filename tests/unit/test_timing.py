"""Benchmark timing helpers: interleaved rounds and medians."""

from __future__ import annotations

import time

import torch

from kubedistill.benchmark.timing import time_interleaved


def test_interleaved_order_and_medians():
    calls = []
    slow_once = iter([0.01, 0.2])  # the warm-up call, then one slow timed call

    def a():
        calls.append("a")
        time.sleep(0.002)

    def b():
        calls.append("b")
        time.sleep(next(slow_once, 0.01))  # one outlier: the median ignores it

    ta, tb = time_interleaved([a, b], rounds=5, device=torch.device("cpu"), warmup=1)
    assert calls == ["a", "b"] * 6
    assert 0.0015 < ta < 0.02 and 0.009 < tb < 0.05
