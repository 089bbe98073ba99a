"""Model definition, dual heads, decoding (NMS-free and NMS), neck hooks, info."""

import pytest
import torch

from kubedistill.core.errors import ConfigError
from kubedistill.model.decode import box_iou, decode, nms, topk_detections
from kubedistill.model.info import model_info
from kubedistill.model.yolo import DetectionModel, neck_features, parse_scale


def test_scale_names():
    assert parse_scale("yolo26n") == "n" and parse_scale("yolo26x.yaml") == "x" and parse_scale("YOLO26S") == "s"
    assert parse_scale("yolo-n") == "n" and parse_scale("YOLO-S") == "s" and parse_scale("m") == "m"  # older names
    for bad in ("yolo26q", "yolo-z", "yolo11n"):
        with pytest.raises(ConfigError, match=f"Unknown model '{bad}'.*yolo26n, yolo26s, yolo26m, yolo26l, yolo26x"):
            parse_scale(bad)


# YOLO26 detect at 80 classes, as Ultralytics 8.4 states them (yolo26.yaml): parameters, GFLOPs at 640
YOLO26 = {
    "n": (2_572_280, 6.1),
    "s": (10_009_784, 22.8),
    "m": (21_896_248, 75.4),
    "l": (26_299_704, 93.8),
    "x": (58_993_368, 209.5),
}


@pytest.mark.parametrize("scale", list(YOLO26))
def test_parameters_and_flops_equal_yolo26(scale):
    from torch.utils.flop_counter import FlopCounterMode

    params, gflops = YOLO26[scale]
    m = DetectionModel(scale, nc=80)
    assert sum(p.numel() for p in m.parameters()) == params
    # Ultralytics counts the training graph (both heads) with thop; torch's counter also counts the attention
    # matmuls, which thop leaves out: equal to 1%.
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        m.train()(torch.zeros(1, 3, 640, 640))
    assert counter.get_total_flops() / 1e9 == pytest.approx(gflops, rel=0.01)


@pytest.mark.parametrize("scale,channels", [("n", (64, 128, 256)), ("s", (128, 256, 512))])
def test_heads_train_and_eval(scale, channels):
    m = DetectionModel(scale, nc=3)
    assert m.neck_channels == channels
    x = torch.rand(2, 3, 64, 96)
    a = (8 * 12) + (4 * 6) + (2 * 3)
    m.train()
    out = m(x)
    assert set(out) == {"one2many", "one2one"}
    for h in out.values():
        assert h["boxes"].shape == (2, 4, a) and h["scores"].shape == (2, 3, a)
        assert torch.isfinite(h["boxes"]).all()
    # the one-to-one branches start as copies of the one-to-many ones (on detached, equal features)
    assert torch.equal(out["one2one"]["boxes"], out["one2many"]["boxes"])
    m.eval()
    with torch.no_grad():
        assert set(m(x)) == {"one2one"}
        m.set_eval_head(nms=True)
        assert set(m(x)) == {"one2many"}


def test_one2one_head_does_not_train_backbone():
    m = DetectionModel("n", nc=2)
    m.train()
    out = m(torch.rand(1, 3, 64, 64))
    out["one2one"]["scores"].sum().backward()
    assert m.p1.conv.weight.grad is None  # detached features
    assert m.head.o2o["cls_branch"][0][-1].weight.grad is not None


def test_topk_detections_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(2, 50, 4, generator=g)
    scores = torch.rand(2, 50, 7, generator=g)
    dets = topk_detections(boxes, scores, max_det=20)
    for b in range(2):
        flat = scores[b].flatten()
        top = flat.topk(20)
        assert torch.allclose(dets[b, :, 4], top.values)
        anchor, cls = top.indices // 7, top.indices % 7
        assert torch.equal(dets[b, :, 5].long(), cls)
        assert torch.allclose(dets[b, :, :4], boxes[b, anchor])


def test_nms_pure_torch():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [3, 2]
    assert box_iou(boxes[:1], boxes[2:3]).item() == 0.0


def test_decode_paths_return_pixel_boxes():
    m = DetectionModel("n", nc=2).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        e2e = decode(m(x), (64, 64), m.strides, max_det=5, conf=0.0)[0]
        m.set_eval_head(True)
        n = decode(m(x), (64, 64), m.strides, nms=True, conf=0.0, max_det=5)[0]
    assert e2e.shape == (5, 6) and n.shape[1] == 6 and len(n) <= 5
    assert (e2e[:, 4].diff() <= 0).all()  # sorted by score
    for out in (e2e, n):  # rows are x1, y1, x2, y2 in input pixels, score, class
        boxes = out[:, :4]
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert boxes.min() > -64 and boxes.max() < 128  # within an image's width of the 64 px input
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert centres.max() > 2.0  # pixels, not grid units or fractions of the image
        assert ((out[:, 4] >= 0) & (out[:, 4] <= 1)).all() and set(out[:, 5].tolist()) <= {0.0, 1.0}


def test_neck_hook_captures_head_inputs():
    m = DetectionModel("n", nc=2).eval()
    with neck_features(m) as feats, torch.no_grad():
        m(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(m.neck_channels)
    assert [f.shape[-1] for f in feats] == [8, 4, 2]
    assert not m.head._forward_pre_hooks  # removed on exit


def test_info_counts():
    info = model_info(DetectionModel("n", nc=80), 640)
    assert 2.0e6 < info["params"] < 3.0e6  # yolo26n: 2.5 M
    assert 4.5 < info["gflops"] < 7.5  # yolo26n: 6.1 GFLOPs at 640
    assert info["params_inference"] < info["params"]
