"""Box losses: Box losses (pred [N, 4] xyxy, target [N, 4] xyxy -> per-box loss [N]); `eiou` and `siou` are plain
1 - score entries of the IoU family (see `iou.py`), registered with the others in `registry`:
- `alpha_iou`: 1 - IoU^alpha (He et al. 2021, "Alpha-IoU"), alpha = config `alpha_iou` (3);
- `wiou`: Wise-IoU v3 (Tong et al. 2023, arXiv:2301.10051), a module with a running-mean buffer.
- the IoU family (`iou`, `giou`, `diou`, `ciou`, `eiou`, `siou`): `IoULoss(kind)`, 1 - score.
"""

from __future__ import annotations

import torch
from torch import nn

from kubedistill.train.iou import bbox_iou, box_geometry


class IoULoss(nn.Module):
    """1 - IoU-family score, per box."""

    def __init__(self, kind: str = "ciou"):
        super().__init__()
        self.kind = kind

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1.0 - bbox_iou(pred, target, kind=self.kind).squeeze(-1)


class AlphaIoULoss(nn.Module):
    """Alpha-IoU: loss = 1 - IoU^alpha per box. alpha > 1 up-weights the loss and gradient of
    high-IoU boxes relative to plain IoU loss; alpha = 1 is the IoU loss."""

    def __init__(self, alpha: float = 3.0, eps: float = 1e-7):
        super().__init__()
        self.alpha = float(alpha)
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        iou = box_geometry(pred, target, self.eps).iou.squeeze(-1)
        return 1.0 - iou.clamp(min=self.eps).pow(self.alpha)


class WIoULoss(nn.Module):
    """Wise-IoU v3 (Tong et al. 2023, "Wise-IoU: Bounding Box Regression Loss with Dynamic Focusing
    Mechanism", arXiv:2301.10051), per box:

        L_IoU  = 1 - IoU
        R_WIoU = exp(rho^2 / c^2*)     rho: centre distance, c: enclosing-box diagonal, * = detached
        beta   = L_IoU* / mean(L_IoU)  outlier degree, against a running mean (buffer `iou_mean`)
        r      = beta / (delta * alpha^(beta - delta))   non-monotonic focusing, alpha 1.9, delta 3
        L      = r * R_WIoU * L_IoU

    r is 1 at beta = delta, largest (about 1.31) at beta = 1 / ln(alpha) ~ 1.56 and falls towards
    0 for both very good (beta -> 0) and outlier (large beta) boxes. Only R_WIoU and L_IoU carry
    gradient (r and the c^2 in R_WIoU are detached, as in the paper).

    State: `iou_mean` (a buffer, so it is in state_dict and follows .to()) starts at 1 and is updated
    once per forward, before beta is computed, only in training mode (`module.train()`, the default):
    iou_mean <- (1 - m) * iou_mean + m * batch mean of L_IoU. The paper's m = 1 - 0.05^(1 / (n * t))
    (n batches per epoch, t epochs for the mean to settle) is about 0.01 for n * t = 300; the default is
    the config field `wiou_momentum` = 0.01. In eval mode the mean is only read. Under DDP each rank
    keeps its own mean (they see different boxes; the difference is small at this momentum).
    """

    def __init__(self, momentum: float = 0.01, alpha: float = 1.9, delta: float = 3.0, eps: float = 1e-7):
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"wiou momentum must be in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.alpha = float(alpha)
        self.delta = float(delta)
        self.eps = eps
        self.register_buffer("iou_mean", torch.tensor(1.0))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        g = box_geometry(pred, target, self.eps)
        l_iou = (1.0 - g.iou).squeeze(-1)
        r_wiou = torch.exp(g.rho2 / g.c2(self.eps).detach()).squeeze(-1)
        if self.iou_mean.device != l_iou.device:
            self.iou_mean = self.iou_mean.to(l_iou.device)
        if self.training and l_iou.numel():
            with torch.no_grad():
                self.iou_mean.mul_(1.0 - self.momentum).add_(self.momentum * l_iou.detach().float().mean())
        beta = l_iou.detach() / self.iou_mean.clamp(min=1e-6).to(l_iou.dtype)
        r = beta / (self.delta * torch.pow(torch.full_like(beta, self.alpha), beta - self.delta))
        return r * r_wiou * l_iou
