"""The detection criterion: the loss of both heads, combined by ProgLoss weights.

Each term is normalised by the sum of target scores, so its scale does not depend on how many
positives a batch has or on the feature-map sizes. Box term = a registered box loss (IoU family by
default) + L1 on the four edge distances normalised by image size; class term = a registered
element-wise class loss (BCE by default).
"""

from __future__ import annotations

import torch

from kubedistill.model.head import bbox2dist, dist2bbox, make_anchors
from kubedistill.train.assigner import TaskAlignedAssigner
from kubedistill.train.losses.registry import build_box_loss, build_cls_loss


def progloss_weights(epoch: int, epochs: int, start: float = 0.8, end: float = 0.1) -> tuple[float, float]:
    """ProgLoss: one-to-many weight falls linearly from `start` (first epoch) to `end` (last epoch)."""
    frac = epoch / (epochs - 1) if epochs > 1 else 0.0
    w_o2m = start - (start - end) * min(max(frac, 0.0), 1.0)
    return w_o2m, 1.0 - w_o2m


def build_targets(batch: dict, batch_size: int, imgsz_hw: tuple[int, int], device) -> torch.Tensor:
    """Batch labels (normalised cx, cy, w, h with image index) -> [B, M, 5] (cls, x1, y1, x2, y2 px), zero padded."""
    idx = batch["batch_idx"].to(device).long()
    cls = batch["cls"].to(device).view(-1, 1).float()
    xywh = batch["bboxes"].to(device).float()
    h, w = imgsz_hw
    counts = torch.bincount(idx, minlength=batch_size) if idx.numel() else torch.zeros(batch_size, dtype=torch.long)
    m = int(counts.max()) if idx.numel() else 0
    out = torch.zeros(batch_size, m, 5, device=device)
    if m == 0:
        return out
    scale = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
    xy, wh = xywh[:, :2] * scale[:2], xywh[:, 2:] * scale[2:]
    boxes = torch.cat((xy - wh / 2, xy + wh / 2), 1)
    # position of each label within its image
    order = torch.argsort(idx, stable=True)
    idx_s = idx[order]
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(idx_s), device=device) - start[idx_s]
    out[idx_s, pos] = torch.cat((cls[order], boxes[order]), 1)
    return out


class DetectionLoss:
    """Loss of both heads, combined by ProgLoss weights. Call with the model's training output."""

    def __init__(self, nc: int, strides, hyp, o2o_topk: int = 1):
        self.nc = nc
        self.strides = list(strides)
        self.hyp = hyp
        self.box_loss = build_box_loss(hyp.box_loss, hyp=hyp)
        self.cls_loss = build_cls_loss(hyp.cls_loss, hyp=hyp)
        stal = 2.0 * self.strides[0] if hyp.stal else None  # the second stride (16 px)
        self.assigners = {
            "one2many": TaskAlignedAssigner(nc, topk=hyp.tal_topk, stal_size=stal),
            "one2one": TaskAlignedAssigner(nc, topk=o2o_topk, stal_size=stal),
        }

    def state_dict(self) -> dict:
        """Running state of the box and class losses (Wise-IoU's mean, GHM's bin counts), for resume."""
        return {
            name: {k: v.detach().cpu().clone() for k, v in getattr(self, name).state_dict().items()}
            for name in ("box_loss", "cls_loss")
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("box_loss", "cls_loss"):
            module = getattr(self, name)
            if state.get(name):
                module.load_state_dict(state[name])

    def head_loss(self, out: dict[str, torch.Tensor], targets: torch.Tensor, imgsz_hw, assigner) -> torch.Tensor:
        """[3] tensor of (box, cls, l1) for one head, gains applied, normalised by target-score sum."""
        # the loss runs in fp32 also under autocast (fp16 on CUDA, bf16 on the CPU)
        pred_dist = out["boxes"].float().permute(0, 2, 1)  # [B, A, 4] stride units
        logits = out["scores"].float().permute(0, 2, 1)  # [B, A, C]
        dtype, dev = logits.dtype, logits.device
        h, w = imgsz_hw
        shapes = [(h // s, w // s) for s in self.strides]
        anchors, stride_t = make_anchors(shapes, self.strides, dev, dtype)
        pred_boxes = dist2bbox(pred_dist, anchors.unsqueeze(0))  # grid units

        gt_labels, gt_bboxes = targets.split((1, 4), 2)
        mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)
        _, target_bboxes, target_scores, fg, _ = assigner(
            logits.detach().sigmoid(),
            (pred_boxes.detach() * stride_t).to(gt_bboxes.dtype),
            anchors * stride_t,
            gt_labels,
            gt_bboxes,
            mask_gt,
        )
        tss = target_scores.sum().clamp(min=1.0)
        cls_target = target_scores.to(dtype)
        eps = getattr(self.hyp, "label_smoothing", 0.0)
        if eps > 0:
            cls_target = (1.0 - eps) * cls_target + eps / self.nc
        loss_cls = self.cls_loss(logits, cls_target).sum() / tss

        loss_box = torch.zeros((), device=dev)
        loss_l1 = torch.zeros((), device=dev)
        if fg.any():
            weight = target_scores.sum(-1)[fg]
            tb = target_bboxes / stride_t  # grid units
            loss_box = (self.box_loss(pred_boxes[fg], tb[fg]) * weight).sum() / tss
            norm = stride_t / max(h, w)  # stride units -> fraction of image size
            target_dist = bbox2dist(anchors.unsqueeze(0), tb)
            l1 = ((pred_dist - target_dist) * norm).abs()[fg].sum(-1)
            loss_l1 = (l1 * weight).sum() / tss
        return torch.stack((loss_box * self.hyp.box, loss_cls * self.hyp.cls, loss_l1 * self.hyp.l1))

    def __call__(
        self, preds: dict, batch: dict, weights: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (loss to backpropagate = weighted sum x batch size, detached sub-losses for logging)."""
        any_head = next(iter(preds.values()))
        bsz = any_head["scores"].shape[0]
        imgsz_hw = tuple(batch["img"].shape[2:])
        targets = build_targets(batch, bsz, imgsz_hw, any_head["scores"].device)
        total = torch.zeros(3, device=any_head["scores"].device)
        for head, out in preds.items():
            total = total + weights[head] * self.head_loss(out, targets, imgsz_hw, self.assigners[head])
        items = {"box_loss": total[0].detach(), "cls_loss": total[1].detach(), "l1_loss": total[2].detach()}
        return total.sum() * bsz, items
