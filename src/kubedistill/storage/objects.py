"""S3 objects: checksums (sha256 metadata, MD5 ETag), head/get/put/list with verification, transfer progress."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubedistill.core.atomic import atomic_path
from kubedistill.core.errors import UserError
from kubedistill.core.log import Progress
from kubedistill.storage.s3 import _MB, Settings, _code, _Mismatch, _retry, endpoint_url

SHA256_META = "sha256"  # user metadata key (x-amz-meta-sha256) written on upload, checked on download


_HASH_BLOCK = 4 * _MB


@dataclass
class ObjectInfo:
    """One file of a listing: its path relative to the listed prefix/folder, size, and ETag (S3 only)."""

    rel: str
    size: int
    etag: str = ""


@dataclass
class _Remote:
    """What the store says an object holds (from a HEAD or GET response)."""

    size: int
    etag: str = ""
    sha256: str = ""
    md5_etag: bool = False  # the ETag is the MD5 of the content (single-part upload, no SSE-KMS/SSE-C)

    @classmethod
    def from_response(cls, r: dict) -> _Remote:
        etag = str(r.get("ETag", "")).strip('"')
        meta = {k.lower(): v for k, v in (r.get("Metadata") or {}).items()}
        sse = str(r.get("ServerSideEncryption", "")).lower()
        plain = len(etag) == 32 and "-" not in etag and sse != "aws:kms" and not r.get("SSECustomerAlgorithm")
        return cls(
            size=int(r.get("ContentLength", 0)),
            etag=etag,
            sha256=str(meta.get(SHA256_META, "")).lower(),
            md5_etag=plain,
        )


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, md5) hex digests of a file, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _verify(path: Path, remote: _Remote) -> None:
    """Raise _Mismatch when the file is not what the store described."""
    size = path.stat().st_size
    if size != remote.size:
        raise _Mismatch(f"{size} bytes, expected {remote.size}")
    if remote.sha256 or remote.md5_etag:
        sha, md5 = file_hashes(path)
        if remote.sha256 and sha != remote.sha256:
            raise _Mismatch(f"sha256 {sha[:12]}..., expected {remote.sha256[:12]}...")
        if remote.md5_etag and md5 != remote.etag:
            raise _Mismatch(f"MD5 {md5}, expected the ETag {remote.etag}")


class _Progress:
    """Thread-safe wrapper of the project's progress output (a bar on a TTY, log lines otherwise)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):

        self._p = Progress(total, desc, enabled=enabled, interval_s=15.0)
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self._p.update(n)

    def close(self) -> None:
        self._p.close()


def _head(client, bucket: str, key: str) -> dict | None:
    """HEAD an object; None when it does not exist (other errors raise)."""
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        code, status = _code(e)
        if code in ("404", "NoSuchKey", "NotFound") or status == 404:
            return None
        raise


def _is_folder(client, bucket: str, key: str) -> bool:
    prefix = key.rstrip("/") + "/" if key else ""
    r = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    return bool(r.get("KeyCount", len(r.get("Contents", []))))


def _missing(client, bucket: str, uri: str) -> UserError:
    """The error for a URI that names nothing: say whether the bucket itself is missing."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code, status = _code(e)
        if code in ("404", "NoSuchBucket") or status == 404:
            return UserError(
                f"Bucket '{bucket}' does not exist at {endpoint_url() or 'the default AWS endpoint'} ('{uri}')",
                "Check the bucket name and AWS_ENDPOINT_URL",
            )
    return UserError(f"'{uri}' does not exist", "Check the key (list the bucket to see what is there)")


def _get_object(
    client,
    bucket: str,
    key: str,
    dest: Path,
    settings: Settings,
    known: _Remote | None = None,
    progress: Callable[[int], None] | None = None,
) -> _Remote:
    """One object -> dest (atomic), verified. Small objects: one GET; large ones: a concurrent multipart download."""

    def once() -> _Remote:
        remote = known
        if remote is None or remote.size >= settings.multipart_mb * _MB:
            head = client.head_object(Bucket=bucket, Key=key)
            remote = _Remote.from_response(head)
        with atomic_path(dest) as tmp:
            if remote.size >= settings.multipart_mb * _MB:
                client.download_file(bucket, key, str(tmp), Config=settings.transfer_config(), Callback=progress)
            else:
                r = client.get_object(Bucket=bucket, Key=key)
                remote = _Remote.from_response(r)
                with open(tmp, "wb") as fh:
                    shutil.copyfileobj(r["Body"], fh, _MB)
                if progress:
                    progress(remote.size)
            _verify(tmp, remote)
        return remote

    return _retry(once, f"s3://{bucket}/{key}", "download", settings)


def _put_object(
    client,
    src: Path,
    bucket: str,
    key: str,
    settings: Settings,
    verify: bool = True,
    progress: Callable[[int], None] | None = None,
) -> None:
    """One file -> an object, with its sha256 in the object's metadata; verified by a HEAD when `verify`."""
    sha, md5 = file_hashes(src)
    size = src.stat().st_size

    def once() -> None:
        if size < settings.multipart_mb * _MB:  # one PUT; upload_file would start a transfer manager per file
            with open(src, "rb") as fh:
                client.put_object(Bucket=bucket, Key=key, Body=fh, Metadata={SHA256_META: sha})
        else:
            client.upload_file(
                str(src),
                bucket,
                key,
                ExtraArgs={"Metadata": {SHA256_META: sha}},
                Config=settings.transfer_config(),
                Callback=progress,
            )
        if verify:
            got = _Remote.from_response(client.head_object(Bucket=bucket, Key=key))
            if got.size != size or (got.sha256 and got.sha256 != sha) or (got.md5_etag and got.etag != md5):
                raise _Mismatch(f"the store holds {got.size} bytes (ETag {got.etag}) for {size} bytes sent")

    _retry(once, f"s3://{bucket}/{key}", "upload", settings)


def _list(client, bucket: str, prefix: str) -> list[tuple[str, int, str]]:
    """(key, size, etag) of every object under prefix."""
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out.append((o["Key"], int(o["Size"]), str(o.get("ETag", "")).strip('"')))
    return out
