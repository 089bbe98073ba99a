"""Storage without a server: URIs, lazy boto3, settings, local copies, checksum checks."""

import re
import subprocess
import sys

import pytest

from kubedistill import storage
from kubedistill.core.errors import UserError
from kubedistill.storage import objects as storage_objects
from kubedistill.storage import s3 as storage_s3
from kubedistill.storage import uris as storage_uris


def test_uris():
    assert storage.is_remote("s3://b/k") and storage.is_remote(" S3://b/k") and not storage.is_remote("/data/s3://x")
    assert storage.split_s3("s3://bkt/a/b.txt") == ("bkt", "a/b.txt")
    assert storage.split_s3("s3://bkt") == ("bkt", "") and storage.split_s3("s3://bkt/") == ("bkt", "")
    assert storage.join_uri("s3://b/p/", "/x/y") == "s3://b/p/x/y"
    for bad in ("s3://", "s3:///key", "/local/path"):
        with pytest.raises(UserError):
            storage.split_s3(bad)


def test_import_does_not_load_boto3():
    code = (
        "import sys, kubedistill.storage, kubedistill.data.fetch, kubedistill.serve.resolve, kubedistill.core.log\n"
        "print(sorted(m for m in ('boto3', 'botocore', 's3transfer', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_missing_boto3_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` now raises ImportError
    storage_s3._client.cache_clear()
    try:
        with pytest.raises(UserError, match=r"kubedistill\[track\]"):
            storage.exists("s3://bucket/key")
    finally:
        storage_s3._client.cache_clear()


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("KUBEDISTILL_S3_MULTIPART_MB", "16")
    monkeypatch.setenv("KUBEDISTILL_S3_RETRY_MODE", "adaptive")
    monkeypatch.setenv("KUBEDISTILL_S3_BACKOFF_S", "0")
    s = storage.Settings.from_env()
    assert (s.multipart_mb, s.retry_mode, s.backoff_s, s.chunk_mb) == (16, "adaptive", 0.0, 8)
    assert s.transfer_config().multipart_threshold == 16 * 1024 * 1024
    monkeypatch.setenv("KUBEDISTILL_S3_CHUNK_MB", "2")  # S3 parts are at least 5 MiB
    with pytest.raises(UserError, match="KUBEDISTILL_S3_CHUNK_MB"):
        storage.Settings.from_env()
    monkeypatch.delenv("KUBEDISTILL_S3_CHUNK_MB")
    monkeypatch.setenv("KUBEDISTILL_S3_RETRY_MODE", "eager")
    with pytest.raises(UserError, match="KUBEDISTILL_S3_RETRY_MODE"):
        storage.Settings.from_env()


def test_dataset_cache_folder(monkeypatch, tmp_path):
    from kubedistill.data.fetch import default_dest

    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "c"))
    a, b = default_dest("s3://b/sets/coco8.tar.gz"), default_dest("s3://other/sets/coco8.tar.gz")
    assert a.parent == tmp_path / "c" / "datasets" and a.name.startswith("coco8-") and a != b  # one folder per URI


def test_local_copies(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "a" / "b" / "deep.bin").write_bytes(b"\x00\x01" * 100)
    out = storage.upload(src, str(tmp_path / "out"))
    assert (tmp_path / "out" / "a" / "b" / "deep.bin").read_bytes() == b"\x00\x01" * 100 and out == str(
        tmp_path / "out"
    )
    # a file into an existing folder keeps its name; download copies back
    (tmp_path / "dir").mkdir()
    assert storage.upload(src / "top.txt", str(tmp_path / "dir")) == str(tmp_path / "dir" / "top.txt")
    got = storage.download(str(tmp_path / "out" / "top.txt"), tmp_path / "back.txt")
    assert got.read_text() == "top"
    assert storage.exists(str(src)) and not storage.exists(str(tmp_path / "nope"))
    assert sorted(f.rel for f in storage.list_files(str(src))) == ["a/b/deep.bin", "top.txt"]
    with pytest.raises(UserError, match="does not exist"):
        storage.download(str(tmp_path / "nope"), tmp_path / "x")
    with pytest.raises(UserError, match="does not exist"):
        storage.upload(tmp_path / "nope", str(tmp_path / "y"))


def test_verify_detects_size_and_checksum(tmp_path):
    import hashlib

    f = tmp_path / "f.bin"
    f.write_bytes(b"hello world")
    md5 = hashlib.md5(b"hello world").hexdigest()
    sha = hashlib.sha256(b"hello world").hexdigest()
    storage_objects._verify(f, storage_objects._Remote(size=11, etag=md5, sha256=sha, md5_etag=True))  # all agree
    storage_objects._verify(
        f, storage_objects._Remote(size=11, etag="abc-2")
    )  # multipart ETag without sha256: size only
    with pytest.raises(storage_s3._Mismatch, match="11 bytes, expected 12"):
        storage_objects._verify(f, storage_objects._Remote(size=12))
    with pytest.raises(storage_s3._Mismatch, match="sha256"):
        storage_objects._verify(f, storage_objects._Remote(size=11, sha256="0" * 64))
    with pytest.raises(storage_s3._Mismatch, match="MD5"):
        storage_objects._verify(f, storage_objects._Remote(size=11, etag="0" * 32, md5_etag=True))
    # what the store says: a KMS-encrypted object's ETag is not an MD5; a multipart one neither
    r = storage_objects._Remote.from_response(
        {"ContentLength": 3, "ETag": f'"{md5}"', "ServerSideEncryption": "aws:kms"}
    )
    assert not r.md5_etag
    r = storage_objects._Remote.from_response({"ContentLength": 3, "ETag": f'"{md5}"', "Metadata": {"SHA256": sha}})
    assert r.md5_etag and r.sha256 == sha and r.etag == md5


def test_unsafe_keys_refused():
    for rel in ("../x", "a/../../x", "/etc/passwd", "a\\..\\b"):
        with pytest.raises(UserError, match="outside the destination"):
            storage_uris._safe_rel(rel, "s3://b/p/")
    assert str(storage_uris._safe_rel("a/b/c.jpg", "s3://b/p/")) == "a/b/c.jpg"


def test_error_translation():
    from botocore.exceptions import ClientError, NoCredentialsError

    def client_error(code, status):
        return ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    uri = "s3://bkt/k"
    cases = [
        (client_error("AccessDenied", 403), UserError, "Access denied to 's3://bkt/k'"),
        (client_error("403", 403), UserError, "Access denied"),  # a HEAD has no error body
        (client_error("NoSuchKey", 404), UserError, "'s3://bkt/k' does not exist"),
        (client_error("NoSuchBucket", 404), UserError, "Bucket 'bkt' does not exist"),
        (client_error("InvalidAccessKeyId", 403), UserError, "refused the credentials"),
        (client_error("SlowDown", 503), storage.StorageError, r"kept failing .*\(SlowDown\) after 3 attempts"),
        (NoCredentialsError(), UserError, "No S3 credentials"),
    ]
    for exc, kind, needle in cases:
        err = storage_s3._translate(exc, uri, attempts=3)
        assert type(err) is kind and re.search(needle, str(err)), (exc, err)
    assert storage_s3._is_transient(client_error("SlowDown", 503)) and storage_s3._is_transient(
        client_error("InternalError", 500)
    )
    assert not storage_s3._is_transient(client_error("AccessDenied", 403)) and not storage_s3._is_transient(
        NoCredentialsError()
    )
    # boto3 wraps upload errors; the cause is found through the chain
    try:
        try:
            raise client_error("AccessDenied", 403)
        except ClientError as e:
            raise RuntimeError("Failed to upload") from e
    except RuntimeError as wrapped:
        assert "Access denied" in str(storage_s3._translate(wrapped, uri))
