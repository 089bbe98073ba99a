"""IoU family for xyxy boxes: IoU, GIoU, DIoU, CIoU, EIoU, SIoU. Element-wise over matching rows.

Every kind is a *score* (1 for identical boxes, lower is worse); the box losses are 1 - score.
Widths and heights are clamped to `eps` and every division has `eps` in its denominator, so
zero-area and identical boxes give finite values and finite gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

IOU_KINDS = ("iou", "giou", "diou", "ciou", "eiou", "siou")


class BoxGeometry(NamedTuple):
    """Terms shared by the IoU family, each [..., 1]. Box 1 is the prediction, box 2 the target."""

    iou: torch.Tensor
    union: torch.Tensor  # includes eps
    w1: torch.Tensor
    h1: torch.Tensor
    w2: torch.Tensor
    h2: torch.Tensor
    cw: torch.Tensor  # enclosing box width (no eps)
    ch: torch.Tensor  # enclosing box height (no eps)
    dx: torch.Tensor  # target centre x - prediction centre x
    dy: torch.Tensor  # target centre y - prediction centre y

    @property
    def rho2(self) -> torch.Tensor:
        """Squared centre distance."""
        return self.dx.pow(2) + self.dy.pow(2)

    def c2(self, eps: float = 1e-7) -> torch.Tensor:
        """Squared diagonal of the enclosing box (+ eps)."""
        return self.cw.pow(2) + self.ch.pow(2) + eps


def box_geometry(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> BoxGeometry:
    """IoU and the enclosing-box / centre terms of box1[i] vs box2[i] ([..., 4] xyxy)."""
    b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
    w1, h1 = (b1_x2 - b1_x1).clamp(min=eps), (b1_y2 - b1_y1).clamp(min=eps)
    w2, h2 = (b2_x2 - b2_x1).clamp(min=eps), (b2_y2 - b2_y1).clamp(min=eps)
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(min=0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    dx = (b2_x1 + b2_x2 - b1_x1 - b1_x2) / 2
    dy = (b2_y1 + b2_y2 - b1_y1 - b1_y2) / 2
    return BoxGeometry(inter / union, union, w1, h1, w2, h2, cw, ch, dx, dy)


def siou_penalty(g: BoxGeometry, theta: float = 4.0, eps: float = 1e-7) -> torch.Tensor:
    """SIoU penalty (Delta + Omega) / 2 (Gevorgyan 2022, "SIoU Loss: More Powerful Learning for
    Bounding Box Regression", arXiv:2205.12740).

    Angle cost   Lambda = 1 - 2 sin^2(arcsin(x) - pi/4),  x = sin(alpha) = |dy| / sigma, where the
                 paper takes sin(beta) = |dx| / sigma instead when sin(alpha) > sqrt(2)/2 and
                 sigma = sqrt(dx^2 + dy^2) is the centre distance. Since
                 1 - 2 sin^2(t - pi/4) = sin(2t) and sin(alpha)^2 + sin(beta)^2 = 1, both branches equal
                 Lambda = 2 |dx| |dy| / sigma^2, computed that way (no arcsin, finite gradient at sigma=0).
    Distance cost Delta = sum_{t=x,y} (1 - exp(-gamma * rho_t)), rho_x = (dx / cw)^2,
                 rho_y = (dy / ch)^2 with cw, ch the enclosing box size, gamma = 2 - Lambda.
    Shape cost   Omega = sum_{t=w,h} (1 - exp(-omega_t))^theta, omega_w = |w1 - w2| / max(w1, w2),
                 omega_h = |h1 - h2| / max(h1, h2), theta = 4.
    SIoU score = IoU - (Delta + Omega) / 2, loss = 1 - IoU + (Delta + Omega) / 2.
    """
    angle = 2 * (g.dx * g.dy).abs() / (g.rho2 + eps)
    gamma = 2 - angle
    rho_x = (g.dx / (g.cw + eps)).pow(2)
    rho_y = (g.dy / (g.ch + eps)).pow(2)
    dist = (1 - torch.exp(-gamma * rho_x)) + (1 - torch.exp(-gamma * rho_y))
    omega_w = (g.w1 - g.w2).abs() / torch.max(g.w1, g.w2)
    omega_h = (g.h1 - g.h2).abs() / torch.max(g.h1, g.h2)
    shape = (1 - torch.exp(-omega_w)).pow(theta) + (1 - torch.exp(-omega_h)).pow(theta)
    return (dist + shape) / 2


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, kind: str = "iou", eps: float = 1e-7) -> torch.Tensor:
    """IoU-family score of box1[i] vs box2[i] ([..., 4] xyxy) -> [..., 1].

    giou subtracts the empty share of the enclosing box; diou the squared centre distance over the
    squared enclosing diagonal; ciou also an aspect-ratio consistency term v * alpha; eiou (Zhang et
    al. 2021, "Focal and Efficient IOU Loss") the diou term plus (w1 - w2)^2 / cw^2 + (h1 - h2)^2 / ch^2
    with cw, ch the enclosing box size; siou the angle/distance/shape penalty of `siou_penalty`.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind {kind!r}; choose from {IOU_KINDS}")
    g = box_geometry(box1, box2, eps)
    iou = g.iou
    if kind == "iou":
        return iou
    if kind == "giou":
        c_area = g.cw * g.ch + eps
        return iou - (c_area - g.union) / c_area
    if kind == "siou":
        return iou - siou_penalty(g, eps=eps)
    c2 = g.c2(eps)  # squared enclosing diagonal
    rho2 = g.rho2
    if kind == "diou":
        return iou - rho2 / c2
    if kind == "eiou":
        return iou - rho2 / c2 - (g.w1 - g.w2).pow(2) / (g.cw.pow(2) + eps) - (g.h1 - g.h2).pow(2) / (g.ch.pow(2) + eps)
    v = (4 / math.pi**2) * (torch.atan(g.w2 / g.h2) - torch.atan(g.w1 / g.h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
