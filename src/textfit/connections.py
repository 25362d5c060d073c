"""Bounded HTTP connections under uvicorn: header size and count, a deadline for headers, a connection cap.

uvicorn's httptools protocol reads headers of any size and waits for them for ever; its h11 protocol bounds
their size but not the wait. This subclass of the httptools protocol (the faster parser) adds what a server
open to careless or hostile clients needs, and answers each refusal in textfit's JSON error form:

- more than `max_header_bytes` before the headers end: 431, connection closed;
- more than `max_headers` header fields: 431;
- headers not complete `header_timeout_s` after connecting (or after a request's first byte): 408, closed;
- more than `max_connections` open: 503, closed at once.

uvicorn's own settings do the rest: `timeout_keep_alive` closes idle connections, `limit_concurrency` bounds
tasks. GracefulServer makes SIGTERM a clean exit (status 0) once in-flight requests are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import HANDLED_SIGNALS, Server


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost the server (enforced by textfit.connections under uvicorn)."""

    max_connections: int = 1024
    """Open connections at once; past it a new connection is answered 503 and closed."""
    max_header_bytes: int = 64 * 1024
    """Request line and headers together; past it 431."""
    max_headers: int = 100
    """Header fields in one request; past it 431."""
    header_timeout_s: float = 10.0
    """Seconds from a request's first byte (or from connecting) to the end of its headers; then 408."""
    keep_alive_s: float = 5.0
    """Seconds an idle keep-alive connection stays open."""


REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


class _TooManyHeaders(Exception):
    pass


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded headers, a header deadline and a connection cap."""

    limits = ConnectionLimits()

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[BoundedHttpProtocol]:
        """A protocol class for uvicorn's `http=` setting, carrying these limits (uvicorn instantiates it)."""
        return type("BoundedHttpProtocol", (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head, self._head_bytes, self._header_count = True, 0, 0
        self._deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, f"too many connections (over {self.limits.max_connections}); retry shortly")
            return
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"the request headers did not arrive within {self.limits.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer in textfit's JSON error form and close: the connection is not worth keeping."""
        self._disarm()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message, "status": status}).encode()
        head = (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n")
        if status == 503:
            head += "retry-after: 1\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg.rstrip(".") + "; send a well-formed HTTP/1.1 request")

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            self._head_bytes += len(data)
            self._arm()
        super().data_received(data)  # a callback's error (too many headers) arrives as a parser error: 400 after 431
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"the request line and headers are over {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._header_count = True, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} header fields")
            raise _TooManyHeaders  # stops the parser; the connection is closed already, so no second answer
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # the next request on this connection starts its own count

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class GracefulServer(Server):
    """uvicorn's server, less the re-raise of a caught SIGTERM after shutdown: a drained server exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original: dict[int, Any] = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
