"""Where a served model comes from: `resolve_model_uri` turns a --model value into a local file.

This is the one place to extend for remote models. Today only local `.onnx` files are accepted;
`s3://...` and `models:/NAME/VERSION` / `models:/NAME@ALIAS` (MLflow registry) URIs are recognised
and refused with a clear message until the storage integration lands.
"""

from __future__ import annotations

import re
from pathlib import Path

from kubedistill.errors import UserError

_REMOTE = re.compile(r"^(s3|models|gs|https?|runs|mlflow-artifacts)://?", re.IGNORECASE)


def resolve_model_uri(uri: str | Path) -> Path:
    """A --model value -> the path of a local ONNX file. Raises UserError when it cannot be used."""
    text = str(uri).strip()
    if not text:
        raise UserError("No model given", "Pass --model path/to/model.onnx")
    m = _REMOTE.match(text)
    if m:
        scheme = m.group(1).lower()
        if scheme in ("s3", "models"):
            raise UserError(
                f"--model '{text}': {scheme}:// URIs arrive with the MLflow/S3 storage integration and are not supported yet",
                "Download the .onnx file and pass its local path",
            )
        raise UserError(f"--model '{text}': {scheme}:// URIs are not supported", "Pass a local .onnx file")
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"Model '{path}' does not exist", "Export one with `kubedistill export --weights best.pt`")
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            what = "no .onnx file" if not found else f"{len(found)} .onnx files"
            raise UserError(f"Model folder '{path}' holds {what}", "Pass the .onnx file itself")
        path = found[0]
    if path.suffix.lower() != ".onnx":
        hint = " (a torch checkpoint: export it first with `kubedistill export --weights " + str(path) + "`)" if path.suffix == ".pt" else ""
        raise UserError(f"Model '{path}' is not an .onnx file{hint}", "Pass the exported .onnx file")
    if path.stat().st_size == 0:
        raise UserError(f"Model '{path}' is an empty file", "Export it again")
    return path.resolve()
