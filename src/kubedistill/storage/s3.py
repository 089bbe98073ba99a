"""The S3 side: settings from the environment, the boto3 client (imported on first use), what a failure means
(user error, transient, damaged data) and the retry loop with backoff."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kubedistill.core.env import env_number
from kubedistill.core.errors import UserError
from kubedistill.storage.uris import split_s3

LOGGER = logging.getLogger("kubedistill.storage")


_MB = 1024 * 1024


class StorageError(UserError):
    """A transfer that kept failing after its retries (store down, throttling, damaged data)."""


class _Mismatch(Exception):
    """Downloaded bytes differ from what the store says the object holds (retried)."""


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
    def from_env(cls) -> Settings:
        mode = os.environ.get("KUBEDISTILL_S3_RETRY_MODE", "").strip().lower() or "standard"
        if mode not in ("standard", "adaptive", "legacy"):
            raise UserError(f"KUBEDISTILL_S3_RETRY_MODE={mode!r} is unknown", "Use standard or adaptive")
        return cls(
            multipart_mb=env_number("KUBEDISTILL_S3_MULTIPART_MB", 8, kind=int, low=1),
            chunk_mb=env_number("KUBEDISTILL_S3_CHUNK_MB", 8, kind=int, low=5),
            concurrency=env_number("KUBEDISTILL_S3_CONCURRENCY", 8, kind=int, low=1),
            max_attempts=env_number("KUBEDISTILL_S3_MAX_ATTEMPTS", 5, kind=int, low=1),
            retry_mode=mode,
            transfer_retries=env_number("KUBEDISTILL_S3_TRANSFER_RETRIES", 3, kind=int, low=1),
            backoff_s=env_number("KUBEDISTILL_S3_BACKOFF_S", 1.0, kind=float, low=0),
        )

    def transfer_config(self):
        """The boto3 TransferConfig for these settings (multipart threshold, part size, threads)."""
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_mb * _MB,
            multipart_chunksize=self.chunk_mb * _MB,
            max_concurrency=self.concurrency,
            use_threads=True,
        )


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
    env = tuple(
        os.environ.get(k, "")
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
        )
    )
    return _client(endpoint_url(), s.max_attempts, s.retry_mode, s.concurrency, env)


@lru_cache(maxsize=8)
def _client(endpoint: str | None, max_attempts: int, mode: str, concurrency: int, _env: tuple):
    boto3 = _boto3()
    from botocore.config import Config

    cfg = Config(
        retries={"mode": mode, "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max(10, 4 * concurrency),
    )
    try:
        return boto3.session.Session().client("s3", endpoint_url=endpoint, config=cfg)
    except ValueError as e:  # botocore: "Invalid endpoint: ..."
        raise UserError(
            f"S3 endpoint '{endpoint}' is not a valid URL ({e})", "Set AWS_ENDPOINT_URL like http://minio:9000"
        ) from None


_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
}


_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "TooManyRequests",
    "BandwidthLimitExceeded",
    "PreconditionFailed",
    "500",
    "502",
    "503",
    "504",
    "429",
    "412",
}


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
    stream_errors: tuple = (
        bx.ConnectionClosedError,
        bx.ReadTimeoutError,
        bx.IncompleteReadError,
        bx.ResponseStreamingError,
        bx.FlexibleChecksumError,
    )
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
            return StorageError(
                f"'{uri}' arrived damaged ({x}){tried}", "Check the store's health and the object; then retry"
            )
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return StorageError(
                f"No space left on the device while transferring '{uri}'", "Free disk space or choose another folder"
            )
        if bx is None:
            continue
        if isinstance(x, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return UserError(
                f"No S3 credentials to access '{uri}'",
                "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
            )
        if isinstance(x, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            return StorageError(
                f"Cannot reach the S3 endpoint {endpoint} for '{uri}' ({type(x).__name__})",
                "Check AWS_ENDPOINT_URL and that the store is up",
            )
        if isinstance(x, bx.ParamValidationError):
            return UserError(
                f"'{uri}' is not a valid S3 location ({str(x).splitlines()[-1].strip()})",
                "Check the bucket name and key",
            )
        if isinstance(x, bx.ClientError):
            code, status = _code(x)
            if code in _CREDENTIAL_CODES:
                return UserError(
                    f"The S3 store at {endpoint} refused the credentials for '{uri}' ({code})",
                    "Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                )
            if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
                return UserError(
                    f"Access denied to '{uri}' ({code or status})",
                    "Check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and that they may use this bucket",
                )
            if code == "NoSuchBucket":
                return UserError(
                    f"Bucket '{split_s3(uri)[0]}' does not exist at {endpoint} ('{uri}')",
                    "Check the bucket name and AWS_ENDPOINT_URL",
                )
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return UserError(f"'{uri}' does not exist", "Check the key (list the bucket to see what is there)")
            if code in ("InvalidBucketName", "InvalidArgument", "KeyTooLongError"):
                return UserError(f"'{uri}' is not a valid S3 location ({code})", "Check the bucket name and key")
            if _is_transient(x):
                return StorageError(
                    f"The S3 store kept failing for '{uri}' ({code or status}){tried}",
                    "Try again later; check the store's health",
                )
            msg = x.response.get("Error", {}).get("Message", "") if hasattr(x, "response") else ""
            return StorageError(f"S3 error for '{uri}': {code or status} {msg}".strip(), "Check the store and the URI")
        if _is_transient(x):
            return StorageError(
                f"The connection to {endpoint} kept dropping for '{uri}' ({type(x).__name__}){tried}",
                "Try again later; check the network and the store",
            )
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
            LOGGER.warning(
                f"{what} {uri}: {type(e).__name__}: {str(e)[:160]}; retry {i + 1}/{attempts - 1} in {delay:.1f}s"
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
