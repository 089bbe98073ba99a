"""The loss registry: built-in box and class losses by name, user additions, and building one from the config.

Interface (user plugins as "module:attr" or a `kubedistill.losses` entry point, checked by `plugins`; see
docs/losses.md):
- box loss: nn.Module, forward(pred [N, 4] xyxy, target [N, 4] xyxy) -> per-box loss [N];
- class loss: nn.Module, forward(logits [..., C], targets [..., C] in [0, 1]) -> element-wise loss [..., C].
A factory may take keyword arguments filled from config fields (LOSS_HYP, or `register_*_loss(name,
hyp={"kwarg": "config_field"})`); `build_*_loss(name, hyp=cfg)` passes them (None values are skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from kubedistill.train.iou import IOU_KINDS
from kubedistill.train.losses.box import AlphaIoULoss, IoULoss, WIoULoss
from kubedistill.train.losses.cls import BCELoss, FocalLoss, GHMCLoss, QualityFocalLoss, VarifocalLoss
from kubedistill.train.losses.plugins import load_loss_plugin

BOX_LOSSES: dict[str, Callable[..., nn.Module]] = {
    **{kind: partial(IoULoss, kind) for kind in IOU_KINDS},
    "alpha_iou": AlphaIoULoss,
    "wiou": WIoULoss,
}
CLS_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": BCELoss,
    "focal": FocalLoss,
    "varifocal": VarifocalLoss,
    "qfl": QualityFocalLoss,
    "ghm": GHMCLoss,
}
# registered name -> {factory keyword: TrainConfig field}, per option
LOSS_HYP: dict[str, dict[str, dict[str, str]]] = {
    "box_loss": {"alpha_iou": {"alpha": "alpha_iou"}, "wiou": {"momentum": "wiou_momentum"}},
    "cls_loss": {
        "focal": {"gamma": "fl_gamma", "alpha": "fl_alpha"},
        "varifocal": {"gamma": "fl_gamma", "alpha": "fl_alpha"},
        "qfl": {"beta": "fl_gamma"},
        "ghm": {"bins": "ghm_bins", "momentum": "ghm_momentum"},
    },
}


def register_box_loss(name: str, hyp: dict[str, str] | None = None):
    def deco(factory):
        BOX_LOSSES[name] = factory
        LOSS_HYP["box_loss"][name] = dict(hyp or {})
        return factory

    return deco


def register_cls_loss(name: str, hyp: dict[str, str] | None = None):
    def deco(factory):
        CLS_LOSSES[name] = factory
        LOSS_HYP["cls_loss"][name] = dict(hyp or {})
        return factory

    return deco


def _build(registry: dict, kind: str, name: str, hyp=None, **kwargs) -> nn.Module:
    if name in registry:
        params = {}
        if hyp is not None:
            for arg, field in LOSS_HYP[kind].get(name, {}).items():
                value = getattr(hyp, field, None)
                if value is not None:
                    params[arg] = value
        params.update(kwargs)
        return registry[name](**params)
    # a dotted path or an entry point
    return load_loss_plugin(kind, name, builtin=sorted(registry))


def build_box_loss(name: str, hyp=None, **kwargs) -> nn.Module:
    """Registered box loss `name` (keywords from `hyp` per LOSS_HYP, then `kwargs`), or a checked plugin."""
    return _build(BOX_LOSSES, "box_loss", name, hyp, **kwargs)


def build_cls_loss(name: str, hyp=None, **kwargs) -> nn.Module:
    """Registered class loss `name` (keywords from `hyp` per LOSS_HYP, then `kwargs`), or a checked plugin."""
    return _build(CLS_LOSSES, "cls_loss", name, hyp, **kwargs)
