"""Optimisers: MuSGD (Muon + Nesterov SGD), and the parameter grouping used by every optimiser.

MuSGD, per parameter `p` with gradient `g` in a group with lr `lr` and `lr_scale` `s`:

* SGD part (every parameter): L2 weight decay folded into the gradient, as `torch.optim.SGD` does
  (`d = g + wd * p`), momentum buffer `b = m * b + d`, Nesterov direction `d + m * b`, step
  `p -= lr * s * sgd_scale * (d + m * b)`.
* Muon part (groups with `use_muon=True`, parameters with 2+ dimensions only): a separate momentum
  buffer on the raw gradient (no weight decay: decay lives in the SGD part only)
  `mb = m * mb + g`, Nesterov direction `u = g + m * mb`, reshaped to `[out, in*kh*kw]`,
  orthogonalised by 5 quintic Newton-Schulz iterations, scaled by `max(1, rows / cols) ** 0.5`
  (the usual Muon shape scaling, so tall matrices' updates keep a comparable per-entry RMS),
  step `p -= lr * s * muon_scale * scale * NS(u)`.

  The buffer is SGD-style (`m * mb + g`) rather than Muon's EMA-style `lerp`; the two differ only by
  the constant factor `1 - m`, which the Newton-Schulz normalisation removes.

Both updates are computed from the same (pre-step) parameter value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from kubedistill.core.errors import ConfigError

GRAD_CLIP = 10.0  # the gradient-norm clip of every training step

NS_COEFFS = (3.4445, -4.7750, 2.0315)
OPTIMIZERS = ("SGD", "AdamW", "MuSGD", "auto")
AUTO_MUSGD_ITERATIONS = 10000
NBS = 64  # Ultralytics' nominal batch size
MIN_UPDATES = 1000  # optimizer steps a run gets at least, when `nbs` is left to its default
CLS_LR_SCALE = 3.0
CLS_KEY = "cls_branch"


def zeropower_via_newtonschulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise `G` (the polar factor U V^T of its SVD) with a quintic Newton-Schulz iteration.

    Works on 2-D matrices; tensors with more dimensions (conv weights) are treated as
    `[shape[0], prod(shape[1:])]` and the result is returned in `G`'s shape and dtype. The iteration runs in
    float32. Its singular values end up in a band around 1 (roughly 0.7-1.2), not exactly 1: the
    coefficients trade exactness for fast growth of small singular values.
    """
    if G.ndim < 2:
        raise ValueError(f"Newton-Schulz needs a tensor with 2+ dimensions, got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFS
    X = G.reshape(G.shape[0], -1).to(torch.float32)
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X.reshape(G.shape).to(G.dtype)


def _momentum(state: dict, key: str, g: torch.Tensor, mom: float, nesterov: bool) -> torch.Tensor:
    """Heavy-ball buffer `state[key]` = mom * buf + g; returns the (Nesterov) update direction."""
    if mom == 0:
        return g
    buf = state.get(key)
    if buf is None:
        buf = state[key] = torch.zeros_like(g, memory_format=torch.preserve_format)
    buf.mul_(mom).add_(g)
    return g.add(buf, alpha=mom) if nesterov else buf


class MuSGD(Optimizer):
    """Muon (orthogonalised momentum) plus Nesterov SGD; see the module docstring for the exact update.

    Group keys: `lr`, `momentum`, `weight_decay`, `nesterov` (default True), `use_muon` (default False),
    `lr_scale` (default 1.0), `sgd_scale` (1.0), `muon_scale` (0.2), `ns_steps` (5).
    State per parameter: `momentum_buffer` (SGD) and, for Muon parameters, `muon_buffer`.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        use_muon: bool = False,
        lr_scale: float = 1.0,
        sgd_scale: float = 1.0,
        muon_scale: float = 0.2,
        ns_steps: int = 5,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            use_muon=use_muon,
            lr_scale=lr_scale,
            sgd_scale=sgd_scale,
            muon_scale=muon_scale,
            ns_steps=ns_steps,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"] * group.get("lr_scale", 1.0)
            mom = group["momentum"]
            wd = group["weight_decay"]
            nesterov = group["nesterov"]
            sgd_scale = group.get("sgd_scale", 1.0)
            muon_scale = group.get("muon_scale", 0.2)
            use_muon = group.get("use_muon", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("MuSGD does not support sparse gradients")
                state = self.state[p]

                # SGD part (L2 weight decay in the gradient)
                d = g.add(p, alpha=wd) if wd != 0 else g
                d = _momentum(state, "momentum_buffer", d, mom, nesterov)

                # Muon part (no weight decay)
                o = None
                if use_muon and p.ndim >= 2 and muon_scale != 0:
                    u = _momentum(state, "muon_buffer", g, mom, nesterov)
                    o = zeropower_via_newtonschulz(u, steps=group.get("ns_steps", 5))
                    rows, cols = p.shape[0], p[0].numel()
                    shape_scale = max(1.0, rows / cols) ** 0.5

                if sgd_scale != 0:
                    p.add_(d, alpha=-lr * sgd_scale)
                if o is not None:
                    p.add_(o, alpha=-lr * muon_scale * shape_scale)
        return loss


# --------------------------------------------------------------------------------------------------------------------
# parameter groups


def _norm_types() -> tuple[type, ...]:
    types: list[type] = [nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm]
    inst = getattr(nn.modules.instancenorm, "_InstanceNorm", None)
    if inst is not None:
        types.append(inst)
    rms = getattr(nn, "RMSNorm", None)
    if rms is not None:
        types.append(rms)
    return tuple(types)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _norm_types()) or "Norm" in type(module).__name__


def split_params(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Sort every parameter (once, shared ones included once) into 'weights', 'norm' or 'bias'.

    'bias': parameters named `bias`; 'norm': weights of normalisation layers, and any other parameter with
    fewer than 2 dimensions (learnable scales, ...), none of which get weight decay; 'weights': the rest
    (2+ dimensions: conv and linear weights).
    """
    out: dict[str, list[tuple[str, nn.Parameter]]] = {"weights": [], "norm": [], "bias": []}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        norm = _is_norm(module)
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{pname}" if mod_name else pname
            if pname == "bias":
                out["bias"].append((full, p))
            elif norm or p.ndim < 2:
                out["norm"].append((full, p))
            else:
                out["weights"].append((full, p))
    return out


def resolve_nbs(nbs: int | None, batch: int, images: int, epochs: int) -> tuple[int, str]:
    """The nominal batch size gradients accumulate to, and why.

    Given: as given (Ultralytics' behaviour for any value). Left to its default (None): 64, Ultralytics' default,
    unless accumulating up to 64 images would leave the run fewer than `MIN_UPDATES` optimizer steps; then fewer
    batches are accumulated, down to one, and nbs is `batch` x that. A short run on a small dataset is limited by
    its number of updates: 160 images for 30 epochs at batch 16 are 75 steps at nbs 64 and 300 at nbs 16, and
    from scratch that took mAP50-95 from 0.16 to 0.36 over three seeds (docs/benchmarks.md).
    """
    if nbs is not None:
        return nbs, f"nbs {nbs} given"
    batches = math.ceil(images / batch) * epochs
    accumulate = max(round(NBS / batch), 1)
    fewer = max(min(accumulate, batches // MIN_UPDATES), 1)
    if fewer == accumulate:  # enough steps already, or a batch of 64 or more (nothing accumulated either way)
        return NBS, f"nbs {NBS}: {batches // accumulate} optimizer steps"
    return batch * fewer, (
        f"nbs {batch * fewer} = batch {batch} x {fewer}: nbs {NBS} would give {batches // accumulate} optimizer steps "
        f"(< {MIN_UPDATES}); set nbs=64 for Ultralytics' accumulation"
    )


def build_optimizer(
    model: nn.Module,
    name: str,
    lr0: float,
    momentum: float,
    weight_decay: float,
    iterations: int,
    nc: int,
    batch: int,
    nbs: int,
) -> tuple[Optimizer, dict[str, Any]]:
    """Build the optimiser with three parameter groups: 0 'weights' (decayed), 1 'norm', 2 'bias' (no decay).

    Weight decay is scaled as `weight_decay * batch * accumulate / nbs`, `accumulate = max(round(nbs / batch), 1)`.
    `name='auto'`: MuSGD (lr 0.01, momentum 0.9) for more than 10000 iterations, else AdamW with
    lr `round(0.002 * 5 / (4 + nc), 6)` and momentum 0.9. Under MuSGD, parameters whose name contains
    'cls_branch' go into extra groups 'weights_cls', 'norm_cls', 'bias_cls' (appended after the three
    base groups, only when non-empty) with `lr_scale=3.0`. Every group carries `name` and `initial_lr`.
    """
    canon = {n.lower(): n for n in OPTIMIZERS}.get(str(name).lower())
    if canon is None:
        raise ConfigError(f"Unknown optimizer '{name}'", f"Use one of {', '.join(OPTIMIZERS)}")
    if canon == "auto":
        if iterations > AUTO_MUSGD_ITERATIONS:
            canon, lr0, momentum = "MuSGD", 0.01, 0.9
            reason = f"auto: {iterations} iterations > {AUTO_MUSGD_ITERATIONS} -> MuSGD (lr 0.01, momentum 0.9)"
        else:
            canon, lr0, momentum = "AdamW", round(0.002 * 5 / (4 + nc), 6), 0.9
            reason = (
                f"auto: {iterations} iterations <= {AUTO_MUSGD_ITERATIONS} -> AdamW "
                f"(lr {lr0} = 0.002*5/(4+{nc}), momentum 0.9)"
            )
    else:
        reason = f"{canon} requested (lr {lr0}, momentum {momentum})"

    accumulate = max(round(nbs / batch), 1)
    wd = weight_decay * batch * accumulate / nbs
    parts = split_params(model)
    decay = {"weights": wd, "norm": 0.0, "bias": 0.0}

    groups: list[dict[str, Any]] = []
    if canon == "MuSGD":
        extra: list[dict[str, Any]] = []
        for key in ("weights", "norm", "bias"):
            base = [p for n, p in parts[key] if CLS_KEY not in n]
            cls = [p for n, p in parts[key] if CLS_KEY in n]
            common = dict(weight_decay=decay[key], use_muon=key == "weights")
            groups.append(dict(params=base, name=key, lr_scale=1.0, **common))
            if cls:
                extra.append(dict(params=cls, name=f"{key}_cls", lr_scale=CLS_LR_SCALE, **common))
        groups += extra
    else:
        for key in ("weights", "norm", "bias"):
            groups.append(dict(params=[p for _, p in parts[key]], name=key, weight_decay=decay[key]))
    for g in groups:
        g["initial_lr"] = lr0

    if canon == "SGD":
        opt: Optimizer = torch.optim.SGD(groups, lr=lr0, momentum=momentum, nesterov=momentum > 0)
    elif canon == "AdamW":
        opt = torch.optim.AdamW(groups, lr=lr0, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        opt = MuSGD(groups, lr=lr0, momentum=momentum, nesterov=True)

    info = {
        "optimizer": canon,
        "lr0": lr0,
        "momentum": momentum,
        "weight_decay": wd,
        "reason": reason,
        "groups": {g["name"]: len(g["params"]) for g in opt.param_groups},
    }
    return opt, info


__all__ = [
    "MuSGD",
    "build_optimizer",
    "split_params",
    "zeropower_via_newtonschulz",
]


def clipped_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, max_norm: float = GRAD_CLIP) -> float:
    """One optimizer step as training takes it: unscale (AMP), clip the gradient norm, step, update the scaler.
    Returns the gradient norm before clipping."""
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
    scaler.step(optimizer)
    scaler.update()
    return float(norm)
