"""Storage URIs: local path or `s3://bucket/key`, joining, and keys that may not leave their prefix."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from kubedistill.core.errors import UserError


def is_remote(uri: str | os.PathLike) -> bool:
    """True for `s3://` URIs."""
    return str(uri).strip().lower().startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b"); the key may be "" (the whole bucket)."""
    text = str(uri).strip()
    if not is_remote(text):
        raise UserError(f"'{text}' is not an s3:// URI", "Write it as s3://bucket/key")
    rest = text[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UserError(f"'{text}' names no bucket", "Write it as s3://bucket/key")
    return bucket, key


def join_uri(base: str, rel: str) -> str:
    """`s3://b/p` + `x/y` -> `s3://b/p/x/y` (local paths join the same way)."""
    return base.rstrip("/") + "/" + rel.lstrip("/")


def _safe_rel(rel: str, uri: str) -> PurePosixPath:
    """A key below a prefix as a relative path that cannot leave the destination folder."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise UserError(
            f"Object key '{rel}' under '{uri}' would be written outside the destination folder",
            "Rename the object (no '..', no leading '/' and no '\\' in keys)",
        )
    return p
