"""Transient S3 faults (throttling, dropped connections, damaged bodies) are retried; persistent ones end in one clear error.

The store is moto's S3 server on loopback; faults are injected into kubedistill's own boto3 client with
botocore event hooks (before-send: a 503 SlowDown answer or a dropped connection instead of the request;
after-call: a body that breaks off or arrives altered).
"""

import hashlib
import io

import pytest

from kubedistill import storage
from kubedistill.storage import s3 as storage_s3

BUCKET = "kd-faults"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    from tests.servers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def client(moto_endpoint, monkeypatch):
    """kubedistill's client pointed at moto, with a bucket, 2 botocore attempts and fast whole-transfer retries."""
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "KUBEDISTILL_S3_MAX_ATTEMPTS": "2",
        "KUBEDISTILL_S3_TRANSFER_RETRIES": "3",
        "KUBEDISTILL_S3_BACKOFF_S": "0.01",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    storage_s3._client.cache_clear()
    c = storage.s3_client()
    c.create_bucket(Bucket=BUCKET)
    yield c
    storage_s3._client.cache_clear()  # the hooks stay with this client only


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self):
        yield self.body


def _slow_down():
    from botocore.awsrequest import AWSResponse

    body = (
        b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )
    return AWSResponse("http://s3", 503, {"Content-Type": "application/xml"}, _Raw(body))


def _fail_first(n: int, make):
    """A before-send hook answering the first n requests with make() (returned, or raised if an exception)."""
    calls = {"n": 0}

    def hook(request, **kwargs):
        calls["n"] += 1
        if calls["n"] <= n:
            r = make()
            if isinstance(r, Exception):
                raise r
            return r
        return None

    return hook, calls


def test_throttling_is_retried(client, tmp_path):
    client.put_object(Bucket=BUCKET, Key="t/a.bin", Body=b"a" * 1000)
    hook, calls = _fail_first(3, _slow_down)
    client.meta.events.register("before-send.s3.GetObject", hook)
    got = storage.download(f"s3://{BUCKET}/t/a.bin", tmp_path / "a.bin")
    # botocore's own 2 attempts both throttled, then our second whole-transfer attempt: throttled, then through
    assert got.read_bytes() == b"a" * 1000 and calls["n"] == 4


def test_persistent_throttling_is_one_clear_error(client, tmp_path):
    client.put_object(Bucket=BUCKET, Key="t/b.bin", Body=b"b")
    hook, calls = _fail_first(10**6, _slow_down)
    client.meta.events.register("before-send.s3.GetObject", hook)
    with pytest.raises(
        storage.StorageError, match=r"kept failing for 's3://kd-faults/t/b.bin' \(SlowDown\) after 3 attempts"
    ) as e:
        storage.download(f"s3://{BUCKET}/t/b.bin", tmp_path / "b.bin")
    assert calls["n"] == 6 and "Try again later" in str(e.value) and not (tmp_path / "b.bin").exists()


def test_dropped_connection_on_upload_is_retried(client, tmp_path):
    from botocore.exceptions import ConnectionClosedError

    src = tmp_path / "up.bin"
    src.write_bytes(b"u" * 5000)
    hook, calls = _fail_first(3, lambda: ConnectionClosedError(endpoint_url="http://s3"))
    client.meta.events.register("before-send.s3.PutObject", hook)
    storage.upload(src, f"s3://{BUCKET}/t/up.bin")
    assert calls["n"] == 4
    assert client.get_object(Bucket=BUCKET, Key="t/up.bin")["Body"].read() == src.read_bytes()


def _body_hook(n: int, make_raw):
    """An after-call hook replacing the GetObject body of the first n calls."""
    from botocore.response import StreamingBody

    calls = {"n": 0}

    def hook(http_response, parsed, model, **kwargs):
        calls["n"] += 1
        if calls["n"] <= n and "Body" in parsed:
            data = parsed["Body"].read()
            parsed["Body"] = StreamingBody(make_raw(data), len(data))

    return hook, calls


class _BreaksOff(io.RawIOBase):
    """A response stream whose connection drops after half the bytes."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, amt=-1):
        from urllib3.exceptions import ProtocolError

        if self.pos >= len(self.data) // 2:
            raise ProtocolError("Connection broken: IncompleteRead")
        chunk = self.data[
            self.pos : self.pos + min(amt if amt and amt > 0 else len(self.data), len(self.data) // 2 - self.pos)
        ]
        self.pos += len(chunk)
        return chunk


def test_stream_dropped_mid_body_is_retried(client, tmp_path):
    payload = bytes(range(256)) * 40
    client.put_object(Bucket=BUCKET, Key="t/c.bin", Body=payload)
    hook, calls = _body_hook(2, _BreaksOff)
    client.meta.events.register("after-call.s3.GetObject", hook)
    got = storage.download(f"s3://{BUCKET}/t/c.bin", tmp_path / "c.bin")
    assert got.read_bytes() == payload and calls["n"] == 3


def test_altered_body_is_detected_and_retried(client, tmp_path):
    payload = b"0123456789" * 300
    client.put_object(Bucket=BUCKET, Key="t/d.bin", Body=payload)
    hook, calls = _body_hook(1, lambda data: io.BytesIO(data[:-1] + b"X"))  # same size, one byte changed
    client.meta.events.register("after-call.s3.GetObject", hook)
    got = storage.download(f"s3://{BUCKET}/t/d.bin", tmp_path / "d.bin")
    assert hashlib.md5(got.read_bytes()).hexdigest() == hashlib.md5(payload).hexdigest() and calls["n"] == 2
    # altered every time: the retries run out and the file is never written
    hook, calls = _body_hook(10**6, lambda data: io.BytesIO(data[:-1] + b"X"))
    client.meta.events.register("after-call.s3.GetObject", hook)
    with pytest.raises(storage.StorageError, match=r"arrived damaged \(MD5 .* after 3 attempts"):
        storage.download(f"s3://{BUCKET}/t/d.bin", tmp_path / "d2.bin")
    assert not (tmp_path / "d2.bin").exists()
