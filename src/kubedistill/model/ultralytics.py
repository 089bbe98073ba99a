"""Ultralytics YOLO26 checkpoints (`yolo26n.pt` ... `yolo26x.pt`, or a `best.pt` of `yolo train`) without Ultralytics.

Such a file is a torch zip whose pickle holds a whole model object (Ultralytics' and torch.nn's module classes,
half precision). It is read with torch's weights-only unpickler, which runs no code: each class the pickle names
under a known namespace (Ultralytics', torch.nn's modules, plain data of numpy and pathlib) is replaced by an inert
stand-in that only keeps the attributes it is given, and anything else (an `os.system` reduce, say) is refused
before a byte of the pickle is executed. The stand-in tree is then checked to be a YOLO26 detect model, and its
tensors are mapped onto `kubedistill.model.yolo.DetectionModel` by a key table (layer index -> module name).

The result is a kubedistill checkpoint dict (model meta + fp32 state dict + train_args), so every step that takes a
checkpoint takes an Ultralytics one too: training (fine-tuning), distillation teachers, val, predict, export, serve.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from kubedistill.core.errors import UserError
from kubedistill.model.yolo import SCALES, DetectionModel

# Namespaces whose classes and functions become inert stand-ins; nothing from them is ever called.
STAND_IN_PREFIXES = ("ultralytics.", "torch.nn.modules.", "numpy.", "pathlib.")
# YOLO26 detect's layer list (yolo26.yaml): module of each layer, and where its tensors go in kubedistill's model.
YOLO26_LAYERS = (
    ("Conv", "p1"),
    ("Conv", "p2"),
    ("C3k2", "p2_stack"),
    ("Conv", "p3"),
    ("C3k2", "p3_stack"),
    ("Conv", "p4"),
    ("C3k2", "p4_stack"),
    ("Conv", "p5"),
    ("C3k2", "p5_stack"),
    ("SPPF", "sppf"),
    ("C2PSA", "psa"),
    ("nn.Upsample", None),
    ("Concat", None),
    ("C3k2", "td4"),
    ("nn.Upsample", None),
    ("Concat", None),
    ("C3k2", "td3"),
    ("Conv", "down3"),
    ("Concat", None),
    ("C3k2", "bu4"),
    ("Conv", "down4"),
    ("Concat", None),
    ("C3k2", "bu5"),
    ("Detect", "head"),
)
# the Detect head's branch names -> kubedistill's
HEAD_BRANCHES = {
    "cv2": "box_branch",
    "cv3": "cls_branch",
    "one2one_cv2": "o2o.box_branch",
    "one2one_cv3": "o2o.cls_branch",
}
SUPPORTED = "YOLO26 detect checkpoints (yolo26n.pt, yolo26s.pt, yolo26m.pt, yolo26l.pt, yolo26x.pt or a best.pt trained from them)"
_TASKS = {
    "SegmentationModel": "segmentation",
    "PoseModel": "pose",
    "OBBModel": "oriented-box (OBB)",
    "ClassificationModel": "classification",
    "WorldModel": "YOLO-World",
    "YOLOEModel": "YOLOE",
    "RTDETRDetectionModel": "RT-DETR",
}


class StandIn:
    """An inert stand-in for a pickled object: it keeps the state it is given and does nothing else."""

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (state, slotstate)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state


def _stand_in(path: str) -> type:
    module, _, name = path.rpartition(".")
    return type(name, (StandIn,), {"__module__": module, "__qualname__": name})


def foreign_globals(path: str | Path) -> set[str]:
    """The globals a checkpoint's pickle names beyond torch's weights-only allowlist (read without unpickling)."""
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as e:  # not a torch zip, truncated, ...
        raise UserError(
            f"Checkpoint '{path}' cannot be read ({e.__class__.__name__})",
            "Use a .pt written by kubedistill or Ultralytics; a truncated file needs to be copied again",
        ) from None


def is_ultralytics(globals_: set[str]) -> bool:
    return any(g.startswith("ultralytics.") for g in globals_)


def restricted_load(path: str | Path, globals_: set[str] | None = None) -> dict:
    """torch.load with weights_only=True, where the known foreign globals are inert stand-ins; a pickle that names
    anything else is refused before it runs."""
    globals_ = foreign_globals(path) if globals_ is None else globals_
    refused = sorted(g for g in globals_ if not g.startswith(STAND_IN_PREFIXES))
    if refused:
        raise UserError(
            f"Checkpoint '{path}' asks to run {', '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}, "
            "which no model checkpoint needs: refused, nothing in it was run",
            "Use a checkpoint from a source you trust (Ultralytics' releases or your own training)",
        )
    stand_ins = [_stand_in(g) for g in sorted(globals_)]
    try:
        with torch.serialization.safe_globals(stand_ins):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"Checkpoint '{path}' cannot be read ({e.__class__.__name__}: {str(e).splitlines()[0][:160]})",
            "Use a .pt written by kubedistill or Ultralytics",
        ) from None
    if not isinstance(ckpt, dict):
        raise UserError(f"'{path}' holds a {type(ckpt).__name__}, not a checkpoint", f"kubedistill takes {SUPPORTED}")
    return ckpt


def _cls(obj) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _layer_names(cfg: dict) -> list[str]:
    return [str(layer[2]) for layer in list(cfg.get("backbone") or []) + list(cfg.get("head") or [])]


def check_yolo26_detect(model, path: str | Path) -> dict:
    """The model's config (its YAML dict) when `model` is a YOLO26 detect model; a UserError saying what it is
    otherwise."""
    kind = type(model).__qualname__
    if kind in _TASKS:
        raise UserError(
            f"'{path}' is an Ultralytics {_TASKS[kind]} checkpoint ({kind})", f"kubedistill takes {SUPPORTED}"
        )
    if kind != "DetectionModel":
        raise UserError(
            f"'{path}' holds an Ultralytics {kind}, not a detection model", f"kubedistill takes {SUPPORTED}"
        )
    cfg = getattr(model, "yaml", None)
    if not isinstance(cfg, dict):
        raise UserError(f"'{path}' has no model configuration", f"kubedistill takes {SUPPORTED}")
    yaml_file = Path(str(cfg.get("yaml_file", ""))).name or "?"
    layers = _layer_names(cfg)
    want = [name for name, _ in YOLO26_LAYERS]
    if layers != want or not cfg.get("end2end") or int(cfg.get("reg_max", 16)) != 1:
        family = re.match(r"[a-z]+\d*", yaml_file.lower())
        what = family.group(0) if family else "another architecture"
        raise UserError(
            f"'{path}' is a {what} model ({yaml_file}, {len(layers)} layers), not YOLO26 detect",
            f"kubedistill takes {SUPPORTED}; YOLO11, YOLOv8, and YOLO26's p2/p6 variants are not supported",
        )
    scale = str(cfg.get("scale", "")).lower()
    if scale not in SCALES:
        raise UserError(f"'{path}' has YOLO26 scale '{scale}'", f"Use one of {', '.join(SCALES)}")
    return cfg


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and buffers of a stand-in module tree, by dotted name (like a state dict)."""
    out = {}
    state = obj.__dict__
    for kind in ("_parameters", "_buffers"):
        for name, t in (state.get(kind) or {}).items():
            if t is not None and name not in (state.get("_non_persistent_buffers_set") or ()):
                out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(_tensors(child, f"{prefix}{name}."))
    return out


def map_key(key: str) -> str | None:
    """An Ultralytics state-dict key (model.N.rest) -> kubedistill's, or None when the layer holds no tensors."""
    m = re.fullmatch(r"model\.(\d+)\.(.+)", key)
    if not m or int(m[1]) >= len(YOLO26_LAYERS):
        return None
    target, rest = YOLO26_LAYERS[int(m[1])][1], m[2]
    if target == "head":
        branch, _, tail = rest.partition(".")
        return f"head.{HEAD_BRANCHES[branch]}.{tail}" if branch in HEAD_BRANCHES else None
    return f"{target}.{rest}" if target else None


def _names(model, nc: int) -> list[str]:
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        return [str(names[i]) for i in sorted(names)]
    if isinstance(names, (list, tuple)) and len(names) == nc:
        return [str(n) for n in names]
    return [str(i) for i in range(nc)]


def load_ultralytics(path: str | Path, globals_: set[str] | None = None) -> dict:
    """An Ultralytics YOLO26 detect checkpoint -> a kubedistill checkpoint dict (model meta, fp32 state dict,
    train_args with the image size it was trained at, and where it came from)."""
    raw = restricted_load(path, globals_)
    model = raw.get("ema") or raw.get("model")
    if model is None or not isinstance(model, StandIn):
        raise UserError(f"'{path}' holds no model", f"kubedistill takes {SUPPORTED}")
    cfg = check_yolo26_detect(model, path)
    tensors = _tensors(model)
    nc = int(cfg.get("nc") or getattr(model, "nc", 0) or 80)
    names = _names(model, nc)
    nc = len(names)
    state, unmapped = {}, []
    for key, t in tensors.items():
        ours = map_key(key)
        if ours is None:
            unmapped.append(key)
        else:
            state[ours] = t.detach().float() if t.is_floating_point() else t.detach()
    net = DetectionModel(cfg["scale"], nc=nc, names=names)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape))
    if unmapped or missing or wrong or set(state) - set(expected):
        detail = (unmapped or missing or wrong or sorted(set(state) - set(expected)))[:3]
        raise UserError(
            f"'{path}' does not fit YOLO26{cfg['scale']} ({len(unmapped)} unknown, {len(missing)} missing, "
            f"{len(wrong)} misshapen tensors, e.g. {', '.join(detail)})",
            f"kubedistill takes {SUPPORTED}",
        )
    args = raw.get("train_args") if isinstance(raw.get("train_args"), dict) else {}
    imgsz = args.get("imgsz", 640)
    imgsz = int(imgsz if isinstance(imgsz, (int, float)) else 640)
    return {
        "model": {"meta": net.meta(), "state_dict": state},
        "train_args": {"imgsz": imgsz, "model": f"yolo26{cfg['scale']}", "data": None},
        "epoch": raw.get("epoch", -1),
        "source": {
            "format": "ultralytics",
            "version": str(raw.get("version", "")),
            "file": Path(path).name,
            "tensors": len(state),
        },
    }
