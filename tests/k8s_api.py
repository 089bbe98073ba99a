"""A Kubernetes API server on loopback that answers from recorded responses, for the real kubernetes client.

Routes are (method, path regex) -> responses in order (the last one repeats): a fixture file name under
tests/fixtures/k8s (JSON, whose `code` is the HTTP status when it is a Status; .txt is text/plain), a dict served as
a JSON body, or (status, message) for a Status made up here. Every request is kept (method, path, query, JSON body),
and its Authorization header in `auth`."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "k8s"


class RecordedApiServer:
    def __init__(self, routes: dict[tuple[str, str], list], namespace: str = "default"):
        self.routes = [(m, re.compile(p), list(r)) for (m, p), r in routes.items()]
        self.namespace = namespace
        self.requests: list[tuple[str, str, dict, object]] = []
        self.auth: list[str | None] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                api.requests.append((method, url.path, parse_qs(url.query), body))
                api.auth.append(self.headers.get("Authorization"))
                status, ctype, data = api._response(method, url.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def do_DELETE(self):
                self._answer("DELETE")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _response(self, method: str, path: str) -> tuple[int, str, bytes]:
        for m, pattern, responses in self.routes:
            if m == method and pattern.fullmatch(path):
                item = responses.pop(0) if len(responses) > 1 else responses[0]
                break
        else:
            item = (404, f"no recorded response for {method} {path}")
        if isinstance(item, dict):
            return 200, "application/json", json.dumps(item).encode()
        if isinstance(item, tuple):
            status, msg = item
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg, "code": status}
            return status, "application/json", json.dumps(body).encode()
        text = (FIXTURES / item).read_text()
        if item.endswith(".txt"):
            return 200, "text/plain", text.encode()
        return json.loads(text).get("code", 200), "application/json", text.encode()

    def calls(self, method: str, pattern: str = "") -> list[tuple]:
        return [r for r in self.requests if r[0] == method and re.search(pattern, r[1])]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, tmp_path: Path) -> Path:
        return write_kubeconfig(tmp_path, self.server.server_port, self.namespace)


def write_kubeconfig(tmp_path: Path, port: int, namespace: str) -> Path:
    """A kubeconfig for an API server on 127.0.0.1:`port` with a bearer token and a default namespace."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "loop", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "ci", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "test", "context": {"cluster": "loop", "user": "ci", "namespace": namespace}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path
