"""Turn head outputs into detections.

- `decode_end2end`: the default, NMS-free path: top `max_det` (score, class) pairs over all anchors of the
  one-to-one head. Pure tensor ops, so it exports to ONNX inside the model.
- `decode_nms`: the one-to-many head followed by class-aware NMS (pure torch), kept for comparison.

Both return a list (one per image) of [k, 6] tensors: x1, y1, x2, y2 (input-image pixels), score, class.
"""

from __future__ import annotations

import torch

from kubedistill.model.head import dist2bbox, make_anchors


def head_boxes(
    head_out: dict[str, torch.Tensor], imgsz_hw: tuple[int, int], strides
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, A, 4] xyxy boxes in input pixels and [B, A, nc] sigmoid scores from one head's raw output."""
    h, w = imgsz_hw
    shapes = [(h // s, w // s) for s in strides]
    anchors, stride_t = make_anchors(shapes, list(strides), head_out["boxes"].device, head_out["boxes"].dtype)
    dist = head_out["boxes"].transpose(1, 2)  # [B, A, 4]
    boxes = dist2bbox(dist, anchors.unsqueeze(0)) * stride_t.unsqueeze(0)
    return boxes, head_out["scores"].transpose(1, 2).sigmoid()


def topk_detections(boxes: torch.Tensor, scores: torch.Tensor, max_det: int = 300) -> torch.Tensor:
    """[B, A, 4], [B, A, nc] -> [B, max_det, 6] top (anchor, class) pairs by score, no NMS.

    Two stages keep it cheap for many classes: the top max_det anchors by best class score, then the
    top max_det (anchor, class) pairs among those.
    """
    b, a, nc = scores.shape
    k = min(max_det, a)
    best = scores.amax(-1)  # [B, A]
    idx = best.topk(k, dim=1).indices  # [B, k]
    cand_scores = scores.gather(1, idx.unsqueeze(-1).expand(-1, -1, nc))  # [B, k, nc]
    cand_boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
    flat = cand_scores.flatten(1)  # [B, k*nc]
    k2 = min(max_det, flat.shape[1])
    top_s, top_i = flat.topk(k2, dim=1)
    anchor_i = torch.div(top_i, nc, rounding_mode="floor")
    cls = (top_i % nc).to(boxes.dtype)
    sel_boxes = cand_boxes.gather(1, anchor_i.unsqueeze(-1).expand(-1, -1, 4))
    return torch.cat((sel_boxes, top_s.unsqueeze(-1), cls.unsqueeze(-1)), -1)


def decode_end2end(head_out, imgsz_hw, strides, max_det: int = 300, conf: float = 0.0) -> list[torch.Tensor]:
    boxes, scores = head_boxes(head_out, imgsz_hw, strides)
    dets = topk_detections(boxes, scores, max_det)
    return [d[d[:, 4] > conf] for d in dets]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes [N, 4] x [M, 4] -> [N, M]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(0) * (a[:, 3] - a[:, 1]).clamp(0)
    area_b = (b[:, 2] - b[:, 0]).clamp(0) * (b[:, 3] - b[:, 1]).clamp(0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Greedy NMS; indices kept, by descending score. Pure torch (no torchvision)."""
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    keep = []
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    iou = box_iou(boxes, boxes) if len(order) <= 4096 else None
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        row = iou[i] if iou is not None else box_iou(boxes[i : i + 1], boxes)[0]
        suppressed |= row > iou_thres
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def decode_nms(
    head_out, imgsz_hw, strides, conf: float = 0.001, iou: float = 0.7, max_det: int = 300, max_nms: int = 3000
):
    """One-to-many head -> per-image class-aware NMS (boxes offset by class so classes never suppress each other)."""
    boxes, scores = head_boxes(head_out, imgsz_hw, strides)
    out = []
    for bx, sc in zip(boxes, scores):
        i, j = (sc > conf).nonzero(as_tuple=True)
        s = sc[i, j]
        if s.numel() > max_nms:
            top = s.topk(max_nms).indices
            i, j, s = i[top], j[top], s[top]
        b = bx[i]
        offset = j.to(b.dtype).unsqueeze(1) * (b.max() + 1 if b.numel() else 1)
        keep = nms(b + offset, s, iou)[:max_det] if s.numel() else torch.zeros(0, dtype=torch.long)
        out.append(torch.cat((b[keep], s[keep, None], j[keep, None].to(b.dtype)), 1))
    return out


def decode(
    model_out: dict, imgsz_hw, strides, *, nms: bool = False, conf: float = 0.001, iou: float = 0.7, max_det: int = 300
):
    """Dispatch on the head that ran: one-to-one -> NMS-free, one-to-many -> NMS."""
    if nms:
        return decode_nms(model_out["one2many"], imgsz_hw, strides, conf, iou, max_det)
    return decode_end2end(model_out["one2one"], imgsz_hw, strides, max_det, conf)
