"""`kubedistill serve --model s3://...`: the model is fetched into the cache once per ETag (SeaweedFS on loopback)."""

import subprocess
import sys

import pytest

from kubedistill import storage
from kubedistill.core.errors import UserError
from kubedistill.serve.resolve import resolve_model_uri
from kubedistill.storage import s3 as storage_s3

BUCKET = "kd-models"


@pytest.fixture
def s3(s3_env, monkeypatch, tmp_path):
    s3_env.bucket(BUCKET)
    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    storage_s3._client.cache_clear()
    yield s3_env
    storage_s3._client.cache_clear()


def _count_gets():
    calls = {"n": 0}

    def hook(**kwargs):
        calls["n"] += 1

    storage.s3_client().meta.events.register("before-send.s3.GetObject", hook)
    return calls


def test_s3_model_cached_by_etag(s3, tmp_path):
    c = s3.client()
    c.put_object(Bucket=BUCKET, Key="det/v/model.onnx", Body=b"onnx-v1" * 100)
    gets = _count_gets()
    p1 = resolve_model_uri(f"s3://{BUCKET}/det/v/model.onnx")
    assert p1.name == "model.onnx" and p1.read_bytes() == b"onnx-v1" * 100
    assert (tmp_path / "cache" / "models") in p1.parents and gets["n"] == 1
    assert resolve_model_uri(f"s3://{BUCKET}/det/v/model.onnx") == p1 and gets["n"] == 1  # cached: no second GET
    # a folder holding exactly one .onnx resolves to that object (the same cached copy)
    assert (
        resolve_model_uri(f"s3://{BUCKET}/det/v/") == p1
        and resolve_model_uri(f"s3://{BUCKET}/det/v") == p1
        and gets["n"] == 1
    )

    c.put_object(Bucket=BUCKET, Key="det/v/model.onnx", Body=b"onnx-v2" * 100)  # a new model at the same URI
    p2 = resolve_model_uri(f"s3://{BUCKET}/det/v/model.onnx")
    assert p2 != p1 and p2.read_bytes() == b"onnx-v2" * 100 and gets["n"] == 2
    assert not p1.exists()  # the older copy of that URI is gone


def test_s3_model_errors(s3):
    c = s3.client()
    c.put_object(Bucket=BUCKET, Key="two/a.onnx", Body=b"a")
    c.put_object(Bucket=BUCKET, Key="two/b.onnx", Body=b"b")
    c.put_object(Bucket=BUCKET, Key="pt/best.pt", Body=b"torch")
    c.put_object(Bucket=BUCKET, Key="empty/model.onnx", Body=b"")
    for uri, needle in [
        (f"s3://{BUCKET}/two/", "holds 2 .onnx files"),
        (f"s3://{BUCKET}/pt/", "holds no .onnx file"),
        (f"s3://{BUCKET}/pt/best.pt", "cannot be read"),  # a .pt is exported for serving: this one is no checkpoint
        (f"s3://{BUCKET}/nope/model.onnx", "does not exist"),
        (f"s3://{BUCKET}/empty/model.onnx", "is an empty file"),
        ("s3://kd-no-such-bucket/m.onnx", "Bucket 'kd-no-such-bucket' does not exist"),
    ]:
        with pytest.raises(UserError, match=needle):
            resolve_model_uri(uri)


def test_cli_serve_missing_s3_model(s3, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "kubedistill", "serve", "--model", f"s3://{BUCKET}/missing/model.onnx"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"'s3://{BUCKET}/missing/model.onnx' does not exist" in r.stderr
