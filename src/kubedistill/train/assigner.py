"""Task-aligned label assignment (TAL) with small-target-aware candidates (STAL).

For every ground-truth box the anchors whose centre lies inside it are candidates; each candidate's
alignment is score(gt class)^alpha * IoU(pred, gt)^beta; the top-k candidates by alignment become
positives; an anchor claimed by several boxes goes to the one it overlaps most.

STAL: in the "centre inside the box" test, a box whose width or height is below `stal_size` pixels
(the second stride, 16 px) is widened to `stal_size` around its centre, so objects smaller than the
anchor spacing still get candidates (a 4 px object gets about four stride-8 anchors). Only the
candidate test changes; targets keep the true box.
"""

from __future__ import annotations

import torch
from torch import nn

from kubedistill.train.iou import bbox_iou


def stal_expand(gt_bboxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Widen each side shorter than min_size to min_size around the box centre (xyxy, any leading dims)."""
    c = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2
    wh = (gt_bboxes[..., 2:] - gt_bboxes[..., :2]).clamp(min=min_size)
    return torch.cat((c - wh / 2, c + wh / 2), -1)


def anchors_in_boxes(anchor_points: torch.Tensor, gt_bboxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """[A, 2] points, [B, M, 4] boxes -> [B, M, A] bool: point strictly inside box."""
    b, m, _ = gt_bboxes.shape
    lt, rb = gt_bboxes.view(-1, 1, 4).chunk(2, 2)
    deltas = torch.cat((anchor_points[None] - lt, rb - anchor_points[None]), dim=2)
    return deltas.amin(2).gt_(eps).view(b, m, -1)


class TaskAlignedAssigner(nn.Module):
    def __init__(
        self,
        num_classes: int,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        stal_size: float | None = 16.0,
        eps: float = 1e-9,
    ):
        super().__init__()
        self.nc = num_classes
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.stal_size = stal_size
        self.eps = eps

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt):
        """
        pd_scores [B, A, C] probabilities; pd_bboxes [B, A, 4] xyxy px; anc_points [A, 2] px;
        gt_labels [B, M, 1]; gt_bboxes [B, M, 4] xyxy px; mask_gt [B, M, 1] (1 for real boxes).

        Returns target_labels [B, A], target_bboxes [B, A, 4], target_scores [B, A, C] (one-hot
        times the normalised alignment), fg_mask [B, A] bool, target_gt_idx [B, A].
        """
        b, a, _ = pd_scores.shape
        m = gt_bboxes.shape[1]
        dev = pd_scores.device
        if m == 0:
            return (
                torch.full((b, a), self.nc, device=dev, dtype=torch.long),
                torch.zeros_like(pd_bboxes),
                torch.zeros_like(pd_scores),
                torch.zeros((b, a), dtype=torch.bool, device=dev),
                torch.zeros((b, a), dtype=torch.long, device=dev),
            )
        cand_boxes = stal_expand(gt_bboxes, self.stal_size) if self.stal_size else gt_bboxes
        mask_in = anchors_in_boxes(anc_points, cand_boxes) * mask_gt  # [B, M, A]
        align, overlaps = self._alignment(pd_scores, pd_bboxes, gt_labels, gt_bboxes, mask_in.bool())
        mask_topk = self._select_topk(align, mask_gt)
        mask_pos = mask_topk * mask_in  # [B, M, A]
        target_gt_idx, fg_mask, mask_pos = self._resolve_conflicts(mask_pos, overlaps, m)

        target_labels, target_bboxes, target_scores = self._targets(gt_labels, gt_bboxes, target_gt_idx, fg_mask)
        # Normalise alignment per box so the best anchor of each box gets its best IoU as target score.
        align = align * mask_pos
        pos_align = align.amax(dim=-1, keepdim=True)
        pos_overlaps = (overlaps * mask_pos).amax(dim=-1, keepdim=True)
        norm_align = (align * pos_overlaps / (pos_align + self.eps)).amax(-2).unsqueeze(-1)
        return target_labels, target_bboxes, target_scores * norm_align, fg_mask.bool(), target_gt_idx

    def _alignment(self, pd_scores, pd_bboxes, gt_labels, gt_bboxes, mask):
        b, m, a = mask.shape
        overlaps = torch.zeros((b, m, a), dtype=pd_bboxes.dtype, device=pd_bboxes.device)
        scores = torch.zeros_like(overlaps)
        ind_b = torch.arange(b, device=mask.device).view(-1, 1).expand(-1, m)
        cls = gt_labels.squeeze(-1).long().clamp_(0, self.nc - 1)
        scores[mask] = pd_scores[ind_b, :, cls][mask]  # [B, M, A] score of the box's class
        pd = pd_bboxes.unsqueeze(1).expand(-1, m, -1, -1)[mask]
        gt = gt_bboxes.unsqueeze(2).expand(-1, -1, a, -1)[mask]
        overlaps[mask] = bbox_iou(gt, pd, kind="ciou").squeeze(-1).clamp_(0)
        return scores.pow(self.alpha) * overlaps.pow(self.beta), overlaps

    def _select_topk(self, metrics: torch.Tensor, mask_gt: torch.Tensor) -> torch.Tensor:
        k = min(self.topk, metrics.shape[-1])
        idx = metrics.topk(k, dim=-1).indices  # [B, M, k]
        out = torch.zeros_like(metrics, dtype=torch.int8)
        out.scatter_(-1, idx, 1)
        return (out * mask_gt.to(out.dtype)).to(metrics.dtype)

    @staticmethod
    def _resolve_conflicts(mask_pos: torch.Tensor, overlaps: torch.Tensor, m: int):
        fg = mask_pos.sum(-2)  # [B, A]
        if fg.max() > 1:
            multi = (fg.unsqueeze(1) > 1).expand(-1, m, -1)
            best = overlaps.argmax(1)
            is_best = torch.zeros_like(mask_pos)
            is_best.scatter_(1, best.unsqueeze(1), 1)
            mask_pos = torch.where(multi, is_best, mask_pos)
            fg = mask_pos.sum(-2)
        return mask_pos.argmax(-2), fg, mask_pos

    def _targets(self, gt_labels, gt_bboxes, target_gt_idx, fg_mask):
        b, m = gt_labels.shape[:2]
        batch_ind = torch.arange(b, device=gt_labels.device).unsqueeze(-1)
        flat_idx = target_gt_idx + batch_ind * m
        labels = gt_labels.long().flatten()[flat_idx].clamp_(0, self.nc - 1)  # [B, A]
        bboxes = gt_bboxes.view(-1, 4)[flat_idx]
        scores = torch.nn.functional.one_hot(labels, self.nc).to(gt_bboxes.dtype)
        scores = scores * (fg_mask > 0).unsqueeze(-1)
        return labels, bboxes, scores
