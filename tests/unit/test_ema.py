"""ModelEMA: ramping decay, convergence, integer buffers, DDP-style unwrapping, state dict."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kubedistill.train.ema import ModelEMA


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_copy_is_frozen_eval():
    m = _model()
    ema = ModelEMA(m)
    assert not ema.ema.training
    assert all(not p.requires_grad for p in ema.ema.parameters())
    assert all(p.requires_grad for p in m.parameters())
    assert ema.ema[0].weight.data_ptr() != m[0].weight.data_ptr()


def test_hooks_stay_on_the_training_model():
    # distillation captures the student's neck features with a hook; the average must not copy it
    m = _model()
    seen = []
    m[1].register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    m[1].register_forward_hook(lambda mod, args, out: seen.append("post"))
    ema = ModelEMA(m)
    ema.ema(torch.rand(1, 3, 8, 8))
    assert seen == []
    m(torch.rand(1, 3, 8, 8))
    assert seen == ["pre", "post"]


def test_decay_ramps():
    ema = ModelEMA(_model(), decay=0.9999, tau=2000)
    ds = [ema.update(ema.ema) for _ in range(5)]
    assert ds[0] == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert all(a < b for a, b in zip(ds, ds[1:]))
    assert ema.decay_at(100000) == pytest.approx(0.9999, rel=1e-6)
    assert ema.updates == 5


def test_converges_to_constant_model_and_copies_int_buffers():
    m = _model()
    ema = ModelEMA(m, tau=20)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
        m[1].running_mean.fill_(3.0)
    m[1].num_batches_tracked.fill_(42)
    d = ema.update(m)
    assert ema.ema[1].num_batches_tracked.item() == 42
    # after one update the average sits between old and new, close to new (tiny decay)
    assert 0 < d < 0.1
    for _ in range(2000):
        ema.update(m)
    for (k, v), (_, w) in zip(ema.ema.state_dict().items(), m.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-3), k


def test_blend_formula():
    m = _model()
    ema = ModelEMA(m, decay=0.9, tau=1.0)
    old = ema.ema[0].weight.clone()
    with torch.no_grad():
        m[0].weight.mul_(2)
    d = ema.update(m)
    assert d == pytest.approx(0.9 * (1 - math.exp(-1)))
    assert torch.allclose(ema.ema[0].weight, d * old + (1 - d) * m[0].weight.detach())


def test_unwraps_module_wrapper():
    m = _model()
    wrapped = nn.DataParallel(m)  # CPU: a plain wrapper with .module, like DDP
    ema = ModelEMA(wrapped)
    assert set(ema.ema.state_dict()) == set(m.state_dict())
    with torch.no_grad():
        m[0].bias.fill_(5.0)
    ema.update(wrapped)


def test_state_dict_round_trip():
    m = _model()
    ema = ModelEMA(m)
    with torch.no_grad():
        m[0].weight.add_(1)
    for _ in range(7):
        ema.update(m)
    sd = ema.state_dict()
    assert sd["updates"] == 7 and set(sd) == {"ema", "updates"}
    other = ModelEMA(_model(seed=1))
    other.load_state_dict(sd)
    assert other.updates == 7
    for k, v in ema.ema.state_dict().items():
        assert torch.equal(v, other.ema.state_dict()[k])
    assert ema.update(m) == other.update(m)
    assert torch.equal(ema.ema[0].weight, other.ema[0].weight)
