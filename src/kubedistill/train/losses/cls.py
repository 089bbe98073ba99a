"""Class losses: `bce` (the default), and (logits [..., C], soft targets [..., C] in [0, 1] -> element-wise loss [..., C]), all
built on the element-wise BCE so that DetectionLoss's "sum, then divide by the target-score sum" holds:
- `focal`: alpha_t * (1 - p_t)^gamma * BCE (Lin et al. 2017), soft-target form;
- `varifocal`: (q if q > 0 else alpha * p^gamma) * BCE (Zhang et al. 2021, VarifocalNet);
- `qfl`: |y - p|^beta * BCE (Li et al. 2020, Generalized Focal Loss);
- `ghm`: GHM-C (Li et al. 2019): BCE weighted by the inverse density of the gradient norm |p - y|,
  rescaled so that DetectionLoss's normalisation yields the paper's loss value (see GHMCLoss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_TINY = 1e-12  # floor of the bases raised to a (possibly < 1) power, so gradients stay finite


def _bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


class BCELoss(nn.Module):
    """Element-wise binary cross-entropy on logits (the default class loss)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _bce(logits, targets)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017), for soft targets y in [0, 1]:

        p_t = y * p + (1 - y) * (1 - p),  alpha_t = y * alpha + (1 - y) * (1 - alpha)
        loss = alpha_t * (1 - p_t)^gamma * BCE(x, y)

    gamma = 0 and alpha = 0.5 give BCE / 2. Defaults gamma 2, alpha 0.25 (config fl_gamma, fl_alpha).
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25):
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = logits.sigmoid()
        p_t = targets * p + (1 - targets) * (1 - p)
        alpha_t = targets * self.alpha + (1 - targets) * (1 - self.alpha)
        return alpha_t * (1 - p_t).clamp(min=_TINY).pow(self.gamma) * _bce(logits, targets)


class VarifocalLoss(nn.Module):
    """Varifocal loss (Zhang et al. 2021, VarifocalNet), q = the soft target (IoU-aware score):

        loss = q * BCE(x, q)               where q > 0  (= -q (q log p + (1 - q) log(1 - p)))
        loss = alpha * p^gamma * BCE(x, 0) where q = 0  (= -alpha p^gamma log(1 - p))

    Defaults gamma 2, alpha 0.75 (config fl_gamma, fl_alpha). With label smoothing every target is
    >= eps / K > 0, so every element counts as a (weakly weighted) positive; see docs/losses.md.
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.75):
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = logits.sigmoid()
        weight = torch.where(targets > 0, targets, self.alpha * p.clamp(min=_TINY).pow(self.gamma))
        return weight * _bce(logits, targets)


class QualityFocalLoss(nn.Module):
    """Quality Focal Loss (Li et al. 2020, Generalized Focal Loss): loss = |y - p|^beta * BCE(x, y)
    with soft y (here the assigner's target score). Default beta 2 (config fl_gamma)."""

    def __init__(self, beta: float = 2.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = logits.sigmoid()
        return (targets - p).abs().clamp(min=_TINY).pow(self.beta) * _bce(logits, targets)


class GHMCLoss(nn.Module):
    """GHM-C (Li et al. 2019, "Gradient Harmonized Single-stage Detector"): element-wise BCE times

        w = N / (n_valid * density(bin(g))),   g = |sigmoid(x) - y| (detached), in [0, 1]

    with `bins` equal-width bins of g over [0, 1] (g = 1 goes in the last), N the element count of the
    call, n_valid the number of non-empty bins in this call and density the bin's element count. With
    momentum m > 0 the density is an EMA of the counts kept in the buffer `acc_sum`: a bin that has
    elements in this call gets acc <- m * acc + (1 - m) * count (the first time it is seen acc <- count,
    so the first batch is not over-weighted by 1 / (1 - m)); it is updated only in training mode. In
    eval mode the stored EMA is read where it exists, else the call's own count.

    Normalisation: with m = 0 the weights sum to exactly N (each non-empty bin gets total weight
    N / n_valid), i.e. they average 1, as in the paper. But they move weight from the crowded easy bin
    to the rare hard bins, where BCE is large, so sum(w * BCE) = N * L_GHM, L_GHM being the paper's
    loss (the mean over non-empty bins of the bin's mean BCE), which is far larger than sum(BCE).
    DetectionLoss divides the sum by the target-score sum T, where the paper divides by N, so these
    weights alone would give a class term (N / T) * L_GHM: hundreds to tens of thousands of times the
    BCE term, growing with anchors x classes per positive (image size, nc). Hence `norm`:
    - "targets" (default): the weights are also multiplied by T^ / N, T^ = sum(y - min(y)) (at
      least 1), which equals T without label smoothing and (1 - eps) T with it; after DetectionLoss's
      division by T the class term is L_GHM itself (times 1 - eps), on the scale of focal/varifocal;
    - "elements": the weights as above, unscaled (class term (N / T) * L_GHM; lower `cls` a lot).
    `weights()` returns the unscaled N / (n_valid * density) in both cases.

    One instance serves both heads (one call each per step), so the EMA mixes their histograms.
    """

    def __init__(self, bins: int = 10, momentum: float = 0.75, norm: str = "targets"):
        super().__init__()
        if norm not in ("targets", "elements"):
            raise ValueError(f"ghm norm must be 'targets' or 'elements', got {norm!r}")
        self.norm = norm
        if bins < 1:
            raise ValueError(f"ghm bins must be >= 1, got {bins}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ghm momentum must be in [0, 1), got {momentum}")
        self.bins = int(bins)
        self.momentum = float(momentum)
        self.register_buffer("acc_sum", torch.zeros(self.bins))

    @torch.no_grad()
    def weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """GHM-C weight of every element (float32, shape of logits); updates `acc_sum` in training mode."""
        g = (logits.detach().float().sigmoid() - targets.detach().float()).abs()
        idx = (g * self.bins).floor().long().clamp_(0, self.bins - 1)
        counts = torch.bincount(idx.flatten(), minlength=self.bins).float()
        nonempty = counts > 0
        n_valid = nonempty.sum().clamp(min=1)
        density = counts
        if self.momentum > 0:
            if self.acc_sum.device != counts.device:
                self.acc_sum = self.acc_sum.to(counts.device)
            acc = self.acc_sum
            if self.training:
                ema = torch.where(acc > 0, self.momentum * acc + (1 - self.momentum) * counts, counts)
                acc = torch.where(nonempty, ema, acc)
                self.acc_sum.copy_(acc)
            density = torch.where(nonempty & (acc > 0), acc, counts)
        w_bin = g.numel() / (n_valid * density.clamp(min=1e-6))
        return w_bin[idx]  # float32: unscaled weights reach N, beyond the float16 range

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = _bce(logits, targets)
        if bce.numel() == 0:
            return bce
        w = self.weights(logits, targets)
        if self.norm == "targets":
            t = targets.detach().float()
            w = w * ((t - t.min()).sum().clamp(min=1.0) / t.numel())
        return w.to(bce.dtype) * bce
