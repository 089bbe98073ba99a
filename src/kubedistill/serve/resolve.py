"""Where a served model comes from: `resolve_model_uri` turns a --model value into a local file.

This is the one place to extend for remote models. Local `.onnx` files (or a folder holding one) are
used in place; a `.pt` checkpoint (kubedistill's or an Ultralytics YOLO26 one) is exported once into the model
cache, where torch is installed; `s3://bucket/model.onnx` (or a prefix holding one .onnx) is downloaded into the model
cache, keyed by its ETag. `models:/NAME/VERSION` / `models:/NAME@ALIAS` (MLflow registry, at
MLFLOW_TRACKING_URI) download the registered version's ONNX model into the same cache; an alias is resolved
once, at start, so a running server never changes model under its clients.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kubedistill.core.cache import cache_dir
from kubedistill.core.digest import file_sha256
from kubedistill.core.errors import UserError
from kubedistill.storage import download_cached, join_uri, list_files
from kubedistill.track.registry import fetch_model

_REMOTE = re.compile(r"^(s3|models|gs|https?|runs|mlflow-artifacts)://?", re.IGNORECASE)


def resolve_model_uri(uri: str | Path) -> Path:
    """A --model value -> the path of a local ONNX file. Raises UserError when it cannot be used."""
    text = str(uri).strip()
    if not text:
        raise UserError("No model given", "Pass --model path/to/model.onnx")
    m = _REMOTE.match(text)
    if m:
        scheme = m.group(1).lower()
        if scheme == "s3":
            text = str(_fetch_s3_model(text))
        elif scheme == "models":
            text = str(fetch_model(text, kind="onnx"))
        else:
            raise UserError(f"--model '{text}': {scheme}:// URIs are not supported", "Pass a local .onnx file")
    path = Path(text).expanduser()
    try:
        exists = path.exists() and os.access(path, os.R_OK)
    except PermissionError:  # a folder on the way cannot be entered
        exists = None
    if exists is None or (path.exists() and not exists):
        raise UserError(
            f"Model '{path}' cannot be read by this user (uid {os.getuid()})",
            "Make it and its folders readable (the serve image runs as uid 10001)",
        )
    if not exists:
        raise UserError(f"Model '{path}' does not exist", "Export one with `kubedistill export --weights best.pt`")
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            what = "no .onnx file" if not found else f"{len(found)} .onnx files"
            raise UserError(f"Model folder '{path}' holds {what}", "Pass the .onnx file itself")
        path = found[0]
    if path.suffix.lower() == ".pt":
        path = exported_checkpoint(path)
    if path.suffix.lower() != ".onnx":
        raise UserError(f"Model '{path}' is not an .onnx file", "Pass an exported .onnx file (or a .pt checkpoint)")
    if path.stat().st_size == 0:
        raise UserError(f"Model '{path}' is an empty file", "Export it again")
    return path.resolve()


def _fetch_s3_model(uri: str) -> Path:
    """s3://bucket/model.onnx (or a prefix holding exactly one .onnx) -> its copy in the model cache.

    The cache ($KUBEDISTILL_CACHE/models, default ~/.cache/kubedistill/models) is keyed by the URI and the
    object's ETag: an unchanged object is not downloaded again, a changed one is.
    """

    if not uri.lower().endswith(".onnx"):
        files = list_files(uri)
        one_object = len(files) == 1 and not uri.endswith("/") and uri.endswith("/" + files[0].rel)
        if not one_object:
            found = [f.rel for f in files if f.rel.lower().endswith(".onnx") and "/" not in f.rel]
            if len(found) != 1:
                what = "no .onnx file" if not found else f"{len(found)} .onnx files"
                raise UserError(f"Model folder '{uri}' holds {what}", "Pass the .onnx object itself")
            uri = join_uri(uri, found[0])
    return download_cached(uri, cache_dir("models"))


def exported_checkpoint(path: Path) -> Path:
    """A .pt checkpoint (kubedistill's or an Ultralytics YOLO26 one) -> its end-to-end ONNX export, made once into
    the model cache (keyed by the file's content). Needs torch (the `train` extra); the serve image has none."""
    try:
        from kubedistill.model.export import export_onnx
    except ModuleNotFoundError:
        raise UserError(
            f"Model '{path}' is a torch checkpoint, and this install has no torch to export it",
            f"Export it where the train extra is installed (`kubedistill export --weights {path}`) and serve the .onnx",
        ) from None
    out = cache_dir("models") / "exported" / file_sha256(path)[:16] / f"{path.stem}.onnx"
    if not out.is_file():
        export_onnx(path, out)
    return out
