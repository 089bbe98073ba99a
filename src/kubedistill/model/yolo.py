"""The detector: one definition, scaled by depth and width multipliers (yolo-n, -s, -m, -l).

Backbone (strides 2..32) -> SPPF -> PAN neck giving three feature maps at strides 8, 16, 32 ->
`Detect` head. The neck outputs are exactly the head's inputs; distillation takes them with a
forward pre-hook on `model.head` (see `neck_features`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kubedistill.core.errors import ConfigError
from kubedistill.model.blocks import SPPF, C2f, Conv
from kubedistill.model.head import Detect


@dataclass(frozen=True)
class Scale:
    depth: float
    width: float
    max_channels: int


SCALES: dict[str, Scale] = {
    "n": Scale(0.33, 0.25, 1024),
    "s": Scale(0.33, 0.50, 1024),
    "m": Scale(0.67, 0.75, 768),
    "l": Scale(1.00, 1.00, 512),
}
STRIDES = (8, 16, 32)


def parse_scale(name: str) -> str:
    """'yolo-n', 'yolon', 'n' -> 'n'."""
    key = name.strip().lower().removesuffix(".yaml")
    for prefix in ("yolo-", "yolo_", "yolo"):
        key = key.removeprefix(prefix)
    if key not in SCALES:
        names = ", ".join(f"yolo-{k}" for k in SCALES)
        raise ConfigError(f"Unknown model '{name}'", f"Use one of {names}, or a path to a .pt checkpoint")
    return key


def _ch(c: int, s: Scale) -> int:
    """Scale a base channel count, rounded up to a multiple of 8."""
    return int(math.ceil(min(c, s.max_channels) * s.width / 8) * 8)


def _n(n: int, s: Scale) -> int:
    return max(round(n * s.depth), 1)


class DetectionModel(nn.Module):
    def __init__(self, scale: str = "n", nc: int = 80, names: list[str] | None = None):
        super().__init__()
        self.scale = parse_scale(scale)
        s = SCALES[self.scale]
        self.nc = nc
        self.names = list(names) if names is not None else [str(i) for i in range(nc)]
        if len(self.names) != nc:
            raise ConfigError(f"{len(self.names)} class names for nc={nc}", "Give one name per class")
        c64, c128, c256, c512, c1024 = (_ch(c, s) for c in (64, 128, 256, 512, 1024))
        # backbone
        self.stem = nn.Sequential(Conv(3, c64, 3, 2), Conv(c64, c128, 3, 2), C2f(c128, c128, _n(3, s), True))
        self.down3 = nn.Sequential(Conv(c128, c256, 3, 2), C2f(c256, c256, _n(6, s), True))  # P3/8
        self.down4 = nn.Sequential(Conv(c256, c512, 3, 2), C2f(c512, c512, _n(6, s), True))  # P4/16
        self.down5 = nn.Sequential(Conv(c512, c1024, 3, 2), C2f(c1024, c1024, _n(3, s), True), SPPF(c1024, c1024))
        # PAN neck: top-down then bottom-up
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C2f(c1024 + c512, c512, _n(3, s))
        self.td3 = C2f(c512 + c256, c256, _n(3, s))  # out P3
        self.bu3 = Conv(c256, c256, 3, 2)
        self.bu4 = C2f(c256 + c512, c512, _n(3, s))  # out P4
        self.bu4d = Conv(c512, c512, 3, 2)
        self.bu5 = C2f(c512 + c1024, c1024, _n(3, s))  # out P5
        self.neck_channels = (c256, c512, c1024)
        self.strides = STRIDES
        self.head = Detect(nc, self.neck_channels, STRIDES)

    def neck(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        p3 = self.down3(x)
        p4 = self.down4(p3)
        p5 = self.down5(p4)
        t4 = self.td4(torch.cat((self.up(p5), p4), 1))
        n3 = self.td3(torch.cat((self.up(t4), p3), 1))
        n4 = self.bu4(torch.cat((self.bu3(n3), t4), 1))
        n5 = self.bu5(torch.cat((self.bu4d(n4), p5), 1))
        return [n3, n4, n5]

    def forward(self, x: torch.Tensor) -> dict:
        return self.head(self.neck(x))

    def meta(self) -> dict:
        """Plain data that, with a state dict, rebuilds this model."""
        return {"scale": self.scale, "nc": self.nc, "names": list(self.names), "strides": list(self.strides)}

    def set_eval_head(self, nms: bool) -> None:
        """Which head runs in eval mode: one-to-one (NMS-free, default) or one-to-many (for NMS)."""
        self.head.eval_heads = ("one2many",) if nms else ("one2one",)


class neck_features:
    """Context manager capturing the three neck outputs (the head's inputs) with a forward pre-hook.

    with neck_features(model) as feats: model(x)  ->  feats holds [P3, P4, P5] of the last forward.
    """

    def __init__(self, model: DetectionModel):
        self.model = model
        self.feats: list[torch.Tensor] = []
        self._h = None

    def _hook(self, _module, args):
        self.feats[:] = list(args[0])

    def __enter__(self) -> list[torch.Tensor]:
        self._h = _unwrap(self.model).head.register_forward_pre_hook(self._hook)
        return self.feats

    def __exit__(self, *exc) -> None:
        if self._h is not None:
            self._h.remove()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
