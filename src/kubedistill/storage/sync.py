"""A prefix downloaded into a folder, reusing unchanged files (by ETag and size, recorded in the manifest)."""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from kubedistill.core.atomic import atomic_write_text
from kubedistill.core.errors import UserError
from kubedistill.storage.objects import _get_object, _list, _missing, _Progress, _Remote
from kubedistill.storage.s3 import _MB, LOGGER, Settings
from kubedistill.storage.uris import _safe_rel

MANIFEST = ".kubedistill-fetch.json"


def _read_manifest(folder: Path, source: str) -> dict[str, dict]:
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(m, dict) or m.get("source") != source or not isinstance(m.get("objects"), dict):
        return {}
    return m["objects"]


def _write_manifest(folder: Path, source: str, objects: dict[str, dict]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps({"source": source, "objects": objects}, indent=1, sort_keys=True))


def _unchanged(local: Path, rec: dict | None, size: int, etag: str) -> bool:
    if not rec or rec.get("etag") != etag or rec.get("size") != size:
        return False
    try:
        st = local.stat()
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == rec.get("mtime_ns")


def _download_prefix(client, bucket: str, prefix: str, dest: Path, uri: str, settings: Settings) -> Path:
    listing = [(k, s, e) for k, s, e in _list(client, bucket, prefix)]
    files = [(k[len(prefix) :], s, e) for k, s, e in listing if k[len(prefix) :] and not k.endswith("/")]
    if not listing:
        raise _missing(client, bucket, uri)
    dest.mkdir(parents=True, exist_ok=True)
    for k, _, _ in listing:
        if k.endswith("/") and k[len(prefix) :]:
            (dest / _safe_rel(k[len(prefix) :], uri)).mkdir(parents=True, exist_ok=True)
    old = _read_manifest(dest, uri)
    new: dict[str, dict] = {}
    todo = []
    for rel, size, etag in files:
        if rel == MANIFEST:
            LOGGER.warning(f"{uri}: skipping the object '{rel}' (the name of kubedistill's own record)")
            continue
        local = dest / _safe_rel(rel, uri)
        if _unchanged(local, old.get(rel), size, etag):
            new[rel] = old[rel]
        else:
            todo.append((rel, size, etag))
    listed = {rel for rel, _, _ in files}
    for rel in set(old) - listed:  # gone from the prefix: remove what an earlier download wrote
        with contextlib.suppress(OSError, UserError):
            (dest / _safe_rel(rel, uri)).unlink(missing_ok=True)
    reused = len(new)
    nbytes = sum(s for _, s, _ in todo)
    progress = _Progress(len(todo), f"download {uri}", enabled=len(todo) > 1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(settings.concurrency, len(todo)))) as pool:
            futures = {
                pool.submit(_get_object, client, bucket, prefix + rel, dest / rel, settings, _Remote(size, etag)): rel
                for rel, size, etag in todo
            }
            for fut in as_completed(futures):
                rel = futures[fut]
                remote = fut.result()
                new[rel] = {"etag": remote.etag, "size": remote.size, "mtime_ns": (dest / rel).stat().st_mtime_ns}
                progress(1)
    finally:
        _write_manifest(dest, uri, new)  # what arrived is kept and reused by the next attempt
        progress.close()
    LOGGER.info(f"{uri}: {len(todo)} files ({nbytes / _MB:.1f} MB) downloaded, {reused} unchanged reused -> {dest}")
    return dest
