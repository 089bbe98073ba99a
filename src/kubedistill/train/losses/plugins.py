"""User loss plugins: `box_loss` / `cls_loss` given as "module:attr" or as a name in the
`kubedistill.losses` entry-point group, checked on small dummy tensors when they are built.

A plugin's attr may be
- a class: built with no arguments;
- a factory: a callable whose parameters all have defaults, called with none, returning the loss;
- the loss function itself: a callable with required parameters (pred, target) / (logits, targets);
- an nn.Module instance: used as is.
Anything that is not an nn.Module is wrapped in one, so `.to()`, `.train()` and `.eval()` always work.

The check (`check_loss_plugin`) calls the loss on a copy of it with dummy inputs that include
identical and zero-area boxes (box loss) or saturated logits and an all-zero target row (class loss)
and stops with a ConfigError naming the plugin on: a TypeError (wrong signature), any other
exception, a non-tensor or wrongly shaped result, non-finite values, a result without grad_fn, or
a non-finite gradient. See docs/losses.md for the interface and an example.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kubedistill.core.errors import ConfigError

ENTRY_POINT_GROUP = "kubedistill.losses"

INTERFACE = {
    "box_loss": "a class or no-argument factory giving loss(pred [N, 4] xyxy, target [N, 4] xyxy) -> "
    "per-box loss [N] that keeps the autograd graph (see docs/losses.md)",
    "cls_loss": "a class or no-argument factory giving loss(logits [..., C], targets [..., C] in [0, 1]) -> "
    "element-wise loss [..., C] (same shape, not reduced) that keeps the autograd graph (see docs/losses.md)",
}


class CallableLoss(nn.Module):
    """Wraps a plain loss function so that it is an nn.Module like the built-in losses."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args)


def loss_entry_points() -> dict[str, Any]:
    """Name -> EntryPoint of every installed `kubedistill.losses` entry point."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _fix(kind: str) -> str:
    return f"A {kind} plugin must be {INTERFACE[kind]}"


def _import_attr(kind: str, spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr:
        raise ConfigError(
            f"{kind} plugin '{spec}' is not of the form 'module:attr'", "Write e.g. 'mypkg.losses:MyLoss'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"{kind} plugin '{spec}': cannot import module '{module_name}' ({e})",
            "Install the package or add its folder to PYTHONPATH",
        ) from None
    except Exception as e:  # the plugin module itself is broken
        raise ConfigError(
            f"{kind} plugin '{spec}': importing module '{module_name}' raised {type(e).__name__}: {e}",
            "Fix the plugin module",
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            raise ConfigError(
                f"{kind} plugin '{spec}': '{module_name}' has no attribute '{attr}'",
                f"Check the name after ':' (it has: {', '.join(public) or 'nothing public'})",
            )
        obj = getattr(obj, part)
    return obj


def _no_required_args(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in sig.parameters.values()
    )


def _instantiate(kind: str, label: str, obj: Any) -> nn.Module:
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, type):
        what = f"class {obj.__name__}"
        try:
            made = obj()
        except TypeError as e:
            raise ConfigError(
                f"{kind} plugin {label}: {what} cannot be built with no arguments ({e})", _fix(kind)
            ) from None
        except Exception as e:
            raise ConfigError(f"{kind} plugin {label}: {what}() raised {type(e).__name__}: {e}", _fix(kind)) from None
    elif callable(obj):
        if not _no_required_args(obj):
            return CallableLoss(obj)  # the loss function itself
        what = f"factory {getattr(obj, '__name__', type(obj).__name__)}"
        try:
            made = obj()
        except Exception as e:
            raise ConfigError(f"{kind} plugin {label}: {what}() raised {type(e).__name__}: {e}", _fix(kind)) from None
    else:
        raise ConfigError(
            f"{kind} plugin {label} is a {type(obj).__name__}, not a class, factory or function", _fix(kind)
        )
    if isinstance(made, nn.Module):
        return made
    if callable(made):
        return CallableLoss(made)
    raise ConfigError(
        f"{kind} plugin {label}: {what}() returned a {type(made).__name__}, not a callable loss", _fix(kind)
    )


def _dummy_inputs(kind: str, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "box_loss":
        pred = torch.tensor(
            [
                [0.0, 0.0, 2.0, 2.0],  # identical to its target
                [1.0, 1.0, 3.0, 3.0],  # overlapping
                [5.0, 5.0, 6.0, 8.0],  # disjoint
                [1.0, 1.0, 1.0, 1.0],  # zero-area prediction
                [2.0, 2.0, 2.0, 2.0],  # zero-area, identical to its zero-area target
            ],
            requires_grad=True,
        )
        target = torch.tensor(
            [
                [0.0, 0.0, 2.0, 2.0],
                [0.0, 0.0, 2.0, 2.0],
                [0.0, 0.0, 4.0, 2.0],
                [0.0, 0.0, 2.0, 2.0],
                [2.0, 2.0, 2.0, 2.0],
            ]
        )
        return pred, target
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, nc, generator=gen) * 2
    logits[0, 0, 0], logits[0, 1, 0] = 15.0, -15.0  # saturated
    targets = torch.zeros(2, 8, nc)
    targets[0, 0, 0] = 1.0
    targets[0, 2, nc - 1] = 0.6
    targets[1, 3, 0] = 0.25  # the rest, including whole rows, is 0 (no positives there)
    return logits.requires_grad_(), targets


def check_loss_plugin(kind: str, label: str, loss: Callable, nc: int = 3) -> None:
    """Call `loss` (on a copy where possible) with dummy inputs; raise ConfigError if it breaks the interface."""
    try:
        probe = copy.deepcopy(loss)  # leave the plugin's own state (running means...) untouched
    except Exception:
        probe = loss
    a, b = _dummy_inputs(kind, nc)
    shape_in = tuple(a.shape)
    expected = (shape_in[0],) if kind == "box_loss" else shape_in
    call = (
        "loss(pred [5, 4], target [5, 4])"
        if kind == "box_loss"
        else f"loss(logits {list(shape_in)}, targets {list(shape_in)})"
    )
    inputs = (
        "test boxes (including identical and zero-area ones)"
        if kind == "box_loss"
        else "test logits (including saturated ones) and targets (including all-zero rows)"
    )
    with torch.enable_grad():
        try:
            out = probe(a, b)
        except TypeError as e:
            raise ConfigError(
                f"{kind} plugin {label} has the wrong signature: {call} raised TypeError: {e}", _fix(kind)
            ) from None
        except Exception as e:
            raise ConfigError(
                f"{kind} plugin {label}: {call} on {inputs} raised {type(e).__name__}: {e}",
                _fix(kind),
            ) from None
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"{kind} plugin {label} returned a {type(out).__name__}, not a tensor", _fix(kind))
        if tuple(out.shape) != expected:
            hint = " (one value per box, not reduced)" if kind == "box_loss" else " (element-wise, not reduced)"
            raise ConfigError(
                f"{kind} plugin {label} returned shape {tuple(out.shape)} for {call}; expected {expected}{hint}",
                _fix(kind),
            )
        if not torch.is_floating_point(out):
            raise ConfigError(
                f"{kind} plugin {label} returned dtype {out.dtype}, not a floating-point tensor", _fix(kind)
            )
        if not torch.isfinite(out).all():
            raise ConfigError(
                f"{kind} plugin {label} returned non-finite values (nan/inf) on {inputs}",
                "Guard divisions and logs with an eps (see docs/losses.md)",
            )
        if out.grad_fn is None:
            raise ConfigError(
                f"{kind} plugin {label} returned a result without grad_fn (detached, computed under no_grad, "
                "or built from .item()/numpy), so it cannot train anything",
                _fix(kind),
            )
        (grad,) = torch.autograd.grad(out.sum(), a, allow_unused=True)
        if grad is None:
            raise ConfigError(
                f"{kind} plugin {label} returned a result with no gradient towards its first input (the prediction)",
                _fix(kind),
            )
        if not torch.isfinite(grad).all():
            raise ConfigError(
                f"{kind} plugin {label} gives non-finite gradients (nan/inf) on {inputs}",
                "Guard divisions, sqrt and logs with an eps (see docs/losses.md)",
            )


def load_loss_plugin(kind: str, name: str, builtin: list[str] | None = None) -> nn.Module:
    """Build and check the plugin `name` ("module:attr" or an entry-point name) for option `kind`."""
    builtin = list(builtin or [])
    if ":" in name:
        obj = _import_attr(kind, name)
        label = f"'{name}'"
    else:
        eps = loss_entry_points()
        if name not in eps:
            choices = builtin + [n for n in sorted(eps) if n not in builtin]
            close = difflib.get_close_matches(name, choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"Unknown {kind} '{name}'{hint}",
                f"Choose one of: {', '.join(choices)}; or name a plugin as 'module:attr' "
                f"or a '{ENTRY_POINT_GROUP}' entry point (docs/losses.md)",
            )
        ep = eps[name]
        label = f"'{name}' (entry point {ep.value})"
        try:
            obj = ep.load()
        except Exception as e:
            raise ConfigError(
                f"{kind} plugin {label} failed to load: {type(e).__name__}: {e}",
                "Fix or reinstall the package that provides it",
            ) from None
    loss = _instantiate(kind, label, obj)
    check_loss_plugin(kind, label, loss)
    return loss
