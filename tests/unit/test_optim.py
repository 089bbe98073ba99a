"""Newton-Schulz, MuSGD (hand-computed step, resume, convergence) and build_optimizer grouping."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from kubedistill.core.errors import ConfigError
from kubedistill.train.optim import MuSGD, build_optimizer, resolve_nbs, zeropower_via_newtonschulz


def _polar(M: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    return U @ Vh


# ---------------------------------------------------------------------------------------------- Newton-Schulz


@pytest.mark.parametrize("shape", [(64, 32), (32, 64)])
def test_newton_schulz_singular_values_and_direction(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    orth = zeropower_via_newtonschulz(G)
    assert orth.shape == G.shape and orth.dtype == G.dtype
    sv = torch.linalg.svdvals(orth)
    assert sv.min() > 0.5 and sv.max() < 1.5
    cos = torch.nn.functional.cosine_similarity(orth.flatten(), _polar(G).flatten(), dim=0)
    assert cos > 0.9


def test_newton_schulz_conv_weight_reshaped():
    G = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    orth = zeropower_via_newtonschulz(G)
    assert orth.shape == G.shape
    assert torch.allclose(orth.reshape(8, -1), zeropower_via_newtonschulz(G.reshape(8, -1)))
    with pytest.raises(ValueError):
        zeropower_via_newtonschulz(torch.randn(5))


# ---------------------------------------------------------------------------------------------- MuSGD


def _tiny(seed: int = 0) -> tuple[nn.Parameter, nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(2, 3, generator=g)), nn.Parameter(torch.randn(2, generator=g))


def _set_grads(w, b, seed):
    g = torch.Generator().manual_seed(100 + seed)
    w.grad = torch.randn(w.shape, generator=g)
    b.grad = torch.randn(b.shape, generator=g)


@pytest.mark.parametrize("lr_scale", [1.0, 3.0])
def test_musgd_one_step_by_hand(lr_scale):
    w, b = _tiny()
    w0, b0 = w.detach().clone(), b.detach().clone()
    lr, m, wd = 0.05, 0.9, 0.01
    opt = MuSGD(
        [
            dict(params=[w], use_muon=True, weight_decay=wd, lr_scale=lr_scale),
            dict(params=[b], use_muon=False, weight_decay=0.0, lr_scale=lr_scale),
        ],
        lr=lr,
        momentum=m,
    )
    _set_grads(w, b, 0)
    gw, gb = w.grad.clone(), b.grad.clone()
    opt.step()

    # SGD part: L2 decay in the gradient, buffer = 0*m + d = d, nesterov direction d + m*buf
    d = gw + wd * w0
    sgd_w = d + m * d
    # Muon part: raw gradient (no decay), own buffer = g, nesterov g + m*g, NS, shape scale max(1, 2/3)**0.5 = 1
    muon_w = zeropower_via_newtonschulz(gw + m * gw) * max(1.0, 2 / 3) ** 0.5
    expect_w = w0 - lr * lr_scale * 1.0 * sgd_w - lr * lr_scale * 0.2 * muon_w
    expect_b = b0 - lr * lr_scale * (gb + m * gb)  # bias: SGD only, no decay
    assert torch.allclose(w.detach(), expect_w, atol=1e-6, rtol=0)
    assert torch.allclose(b.detach(), expect_b, atol=1e-6, rtol=0)
    assert set(opt.state[w]) == {"momentum_buffer", "muon_buffer"}
    assert set(opt.state[b]) == {"momentum_buffer"}
    assert torch.allclose(opt.state[w]["momentum_buffer"], d)
    assert torch.allclose(opt.state[w]["muon_buffer"], gw)  # no weight decay in the Muon buffer


def test_musgd_tall_matrix_shape_scale():
    w = nn.Parameter(torch.zeros(6, 2))
    opt = MuSGD([dict(params=[w], use_muon=True)], lr=0.1, momentum=0.0, sgd_scale=0.0)
    w.grad = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    g = w.grad.clone()
    opt.step()
    expect = -0.1 * 0.2 * (6 / 2) ** 0.5 * zeropower_via_newtonschulz(g)
    assert torch.allclose(w.detach(), expect, atol=1e-6)


def test_musgd_state_dict_round_trip():
    def make():
        w, b = _tiny()
        opt = MuSGD(
            [dict(params=[w], use_muon=True, weight_decay=1e-3), dict(params=[b], use_muon=False)],
            lr=0.02,
            momentum=0.9,
        )
        return w, b, opt

    w1, b1, o1 = make()
    for s in range(2):
        _set_grads(w1, b1, s)
        o1.step()
    w2, b2, o2 = make()
    with torch.no_grad():
        w2.copy_(w1)
        b2.copy_(b1)
    buf = io.BytesIO()  # through torch.save/load, as a resumed run does (a live state_dict shares its tensors)
    torch.save(o1.state_dict(), buf)
    buf.seek(0)
    o2.load_state_dict(torch.load(buf, weights_only=True))
    for s in range(2, 5):
        for w, b, o in ((w1, b1, o1), (w2, b2, o2)):
            _set_grads(w, b, s)
            o.step()
    assert torch.equal(w1, w2) and torch.equal(b1, b2)


def test_musgd_closure_and_optimises():
    torch.manual_seed(0)
    X = torch.randn(128, 8)
    Y = X @ torch.randn(8, 4) + 0.5
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt, _ = build_optimizer(model, "MuSGD", 0.02, 0.9, 0.0, 100, 4, 16, 64)
    loss_fn = nn.MSELoss()

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(X), Y)
        loss.backward()
        return loss

    start = closure().item()
    for _ in range(50):
        last = opt.step(closure).item()
    assert last < 0.5 * start


# ---------------------------------------------------------------------------------------------- build_optimizer


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.box_branch = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
        self.cls_branch = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.ones(8))
        self.head = Head()
        self.tied = self.fc  # shared module: its parameters must be listed once


def _ids(group):
    return {id(p) for p in group["params"]}


@pytest.mark.parametrize("name", ["SGD", "AdamW", "MuSGD", "sgd"])
def test_groups_cover_every_parameter_once(name):
    model = Net()
    opt, info = build_optimizer(model, name, 0.01, 0.937, 0.0005, 100, 3, 16, 64)
    all_ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    names = [g["name"] for g in opt.param_groups]
    assert names[:3] == ["weights", "norm", "bias"]
    by_name = {g["name"]: g for g in opt.param_groups}
    for g in opt.param_groups:
        assert g["initial_lr"] == info["lr0"]
        if not g["name"].startswith("weights"):
            assert g["weight_decay"] == 0.0
        for p in g["params"]:
            if g["name"].startswith("weights"):
                assert p.ndim >= 2
    # weight decay scaled by batch * accumulate / nbs: accumulate = round(64/16) = 4 -> factor 1
    assert by_name["weights"]["weight_decay"] == pytest.approx(0.0005)
    norm_ids = set().union(*(_ids(g) for g in opt.param_groups if g["name"].startswith("norm")))
    for mod in (model.bn, model.gn, model.ln, model.head.box_branch[1], model.head.cls_branch[1]):
        assert id(mod.weight) in norm_ids
    assert id(model.scale) in norm_ids
    bias_ids = set().union(*(_ids(g) for g in opt.param_groups if g["name"].startswith("bias")))
    assert {id(m.bias) for m in (model.bn, model.fc, model.head.cls_branch[2])} <= bias_ids
    if info["optimizer"] == "SGD":
        assert all(g["nesterov"] for g in opt.param_groups)


def test_weight_decay_scaling_with_batch():
    opt, info = build_optimizer(Net(), "SGD", 0.01, 0.9, 0.0005, 100, 3, 48, 64)
    # accumulate = max(round(64/48), 1) = 1 -> 0.0005 * 48 / 64
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.0005 * 48 / 64)
    assert info["weight_decay"] == pytest.approx(0.0005 * 48 / 64)


def test_default_nbs_accumulates_less_on_a_short_run():
    # given: as given, whatever the run (Ultralytics' behaviour)
    assert resolve_nbs(64, 16, 160, 30) == (64, "nbs 64 given") and resolve_nbs(8, 16, 10**6, 300)[0] == 8
    # enough optimizer steps at 64: Ultralytics' default, unchanged
    nbs, why = resolve_nbs(None, 16, 5000, 100)
    assert nbs == 64 and "7825 optimizer steps" in why
    # 160 images x 30 epochs at batch 16: 300 batches, 75 steps at nbs 64 -> no accumulation
    nbs, why = resolve_nbs(None, 16, 160, 30)
    assert nbs == 16 and "75 optimizer steps (< 1000)" in why and "nbs=64" in why
    # 2000 images x 20 epochs: 2500 batches; accumulating 2 keeps 1250 >= 1000 steps
    assert resolve_nbs(None, 16, 2000, 20)[0] == 32
    # a batch of 64 or more accumulates nothing at 64 already: nbs stays 64 (and with it the weight decay scale)
    assert resolve_nbs(None, 128, 160, 30)[0] == 64 and resolve_nbs(None, 48, 160, 30)[0] == 64


def test_musgd_cls_branch_groups():
    model = Net()
    opt, info = build_optimizer(model, "MuSGD", 0.01, 0.9, 0.0005, 100, 3, 16, 64)
    assert isinstance(opt, MuSGD) and info["optimizer"] == "MuSGD"
    by_name = {g["name"]: g for g in opt.param_groups}
    assert [g["name"] for g in opt.param_groups] == ["weights", "norm", "bias", "weights_cls", "norm_cls", "bias_cls"]
    cls_ids = {id(p) for p in model.head.cls_branch.parameters()}
    for g in opt.param_groups:
        is_cls = g["name"].endswith("_cls")
        assert g["lr_scale"] == (3.0 if is_cls else 1.0)
        assert all((id(p) in cls_ids) == is_cls for p in g["params"])
        assert g["use_muon"] == g["name"].startswith("weights")
    assert by_name["weights_cls"]["weight_decay"] == by_name["weights"]["weight_decay"] > 0


def test_auto_selection():
    opt, info = build_optimizer(Net(), "auto", 0.01, 0.937, 0.0005, 20000, 3, 16, 64)
    assert isinstance(opt, MuSGD)
    assert (info["optimizer"], info["lr0"], info["momentum"]) == ("MuSGD", 0.01, 0.9)
    assert "auto" in info["reason"] and "MuSGD" in info["reason"]

    opt, info = build_optimizer(Net(), "auto", 0.01, 0.937, 0.0005, 1234, 3, 16, 64)
    assert isinstance(opt, torch.optim.AdamW)
    lr = round(0.002 * 5 / (4 + 3), 6)
    assert info["optimizer"] == "AdamW" and info["lr0"] == lr == 0.001429 and info["momentum"] == 0.9
    assert all(g["lr"] == lr and g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] > 0 and opt.param_groups[2]["weight_decay"] == 0
    assert "1234" in info["reason"]


def test_unknown_optimizer():
    with pytest.raises(ConfigError, match="Unknown optimizer 'Lion'"):
        build_optimizer(Net(), "Lion", 0.01, 0.9, 0.0005, 100, 3, 16, 64)
