"""The server's options, declared once: `ServeConfig` is what `kubedistill serve` fills, what `serve.server` hands to
each uvicorn worker (as JSON in $KUBEDISTILL_SERVE_CONFIG) and what `create_app` reads. A bad value is a UserError
naming the command-line flag."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubedistill.core.errors import UserError

ENV_CONFIG = "KUBEDISTILL_SERVE_CONFIG"  # JSON ServeConfig, read by `app_from_env` (uvicorn workers)


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # the app
    model_path: str = Field(description="The local .onnx file to serve (resolved from --model).")
    name: str | None = Field(
        None, description="Model name in /v2/models/{name} (default: the file name without .onnx)."
    )
    threads: int | None = Field(
        None, ge=1, description="onnxruntime intra-op threads per process (default: CPU cores / workers)."
    )
    max_body_mb: float = Field(20.0, gt=0, le=4096, description="Largest request body in MiB (larger: 413).")
    max_images: int = Field(32, ge=1, le=4096, description="Most images in one /v1/detect request.")
    max_batch: int = Field(64, ge=1, le=4096, description="Most images in one v2 infer request.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Most pixels (width x height) of one decoded image.")
    max_request_pixels: int = Field(
        100_000_000, ge=1, description="Most pixels of all the images of one /v1/detect request together."
    )
    max_header_kb: int = Field(
        64, ge=1, le=16384, description="Largest request line and headers together in KiB (larger: 431)."
    )
    max_headers: int = Field(100, ge=1, le=10000, description="Most header fields in one request (more: 431).")
    header_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Seconds a client has to send a request's line and headers (then 408)."
    )
    max_batch_size: int = Field(
        1,
        ge=1,
        le=256,
        description="Micro-batching: run up to this many images of concurrent "
        "requests in one model call (1: off; needs a model exported with --dynamic).",
    )
    max_latency_ms: float = Field(
        5.0, ge=0, le=1000, description="Micro-batching: longest a request waits for others to fill a batch."
    )
    work_threads: int | None = Field(
        None, ge=1, description="Threads that decode and run requests (default: 4 per core, at least 4)."
    )
    background_load: bool = Field(
        True, description="Load the model in a background thread (live at once, ready when loaded)."
    )
    inference_delay_s: float = Field(0.0, ge=0, description="Tests only: seconds of sleep added to each model call.")
    # the process
    host: str = Field("127.0.0.1", description="Address to bind (0.0.0.0 in a container).")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(1, ge=1, description="Server processes (each loads the model; prefer 1 and more replicas).")
    graceful_timeout: int = Field(30, ge=0, description="Seconds in-flight requests get to finish after SIGTERM.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error."
    )
    access_log: bool = Field(True, description="Log every request.")

    @classmethod
    def build(cls, **values) -> ServeConfig:
        """A config from keyword values (None: the default); a bad value is a one-line UserError naming its flag."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            flag = "--" + field.replace("_", "-")
            if err["type"] == "extra_forbidden":
                raise UserError(f"Unknown serve option '{field}'", "See `kubedistill serve --help`") from None
            msg = err["msg"].removeprefix("Value error, ")
            raise UserError(
                f"{flag} {err.get('input')!r} is out of range ({msg})",
                f"Fix {flag}; `kubedistill serve --help` gives each option's range and default",
            ) from None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


def option_help(field: str) -> str:
    """A flag's help text: the field's description and its default (for the CLI, which declares no defaults)."""
    f = ServeConfig.model_fields[field]
    if f.default is None:
        return f.description
    value = str(f.default).lower() if isinstance(f.default, bool) else f.default
    return f"{f.description} (default: {value})"
