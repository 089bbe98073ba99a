"""Local paths and `s3://` URIs behind one small interface: download, upload, exists, list_files.

S3 goes through boto3 (the `track` extra, imported on first use, never at `import kubedistill.storage`).
The endpoint of an S3-compatible store (MinIO, SeaweedFS, Ceph) comes from `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`; credentials from the usual AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
`AWS_PROFILE`, a pod's web identity, ...).

What a transfer guarantees:
- Local files are written atomically (a reader sees the old file or the complete new one).
- Every object that arrives is checked: its size always; its content against the `sha256` metadata this
  module writes on upload, else against the ETag when the store gives a plain MD5 one.
- Transient failures (throttling, 5xx, dropped connections) are retried by botocore (`standard` retry
  mode with backoff), then the whole file transfer is retried with exponential backoff; a mismatch is
  retried the same way. What still fails raises `StorageError` (one line: cause and fix).
- Large files go in concurrent multipart transfers (boto3 `TransferConfig`); folders in parallel.
- A prefix downloaded again into the same folder reuses the files whose ETag and size are unchanged
  (recorded in `.kubedistill-fetch.json` there); files that vanished from the prefix are removed.
- User errors (no credentials, refused credentials, access denied, no such bucket or key, an endpoint
  that cannot be reached or parsed) raise `UserError` naming the URI and what to do.

Tuning, all optional environment variables: KUBEDISTILL_S3_MULTIPART_MB (8: files from this size go in
parts), KUBEDISTILL_S3_CHUNK_MB (8: part size), KUBEDISTILL_S3_CONCURRENCY (8: parallel parts and files),
KUBEDISTILL_S3_MAX_ATTEMPTS (5: botocore attempts per request), KUBEDISTILL_S3_RETRY_MODE (standard or
adaptive), KUBEDISTILL_S3_TRANSFER_RETRIES (3: attempts per file transfer), KUBEDISTILL_S3_BACKOFF_S (1.0:
first pause between those). Caches live under `kubedistill.core.cache.cache_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from kubedistill.core.atomic import atomic_path, atomic_write_text
from kubedistill.core.errors import UserError
from kubedistill.core.log import Progress

LOGGER = logging.getLogger("kubedistill.storage")
MANIFEST = ".kubedistill-fetch.json"
SHA256_META = "sha256"  # user metadata key (x-amz-meta-sha256) written on upload, checked on download
_MB = 1024 * 1024
_HASH_BLOCK = 4 * _MB


class StorageError(UserError):
    """A transfer that kept failing after its retries (store down, throttling, damaged data)."""


class _Mismatch(Exception):
    """Downloaded bytes differ from what the store says the object holds (retried)."""


# ----------------------------------------------------------------------------- URIs


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
        raise UserError(f"Object key '{rel}' under '{uri}' would be written outside the destination folder",
                        "Rename the object (no '..', no leading '/' and no '\\' in keys)")
    return p


# ----------------------------------------------------------------------------- settings and client


def _env_number(name: str, default: float, kind: type = int, low: float = 1) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < low:
        raise UserError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number >= {low}", f"Unset {name} or fix it")
    return value


@dataclass(frozen=True)
class Settings:
    """Transfer settings (environment variables, see the module docstring)."""

    multipart_mb: int = 8
    chunk_mb: int = 8
    concurrency: int = 8
    max_attempts: int = 5
    retry_mode: str = "standard"
    transfer_retries: int = 3
    backoff_s: float = 1.0

    @classmethod
    def from_env(cls) -> "Settings":
        mode = os.environ.get("KUBEDISTILL_S3_RETRY_MODE", "").strip().lower() or "standard"
        if mode not in ("standard", "adaptive", "legacy"):
            raise UserError(f"KUBEDISTILL_S3_RETRY_MODE={mode!r} is unknown", "Use standard or adaptive")
        return cls(
            multipart_mb=_env_number("KUBEDISTILL_S3_MULTIPART_MB", 8),
            chunk_mb=_env_number("KUBEDISTILL_S3_CHUNK_MB", 8, low=5),
            concurrency=_env_number("KUBEDISTILL_S3_CONCURRENCY", 8),
            max_attempts=_env_number("KUBEDISTILL_S3_MAX_ATTEMPTS", 5),
            retry_mode=mode,
            transfer_retries=_env_number("KUBEDISTILL_S3_TRANSFER_RETRIES", 3),
            backoff_s=_env_number("KUBEDISTILL_S3_BACKOFF_S", 1.0, kind=float, low=0),
        )

    def transfer_config(self):
        """The boto3 TransferConfig for these settings (multipart threshold, part size, threads)."""
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.multipart_mb * _MB, multipart_chunksize=self.chunk_mb * _MB,
                              max_concurrency=self.concurrency, use_threads=True)


def _boto3():
    try:
        import boto3
    except ImportError:
        raise UserError("s3:// URIs need boto3, which is not installed", "pip install 'kubedistill[track]'") from None
    return boto3


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (None: AWS itself, or what ~/.aws/config says)."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def s3_client():
    """A boto3 S3 client for the current environment (cached; clients are thread-safe)."""
    s = Settings.from_env()
    env = tuple(os.environ.get(k, "") for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                                                 "AWS_DEFAULT_REGION", "AWS_REGION"))
    return _client(endpoint_url(), s.max_attempts, s.retry_mode, s.concurrency, env)


@lru_cache(maxsize=8)
def _client(endpoint: str | None, max_attempts: int, mode: str, concurrency: int, _env: tuple):
    boto3 = _boto3()
    from botocore.config import Config

    cfg = Config(retries={"mode": mode, "total_max_attempts": max_attempts}, connect_timeout=10, read_timeout=60,
                 max_pool_connections=max(10, 4 * concurrency))
    try:
        return boto3.session.Session().client("s3", endpoint_url=endpoint, config=cfg)
    except ValueError as e:  # botocore: "Invalid endpoint: ..."
        raise UserError(f"S3 endpoint '{endpoint}' is not a valid URL ({e})", "Set AWS_ENDPOINT_URL like http://minio:9000") from None


# ----------------------------------------------------------------------------- errors


_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
                     "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException", "InternalError",
                    "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests", "BandwidthLimitExceeded", "PreconditionFailed",
                    "500", "502", "503", "504", "429", "412"}


def _chain(e: BaseException) -> Iterator[BaseException]:
    """e and the exceptions it wraps (boto3 wraps ClientError in S3UploadFailedError, s3transfer in RetriesExceededError)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [getattr(x, "last_exception", None), x.__cause__, x.__context__]


def _code(e: BaseException) -> tuple[str, int]:
    resp = getattr(e, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_transient(e: BaseException) -> bool:
    """Worth retrying the whole transfer: throttling, 5xx, a dropped or timed-out stream, a mismatch."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover
        return False
    stream_errors: tuple = (bx.ConnectionClosedError, bx.ReadTimeoutError, bx.IncompleteReadError, bx.ResponseStreamingError,
                            bx.FlexibleChecksumError)
    with contextlib.suppress(ImportError):
        from urllib3.exceptions import ProtocolError

        stream_errors += (ProtocolError,)
    for x in _chain(e):
        if isinstance(x, _Mismatch) or isinstance(x, stream_errors):
            return True
        if isinstance(x, (bx.NoCredentialsError, bx.EndpointConnectionError, bx.ConnectTimeoutError, UserError)):
            return False  # botocore already retried the connection; a wrong endpoint does not heal
        if isinstance(x, bx.ClientError):
            code, status = _code(x)
            return code in _TRANSIENT_CODES or status >= 500 or status == 429
    return False


def _translate(e: BaseException, uri: str, attempts: int = 1) -> UserError | None:
    """A boto/OS exception -> UserError/StorageError with cause and fix; None when it is not one we know."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover
        bx = None
    endpoint = endpoint_url() or "the default AWS endpoint"
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    for x in _chain(e):
        if isinstance(x, UserError):
            return x
        if isinstance(x, _Mismatch) or (bx is not None and isinstance(x, bx.FlexibleChecksumError)):
            return StorageError(f"'{uri}' arrived damaged ({x}){tried}", "Check the store's health and the object; then retry")
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return StorageError(f"No space left on the device while transferring '{uri}'", "Free disk space or choose another folder")
        if bx is None:
            continue
        if isinstance(x, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return UserError(f"No S3 credentials to access '{uri}'", "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if isinstance(x, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            return StorageError(f"Cannot reach the S3 endpoint {endpoint} for '{uri}' ({type(x).__name__})",
                                "Check AWS_ENDPOINT_URL and that the store is up")
        if isinstance(x, bx.ParamValidationError):
            return UserError(f"'{uri}' is not a valid S3 location ({str(x).splitlines()[-1].strip()})", "Check the bucket name and key")
        if isinstance(x, bx.ClientError):
            code, status = _code(x)
            if code in _CREDENTIAL_CODES:
                return UserError(f"The S3 store at {endpoint} refused the credentials for '{uri}' ({code})",
                                 "Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
                return UserError(f"Access denied to '{uri}' ({code or status})",
                                 "Check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and that they may use this bucket")
            if code == "NoSuchBucket":
                return UserError(f"Bucket '{split_s3(uri)[0]}' does not exist at {endpoint} ('{uri}')",
                                 "Check the bucket name and AWS_ENDPOINT_URL")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return UserError(f"'{uri}' does not exist", "Check the key (list the bucket to see what is there)")
            if code in ("InvalidBucketName", "InvalidArgument", "KeyTooLongError"):
                return UserError(f"'{uri}' is not a valid S3 location ({code})", "Check the bucket name and key")
            if _is_transient(x):
                return StorageError(f"The S3 store kept failing for '{uri}' ({code or status}){tried}",
                                    "Try again later; check the store's health")
            msg = x.response.get("Error", {}).get("Message", "") if hasattr(x, "response") else ""
            return StorageError(f"S3 error for '{uri}': {code or status} {msg}".strip(), "Check the store and the URI")
        if _is_transient(x):
            return StorageError(f"The connection to {endpoint} kept dropping for '{uri}' ({type(x).__name__}){tried}",
                                "Try again later; check the network and the store")
    return None


@contextlib.contextmanager
def _errors(uri: str, attempts: int = 1) -> Iterator[None]:
    """Turn boto and disk errors inside the block into one-line UserErrors naming `uri`."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        err = _translate(e, uri, attempts)
        if err is None:
            raise
        raise err from e


def _retry(fn: Callable[[], Any], uri: str, what: str, settings: Settings) -> Any:
    """Run fn; retry the whole of it with exponential backoff while it fails transiently."""
    attempts = settings.transfer_retries
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if i == attempts - 1 or not _is_transient(e):
                err = _translate(e, uri, i + 1)
                if err is None:
                    raise
                raise err from e
            delay = settings.backoff_s * (2**i) * random.uniform(0.5, 1.0)
            LOGGER.warning(f"{what} {uri}: {type(e).__name__}: {str(e)[:160]}; retry {i + 1}/{attempts - 1} in {delay:.1f}s")
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------- checksums


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
    def from_response(cls, r: dict) -> "_Remote":
        etag = str(r.get("ETag", "")).strip('"')
        meta = {k.lower(): v for k, v in (r.get("Metadata") or {}).items()}
        sse = str(r.get("ServerSideEncryption", "")).lower()
        plain = len(etag) == 32 and "-" not in etag and sse != "aws:kms" and not r.get("SSECustomerAlgorithm")
        return cls(size=int(r.get("ContentLength", 0)), etag=etag, sha256=str(meta.get(SHA256_META, "")).lower(), md5_etag=plain)


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


# ----------------------------------------------------------------------------- progress


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


# ----------------------------------------------------------------------------- S3 objects


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
            return UserError(f"Bucket '{bucket}' does not exist at {endpoint_url() or 'the default AWS endpoint'} ('{uri}')",
                             "Check the bucket name and AWS_ENDPOINT_URL")
    return UserError(f"'{uri}' does not exist", "Check the key (list the bucket to see what is there)")


def _get_object(client, bucket: str, key: str, dest: Path, settings: Settings, known: _Remote | None = None,
                progress: Callable[[int], None] | None = None) -> _Remote:
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


def _put_object(client, src: Path, bucket: str, key: str, settings: Settings, verify: bool = True,
                progress: Callable[[int], None] | None = None) -> None:
    """One file -> an object, with its sha256 in the object's metadata; verified by a HEAD when `verify`."""
    sha, md5 = file_hashes(src)
    size = src.stat().st_size

    def once() -> None:
        if size < settings.multipart_mb * _MB:  # one PUT; upload_file would start a transfer manager per file
            with open(src, "rb") as fh:
                client.put_object(Bucket=bucket, Key=key, Body=fh, Metadata={SHA256_META: sha})
        else:
            client.upload_file(str(src), bucket, key, ExtraArgs={"Metadata": {SHA256_META: sha}}, Config=settings.transfer_config(),
                               Callback=progress)
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


# ----------------------------------------------------------------------------- manifest (reuse on re-download)


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
    files = [(k[len(prefix):], s, e) for k, s, e in listing if k[len(prefix):] and not k.endswith("/")]
    if not listing:
        raise _missing(client, bucket, uri)
    dest.mkdir(parents=True, exist_ok=True)
    for k, _, _ in listing:
        if k.endswith("/") and k[len(prefix):]:
            (dest / _safe_rel(k[len(prefix):], uri)).mkdir(parents=True, exist_ok=True)
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
            futures = {pool.submit(_get_object, client, bucket, prefix + rel, dest / rel, settings, _Remote(size, etag)): rel
                       for rel, size, etag in todo}
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


# ----------------------------------------------------------------------------- the interface


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
            raise StorageError(f"{len(wrong)} uploaded objects are missing or of the wrong size under s3://{bucket}/{prefix} "
                               f"(first: {wrong[0]})", "Retry the upload; check the store's health")
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
        out = [ObjectInfo(k[len(key):], s, e) for k, s, e in _list(client, bucket, key) if not k.endswith("/")]
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


# ----------------------------------------------------------------------------- local


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
            raise StorageError(f"No space left on the device copying '{src}' to '{dest}'", "Free disk space or choose another folder") from e
        raise UserError(f"Cannot copy '{src}' to '{dest}' ({e.strerror or e})", "Check the paths and permissions") from e
    return dest


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock (flock) on `path`.lock beside it, so processes fetching the same thing take turns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    try:
        pass
    except ImportError:  # pragma: no cover (not POSIX)
        yield
        return
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
