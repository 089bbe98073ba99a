"""The HTTP layer under the app: uvicorn's httptools protocol with bounds on the request head, and JSON errors.

uvicorn's httptools protocol has no limit on the request line and headers: a 256 MB header was buffered for 94 s
(700 MB peak), and a client that sends half a head holds its connection for ever. The errors it answers itself
(a malformed request) are text/plain, while every error of the app is JSON. This subclass:
- answers 431 when the request line and headers pass `max_header_kb` or hold more than `max_headers` fields,
  counted while they arrive (so at most one read past the limit is ever buffered) and exactly once complete;
- answers 408 when a head is not complete `header_timeout_s` after its first byte (or after the connection
  opened), and closes a connection that sent nothing by then;
- answers its own refusals, and uvicorn's "invalid HTTP request", as JSON {"error": ...} with `connection: close`.
The limits come from the ServeConfig that `kubedistill serve` puts in the environment, in every worker process.
"""

from __future__ import annotations

import functools
import json
import logging
import os

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from kubedistill.serve.config import ENV_CONFIG, ServeConfig

log = logging.getLogger("kubedistill.serve")


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing; uvicorn turns it into send_400_response."""


def _limits() -> tuple[int, int, float]:
    return _limits_of(os.environ.get(ENV_CONFIG, ""))


@functools.lru_cache(maxsize=4)
def _limits_of(text: str) -> tuple[int, int, float]:
    """The head limits of a ServeConfig's JSON, parsed once per process, not on every new connection."""
    cfg = ServeConfig.from_json(text) if text else ServeConfig(model_path="")
    return cfg.max_header_kb * 1024, cfg.max_headers, cfg.header_timeout_s


class BoundedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes, self.max_headers, self.head_timeout = _limits()
        self._in_head = True
        self._head_bytes = 0
        self._head_seen = False  # any byte of this head received
        self._heads_done = 0  # request heads completed on this connection
        self._head_timer = None
        self._refusal: tuple[int, str] | None = None

    # ------------------------------------------------------------------ the head's clock
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if not self._head_seen:  # nothing sent: just close
            self.transport.close()
            return
        self._send_json(408, f"request head not complete within {self.head_timeout:g} s")

    # ------------------------------------------------------------------ parsing
    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        if in_head and self._head_timer is None:  # the first bytes of the next request on this connection
            self._arm()
        self._head_seen = self._head_seen or in_head
        heads = self._heads_done
        super().data_received(data)
        # still in the same head after all these bytes (a whole request in one read ends its head too)
        if in_head and self._heads_done == heads and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._send_json(431, f"request line and headers larger than {self.max_head_bytes // 1024} KiB")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if len(self.headers) > self.max_headers:
            self._refusal = (431, f"more than {self.max_headers} header fields")
        elif size > self.max_head_bytes:
            self._refusal = (431, f"request line and headers larger than {self.max_head_bytes // 1024} KiB")
        if self._refusal:
            raise _HeadRefused
        self._in_head = False
        self._heads_done += 1
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._head_seen = False

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to anything the parser refused
        status, text = self._refusal or (400, "invalid HTTP request: the request line or a header is malformed")
        self._send_json(status, text)

    def _send_json(self, status: int, message: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if status != 400:
            log.warning("%s %s from %s", status, message, self.client and self.client[0])
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self.transport.close()
