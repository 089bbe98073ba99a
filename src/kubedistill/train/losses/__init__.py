"""Detection losses: the registry of box and class losses (`registry`, built-ins in `box` and `cls`, user
plugins in `plugins`), and the criterion of both heads with ProgLoss weighting (`criterion`).

Nothing registers on import: the built-ins are listed in `registry`.
"""

from kubedistill.train.losses.criterion import DetectionLoss, build_targets, progloss_weights
from kubedistill.train.losses.registry import (
    BOX_LOSSES,
    CLS_LOSSES,
    LOSS_HYP,
    build_box_loss,
    build_cls_loss,
    register_box_loss,
    register_cls_loss,
)

__all__ = [
    "BOX_LOSSES",
    "CLS_LOSSES",
    "LOSS_HYP",
    "DetectionLoss",
    "build_box_loss",
    "build_cls_loss",
    "build_targets",
    "progloss_weights",
    "register_box_loss",
    "register_cls_loss",
]
