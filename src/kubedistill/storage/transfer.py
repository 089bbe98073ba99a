"""The interface: download, upload, exists, list_files, head, download_cached, for local paths and s3:// URIs."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath

from kubedistill.core.atomic import atomic_path
from kubedistill.core.errors import UserError
from kubedistill.storage.locks import file_lock
from kubedistill.storage.objects import (
    ObjectInfo,
    _get_object,
    _head,
    _is_folder,
    _list,
    _missing,
    _Progress,
    _put_object,
    _Remote,
)
from kubedistill.storage.s3 import _MB, LOGGER, Settings, StorageError, _code, _errors, s3_client
from kubedistill.storage.sync import _download_prefix
from kubedistill.storage.uris import is_remote, split_s3


def download(uri: str, dest: Path) -> Path:
    """An object -> a file at dest; a prefix (ending '/', or a key that is a "folder") -> a folder tree at dest.

    Local paths are copied. dest may be an existing folder for an object (the file lands inside it under
    its own name). Every file is written atomically and verified (size, and sha256 metadata or MD5 ETag).
    Returns the path written.
    """
    dest = Path(dest).expanduser()
    text = str(uri).strip()
    if not is_remote(text):
        return _copy_local(Path(text).expanduser(), dest)
    bucket, key = split_s3(text)
    settings = Settings.from_env()
    client = s3_client()
    with _errors(text):
        if key == "" or key.endswith("/"):
            return _download_prefix(client, bucket, key, dest, text, settings)
        head = _head(client, bucket, key)
        if head is None:
            if _is_folder(client, bucket, key):
                return _download_prefix(client, bucket, key + "/", dest, text.rstrip("/") + "/", settings)
            raise _missing(client, bucket, text)
        if dest.is_dir():
            dest = dest / PurePosixPath(key).name
        remote = _Remote.from_response(head)
        big = remote.size >= settings.multipart_mb * _MB
        progress = _Progress(remote.size, f"download {text}", enabled=big) if big else None
        try:
            _get_object(client, bucket, key, dest, settings, remote, progress=progress)
        finally:
            if progress:
                progress.close()
    return dest


def upload(src: Path, uri: str) -> str:
    """A file or a folder tree -> an s3:// URI or a local path; returns the URI written.

    A file goes to the key `uri` (or under it, keeping its name, when `uri` ends with '/'); a folder's
    files go under the prefix `uri`, and the returned URI then ends with '/'. Local targets are written
    atomically. Uploaded objects carry their sha256 as metadata and are checked after the upload.
    """
    src = Path(src).expanduser()
    text = str(uri).strip()
    if not src.exists():
        raise UserError(f"Cannot upload '{src}': it does not exist", "Check the path")
    if not is_remote(text):
        target = Path(text).expanduser()
        if src.is_file() and (text.endswith("/") or target.is_dir()):
            target = target / src.name
        _copy_local(src, target)
        return str(target)
    bucket, key = split_s3(text)
    settings = Settings.from_env()
    client = s3_client()
    with _errors(text):
        if src.is_file():
            if key == "" or key.endswith("/"):
                key += src.name
            big = src.stat().st_size >= settings.multipart_mb * _MB
            progress = _Progress(src.stat().st_size, f"upload {src.name}", enabled=True) if big else None
            try:
                _put_object(client, src, bucket, key, settings, progress=progress)
            finally:
                if progress:
                    progress.close()
            return f"s3://{bucket}/{key}"
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        files = sorted(p for p in src.rglob("*") if p.is_file())
        progress = _Progress(len(files), f"upload {src}", enabled=len(files) > 1)
        sizes = {}
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(settings.concurrency, len(files)))) as pool:
                futures = []
                for p in files:
                    k = prefix + p.relative_to(src).as_posix()
                    sizes[k] = p.stat().st_size
                    futures.append(pool.submit(_put_object, client, p, bucket, k, settings, False))
                for fut in as_completed(futures):
                    fut.result()
                    progress(1)
        finally:
            progress.close()
        got = {k: s for k, s, _ in _list(client, bucket, prefix)}  # one listing checks every size
        wrong = [k for k, s in sizes.items() if got.get(k) != s]
        if wrong:
            raise StorageError(
                f"{len(wrong)} uploaded objects are missing or of the wrong size under s3://{bucket}/{prefix} "
                f"(first: {wrong[0]})",
                "Retry the upload; check the store's health",
            )
        LOGGER.info(f"uploaded {len(files)} files ({sum(sizes.values()) / _MB:.1f} MB) -> s3://{bucket}/{prefix}")
        return f"s3://{bucket}/{prefix}"


def exists(uri: str) -> bool:
    """Whether a local path, an S3 object, or an S3 "folder" (a prefix holding objects) exists."""
    text = str(uri).strip()
    if not is_remote(text):
        return Path(text).expanduser().exists()
    bucket, key = split_s3(text)
    client = s3_client()
    from botocore.exceptions import ClientError

    with _errors(text):
        try:
            if key == "":
                client.head_bucket(Bucket=bucket)
                return True
            if not key.endswith("/") and _head(client, bucket, key) is not None:
                return True
            return _is_folder(client, bucket, key)
        except ClientError as e:
            code, status = _code(e)
            if code in ("NoSuchBucket", "404") or status == 404:
                return False
            raise


def list_files(uri: str) -> list[ObjectInfo]:
    """Every file under a local folder or an S3 prefix, with paths relative to it (a file or an object: itself)."""
    text = str(uri).strip()
    if not is_remote(text):
        p = Path(text).expanduser()
        if p.is_file():
            return [ObjectInfo(p.name, p.stat().st_size)]
        if not p.is_dir():
            raise UserError(f"'{p}' does not exist", "Check the path")
        return [ObjectInfo(f.relative_to(p).as_posix(), f.stat().st_size) for f in sorted(p.rglob("*")) if f.is_file()]
    bucket, key = split_s3(text)
    client = s3_client()
    with _errors(text):
        if key and not key.endswith("/"):
            head = _head(client, bucket, key)
            if head is not None:
                r = _Remote.from_response(head)
                return [ObjectInfo(PurePosixPath(key).name, r.size, r.etag)]
            key += "/"
        out = [ObjectInfo(k[len(key) :], s, e) for k, s, e in _list(client, bucket, key) if not k.endswith("/")]
        if not out and not _is_folder(client, bucket, key):
            raise _missing(client, bucket, text)
        return out


def head(uri: str) -> ObjectInfo:
    """Size and ETag of one S3 object (UserError when it does not exist)."""
    bucket, key = split_s3(uri)
    client = s3_client()
    with _errors(uri):
        h = _head(client, bucket, key) if key and not key.endswith("/") else None
        if h is None:
            raise _missing(client, bucket, uri)
        r = _Remote.from_response(h)
        return ObjectInfo(PurePosixPath(key).name, r.size, r.etag)


def download_cached(uri: str, cache: Path) -> Path:
    """An S3 object -> a local copy under `cache`, keyed by the URI and the object's ETag.

    The same object is fetched once; a changed object (new ETag) is fetched again and older copies of
    that URI are removed.
    """
    info = head(uri)
    slot = cache / hashlib.sha256(uri.encode()).hexdigest()[:16]
    version = "".join(c if c.isalnum() else "_" for c in info.etag)[:80] or "noetag"
    target = slot / version / info.rel
    with file_lock(slot):
        if not (target.is_file() and target.stat().st_size == info.size):
            bucket, key = split_s3(uri)
            settings = Settings.from_env()
            with _errors(uri):
                got = _get_object(s3_client(), bucket, key, target, settings)
            if got.etag != info.etag:  # changed between the HEAD and the transfer: file it under what arrived
                real = slot / ("".join(c if c.isalnum() else "_" for c in got.etag)[:80] or "noetag") / info.rel
                real.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, real)
                shutil.rmtree(target.parent, ignore_errors=True)
                target = real
            LOGGER.info(f"fetched {uri} ({info.size / _MB:.1f} MB) -> {target}")
        for old in slot.iterdir():  # older versions of this URI
            if old.is_dir() and old != target.parent:
                shutil.rmtree(old, ignore_errors=True)
    return target


def _copy_file(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _copy_local(src: Path, dest: Path) -> Path:
    if not src.exists():
        raise UserError(f"'{src}' does not exist", "Check the path")
    try:
        if src.is_file():
            if dest.is_dir():
                dest = dest / src.name
            if dest.exists() and dest.resolve() == src.resolve():
                return dest
            _copy_file(src, dest)
            return dest
        if dest.exists() and dest.resolve() == src.resolve():
            return dest
        for f in sorted(src.rglob("*")):
            if f.is_file():
                _copy_file(f, dest / f.relative_to(src))
            elif f.is_dir():
                (dest / f.relative_to(src)).mkdir(parents=True, exist_ok=True)
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageError(
                f"No space left on the device copying '{src}' to '{dest}'", "Free disk space or choose another folder"
            ) from e
        raise UserError(
            f"Cannot copy '{src}' to '{dest}' ({e.strerror or e})", "Check the paths and permissions"
        ) from e
    return dest
