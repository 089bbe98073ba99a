"""Reading the MLflow model registry: parse model URIs, find a version or the champion, fetch a registered model's files.

Registering and promoting sit above serving and evaluation, in `kubedistill.release`. A registered version is an
MLflow pyfunc (see `serve.pyfunc`) holding `model.onnx` and the `.pt` checkpoint; new versions get the alias
`challenger`; `kubedistill promote` moves `champion`.
Model URIs: `models:/NAME/VERSION` (pinned), `models:/NAME@ALIAS`, or `models:/<model_id>` (an MLflow 3
LoggedModel, `m-` and hex digits: immutable, so pinned too).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from kubedistill.core.cache import cache_dir
from kubedistill.core.errors import UserError
from kubedistill.track.settings import client, resolve_uri, using

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous-champion"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))/?$")
_MODEL_ID_URI = re.compile(r"^models:/(?P<id>m-[0-9a-f]{8,64})/?$")


def logged_model_id(uri: str) -> str | None:
    """The model id of a `models:/m-...` URI (an MLflow LoggedModel), else None."""
    m = _MODEL_ID_URI.match(str(uri).strip())
    return m["id"] if m else None


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME/VERSION or models:/NAME@ALIAS -> (name, version, alias)."""
    m = _MODEL_URI.match(uri.strip())
    if not m:
        raise UserError(
            f"'{uri}' is not a registered-model URI",
            "Write models:/NAME/VERSION, models:/NAME@ALIAS or models:/<model_id> (m-...)",
        )
    return m["name"], m["version"], m["alias"]


def mlflow_error(e: Exception, what: str, uri: str) -> UserError:
    """An MLflow failure -> a one-line UserError (missing model/version, auth, unreachable server)."""
    code = getattr(e, "error_code", "")
    text = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300]
    if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in text.lower():
        return UserError(
            f"{what}: not found in the registry at {uri} ({text})", "Check the model name, version or alias"
        )
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or "401" in text or "403" in text:
        return UserError(
            f"{what}: the MLflow server at {uri} refused the credentials ({text})",
            "Set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD",
        )
    return UserError(
        f"{what}: MLflow at {uri} failed ({e.__class__.__name__}: {text})",
        "Check MLFLOW_TRACKING_URI and that the server is up",
    )


def existing_uri(tracking_uri: str = "") -> str:
    """The tracking URI for reading the registry; a local sqlite store that does not exist is an error
    (rather than an empty registry created on the spot)."""
    uri = resolve_uri(tracking_uri)[0]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise UserError(
            f"No MLflow registry at {uri}", "Set MLFLOW_TRACKING_URI (or --tracking-uri) to your MLflow server"
        )
    return uri


def version_info(name: str, version: str, *, tracking_uri: str = "") -> dict:
    uri = existing_uri(tracking_uri)
    try:
        mv = client(uri).get_model_version(name, str(version))
    except Exception as e:
        raise mlflow_error(e, f"models:/{name}/{version}", uri) from None
    return {
        "name": name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "tags": dict(mv.tags),
        "aliases": list(mv.aliases),
    }


def resolve_version(uri_or_name: str, *, tracking_uri: str = "") -> tuple[str, str]:
    """A models:/ URI -> (name, pinned version), resolving an alias through the registry."""
    name, version, alias = parse_model_uri(uri_or_name)
    if version is not None:
        if version == "latest":
            raise UserError(f"'{uri_or_name}' is not pinned", "Name a version: models:/NAME/VERSION")
        return name, version
    uri = existing_uri(tracking_uri)
    try:
        mv = client(uri).get_model_version_by_alias(name, alias)
    except Exception as e:
        raise mlflow_error(e, uri_or_name, uri) from None
    return name, str(mv.version)


def champion(name: str, *, tracking_uri: str = "") -> dict | None:
    """The version holding the `champion` alias ({"version", "tags", "run_id", ...}), or None when there is none."""
    uri = existing_uri(tracking_uri)
    cl = client(uri)
    try:
        mv = cl.get_model_version_by_alias(name, CHAMPION)
    except Exception as e:
        if getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise mlflow_error(e, f"models:/{name}@{CHAMPION}", uri) from None
    return version_info(name, str(mv.version), tracking_uri=uri)


def fetch_model(uri: str, dest: str | Path | None = None, *, kind: str = "pt", tracking_uri: str = "") -> Path:
    """Download a registered model (models:/NAME/VERSION or @ALIAS) or a LoggedModel (models:/<model_id>) into
    `dest` (default: the model cache) and return its `.pt` or `.onnx` file."""
    if kind not in ("pt", "onnx"):
        raise ValueError(f"kind must be 'pt' or 'onnx', not {kind!r}")
    model_id = logged_model_id(uri)
    if model_id:
        source, folder = f"models:/{model_id}", model_id
    else:
        name, version = resolve_version(uri, tracking_uri=tracking_uri)
        source, folder = f"models:/{name}/{version}", f"{name}-v{version}"
    turi = existing_uri(tracking_uri)
    # keyed by server too: the same name and version on two tracking servers are different models
    dest = (
        Path(dest if dest is not None else cache_dir("models"))
        / hashlib.sha256(turi.encode()).hexdigest()[:12]
        / folder
    )
    found = sorted(dest.rglob(f"*.{kind}")) if dest.exists() else []
    if not found:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
        try:
            with using(turi) as mlflow:
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp))
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise mlflow_error(e, f"downloading {source}", turi) from None
        if dest.exists():  # a concurrent fetch finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(dest)  # whole folder or nothing: an interrupted download never looks complete
        found = sorted(dest.rglob(f"*.{kind}"))
    if not found:
        raise UserError(f"{source} holds no .{kind} file", "Register it with `kubedistill register`")
    return found[0]
