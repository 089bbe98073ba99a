"""Task-aligned assignment with small-target-aware candidates."""

import torch

from kubedistill.model.head import make_anchors
from kubedistill.train.assigner import TaskAlignedAssigner, anchors_in_boxes, stal_expand

IMGSZ = 128
STRIDES = [8, 16, 32]


def _anchors():
    pts, st = make_anchors([(IMGSZ // s, IMGSZ // s) for s in STRIDES], STRIDES)
    return pts * st, st


def _assign(gt_xyxy, topk=10, stal=16.0, nc=2):
    anc, _ = _anchors()
    a = anc.shape[0]
    gt = torch.tensor([gt_xyxy], dtype=torch.float32)  # [1, M, 4]
    m = gt.shape[1]
    # predictions: every anchor predicts the gt box of object 0 with a moderate score
    pd_scores = torch.full((1, a, nc), 0.5)
    pd_boxes = gt[:, :1].expand(1, a, 4).clone()
    labels = torch.zeros(1, m, 1)
    mask = torch.ones(1, m, 1)
    assigner = TaskAlignedAssigner(nc, topk=topk, stal_size=stal)
    return assigner(pd_scores, pd_boxes, anc, labels, gt, mask)


def test_tiny_object_gets_anchors_only_with_stal():
    # A 4 px object centred at (10, 10): stride-8 anchor centres are at 4, 12, ... and the stride-16
    # one at 8, so no anchor centre lies strictly inside it.
    tiny = [8.0, 8.0, 12.0, 12.0]
    anc, _ = _anchors()
    inside = anchors_in_boxes(anc, torch.tensor([[tiny]]))
    assert inside.sum() == 0
    *_, fg_plain, _ = _assign([tiny], stal=None)
    assert fg_plain.sum() == 0  # without the rule the object is never learned
    *_, fg, _ = _assign([tiny], stal=16.0)
    assert fg.sum() >= 4  # the YOLO26 design: at least 4 anchors
    assert (anc[fg[0]] - torch.tensor([10.0, 10.0])).abs().max() <= 8.0  # all near the object


def test_stal_keeps_large_boxes_and_true_targets():
    big = torch.tensor([[10.0, 20.0, 90.0, 60.0]])
    assert torch.equal(stal_expand(big, 16.0), big)
    labels, tboxes, tscores, fg, _ = _assign([[8.0, 8.0, 12.0, 12.0]])
    assert torch.allclose(tboxes[fg], torch.tensor([8.0, 8.0, 12.0, 12.0]))  # targets keep the real box


def test_topk_per_object():
    box = [16.0, 16.0, 112.0, 112.0]  # many candidate anchors
    *_, fg10, _ = _assign([box], topk=10)
    *_, fg1, _ = _assign([box], topk=1)
    assert fg10.sum() == 10
    assert fg1.sum() == 1


def test_conflicting_anchor_goes_to_highest_iou():
    boxes = [[0.0, 0.0, 64.0, 64.0], [8.0, 8.0, 60.0, 60.0]]
    labels, tboxes, tscores, fg, gt_idx = _assign(boxes, topk=13)
    # each positive anchor is assigned to exactly one object and target scores are one-hot x alignment
    assert (tscores[fg] > 0).sum(-1).eq(1).all()
    assert set(gt_idx[fg].tolist()) <= {0, 1}


def test_no_objects():
    anc, _ = _anchors()
    a = anc.shape[0]
    assigner = TaskAlignedAssigner(3)
    out = assigner(
        torch.rand(2, a, 3), torch.rand(2, a, 4), anc, torch.zeros(2, 0, 1), torch.zeros(2, 0, 4), torch.zeros(2, 0, 1)
    )
    assert out[3].sum() == 0 and out[2].sum() == 0
