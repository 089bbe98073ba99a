"""Decoupled anchor-free detection head with a one-to-many and a one-to-one branch set.

Both branch sets see the same neck features; the one-to-one set sees them detached, so only the
one-to-many loss trains the backbone and neck (as in YOLO26). The box branch regresses the four edge
distances directly (no DFL, `reg_max = 1`), in units of the level's stride, as raw outputs (YOLO26's form, so a
YOLO26 checkpoint's head gives the same boxes here).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from kubedistill.model.blocks import Conv, DWConv

HEADS = ("one2many", "one2one")


def make_anchors(
    shapes: list[tuple[int, int]], strides: list[int], device=None, dtype=torch.float32, offset: float = 0.5
):
    """Anchor centres in grid units (x, y) [A, 2] and the stride of each anchor [A, 1], level by level."""
    points, stride_t = [], []
    for (h, w), s in zip(shapes, strides):
        sy = torch.arange(h, device=device, dtype=dtype) + offset
        sx = torch.arange(w, device=device, dtype=dtype) + offset
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_t.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_t)


def dist2bbox(dist: torch.Tensor, anchors: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """(left, top, right, bottom) distances around anchor points -> xyxy boxes."""
    lt, rb = dist.chunk(2, dim)
    return torch.cat((anchors - lt, anchors + rb), dim)


def bbox2dist(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """xyxy boxes -> (left, top, right, bottom) distances from anchor points."""
    x1y1, x2y2 = boxes.chunk(2, -1)
    return torch.cat((anchors - x1y1, x2y2 - anchors), -1)


class Detect(nn.Module):
    """Per-level box and class branches, duplicated for the one-to-many and one-to-one heads.

    forward(feats) returns {head: {"boxes": [B, 4, A] edge distances in stride units,
    "scores": [B, nc, A] class logits}} for the heads in `self.active_heads()`: both while
    training, `eval_heads` (default one-to-one only) in eval mode.
    """

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.strides = tuple(strides)
        self.eval_heads: tuple[str, ...] = ("one2one",)
        c2 = max(16, ch[0] // 4, 4)
        c3 = max(ch[0], min(nc, 100))
        self.box_branch = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4, 1)) for x in ch)
        self.cls_branch = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                nn.Conv2d(c3, nc, 1),
            )
            for x in ch
        )
        self.init_bias()
        # The one-to-one branches start as copies; names keep "box_branch"/"cls_branch" so that the
        # optimizer's per-branch settings (class branch lr under MuSGD) apply to both heads.
        self.o2o = nn.ModuleDict(
            {"box_branch": copy.deepcopy(self.box_branch), "cls_branch": copy.deepcopy(self.cls_branch)}
        )

    def init_bias(self, imgsz: int = 640) -> None:
        """Box output starts at two strides from the anchor; class prior near 0.01 objects per cell scaled by level
        size."""
        box_b = 2.0
        sets = [(self.box_branch, self.cls_branch)]
        if hasattr(self, "o2o"):
            sets.append((self.o2o["box_branch"], self.o2o["cls_branch"]))
        for box_branch, cls_branch in sets:
            for b, c, s in zip(box_branch, cls_branch, self.strides):
                b[-1].bias.data.fill_(box_b)
                c[-1].bias.data.fill_(math.log(5 / self.nc / (imgsz / s) ** 2))

    def active_heads(self) -> tuple[str, ...]:
        return HEADS if self.training else self.eval_heads

    def _run(self, feats: list[torch.Tensor], box_branch, cls_branch) -> dict[str, torch.Tensor]:
        b = feats[0].shape[0]
        boxes = torch.cat([box_branch[i](f).view(b, 4, -1) for i, f in enumerate(feats)], 2)
        return {"boxes": boxes, "scores": self._scores(feats, cls_branch)}

    def _scores(self, feats: list[torch.Tensor], cls_branch) -> torch.Tensor:
        b = feats[0].shape[0]
        return torch.cat([cls_branch[i](f).view(b, self.nc, -1) for i, f in enumerate(feats)], 2)

    def class_logits(self, feats: list[torch.Tensor], head: str) -> torch.Tensor:
        """[B, nc, A] class logits of one head, without its box branch: all a distillation teacher needs."""
        return self._scores(feats, self.cls_branch if head == "one2many" else self.o2o["cls_branch"])

    def forward(self, feats: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for head in self.active_heads():
            if head == "one2many":
                out[head] = self._run(feats, self.box_branch, self.cls_branch)
            else:
                det = [f.detach() for f in feats]
                out[head] = self._run(det, self.o2o["box_branch"], self.o2o["cls_branch"])
        return out
