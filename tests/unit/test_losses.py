"""IoU family and detection loss against hand-computed values; registry; normalisation."""

import math

import pytest
import torch

from kubedistill.config import TrainConfig
from kubedistill.core.errors import ConfigError
from kubedistill.train.iou import bbox_iou
from kubedistill.train.losses import (
    BOX_LOSSES,
    CLS_LOSSES,
    DetectionLoss,
    build_box_loss,
    build_cls_loss,
    build_targets,
    progloss_weights,
)

A = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
B = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
WIDE = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
SQ = torch.tensor([[0.0, 0.0, 2.0, 2.0]])


def test_iou_family_hand_values():
    iou = 1 / 7  # inter 1, union 4 + 4 - 1
    assert bbox_iou(A, B, "iou").item() == pytest.approx(iou, abs=1e-6)
    assert bbox_iou(A, B, "giou").item() == pytest.approx(iou - (9 - 7) / 9, abs=1e-6)  # enclosing 3x3
    assert bbox_iou(A, B, "diou").item() == pytest.approx(iou - 2 / 18, abs=1e-6)  # centre dist^2 2, diag^2 18
    assert bbox_iou(A, B, "ciou").item() == pytest.approx(iou - 2 / 18, abs=1e-6)  # same aspect: v = 0


def test_ciou_aspect_term():
    iou = 0.5  # inter 4, union 8 + 4 - 4
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    alpha = v / (v - iou + 1)
    expected = iou - (1 / 20 + v * alpha)  # centre dist^2 1, enclosing diag^2 4^2 + 2^2
    assert bbox_iou(SQ, WIDE, "ciou").item() == pytest.approx(expected, abs=1e-6)


def test_box_loss_registry_values_and_errors():
    assert set(BOX_LOSSES) >= {"iou", "giou", "diou", "ciou"}
    assert build_box_loss("iou")(A, B).item() == pytest.approx(1 - 1 / 7, abs=1e-6)
    assert build_box_loss("giou")(A, A).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="Unknown box_loss 'ciuo'"):
        build_box_loss("ciuo")


def test_bce_matches_hand():
    assert "bce" in CLS_LOSSES
    x, y = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.25])
    p = 1 / (1 + torch.exp(-x))
    hand = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    assert torch.allclose(build_cls_loss("bce")(x, y), hand, atol=1e-6)


def test_progloss_schedule():
    assert progloss_weights(0, 100) == pytest.approx((0.8, 0.2))
    assert progloss_weights(99, 100) == pytest.approx((0.1, 0.9))
    w_o2m, w_o2o = progloss_weights(50, 100)
    assert w_o2m == pytest.approx(0.45, abs=0.01) and w_o2o == pytest.approx(0.55, abs=0.01)
    assert progloss_weights(0, 1) == pytest.approx((0.8, 0.2))
    ws = [progloss_weights(e, 10)[0] for e in range(10)]
    assert all(a > b for a, b in zip(ws, ws[1:]))  # falls every epoch


def test_build_targets_pads_per_image():
    batch = {
        "batch_idx": torch.tensor([1.0, 0.0, 1.0]),
        "cls": torch.tensor([[2.0], [1.0], [0.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]),
    }
    t = build_targets(batch, 2, (64, 128), "cpu")
    assert t.shape == (2, 2, 5)
    assert t[0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0, 64.0, 32.0])
    assert t[0, 1].tolist() == [0.0] * 5  # padding
    assert t[1, 0].tolist() == pytest.approx([2.0, 32.0, 16.0, 96.0, 48.0])
    assert t[1, 1].tolist() == pytest.approx([0.0, 0.0, 0.0, 128.0, 64.0])


def _fake_head(b, nc, imgsz, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    return {"boxes": torch.rand(b, 4, a, generator=g) * 3 + 0.5, "scores": torch.randn(b, nc, a, generator=g)}


def test_detection_loss_normalised_by_target_scores():
    """Doubling the batch (same images twice) leaves every per-image-normalised term unchanged."""
    cfg = TrainConfig()
    loss = DetectionLoss(3, (8, 16, 32), cfg)
    head = _fake_head(1, 3, 64)
    batch1 = {
        "img": torch.zeros(1, 3, 64, 64),
        "batch_idx": torch.zeros(2),
        "cls": torch.tensor([[0.0], [2.0]]),
        "bboxes": torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.7, 0.6, 0.3, 0.5]]),
    }
    batch2 = {
        "img": torch.zeros(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 0, 1, 1]),
        "cls": batch1["cls"].repeat(2, 1),
        "bboxes": batch1["bboxes"].repeat(2, 1),
    }
    head2 = {k: v.repeat(2, 1, 1) for k, v in head.items()}
    w = {"one2many": 1.0}
    l1, i1 = loss({"one2many": head}, batch1, w)
    l2, i2 = loss({"one2many": head2}, batch2, w)
    for k in ("box_loss", "cls_loss", "l1_loss"):
        assert i1[k].item() == pytest.approx(i2[k].item(), rel=1e-5)
    assert l2.item() == pytest.approx(2 * l1.item(), rel=1e-5)  # loss is per-image mean times batch size


def test_detection_loss_no_positives_finite_grad():
    cfg = TrainConfig()
    loss = DetectionLoss(2, (8, 16, 32), cfg)
    head = {k: v.requires_grad_() for k, v in _fake_head(2, 2, 64).items()}
    batch = {
        "img": torch.zeros(2, 3, 64, 64),
        "batch_idx": torch.zeros(0),
        "cls": torch.zeros(0, 1),
        "bboxes": torch.zeros(0, 4),
    }
    total, items = loss({"one2many": head, "one2one": head}, batch, {"one2many": 0.5, "one2one": 0.5})
    total.backward()
    assert items["box_loss"].item() == 0.0 and items["cls_loss"].item() > 0
    assert torch.isfinite(head["scores"].grad).all()


def test_label_smoothing_targets():
    """With eps, the class target of a positive is (1 - eps) * t + eps / K, negatives eps / K."""
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, logits, targets):
            seen["t"] = targets.detach().clone()
            return torch.zeros_like(logits)

    cfg = TrainConfig(label_smoothing=0.1)
    loss = DetectionLoss(4, (8, 16, 32), cfg)
    loss.cls_loss = Spy()
    batch = {
        "img": torch.zeros(1, 3, 64, 64),
        "batch_idx": torch.zeros(1),
        "cls": torch.tensor([[1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]),
    }
    loss({"one2many": _fake_head(1, 4, 64)}, batch, {"one2many": 1.0})
    t = seen["t"]
    assert t.min().item() == pytest.approx(0.1 / 4)
    assert torch.allclose(t[..., 0], torch.full_like(t[..., 0], 0.025))
    assert t[..., 1].max().item() > 0.025
