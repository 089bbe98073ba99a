"""Check an InferenceService manifest against the API models KServe publishes on PyPI (`kserve.models`).

`make install` puts the `kserve` wheel, without its dependencies (a model server with heavy, conflicting
pins), under `.venv/kserve-models`. Only its generated OpenAPI models are used here, loaded without running
`kserve/__init__.py`. `problems(manifest)` walks the manifest with each model's `openapi_types` and
`attribute_map` (the field names and types KServe's Go API types generate) and builds every object with the
model's own constructor, so a required field left out or a value outside an enum fails as it would in the
kserve client. Types KServe takes from Kubernetes (V1Container, V1ObjectMeta, ...) come from the kubernetes
client's models. Strict: an unknown field, or a number where a string is wanted, is a problem.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

KSERVE_DIR = Path(sys.prefix) / "kserve-models"
_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(([^,]+), (.+)\)$")
_PRIMITIVE = {"str": str, "int": int, "float": (int, float), "bool": bool, "date": str, "datetime": str}


def kserve_models():
    """The `kserve.models` module of the wheel under .venv/kserve-models."""
    pkg_dir = KSERVE_DIR / "kserve"
    if not (pkg_dir / "models" / "__init__.py").is_file():
        raise RuntimeError(f"the kserve wheel is not under {KSERVE_DIR}: run `make install`")
    if "kserve" not in sys.modules:
        pkg = types.ModuleType("kserve")  # a bare package: kserve/__init__.py would import the model server
        pkg.__path__ = [str(pkg_dir)]
        sys.modules["kserve"] = pkg
    return importlib.import_module("kserve.models")


def _model_class(name: str):
    import kubernetes.client.models as kube

    for module in (kserve_models(), kube):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls
    raise LookupError(f"no model class {name} in kserve.models or kubernetes.client.models")


def _configuration():
    from kserve.configuration import Configuration

    cfg = Configuration()
    cfg.client_side_validation = True
    return cfg


def check(value, type_name: str, path: str, out: list[str]):
    """Append what is wrong with `value` as a `type_name` to `out`; returns the built value."""
    if value is None:
        return None
    if type_name == "object":
        return value
    if type_name in _PRIMITIVE:
        want = _PRIMITIVE[type_name]
        if isinstance(value, bool) and type_name != "bool" or not isinstance(value, want):
            out.append(f"{path}: {value!r} is not {type_name}")
        return value
    if m := _LIST.match(type_name):
        if not isinstance(value, list):
            out.append(f"{path}: not a list")
            return None
        return [check(v, m.group(1), f"{path}[{i}]", out) for i, v in enumerate(value)]
    if m := _DICT.match(type_name):
        if not isinstance(value, dict):
            out.append(f"{path}: not a mapping")
            return None
        return {k: check(v, m.group(2), f"{path}.{k}", out) for k, v in value.items()}
    cls = _model_class(type_name)
    if not isinstance(value, dict):
        out.append(f"{path}: {type(value).__name__} where a {type_name} object is wanted")
        return None
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        attr = by_json.get(key)
        if attr is None:
            out.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        kwargs[attr] = check(v, cls.openapi_types[attr], f"{path}.{key}", out)
    try:
        return cls(**kwargs, local_vars_configuration=_configuration())
    except (ValueError, TypeError) as e:
        out.append(f"{path}: {type_name}: {e}")
        return None


def problems(manifest: dict) -> list[str]:
    """Everything in `manifest` that does not fit V1beta1InferenceService; [] when it fits."""
    out: list[str] = []
    if manifest.get("apiVersion") != "serving.kserve.io/v1beta1" or manifest.get("kind") != "InferenceService":
        out.append(
            f"not a serving.kserve.io/v1beta1 InferenceService: {manifest.get('apiVersion')} {manifest.get('kind')}"
        )
    check(manifest, "V1beta1InferenceService", "$", out)
    return out
