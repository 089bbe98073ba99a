"""LRSchedule: warmup, linear/cosine decay, momentum, bias warmup lr, optimizer application."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kubedistill.train.optim import build_optimizer
from kubedistill.train.schedule import LRSchedule, lr_at

LR0, LRF = 0.01, 0.01


def _sched(cos=False, epochs=10, ipe=50, warmup_epochs=3.0):
    # total 500 iterations, warmup max(round(3*50), 100) = 150
    return LRSchedule(LR0, LRF, epochs, ipe, warmup_epochs, 0.1, 0.8, 0.937, cos)


def _epoch(s, i):
    return s.epochs * i / (s.total_iters - 1)


def test_warmup_iters_rules():
    assert _sched().warmup_iters == 150
    assert _sched(warmup_epochs=0.5).warmup_iters == 100  # at least 100
    assert _sched(warmup_epochs=0).warmup_iters == 0
    assert _sched(epochs=2, ipe=30).warmup_iters == 30  # clamped to half of 60


@pytest.mark.parametrize("cos", [False, True])
def test_values(cos):
    s = _sched(cos)

    def factor(e):
        if cos:
            return LRF + (1 - LRF) * (1 + math.cos(math.pi * e / 10)) / 2
        return (1 - e / 10) * (1 - LRF) + LRF

    # iteration 0: weights at 0, bias at warmup_bias_lr, momentum at warmup_momentum
    assert s.lr_at(0) == 0.0
    assert s.lr_at(0, bias=True) == pytest.approx(0.1)
    assert s.momentum_at(0) == pytest.approx(0.8)
    # half-way through warmup
    e = _epoch(s, 75)
    assert s.lr_at(75) == pytest.approx(0.5 * LR0 * factor(e))
    assert s.lr_at(75, bias=True) == pytest.approx(0.1 + 0.5 * (LR0 * factor(e) - 0.1))
    assert s.momentum_at(75) == pytest.approx(0.8 + 0.5 * (0.937 - 0.8))
    # end of warmup: plain decayed lr, final momentum
    assert s.lr_at(150) == pytest.approx(LR0 * factor(_epoch(s, 150)))
    assert s.lr_at(150, bias=True) == s.lr_at(150)
    assert s.momentum_at(150) == 0.937
    # middle and end
    mid = s.lr_at(300)
    assert mid == pytest.approx(LR0 * factor(10 * 300 / 499))
    assert s.lr_at(499) == pytest.approx(LR0 * LRF, rel=1e-9)
    # hand numbers
    if cos:
        assert s.lr_factor(5.0) == pytest.approx(0.505)
        assert s.lr_factor(2.5) == pytest.approx(0.01 + 0.99 * (1 + math.sqrt(0.5)) / 2)
    else:
        assert s.lr_factor(5.0) == pytest.approx(0.505)
        assert s.lr_factor(2.5) == pytest.approx(0.7525)
    assert s.lr_factor(0.0) == 1.0 and s.lr_factor(10.0) == pytest.approx(LRF)


def test_decay_is_monotone_after_warmup():
    s = _sched(cos=True)
    lrs = [s.lr_at(i) for i in range(150, 500)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(499, lr0=LR0, lrf=LRF, epochs=10, iters_per_epoch=50, cos_lr=True) == pytest.approx(LR0 * LRF)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_apply_sgd_and_adam():
    s = _sched()
    opt, _ = build_optimizer(_model(), "SGD", LR0, 0.937, 5e-4, 500, 3, 16, 64)
    out = s.apply(opt, 0)
    assert out == {"lr/weights": 0.0, "lr/norm": 0.0, "lr/bias": pytest.approx(0.1), "momentum": pytest.approx(0.8)}
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, pytest.approx(0.1)]
    assert all(g["momentum"] == pytest.approx(0.8) for g in opt.param_groups)
    s.apply(opt, 499)
    assert all(g["lr"] == pytest.approx(LR0 * LRF) for g in opt.param_groups)
    assert all(g["momentum"] == 0.937 for g in opt.param_groups)

    opt, _ = build_optimizer(_model(), "AdamW", 0.002, 0.9, 5e-4, 500, 3, 16, 64)
    s2 = LRSchedule(0.002, LRF, 10, 50, 3.0, 0.1, 0.8, 0.9, False)
    s2.apply(opt, 75)
    assert all(g["betas"][0] == pytest.approx(0.85) and g["betas"][1] == 0.999 for g in opt.param_groups)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.002 * s2.lr_factor(_epoch(s2, 75)))


def test_apply_uses_initial_lr_and_musgd_cls_groups():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.cls_branch = nn.Linear(4, 2)

    opt, _ = build_optimizer(M(), "MuSGD", LR0, 0.9, 5e-4, 500, 2, 16, 64)
    for g in opt.param_groups:
        g["initial_lr"] = 0.02 if g["name"] == "weights" else g["initial_lr"]
    out = _sched().apply(opt, 200)
    f = _sched().lr_factor(_epoch(_sched(), 200))
    assert out["lr/weights"] == pytest.approx(0.02 * f)
    assert out["lr/weights_cls"] == pytest.approx(LR0 * f)  # lr_scale is applied inside MuSGD.step
    out0 = _sched().apply(opt, 0)
    assert out0["lr/bias_cls"] == pytest.approx(0.1) and out0["lr/weights_cls"] == 0.0


def test_schedule_is_pure_function_of_iteration():
    s = _sched(cos=True)
    opt, _ = build_optimizer(_model(), "MuSGD", LR0, 0.937, 5e-4, 500, 3, 16, 64)
    a = [s.apply(opt, i) for i in range(0, 500, 7)]
    b = [s.apply(opt, i) for i in range(0, 500, 7)]
    assert a == b
    # a fresh optimizer at the resume point gets the same values
    opt2, _ = build_optimizer(_model(), "MuSGD", LR0, 0.937, 5e-4, 500, 3, 16, 64)
    assert s.apply(opt2, 301) == s.apply(opt, 301)
    assert torch.is_tensor(opt2.param_groups[0]["params"][0])
