"""Feature distillation from a frozen teacher (`distill_model`, `dis`).

- The teacher comes from a checkpoint, in eval mode with no gradients. It runs under inference mode on
  the same augmented batch as the student.
- Features: the three neck outputs that feed the detection head (strides 8/16/32) of both networks.
  The student's are taken with a forward pre-hook on its head, so its forward is unchanged (see
  `kubedistill.train.objective.DistillObjective`, which adds this loss to the detection loss). The
  teacher runs only what the loss reads: its neck, then the class branches of both heads (its box
  branches, about 8% of its FLOPs, are skipped).
- A projector per level (1x1 conv, ReLU, 1x1 conv) maps the student's channels to the teacher's. It
  trains with the student and lives only in last.pt (for resume), never in the student's weights.
- Score-weighted L2: each anchor's weight w is the teacher's confidence, the max over classes of
  sigmoid(class logits averaged over its two heads). Per level:
  sum(w * (proj(s) - t)^2) / (sum(w) * channels + 1e-9). The levels are summed and multiplied by `dis`.
- Optional (`dis_o2o` > 0): the one-to-one head's class scores matched to the teacher's at temperature
  `dis_temp` (see `o2o_score_kl`). That head trains on detached features, so this term reaches only
  the head, never the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kubedistill.core.digest import file_sha256
from kubedistill.core.errors import ConfigError, UserError
from kubedistill.model.checkpoint import model_from_checkpoint, read_checkpoint
from kubedistill.model.head import HEADS
from kubedistill.model.yolo import DetectionModel


class FeatureProjector(nn.Module):
    """One 1x1 conv -> ReLU -> 1x1 conv per neck level, student channels -> teacher channels."""

    def __init__(self, student_ch: tuple[int, ...], teacher_ch: tuple[int, ...]):
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s, t, 1), nn.ReLU(inplace=True), nn.Conv2d(t, t, 1))
            for s, t in zip(student_ch, teacher_ch)
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(f) for m, f in zip(self.levels, feats)]


def anchor_weights(teacher_out: dict, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Teacher confidence per anchor, split by level: [B, 1, H, W] each."""
    logits = torch.stack([teacher_out[h]["scores"] for h in HEADS if h in teacher_out]).mean(0)  # [B, C, A]
    w = logits.sigmoid().amax(1)  # [B, A]
    out, start = [], 0
    for h, wd in shapes:
        out.append(w[:, start : start + h * wd].reshape(-1, 1, h, wd))
        start += h * wd
    return out


def score_weighted_l2(
    student: list[torch.Tensor], teacher: list[torch.Tensor], weights: list[torch.Tensor]
) -> torch.Tensor:
    """Sum over levels of sum(w * (s - t)^2) / (sum(w) * channels + 1e-9); inputs already projected. Computed in
    fp32 also when the features come from an autocast forward."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t, w in zip(student, teacher, weights):
        s, t, w = s.float(), t.float(), w.float()
        total = total + (w * (s - t).pow(2)).sum() / (w.sum() * s.shape[1] + 1e-9)
    return total


def o2o_score_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """Temperature-scaled class-score matching for the one-to-one head, on the class loss's scale.

    Every anchor and class is a Bernoulli variable: p = sigmoid(teacher / T), q = sigmoid(student / T).
    The loss is T^2 x sum KL(p || q) over anchors and classes, divided by the teacher's total score
    sum(p) (at least 1), as the detection loss divides by its target-score sum. KL is zero when the
    scores match, so a perfect student adds nothing. Logits are [B, C, A].
    """
    t = teacher_logits.float() / temp
    s = student_logits.float() / temp
    p = t.sigmoid()
    # KL(p||q) = BCE(s, p) - H(p); BCE with logits is the stable form of -p log q - (1-p) log(1-q).
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s, p, reduction="none")
    ent = torch.nn.functional.binary_cross_entropy_with_logits(t, p, reduction="none")
    return (bce - ent).sum() * temp**2 / p.sum().clamp(min=1.0)


def check_teacher(teacher_meta: dict, student: DetectionModel, teacher_path: str) -> None:
    if list(teacher_meta["names"]) != list(student.names):
        raise ConfigError(
            f"Teacher '{teacher_path}' has classes {list(teacher_meta['names'])} but the dataset has {list(student.names)}",
            "Distill from a teacher trained on the same dataset and classes",
        )
    if list(teacher_meta.get("strides", student.strides)) != list(student.strides):
        raise ConfigError(
            f"Teacher '{teacher_path}' has strides {teacher_meta['strides']} but the student has {list(student.strides)}",
            "Use a teacher of the same model family (strides 8/16/32)",
        )


@dataclass
class Teacher:
    """The frozen teacher: its network (eval mode, no gradients) and the file it came from, with its hash."""

    model: DetectionModel
    path: str
    sha256: str

    @classmethod
    def load(cls, path: str | Path, student: DetectionModel, device: torch.device) -> Teacher:
        ckpt = read_checkpoint(path)
        check_teacher(ckpt["model"]["meta"], student, str(path))
        model = model_from_checkpoint(ckpt).to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, str(path), file_sha256(path))

    def check_unchanged(self, sha256: str) -> None:
        """On resume: the teacher must be the file the run started with."""
        if sha256 != self.sha256:
            raise UserError(
                f"The teacher '{self.path}' changed since this run started (content hash differs)",
                "Restore the original teacher file, or start a new run instead of resuming",
            )


def distill_loss(
    teacher: DetectionModel,
    projected: list[torch.Tensor],
    img: torch.Tensor,
    preds: dict | None = None,
    *,
    gain: float,
    o2o_gain: float = 0.0,
    temp: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distillation loss per image (gains applied; the scale of the per-image detection loss) and its parts.

    `projected`: the student's neck features of this batch, through the projector. `preds`: the student's
    training output, needed for the one-to-one term (`o2o_gain` > 0).
    """
    with torch.inference_mode():  # the teacher's neck and class branches; its box branches are not needed
        t_feats = teacher.neck(img)
        t_out = {h: {"scores": teacher.head.class_logits(t_feats, h)} for h in HEADS}
    # Leave inference mode: the loss multiplies teacher tensors with student ones under autograd.
    t_feats = [f.clone() for f in t_feats]
    weights = [w.clone() for w in anchor_weights(t_out, [tuple(f.shape[2:]) for f in t_feats])]
    feat = score_weighted_l2(projected, t_feats, weights) * gain
    items = {"dis_loss": feat.detach()}
    if o2o_gain <= 0:
        return feat, items
    if preds is None or "one2one" not in preds:
        raise ValueError("the one-to-one distillation term needs the student's training output (both heads)")
    o2o = o2o_score_kl(preds["one2one"]["scores"], t_out["one2one"]["scores"].clone(), temp) * o2o_gain
    items["dis_o2o_loss"] = o2o.detach()
    return feat + o2o, items
