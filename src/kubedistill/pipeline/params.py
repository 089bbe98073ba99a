"""The pipeline's parameters (name, type, default, description), read from its spec, and typed values for them.

One source: the compiled pipeline spec, either the committed package (pipelines/compiled/training.yaml,
what is uploaded) or the in-memory compile of `dag.training_pipeline`. Values from the command line
(strings), a YAML file or a schedule are checked against it here: an unknown name or a value of the wrong
type stops with a message naming it, before anything reaches KFP.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from kubedistill.config import read_yaml_mapping
from kubedistill.core.errors import ConfigError
from kubedistill.core.yamlfile import YamlFileError, read_yaml_file

_TYPE_WORDS = {
    "STRING": "text",
    "NUMBER_INTEGER": "a whole number",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "STRUCT": "a mapping (JSON object)",
    "LIST": "a list",
}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def spec_parameters(spec: dict) -> dict[str, dict]:
    """{name: {"type", "default", "description"}} of a compiled pipeline spec (dict)."""
    params = (spec.get("root") or {}).get("inputDefinitions", {}).get("parameters", {}) or {}
    out = {}
    for name in sorted(params):
        p = params[name]
        default = p.get("defaultValue")
        if p.get("parameterType") == "NUMBER_INTEGER" and isinstance(default, float) and default.is_integer():
            default = int(default)  # JSON numbers come back as floats
        out[name] = {
            "type": p.get("parameterType", "STRING"),
            "default": default,
            "description": p.get("description", ""),
        }
    return out


def load_spec(package: str | Path) -> dict:
    """The pipeline spec (first YAML document) of a compiled package."""
    p = Path(package)
    if not p.is_file():
        raise ConfigError(
            f"Pipeline package '{p}' does not exist", "Run `kubedistill pipeline compile` or pass --package"
        )
    try:
        doc = next(iter(read_yaml_file(p, all_documents=True)), None)
    except YamlFileError as e:
        raise ConfigError(f"Pipeline package '{p}' {e.reason}", "Compile it again") from None
    if not isinstance(doc, dict) or "root" not in doc:
        raise ConfigError(f"'{p}' is not a compiled KFP pipeline", "Run `kubedistill pipeline compile`")
    return doc


def pipeline_parameters(package: str | Path | None = None) -> dict[str, dict]:
    """The parameters of `package`, or of the pipeline in this package (compiled in memory) when None."""
    if package is not None:
        return spec_parameters(load_spec(package))
    from google.protobuf import json_format

    from kubedistill.pipeline.dag import training_pipeline

    return spec_parameters(json_format.MessageToDict(training_pipeline.pipeline_spec))


def _bad(name: str, value: Any, ptype: str) -> ConfigError:
    return ConfigError(
        f"Pipeline parameter '{name}' = {value!r} is not {_TYPE_WORDS.get(ptype, ptype)}",
        f"Give '{name}' {_TYPE_WORDS.get(ptype, ptype)}",
    )


def coerce(name: str, value: Any, ptype: str) -> Any:
    """`value` (a string from the command line, or a YAML value) as the parameter's type."""
    if ptype == "STRING":
        if isinstance(value, (dict, list)):
            raise _bad(name, value, ptype)
        return "" if value is None else str(value)
    if ptype == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(name, value, ptype)
    if ptype == "NUMBER_INTEGER":
        if isinstance(value, bool):
            raise _bad(name, value, ptype)
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise _bad(name, value, ptype) from None
        if not f.is_integer():
            raise _bad(name, value, ptype)
        return int(f)
    if ptype == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise _bad(name, value, ptype)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _bad(name, value, ptype) from None
    if ptype in ("STRUCT", "LIST"):
        want = dict if ptype == "STRUCT" else list
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else want()
            except json.JSONDecodeError:
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise _bad(name, value, ptype) from None
        if not isinstance(value, want):
            raise _bad(name, value, ptype)
        return value
    return value


def check_params(values: dict[str, Any], params: dict[str, dict]) -> dict[str, Any]:
    """Typed copy of `values`; an unknown name stops with the closest known one."""
    out = {}
    for name, value in values.items():
        key = str(name).replace("-", "_")
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"Unknown pipeline parameter '{name}'{hint}",
                "`kubedistill pipeline params` lists them with their types and defaults",
            )
        out[key] = coerce(key, value, params[key]["type"])
    return out


def parse_assignments(items: list[str]) -> dict[str, str]:
    """['name=value', ...] -> {name: value} (values stay strings: `check_params` types them)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"'{item}' is not NAME=VALUE", "e.g. --param teacher_epochs=50")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def read_params_file(path: str | Path) -> dict[str, Any]:

    return read_yaml_mapping(path, "Parameter file", "Check the path", item="parameter")
