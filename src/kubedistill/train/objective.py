"""The training objective: what one batch costs. `objective(batch) -> (loss, items)`.

- `DetectionObjective(model, cfg)`: the detector's forward and its loss on both heads, combined by the ProgLoss
  weights of the current epoch (`set_epoch`). The loss is the per-image loss x batch size (the sum over the
  batch), so gradient accumulation and DDP average it as they should; `items` are detached per-image parts.
- `DistillObjective(base, teacher, projector, ...)`: wraps one, the way Ultralytics wraps the model for
  distillation, and adds the feature-distillation term (`kubedistill.train.distill`) on the same scale.

The trainer, the LR finder and both benchmarks call the same objective, so a training step is written once.
Beside the loss, an objective owns what it trains besides the model (`extra_modules`), its resume state
(`state_dict`/`load_state_dict`, saved into last.pt only) and its clean-up (`close`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kubedistill.model.yolo import DetectionModel, neck_features
from kubedistill.train.distill import FeatureProjector, Teacher, distill_loss
from kubedistill.train.losses import DetectionLoss, progloss_weights


def memory_format(device: torch.device) -> torch.memory_format:
    """How a training step lays out images and weights: channels last on the CPU, where oneDNN's convolutions run
    faster in it (`benchmark train`, docs/benchmarks.md); PyTorch's default elsewhere (not measured on a GPU here)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16); oneDNN emulates it elsewhere, slower
    than fp32. torch has no public call for it, so its CPU-feature probes are read defensively."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The mixed precision of a training step with `amp` on: fp16 on CUDA (with a gradient scaler), bf16 on a CPU
    that computes it natively (`cpu_has_bf16`; 1.5x the fp32 step on such a CPU, `benchmark train`,
    docs/benchmarks.md), none elsewhere. The loss itself is computed in fp32 (`DetectionLoss`)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The context a training step's forward and loss run in: autocast to `dtype` (`amp_dtype`), off for None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def precision_name(dtype: torch.dtype | None) -> str:
    """How a log line names a step's precision: "fp32", or the autocast dtype with "amp"."""
    return {torch.float16: "amp-fp16", torch.bfloat16: "amp-bf16"}.get(dtype, "fp32")


def to_input(img: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader's uint8 image batch -> the network's input: float in [0, 1] on `device`, in its memory format."""
    x = img.to(device, non_blocking=True).float() / 255.0
    return x.contiguous(memory_format=memory_format(device))


def unwrap(m: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return m.module if hasattr(m, "module") else m


class DetectionObjective:
    """Forward and loss of a detector on one batch (images already float in [0, 1] on the model's device)."""

    def __init__(self, model: nn.Module, cfg):
        self.model = model
        net: DetectionModel = unwrap(model)
        self.criterion = DetectionLoss(net.nc, net.strides, cfg)
        self.o2m, self.o2m_final = cfg.o2m, cfg.o2m_final
        self.set_epoch(0, max(int(cfg.epochs), 1))

    def set_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        """ProgLoss: the heads' weights for this epoch; returns them."""
        w_o2m, w_o2o = progloss_weights(epoch, epochs, self.o2m, self.o2m_final)
        self.weights = {"one2many": w_o2m, "one2one": w_o2o}
        return self.weights

    def __call__(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        preds = self.model(batch["img"])
        return self.loss(preds, batch)

    def loss(self, preds: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.criterion(preds, batch, self.weights)

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the model (their parameters join the optimizer)."""
        return []

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap every trainable module for data-parallel training (DDP); `self.model` becomes the wrapped one."""
        self.model = wrap(self.model)

    def state_dict(self) -> dict:
        """Resume state, merged into last.pt: the losses' running state (Wise-IoU's mean, GHM's bin counts)."""
        return {"loss_state": self.criterion.state_dict()}

    def load_state_dict(self, ckpt: dict) -> None:
        self.criterion.load_state_dict(ckpt.get("loss_state", {}))

    def close(self) -> None:
        pass


class DistillObjective:
    """A base objective plus feature distillation from a frozen teacher: loss = base + distillation x batch size.

    The student's neck features are captured with a forward pre-hook on its head while the base objective runs
    its forward, so the student's forward is unchanged; `close()` removes the hook.
    """

    def __init__(
        self,
        base: DetectionObjective,
        teacher: Teacher,
        projector: FeatureProjector,
        *,
        gain: float,
        o2o_gain: float = 0.0,
        temp: float = 2.0,
    ):
        self.base = base
        self.teacher = teacher
        self.projector = projector
        self.gain, self.o2o_gain, self.temp = gain, o2o_gain, temp
        self._hook = neck_features(unwrap(base.model))
        self._student_feats = self._hook.__enter__()

    @property
    def model(self) -> nn.Module:
        return self.base.model

    @property
    def weights(self) -> dict[str, float]:
        return self.base.weights

    def set_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        return self.base.set_epoch(epoch, epochs)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = batch["img"]
        preds = self.base.model(img)
        loss, items = self.base.loss(preds, batch)
        dis, dis_items = self.distill_loss(img, preds)
        return loss + dis * img.shape[0], {**items, **dis_items}

    def distill_loss(self, img: torch.Tensor, preds: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The distillation term per image for the student forward just run on `img` (`preds`: its output)."""
        return distill_loss(
            self.teacher.model,
            self.projector(self._student_feats),
            img,
            preds,
            gain=self.gain,
            o2o_gain=self.o2o_gain,
            temp=self.temp,
        )

    def extra_modules(self) -> list[nn.Module]:
        return [*self.base.extra_modules(), self.projector]

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.base.distribute(wrap)
        self.projector = wrap(self.projector)  # its gradients must be averaged across ranks too

    def state_dict(self) -> dict:
        proj = unwrap(self.projector)
        return {
            **self.base.state_dict(),
            "distill": {
                "teacher_path": self.teacher.path,
                "teacher_sha256": self.teacher.sha256,
                "projector": {k: v.detach().cpu() for k, v in proj.state_dict().items()},
            },
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.base.load_state_dict(ckpt)
        state = ckpt["distill"]
        self.teacher.check_unchanged(state["teacher_sha256"])
        unwrap(self.projector).load_state_dict(state["projector"])

    def close(self) -> None:
        self._hook.__exit__(None, None, None)
        self.base.close()


def build_objective(model: nn.Module, cfg, device: torch.device, teacher_path: str | None = None):
    """The objective `cfg` asks for: detection alone, or distilled from the teacher at `teacher_path` (a local
    checkpoint: `distill_model` already resolved) when given. The model (and the teacher) take the device's
    memory format (`memory_format`), as `to_input` gives the images."""
    unwrap(model).to(memory_format=memory_format(device))
    base = DetectionObjective(model, cfg)
    if not teacher_path:
        return base
    net = unwrap(model)
    teacher = Teacher.load(teacher_path, net, device)
    teacher.model.to(memory_format=memory_format(device))
    projector = FeatureProjector(net.neck_channels, teacher.model.neck_channels).to(device)
    return DistillObjective(base, teacher, projector, gain=cfg.dis, o2o_gain=cfg.dis_o2o, temp=cfg.dis_temp)
