"""Open Inference Protocol v2 (KServe / Triton REST) messages, and the request checks of both APIs.

Field names follow the spec (kserve/open-inference-protocol, `inference_rest.md`):

    $metadata_server_response = {"name", "version", "extensions": [..]}
    $metadata_model_response  = {"name", "versions"?, "platform", "inputs": [$metadata_tensor], "outputs": [..]}
    $metadata_tensor          = {"name", "datatype", "shape"}                    (-1: variable size)
    $inference_request        = {"id"?, "parameters"?, "inputs": [$request_input], "outputs"?: [$request_output]}
    $request_input            = {"name", "shape", "datatype", "parameters"?, "data"}
    $inference_response       = {"model_name", "model_version"?, "id"?, "parameters"?, "outputs": [$response_output]}
    $response_output          = {"name", "shape", "datatype", "parameters"?, "data"}
    errors                    = {"error": "<message>"}

`data` may be flat (row-major) or nested; it is read with numpy in one go (no per-element pydantic
validation, which would be slow for a [1, 3, 640, 640] tensor).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX models
VALUE_SLACK = 1e-3  # v2 input values may stray this far outside 0..1 (rounding by clients)


class ServeError(Exception):
    """An error answered as HTTP `status` with body {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers


# -- v2 messages ---------------------------------------------------------------------------------
class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: Any


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


def _validation_message(e: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in e.errors()[:limit]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{e.error_count() - limit} more)" if e.error_count() > limit else ""
    return "; ".join(parts) + more


def load_json(body: bytes) -> Any:
    """Body bytes -> JSON value, or ServeError 400."""
    if not body:
        raise ServeError(400, "empty request body; send a JSON object")
    try:
        return json.loads(body)
    except RecursionError:
        raise ServeError(400, "request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ServeError(400, f"request body is not valid JSON ({str(e)[:200]})") from None


def parse_infer_request(body: bytes) -> InferenceRequest:
    obj = load_json(body)
    if not isinstance(obj, dict):
        raise ServeError(400, "inference request must be a JSON object with 'inputs'")
    try:
        return InferenceRequest.model_validate(obj)
    except ValidationError as e:
        raise ServeError(400, f"invalid inference request: {_validation_message(e)}") from None


def input_tensor(
    req: InferenceRequest, name: str, datatypes: tuple[str, ...], shape: list[int], max_batch: int
) -> np.ndarray:
    """The model's one input from a v2 request, checked against its metadata; float32 [B, 3, S, S].

    `shape` is the model's input shape with -1 for variable dimensions (the batch, usually).
    """
    if len(req.inputs) != 1:
        raise ServeError(400, f"the model has one input '{name}'; the request has {len(req.inputs)}")
    inp = req.inputs[0]
    if inp.name != name:
        raise ServeError(400, f"unknown input '{inp.name[:100]}'; the model's input is '{name}'")
    if inp.datatype not in datatypes:
        raise ServeError(
            400, f"input '{name}' has datatype '{inp.datatype[:20]}'; the model takes {' or '.join(datatypes)}"
        )
    got = list(inp.shape)
    want = "[" + ", ".join("B" if i == 0 and d < 0 else ("?" if d < 0 else str(d)) for i, d in enumerate(shape)) + "]"
    if len(got) != len(shape) or any(d < 0 for d in got):
        raise ServeError(400, f"input '{name}' has shape {got[:8]}; the model takes {want}")
    for i, (g, w) in enumerate(zip(got, shape)):
        if i == 0:
            if not 1 <= g <= max_batch:
                raise ServeError(400, f"batch size {g} is out of range 1..{max_batch}")
            if w > 0 and w != 1 and g % w:
                raise ServeError(400, f"batch size {g} is not a multiple of the model's fixed batch {w}")
        elif w > 0 and g != w:
            raise ServeError(400, f"input '{name}' has shape {got}; the model takes {want}")
    if inp.parameters and inp.parameters.get("binary_data_size") is not None:
        raise ServeError(400, "binary tensor data is not supported; send 'data' as a JSON array")
    if not isinstance(inp.data, list):
        raise ServeError(400, f"input '{name}' data must be a JSON array of numbers")
    n = math.prod(got)
    if inp.data and not isinstance(inp.data[0], list) and len(inp.data) != n:
        raise ServeError(400, f"input '{name}' data has {len(inp.data)} values; shape {got} needs {n}")
    try:
        arr = np.asarray(inp.data)  # numpy's own reading first: strings and booleans must not pass as numbers
        if arr.dtype.kind not in "iuf":
            raise TypeError(arr.dtype)
        arr = arr.astype(np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ServeError(
            400, f"input '{name}' data must be a (flat or nested) array of numbers for {inp.datatype}, with shape {got}"
        ) from None
    if arr.size != n:
        raise ServeError(400, f"input '{name}' data has {arr.size} values; shape {got} needs {n}")
    if not np.isfinite(arr).all():
        raise ServeError(400, f"input '{name}' data holds NaN or infinite values (or numbers too large for FP32)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -VALUE_SLACK or hi > 1.0 + VALUE_SLACK:  # catches 0..255 pixels sent without /255
        raise ServeError(400, f"input '{name}' values must be in 0..1 (letterboxed RGB / 255); got {lo:g}..{hi:g}")
    return arr.reshape(got)


def requested_outputs(req: InferenceRequest, available: list[str]) -> list[str]:
    if not req.outputs:
        return list(available)
    names = [o.name for o in req.outputs]
    for n in names:
        if n not in available:
            raise ServeError(400, f"unknown output '{n[:100]}'; the model's outputs are {available}")
    return names


def response_output(name: str, arr: np.ndarray) -> dict:
    return {"name": name, "datatype": "FP32", "shape": list(arr.shape), "data": arr.astype(np.float32).ravel().tolist()}


# -- /v1/detect helpers ---------------------------------------------------------------------------
def parse_conf(value: Any, where: str = "conf") -> float:
    if isinstance(value, bool) or value is None:
        raise ServeError(400, f"{where} must be a number in 0..1")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ServeError(400, f"{where} must be a number in 0..1, not {str(value)[:40]!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ServeError(400, f"{where} must be a number in 0..1, not {str(value)[:40]}")
    return v


def parse_max_det(value: Any, where: str = "max_det") -> int:
    if isinstance(value, bool) or value is None:
        raise ServeError(400, f"{where} must be a positive integer")
    try:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            v = int(value)
        else:
            v = int(str(value).strip())
    except (TypeError, ValueError, OverflowError):
        raise ServeError(400, f"{where} must be a positive integer, not {str(value)[:40]!r}") from None
    if v < 1:
        raise ServeError(400, f"{where} must be a positive integer, not {v}")
    return v


def decode_base64_image(value: Any, index: int) -> bytes:
    if not isinstance(value, str):
        raise ServeError(400, f"images[{index}] must be a base64 string")
    s = value.strip()
    if s.startswith("data:"):
        head, _, s = s.partition(",")
        if ";base64" not in head:
            raise ServeError(400, f"images[{index}] is a data URL without ';base64'")
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"images[{index}] is not valid base64") from None
