"""Hostile requests to the inference server (issue 17), through the real HTTP stack: uvicorn with kubedistill's
bounded protocol, in a thread on loopback. Generated bodies for /v1/detect (broken and oversized images, wrong
content types, bad fields) and OIP v2 infer (every datatype, wrong shapes, strings, booleans, nulls, deep nesting,
huge numbers), and request heads past the limits. Each must be answered within a few seconds with a JSON body:
a 4xx naming the problem (refused) or a 200 (survived). Never a 5xx, never text/plain."""

from __future__ import annotations

import base64
import http.client
import json
import os
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")

from kubedistill.benchmark.serve import free_port  # noqa: E402
from kubedistill.serve.config import ENV_CONFIG, ServeConfig  # noqa: E402


@pytest.fixture(scope="module")
def server(served_model):
    import uvicorn

    from kubedistill.serve.app import create_app
    from kubedistill.serve.http import BoundedHttpProtocol

    cfg = ServeConfig(model_path=str(served_model[1]), name="tiny", max_header_kb=8, header_timeout_s=2.0)
    saved = os.environ.get(ENV_CONFIG)
    os.environ[ENV_CONFIG] = cfg.to_json()  # the protocol reads its limits from here, as in `kubedistill serve`
    port = free_port()
    app = create_app(served_model[1], name="tiny", background_load=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=BoundedHttpProtocol, log_level="error")
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield port
    srv.should_exit = True
    t.join(10)
    if saved is None:
        os.environ.pop(ENV_CONFIG, None)
    else:
        os.environ[ENV_CONFIG] = saved


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    t0 = time.monotonic()
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheader("content-type") or "", data, time.monotonic() - t0


def _judge(hostile, kind: str, case: str, status: int, ctype: str, data: bytes, took: float) -> str:
    assert status < 500, (case, status, data[:300])
    assert ctype.startswith("application/json"), (case, status, ctype, data[:200])
    body = json.loads(data)
    assert took < 15, (case, took)
    if status >= 400:
        assert isinstance(body.get("error"), str) and body["error"] and "\n" not in body["error"], (case, body)
        return hostile.record(kind, case, "refused")
    return hostile.record(kind, case, "survived")


def _png(h=48, w=64) -> bytes:
    return cv2.imencode(".png", np.random.default_rng(1).integers(0, 255, (h, w, 3), np.uint8))[1].tobytes()


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _images():
    png = _png()
    jpg = cv2.imencode(".jpg", np.full((40, 56, 3), 120, np.uint8))[1].tobytes()
    yield "a good png", png
    yield "empty", b""
    yield "random bytes", os.urandom(3000)
    yield "text", b"hello"
    for frac in (0.05, 0.25, 0.5, 0.75, 0.95):
        yield f"png cut at {frac:.0%}", png[: int(len(png) * frac)]
        yield f"jpg cut at {frac:.0%}", jpg[: int(len(jpg) * frac)]
    for k in range(8):
        pos = 16 + k * (len(png) - 17) // 7
        yield f"png byte {pos} flipped", png[:pos] + bytes([png[pos] ^ 0x55]) + png[pos + 1 :]
    yield "45 MP png header", _png_header(9000, 5000)
    yield "1 x 1 png", cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()
    yield "1 x 20000 png", cv2.imencode(".png", np.zeros((1, 20000, 3), np.uint8))[1].tobytes()


def _multipart(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = "kdhostile"
    out = b""
    for field, filename, data in parts:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_v1_detect_hostile_bodies(server, hostile):
    for case, img in _images():
        for how in ("multipart", "raw", "json"):
            if how == "multipart":
                body, ctype = _multipart([("images", "x.png", img)])
            elif how == "raw":
                body, ctype = img, "image/png"
            else:
                body, ctype = json.dumps({"images": [base64.b64encode(img).decode()]}).encode(), "application/json"
            res = _request(server, "POST", "/v1/detect", body, {"Content-Type": ctype})
            _judge(hostile, "server requests", f"/v1/detect {how}: {case}", *res)
    png = _png()
    others = {
        "33 images": _multipart([("images", f"{i}.png", png) for i in range(33)]),
        "four 30 MP headers": _multipart([("images", f"{i}.png", _png_header(6000, 5000)) for i in range(4)]),
        "no file part": (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),
        "multipart without boundary": (b"garbage", "multipart/form-data"),
        "text/plain": (b"hello", "text/plain"),
        "json list": (b"[1, 2]", "application/json"),
        "json not json": (b"{nope", "application/json"),
        "json deep nesting": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        "json unknown field": (b'{"imagez": []}', "application/json"),
        "json image not base64": (b'{"images": ["***"]}', "application/json"),
        "json image a number": (b'{"images": [7]}', "application/json"),
    }  # fmt: skip
    for case, (body, ctype) in others.items():
        res = _request(server, "POST", "/v1/detect", body, {"Content-Type": ctype})
        _judge(hostile, "server requests", f"/v1/detect {case}", *res)
    raw = {"Content-Type": "image/png"}
    for q in ("conf=nan", "conf=-1", "conf=2", "conf=abc", "max_det=0", "max_det=-5", "max_det=1e99", "max_det=x"):
        res = _request(server, "POST", f"/v1/detect?{q}", png, raw)
        assert _judge(hostile, "server requests", f"/v1/detect ?{q}", *res) == "refused", q


def _v2(datatype="FP32", shape=(1, 3, 64, 64), data=None, name="images", extra=None) -> bytes:
    n = int(np.prod(shape)) if all(isinstance(d, int) and d >= 0 for d in shape) else 4
    inp = {
        "name": name,
        "datatype": datatype,
        "shape": list(shape),
        "data": [0.5] * min(n, 200_000) if data is None else data,
    }
    return json.dumps({"inputs": [inp], **(extra or {})}).encode()


def test_v2_infer_hostile_bodies(server, hostile):
    path = "/v2/models/tiny/infer"
    good = (1, 3, 64, 64)
    cases = {"good": _v2()}
    for dt in ("FP32", "FP16", "FP64", "INT8", "UINT8", "INT64", "BOOL", "BYTES", "XYZ", ""):
        cases[f"datatype {dt or 'empty'}"] = _v2(datatype=dt)
    for shape in ((1, 3, 64), (0, 3, 64, 64), (-1, 3, 64, 64), (1, 3, 64, 65), (65, 3, 64, 64), (1, 3, 100000, 100000),
                  (1, 1, 64, 64), (2**40, 3, 64, 64), ("a", 3, 64, 64)):  # fmt: skip
        cases[f"shape {list(shape)}"] = _v2(shape=shape)
    n = int(np.prod(good))
    for label, value in (
        ("strings", "0.5"),
        ("booleans", True),
        ("nulls", None),
        ("objects", {"a": 1}),
        ("lists", [1]),
    ):
        cases[f"data of {label}"] = _v2(data=[value] * n)
    cases["data too short"] = _v2(data=[0.5] * 10)
    cases["data too long"] = _v2(data=[0.5] * (n + 1))
    cases["data nested by shape"] = _v2(data=np.full(good, 0.5).tolist())
    cases["data nested wrong"] = _v2(data=np.full((1, 3, 64, 32, 2), 0.5).tolist())
    cases["data NaN"] = _v2().replace(b"0.5", b"NaN", 1)
    cases["data 1e999"] = _v2().replace(b"0.5", b"1e999", 1)
    cases["data -1e999"] = _v2().replace(b"0.5", b"-1e999", 1)
    cases["data not a list"] = _v2(data="0.5")
    cases["two inputs"] = json.dumps({"inputs": [json.loads(_v2())["inputs"][0]] * 2}).encode()
    cases["no inputs"] = b'{"inputs": []}'
    cases["wrong input name"] = _v2(name="x")
    cases["binary data parameter"] = json.dumps(
        {"inputs": [{**json.loads(_v2())["inputs"][0], "parameters": {"binary_data_size": 10}}]}
    ).encode()
    cases["not json"] = b"\x00\x01"
    cases["json list"] = b"[]"
    cases["deep nesting"] = (
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": '
        + b"[" * 50_000
        + b"]" * 50_000
        + b"}]}"
    )
    cases["outputs unknown"] = _v2(extra={"outputs": [{"name": "nope"}]})
    for case, body in cases.items():
        res = _request(server, "POST", path, body, {"Content-Type": "application/json"})
        outcome = _judge(hostile, "server requests", f"v2 infer: {case}", *res)
        if case in ("good", "data nested by shape"):
            assert outcome == "survived", (case, res)
    for case, p in (
        ("unknown model", "/v2/models/nope/infer"),
        ("unknown version", "/v2/models/tiny/versions/9/infer"),
    ):
        _judge(hostile, "server requests", f"v2 infer: {case}", *_request(server, "POST", p, _v2(), {}))


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        out = b""
        try:
            while part := s.recv(65536):
                out += part
        except OSError:
            pass
    return out


def test_request_heads_past_the_limits(server, hostile):
    ok = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    heads = {
        "a header of 9 KiB": ok + b"X-A: " + b"a" * 9216 + b"\r\n\r\n",
        "a URL of 9 KiB": b"GET /" + b"u" * 9216 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "101 header fields": ok + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
        "a header name of 9 KiB": ok + b"X" * 9216 + b": 1\r\n\r\n",
        "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n",
        "a bad request line": b"GET\r\n\r\n",
        "a NUL in a header": ok + b"X-A: a\x00b\r\n\r\n",
        "a bad Content-Length": b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        "two Content-Lengths": b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "a bad chunk size": b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/9.9": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        "half a head, then silence": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n",
        "fine, for scale": ok + b"\r\n",
    }
    for case, data in heads.items():
        t0 = time.monotonic()
        out = _raw(server, data)
        head, _, body = out.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        ctype = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-type:")), "")  # fmt: skip
        outcome = _judge(hostile, "server heads", case, status, ctype, body, time.monotonic() - t0)
        assert (outcome == "survived") == (case == "fine, for scale"), (case, out[:200])
