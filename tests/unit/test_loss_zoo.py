"""Loss zoo: every box / class loss against hand-computed values, edge-case gradients, Wise-IoU and
GHM state, user plugins (dotted path, entry points, each failure mode) and DetectionLoss with every name."""

import importlib.metadata
import math
import textwrap
import uuid

import pytest
import torch

from kubedistill.config import TrainConfig, train_config
from kubedistill.core.errors import ConfigError
from kubedistill.train.iou import bbox_iou
from kubedistill.train.losses import BOX_LOSSES, CLS_LOSSES, DetectionLoss, build_box_loss, build_cls_loss
from kubedistill.train.losses.plugins import ENTRY_POINT_GROUP, CallableLoss

A = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
B = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
SQ = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
WIDE = torch.tensor([[0.0, 0.0, 4.0, 2.0]])


# ---------------------------------------------------------------- box losses, hand values


def _box(b):
    x1, y1, x2, y2 = b
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def _siou_loss_paper(p, t, theta=4.0):
    """SIoU as written in the paper (arcsin form with the sin(alpha) / sin(beta) switch)."""
    pcx, pcy, pw, ph = _box(p)
    tcx, tcy, tw, th = _box(t)
    ix = max(0.0, min(p[2], t[2]) - max(p[0], t[0]))
    iy = max(0.0, min(p[3], t[3]) - max(p[1], t[1]))
    iou = ix * iy / (pw * ph + tw * th - ix * iy)
    sigma = math.hypot(tcx - pcx, tcy - pcy)
    sin_a = abs(tcy - pcy) / sigma
    x = sin_a if sin_a <= math.sqrt(2) / 2 else abs(tcx - pcx) / sigma
    lam = 1 - 2 * math.sin(math.asin(x) - math.pi / 4) ** 2
    cw, ch = max(p[2], t[2]) - min(p[0], t[0]), max(p[3], t[3]) - min(p[1], t[1])
    gamma = 2 - lam
    delta = sum(1 - math.exp(-gamma * r) for r in (((tcx - pcx) / cw) ** 2, ((tcy - pcy) / ch) ** 2))
    omega = sum((1 - math.exp(-o)) ** theta for o in (abs(pw - tw) / max(pw, tw), abs(ph - th) / max(ph, th)))
    return 1 - iou + (delta + omega) / 2


def test_eiou_hand_values():
    # A vs B: IoU 1/7, centre dist^2 2, enclosing 3 x 3 (diag^2 18), same w and h
    assert build_box_loss("eiou")(A, B).item() == pytest.approx(1 - (1 / 7 - 2 / 18), abs=1e-6)
    # SQ vs WIDE: IoU 1/2, centre dist^2 1, enclosing 4 x 2 (diag^2 20), dw 2 (over cw^2 16), dh 0
    assert build_box_loss("eiou")(SQ, WIDE).item() == pytest.approx(1 - (0.5 - 1 / 20 - 4 / 16), abs=1e-6)
    assert bbox_iou(SQ, WIDE, "eiou").item() == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize(
    "p,t",
    [
        ([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 5.0, 3.0]),  # sin(alpha) < sqrt(2)/2: angle from alpha
        ([0.0, 0.0, 2.0, 2.0], [0.0, 3.0, 3.0, 7.0]),  # sin(alpha) > sqrt(2)/2: angle from beta
        ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]),  # 45 degrees: angle cost 1
    ],
)
def test_siou_matches_paper_form(p, t):
    got = build_box_loss("siou")(torch.tensor([p]), torch.tensor([t])).item()
    assert got == pytest.approx(_siou_loss_paper(p, t), abs=1e-6)


def test_alpha_iou_hand_values_and_config():
    assert build_box_loss("alpha_iou")(A, B).item() == pytest.approx(1 - (1 / 7) ** 3, abs=1e-6)
    loss = build_box_loss("alpha_iou", hyp=TrainConfig(alpha_iou=2.0))
    assert loss(A, B).item() == pytest.approx(1 - (1 / 7) ** 2, abs=1e-6)
    assert build_box_loss("alpha_iou", alpha=1.0)(A, B).item() == pytest.approx(
        build_box_loss("iou")(A, B).item(), abs=1e-6
    )


def _wiou_r(beta, alpha=1.9, delta=3.0):
    return beta / (delta * alpha ** (beta - delta))


def test_wiou_hand_values_eval_and_train():
    pred = torch.cat((A, SQ))
    tgt = torch.cat((B, WIDE))
    l_iou = [1 - 1 / 7, 0.5]
    rw = [math.exp(2 / 18), math.exp(1 / 20)]  # exp(centre dist^2 / enclosing diag^2)

    loss = build_box_loss("wiou").eval()
    out = loss(pred, tgt)
    assert loss.iou_mean.item() == 1.0  # eval: not updated
    for i in range(2):
        assert out[i].item() == pytest.approx(_wiou_r(l_iou[i] / 1.0) * rw[i] * l_iou[i], rel=1e-5)

    loss = build_box_loss("wiou", hyp=TrainConfig(wiou_momentum=0.1)).train()
    out = loss(pred, tgt)
    mean = 0.9 * 1.0 + 0.1 * sum(l_iou) / 2  # updated before use
    assert loss.iou_mean.item() == pytest.approx(mean, rel=1e-6)
    for i in range(2):
        assert out[i].item() == pytest.approx(_wiou_r(l_iou[i] / mean) * rw[i] * l_iou[i], rel=1e-5)
    assert "iou_mean" in loss.state_dict()


def test_wiou_running_mean_only_in_train_mode():
    loss = build_box_loss("wiou", momentum=0.5)
    assert loss.training
    loss(A, B)
    after_train = loss.iou_mean.item()
    assert after_train == pytest.approx(0.5 + 0.5 * (6 / 7), rel=1e-6)
    loss.eval()
    for _ in range(3):
        loss(SQ, WIDE)
    assert loss.iou_mean.item() == after_train
    loss.train()
    loss(SQ, WIDE)
    assert loss.iou_mean.item() == pytest.approx(0.5 * after_train + 0.5 * 0.5, rel=1e-6)
    loss(A[:0], B[:0])  # no boxes: no update, no nan
    assert math.isfinite(loss.iou_mean.item())


def test_wiou_gradient_flows_through_r_wiou_and_liou_only():
    """d/dpred of r * exp(rho2 / c2*) * (1 - IoU), r and c2 constants: compare with an independent autograd."""
    pred = torch.tensor([[0.2, 0.1, 2.5, 1.8]], requires_grad=True)
    tgt = torch.tensor([[1.0, 0.5, 3.0, 3.5]])
    build_box_loss("wiou").eval()(pred, tgt).sum().backward()

    p = pred.detach().clone().requires_grad_()
    x1, y1, x2, y2 = p[0]
    tx1, ty1, tx2, ty2 = tgt[0]
    inter = (torch.min(x2, tx2) - torch.max(x1, tx1)) * (torch.min(y2, ty2) - torch.max(y1, ty1))
    union = (x2 - x1) * (y2 - y1) + (tx2 - tx1) * (ty2 - ty1) - inter
    l_iou = 1 - inter / union
    rho2 = ((tx1 + tx2 - x1 - x2) / 2) ** 2 + ((ty1 + ty2 - y1 - y2) / 2) ** 2
    c2 = ((torch.max(x2, tx2) - torch.min(x1, tx1)) ** 2 + (torch.max(y2, ty2) - torch.min(y1, ty1)) ** 2).detach()
    r = _wiou_r(l_iou.item())
    (r * torch.exp(rho2 / c2) * l_iou).backward()
    assert torch.allclose(pred.grad, p.grad, atol=1e-5)


EDGE_PRED = torch.tensor(
    [
        [0.0, 0.0, 2.0, 2.0],  # identical
        [1.0, 1.0, 1.0, 1.0],  # zero-area prediction
        [2.0, 2.0, 2.0, 2.0],  # zero-area, identical zero-area target
        [3.0, 3.0, 3.0, 5.0],  # zero width
        [5.0, 5.0, 6.0, 8.0],  # disjoint
    ]
)
EDGE_TGT = torch.tensor(
    [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 5.0], [0.0, 0.0, 1.0, 1.0]]
)


@pytest.mark.parametrize("name", sorted(BOX_LOSSES))
def test_box_losses_finite_at_edge_cases(name):
    loss = build_box_loss(name)
    pred = EDGE_PRED.clone().requires_grad_()
    out = loss(pred, EDGE_TGT)
    assert out.shape == (5,)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(pred.grad).all()
    assert out[0].item() == pytest.approx(0.0, abs=1e-5)  # identical boxes: no loss


# ---------------------------------------------------------------- class losses, hand values

X = [0.3, -1.2, 2.0, -0.4]
Y = [1.0, 0.0, 0.4, 0.0]


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _bce(x, y):
    p = _sig(x)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _focal(x, y, g=2.0, a=0.25):
    p = _sig(x)
    pt = y * p + (1 - y) * (1 - p)
    at = y * a + (1 - y) * (1 - a)
    return at * (1 - pt) ** g * _bce(x, y)


def _vfl(x, q, g=2.0, a=0.75):
    p = _sig(x)
    if q > 0:
        return -q * (q * math.log(p) + (1 - q) * math.log(1 - p))
    return -a * p**g * math.log(1 - p)


def _qfl(x, y, b=2.0):
    return abs(y - _sig(x)) ** b * _bce(x, y)


@pytest.mark.parametrize(
    "name,kwargs,ref",
    [
        ("focal", {}, lambda x, y: _focal(x, y)),
        ("focal", {"gamma": 0.0, "alpha": 0.5}, lambda x, y: 0.5 * _bce(x, y)),
        ("focal", {"gamma": 1.5, "alpha": 0.4}, lambda x, y: _focal(x, y, 1.5, 0.4)),
        ("varifocal", {}, lambda x, y: _vfl(x, y)),
        ("varifocal", {"gamma": 1.0, "alpha": 0.5}, lambda x, y: _vfl(x, y, 1.0, 0.5)),
        ("qfl", {}, lambda x, y: _qfl(x, y)),
        ("qfl", {"beta": 1.0}, lambda x, y: _qfl(x, y, 1.0)),
        ("bce", {}, _bce),
    ],
)
def test_cls_losses_hand_values(name, kwargs, ref):
    out = build_cls_loss(name, **kwargs)(torch.tensor(X), torch.tensor(Y))
    expected = torch.tensor([ref(x, y) for x, y in zip(X, Y)])
    assert out.shape == (4,)
    assert torch.allclose(out, expected, atol=1e-6)


def test_cls_hyper_parameters_from_config():
    cfg = TrainConfig(fl_gamma=1.0, fl_alpha=0.3, ghm_bins=5, ghm_momentum=0.5)
    f, v, q, g = (build_cls_loss(n, hyp=cfg) for n in ("focal", "varifocal", "qfl", "ghm"))
    assert (f.gamma, f.alpha, v.gamma, v.alpha, q.beta, g.bins, g.momentum) == (1.0, 0.3, 1.0, 0.3, 1.0, 5, 0.5)
    d = TrainConfig()  # fl_alpha None: each loss's own default
    assert build_cls_loss("focal", hyp=d).alpha == 0.25 and build_cls_loss("varifocal", hyp=d).alpha == 0.75


def _logit(p):
    return math.log(p / (1 - p))


def test_ghm_weights_known_distribution():
    # targets 0, p = g: six elements in bin 0, three in bin 5, one in bin 9 (10 bins)
    gs = [0.05] * 6 + [0.55] * 3 + [0.95]
    x, y = torch.tensor([_logit(g) for g in gs]), torch.zeros(10)
    loss = build_cls_loss("ghm", momentum=0.0, norm="elements")
    w = loss.weights(x, y)
    n, valid = 10, 3
    expected_w = torch.tensor([n / (valid * 6)] * 6 + [n / (valid * 3)] * 3 + [n / (valid * 1)])
    assert torch.allclose(w, expected_w, atol=1e-6)
    assert w.sum().item() == pytest.approx(n)  # momentum 0: weights sum to N, same scale as BCE
    bce = torch.tensor([_bce(_logit(g), 0.0) for g in gs])
    assert torch.allclose(loss(x, y), expected_w * bce, atol=1e-5)


def test_ghm_targets_norm_gives_paper_loss_after_target_score_division():
    """norm='targets': sum(loss) / sum(targets) = mean over non-empty bins of the bin's mean BCE."""
    xs = [-3.0, -2.5, -2.9, -0.1, 0.2, 1.5, -1.0, 2.5]
    ys = [0.0, 0.0, 0.0, 0.0, 0.8, 0.9, 0.6, 0.0]
    bins = {}
    for x, y in zip(xs, ys):
        bins.setdefault(min(int(abs(_sig(x) - y) * 10), 9), []).append(_bce(x, y))
    paper = sum(sum(v) / len(v) for v in bins.values()) / len(bins)
    x, y = torch.tensor(xs), torch.tensor(ys)
    out = build_cls_loss("ghm", momentum=0.0)(x, y)
    assert (out.sum() / y.sum()).item() == pytest.approx(paper, rel=1e-5)
    # label smoothing: targets (1 - eps) y + eps / K, the ratio becomes (1 - eps) * paper's loss on y'
    eps, k = 0.1, 3
    ys2 = [(1 - eps) * v + eps / k for v in ys]
    bins2 = {}
    for x_, y_ in zip(xs, ys2):
        bins2.setdefault(min(int(abs(_sig(x_) - y_) * 10), 9), []).append(_bce(x_, y_))
    paper2 = sum(sum(v) / len(v) for v in bins2.values()) / len(bins2)
    out2 = build_cls_loss("ghm", momentum=0.0)(x, torch.tensor(ys2))
    assert (out2.sum() / y.sum()).item() == pytest.approx((1 - eps) * paper2, rel=1e-5)
    with pytest.raises(ValueError, match="norm"):
        build_cls_loss("ghm", norm="mean")


def test_ghm_ema_counts_train_only():
    loss = build_cls_loss("ghm", bins=10, momentum=0.75)
    gs1 = [0.05] * 6 + [0.55] * 3 + [0.95]
    gs2 = [0.05] * 2 + [0.35] * 8
    x1, x2 = torch.tensor([_logit(g) for g in gs1]), torch.tensor([_logit(g) for g in gs2])
    y = torch.zeros(10)
    w1 = loss.weights(x1, y)  # first sight of a bin: acc = count, so same weights as momentum 0
    assert torch.allclose(w1, build_cls_loss("ghm", momentum=0.0).weights(x1, y), atol=1e-6)
    acc1 = loss.acc_sum.clone()
    assert acc1[[0, 5, 9]].tolist() == [6.0, 3.0, 1.0]
    loss.eval()
    loss.weights(x2, y)
    assert torch.equal(loss.acc_sum, acc1)  # eval: read only
    loss.train()
    w2 = loss.weights(x2, y)
    acc0 = 0.75 * 6 + 0.25 * 2  # EMA of bin 0; bin 3 seen first: its count
    assert loss.acc_sum[0].item() == pytest.approx(acc0) and loss.acc_sum[3].item() == 8.0
    assert loss.acc_sum[5].item() == 3.0  # empty this time: unchanged
    expected = torch.tensor([10 / (2 * acc0)] * 2 + [10 / (2 * 8)] * 8)
    assert torch.allclose(w2, expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CLS_LOSSES))
def test_cls_losses_finite_with_no_positives_and_saturation(name):
    loss = build_cls_loss(name)
    x = torch.tensor([[-30.0, 30.0, 0.0], [5.0, -5.0, 1e-3]]).requires_grad_()
    for y in (torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0]])):
        out = loss(x, y)
        assert out.shape == x.shape and torch.isfinite(out).all()
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all()


# ---------------------------------------------------------------- plugins


def _write_plugin(tmp_path, monkeypatch, source: str) -> str:
    name = f"kd_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


PLUGIN_SRC = """
import torch
from torch import nn

class MyBoxLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, pred, target):
        self.calls += 1
        return (pred - target).abs().sum(-1)  # per-box L1

def make_cls(scale=2.0):
    def loss(logits, targets):
        return scale * nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss

def plain_box(pred, target):
    return (pred - target).pow(2).sum(-1)

NOT_A_LOSS = 3

class NeedsArgs(nn.Module):
    def __init__(self, k):
        super().__init__()

class WrongSignature(nn.Module):
    def forward(self, pred):
        return pred.sum(-1)

class Reduced(nn.Module):
    def forward(self, pred, target):
        return (pred - target).abs().mean()

class ClsReduced(nn.Module):
    def forward(self, logits, targets):
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)

class LogArea(nn.Module):
    def forward(self, pred, target):
        return -torch.log((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]))

class SqrtDist(nn.Module):
    def forward(self, pred, target):
        return (pred - target).pow(2).sum(-1).sqrt()

class Detached(nn.Module):
    def forward(self, pred, target):
        return (pred - target).abs().sum(-1).detach()

class Numpy(nn.Module):
    def forward(self, pred, target):
        return torch.tensor((pred - target).detach().numpy()).abs().sum(-1)

class Raises(nn.Module):
    def forward(self, pred, target):
        raise RuntimeError("boom")
"""


def test_plugin_happy_path(tmp_path, monkeypatch):
    mod = _write_plugin(tmp_path, monkeypatch, PLUGIN_SRC)
    box = build_box_loss(f"{mod}:MyBoxLoss")
    assert box.calls.item() == 0  # the build-time check ran on a copy
    assert box(A, B).tolist() == [4.0]
    cls = build_cls_loss(f"{mod}:make_cls")  # factory -> plain function, wrapped in a Module
    assert isinstance(cls, CallableLoss)
    x, y = torch.tensor(X), torch.tensor(Y)
    assert torch.allclose(cls(x, y), 2 * build_cls_loss("bce")(x, y))
    plain = build_box_loss(f"{mod}:plain_box")  # the loss function itself
    assert plain(A, B).tolist() == [4.0]
    cfg = TrainConfig(box_loss=f"{mod}:MyBoxLoss", cls_loss=f"{mod}:make_cls")
    _run_detection_loss(cfg)


@pytest.mark.parametrize(
    "attr,kind,message",
    [
        (
            "WrongSignature",
            "box",
            r"box_loss plugin '.*:WrongSignature' has the wrong signature: loss\(pred \[5, 4\], target \[5, 4\]\) raised TypeError",
        ),
        ("Reduced", "box", r"returned shape \(\) for .*expected \(5,\) \(one value per box"),
        ("ClsReduced", "cls", r"cls_loss plugin .*ClsReduced.* returned shape \(2, 8\) .*expected \(2, 8, 3\)"),
        ("LogArea", "box", r"LogArea' returned non-finite values"),
        ("SqrtDist", "box", r"SqrtDist' gives non-finite gradients"),
        ("Detached", "box", r"Detached' returned a result without grad_fn"),
        ("Numpy", "box", r"Numpy' returned a result without grad_fn"),
        ("NeedsArgs", "box", r"class NeedsArgs cannot be built with no arguments"),
        ("NOT_A_LOSS", "box", r"NOT_A_LOSS' is a int, not a class, factory or function"),
        ("Raises", "cls", r"Raises': loss\(logits \[2, 8, 3\].*raised RuntimeError: boom"),
        ("Missing", "box", r"has no attribute 'Missing'"),
    ],
)
def test_plugin_failure_modes(tmp_path, monkeypatch, attr, kind, message):
    mod = _write_plugin(tmp_path, monkeypatch, PLUGIN_SRC)
    build = build_box_loss if kind == "box" else build_cls_loss
    with pytest.raises(ConfigError, match=message) as e:
        build(f"{mod}:{attr}")
    text = str(e.value)
    assert f"{mod}:{attr}" in text  # names the plugin
    if attr not in ("Missing",) and "non-finite" not in text:
        assert ("per-box loss [N]" if kind == "box" else "element-wise loss [..., C]") in text  # the interface


def test_plugin_bad_module_and_spec():
    with pytest.raises(ConfigError, match=r"cannot import module 'no_such_pkg_kd\.losses'"):
        build_box_loss("no_such_pkg_kd.losses:Loss")
    with pytest.raises(ConfigError, match=r"not of the form 'module:attr'"):
        build_cls_loss("mypkg:")


def _fake_entry_points(mapping):
    real = importlib.metadata.entry_points

    def fake(**kw):
        if kw.get("group") == ENTRY_POINT_GROUP:
            return [importlib.metadata.EntryPoint(name=n, value=v, group=ENTRY_POINT_GROUP) for n, v in mapping.items()]
        return real(**kw)

    return fake


def test_entry_point_discovery_monkeypatched(tmp_path, monkeypatch):
    mod = _write_plugin(tmp_path, monkeypatch, PLUGIN_SRC)
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        _fake_entry_points({"my_l1": f"{mod}:MyBoxLoss", "bad_one": f"{mod}:Reduced", "gone": "no_such_kd_mod:X"}),
    )
    assert build_box_loss("my_l1")(A, B).tolist() == [4.0]
    with pytest.raises(ConfigError, match=r"'bad_one' \(entry point .*:Reduced\) returned shape"):
        build_box_loss("bad_one")
    with pytest.raises(
        ConfigError, match=r"'gone' \(entry point no_such_kd_mod:X\) failed to load: ModuleNotFoundError"
    ):
        build_box_loss("gone")
    with pytest.raises(ConfigError, match=r"Unknown box_loss 'my_l2' \(did you mean 'my_l1'\?\).*ciou.*wiou.*my_l1"):
        build_box_loss("my_l2")


def test_entry_point_discovery_from_dist_info(tmp_path, monkeypatch):
    mod = _write_plugin(tmp_path, monkeypatch, PLUGIN_SRC)
    dist = tmp_path / "kd_fake_losses-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kd-fake-losses\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nkd_scaled_bce = {mod}:make_cls\n")
    cls = build_cls_loss("kd_scaled_bce")
    x, y = torch.tensor(X), torch.tensor(Y)
    assert torch.allclose(cls(x, y), 2 * build_cls_loss("bce")(x, y))
    _run_detection_loss(TrainConfig(cls_loss="kd_scaled_bce"))


def test_unknown_name_lists_choices():
    with pytest.raises(
        ConfigError,
        match=r"Unknown cls_loss 'focall' \(did you mean 'focal'\?\)\. Choose one of: bce, focal, ghm, qfl, varifocal",
    ):
        build_cls_loss("focall")
    with pytest.raises(ConfigError, match=r"'module:attr'"):
        build_box_loss("nope")


# ---------------------------------------------------------------- config and DetectionLoss with every name


def test_config_fields_validated():
    assert train_config(fl_alpha="none").fl_alpha is None
    assert train_config(fl_alpha="0.4").fl_alpha == 0.4
    for bad in (
        {"ghm_momentum": 1.0},
        {"ghm_bins": 0},
        {"fl_alpha": 1.5},
        {"alpha_iou": 0},
        {"wiou_momentum": 0},
        {"fl_gamma": -1},
    ):
        with pytest.raises(ConfigError, match=list(bad)[0]):
            train_config(**bad)


def _fake_head(b, nc, imgsz, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    return {
        "boxes": (torch.rand(b, 4, a, generator=g) * 3 + 0.5).requires_grad_(),
        "scores": torch.randn(b, nc, a, generator=g).requires_grad_(),
    }


def _run_detection_loss(cfg, nc=3, labels=True):
    loss = DetectionLoss(nc, (8, 16, 32), cfg)
    head = _fake_head(2, nc, 64)
    if labels:
        batch = {
            "img": torch.zeros(2, 3, 64, 64),
            "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
            "cls": torch.tensor([[0.0], [2.0], [1.0]]),
            "bboxes": torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.7, 0.6, 0.3, 0.5], [0.5, 0.5, 0.2, 0.1]]),
        }
    else:
        batch = {
            "img": torch.zeros(2, 3, 64, 64),
            "batch_idx": torch.zeros(0),
            "cls": torch.zeros(0, 1),
            "bboxes": torch.zeros(0, 4),
        }
    total, items = loss({"one2many": head, "one2one": head}, batch, {"one2many": 0.6, "one2one": 0.4})
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in items.values())
    total.backward()
    assert torch.isfinite(head["scores"].grad).all()
    if labels:
        assert torch.isfinite(head["boxes"].grad).all() and head["boxes"].grad.abs().sum() > 0
    else:
        assert items["box_loss" if "box_loss" in items else "box"].item() == 0.0
    return loss, total


@pytest.mark.parametrize("name", sorted(BOX_LOSSES))
def test_detection_loss_every_box_loss(name):
    loss, total = _run_detection_loss(TrainConfig(box_loss=name))
    assert total.item() > 0


@pytest.mark.parametrize("name", sorted(CLS_LOSSES))
def test_detection_loss_every_cls_loss(name):
    loss, total = _run_detection_loss(TrainConfig(cls_loss=name, label_smoothing=0.1))
    assert total.item() > 0
    _run_detection_loss(TrainConfig(cls_loss=name), labels=False)  # no positives


def test_detection_loss_passes_hyper_parameters():
    loss = DetectionLoss(3, (8, 16, 32), TrainConfig(box_loss="wiou", wiou_momentum=0.2, cls_loss="ghm", ghm_bins=7))
    assert loss.box_loss.momentum == 0.2 and loss.cls_loss.bins == 7
    # the momentum reaches the running mean: a larger one moves it further from its start (1.0) on the same boxes
    moved = {
        m: abs(1.0 - _run_detection_loss(TrainConfig(box_loss="wiou", wiou_momentum=m))[0].box_loss.iou_mean.item())
        for m in (0.2, 0.5)
    }
    assert 0 < moved[0.2] < moved[0.5]
