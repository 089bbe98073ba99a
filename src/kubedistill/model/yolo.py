"""The detector: YOLO26 detect, one definition scaled by depth and width multipliers (yolo26n, s, m, l, x; the
older names yolo-n ... are aliases).

Backbone (strides 2..32: convs and C3k2 stacks) -> SPPF -> C2PSA attention -> PAN neck giving three feature maps
at strides 8, 16, 32 -> `Detect` head. At 80 classes the parameter counts equal YOLO26's (n 2,572,280 ...), and a
YOLO26 checkpoint's tensors load one to one (`kubedistill.model.ultralytics`). The neck outputs are exactly the
head's inputs; distillation takes them with a forward pre-hook on `model.head` (see `neck_features`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kubedistill.core.errors import ConfigError
from kubedistill.model.blocks import C2PSA, SPPF, C3k2, Conv
from kubedistill.model.head import Detect


@dataclass(frozen=True)
class Scale:
    depth: float
    width: float
    max_channels: int


# YOLO26's compound scaling: depth multiplies the repeats of a block (2 -> 1 for n/s/m), width the channels, capped.
SCALES: dict[str, Scale] = {
    "n": Scale(0.50, 0.25, 1024),
    "s": Scale(0.50, 0.50, 1024),
    "m": Scale(0.50, 1.00, 512),
    "l": Scale(1.00, 1.00, 512),
    "x": Scale(1.00, 1.50, 512),
}
STRIDES = (8, 16, 32)
ARCH = "yolo26"


def parse_scale(name: str) -> str:
    """'yolo26n', 'yolo26n.yaml', 'yolo-n', 'yolon', 'n' -> 'n'."""
    key = name.strip().lower().removesuffix(".yaml")
    for prefix in ("yolo26-", "yolo26", "yolo-", "yolo_", "yolo"):
        if key.startswith(prefix) and key.removeprefix(prefix) in SCALES:
            key = key.removeprefix(prefix)
            break
    if key not in SCALES:
        names = ", ".join(f"{ARCH}{k}" for k in SCALES)
        raise ConfigError(f"Unknown model '{name}'", f"Use one of {names}, or a path to a .pt checkpoint")
    return key


def _ch(c: int, s: Scale) -> int:
    """Scale a base channel count, capped, rounded up to a multiple of 8."""
    return int(math.ceil(min(c, s.max_channels) * s.width / 8) * 8)


def _n(n: int, s: Scale) -> int:
    return max(round(n * s.depth), 1) if n > 1 else n


class DetectionModel(nn.Module):
    """YOLO26 detect: backbone (convs, C3k2 stacks, SPPF, C2PSA attention), a PAN neck of C3k2 stacks, and a head
    with one-to-many and one-to-one branches (`model.head`)."""

    def __init__(self, scale: str = "n", nc: int = 80, names: list[str] | None = None):
        super().__init__()
        self.scale = parse_scale(scale)
        s = SCALES[self.scale]
        self.nc = nc
        self.names = list(names) if names is not None else [str(i) for i in range(nc)]
        if len(self.names) != nc:
            raise ConfigError(f"{len(self.names)} class names for nc={nc}", "Give one name per class")
        c64, c128, c256, c512, c1024 = (_ch(c, s) for c in (64, 128, 256, 512, 1024))
        n2 = _n(2, s)
        big = self.scale in ("m", "l", "x")  # the first two stacks use C3k inner blocks from m up
        # backbone
        self.p1 = Conv(3, c64, 3, 2)
        self.p2 = Conv(c64, c128, 3, 2)
        self.p2_stack = C3k2(c128, c256, n2, c3k=big, e=0.25)
        self.p3 = Conv(c256, c256, 3, 2)
        self.p3_stack = C3k2(c256, c512, n2, c3k=big, e=0.25)
        self.p4 = Conv(c512, c512, 3, 2)
        self.p4_stack = C3k2(c512, c512, n2, c3k=True)
        self.p5 = Conv(c512, c1024, 3, 2)
        self.p5_stack = C3k2(c1024, c1024, n2, c3k=True)
        self.sppf = SPPF(c1024, c1024, k=5, n=3, shortcut=True)
        self.psa = C2PSA(c1024, c1024, n2)
        # PAN neck: top-down, then bottom-up
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C3k2(c1024 + c512, c512, n2, c3k=True)
        self.td3 = C3k2(c512 + c512, c256, n2, c3k=True)  # out P3
        self.down3 = Conv(c256, c256, 3, 2)
        self.bu4 = C3k2(c256 + c512, c512, n2, c3k=True)  # out P4
        self.down4 = Conv(c512, c512, 3, 2)
        self.bu5 = C3k2(c512 + c1024, c1024, 1, c3k=True, e=0.5, attn=True)  # out P5
        self.neck_channels = (c256, c512, c1024)
        self.strides = STRIDES
        self.head = Detect(nc, self.neck_channels, STRIDES)

    def neck(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three feature maps the head reads (strides 8, 16, 32)."""
        x = self.p2_stack(self.p2(self.p1(x)))
        c3 = self.p3_stack(self.p3(x))
        c4 = self.p4_stack(self.p4(c3))
        c5 = self.psa(self.sppf(self.p5_stack(self.p5(c4))))
        t4 = self.td4(torch.cat((self.up(c5), c4), 1))
        n3 = self.td3(torch.cat((self.up(t4), c3), 1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bu5(torch.cat((self.down4(n4), c5), 1))
        return [n3, n4, n5]

    def forward(self, x: torch.Tensor) -> dict:
        return self.head(self.neck(x))

    def meta(self) -> dict:
        """Plain data that, with a state dict, rebuilds this model."""
        return {
            "arch": ARCH,
            "scale": self.scale,
            "nc": self.nc,
            "names": list(self.names),
            "strides": list(self.strides),
        }

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
