"""Bounded HTTP connections under uvicorn: header size and count, a deadline for headers, a connection cap.

uvicorn's httptools protocol reads headers of any size and waits for them for ever; its h11 protocol bounds
their size but not the wait. This subclass of the httptools protocol (the faster parser) adds what a server
open to careless or hostile clients needs, and answers each refusal in textfit's JSON error form:

- a request line and headers (to the blank line that ends them) of more than `max_header_bytes`: 431, connection
  closed;
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
import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import HANDLED_SIGNALS, Server

from textfit.errors import TextfitError


class LimitError(TextfitError):
    """A server setting (ConnectionLimits, ServeSettings) outside its range."""


def check_ranges(settings: object, ranges: dict[str, tuple[type, float, float, bool]]) -> None:
    """Raise LimitError for the first field of a settings dataclass outside its range: (kind, low, high, low
    excluded). The CLI's flags have the same ranges (textfit.cli), and settings made in Python are held to them
    too: a max_batch of 0 would answer every request 500, a max_queue of 0 refuse every one."""
    for field in fields(settings):  # type: ignore[arg-type]
        if field.name not in ranges:
            continue
        kind, lo, hi, lo_open = ranges[field.name]
        value = getattr(settings, field.name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = (number and math.isfinite(value) and (kind is float or isinstance(value, int))
                and (lo < value if lo_open else lo <= value) and value <= hi)
        if not fits:  # worded as the CLI words its refusals
            span = (f"an integer from {int(lo)} to {int(hi)}" if kind is int else
                    f"a number over {lo:g}, up to {hi:g}" if lo_open else f"a number from {lo:g} to {hi:g}")
            raise LimitError(f"{type(settings).__name__}.{field.name} {value!r}: must be {span}")


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

    def __post_init__(self) -> None:
        check_ranges(self, CONNECTION_RANGES)


CONNECTION_RANGES: dict[str, tuple[type, float, float, bool]] = {
    "max_connections": (int, 1, 65535, False),
    "max_header_bytes": (int, 1024, 1024 * 1024, False),
    "max_headers": (int, 1, 1000, False),
    "header_timeout_s": (float, 0, 3600, True),
    "keep_alive_s": (float, 0, 3600, True),
}
"""The ranges of ConnectionLimits, those of `textfit serve`'s flags (--max-header-kb 1 to 1024 is in KiB)."""


REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


class _HeadRefused(Exception):
    """Raised from a parser callback to stop the parser once the head is refused (the answer is sent)."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded headers, a header deadline and a connection cap."""

    limits = ConnectionLimits()

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[BoundedHttpProtocol]:
        """A protocol class for uvicorn's `http=` setting, carrying these limits (uvicorn instantiates it)."""
        return type("BoundedHttpProtocol", (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head, self._head_bytes, self._header_count, self._head_parsed = True, 0, 0, 0
        self._refusal: tuple[int, str] | None = None
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
        """Answer in textfit's JSON error form and close: the connection is not worth keeping. The requests read
        before this one (pipelined behind each other) are answered first: HTTP/1.1 answers in order."""
        self._disarm()
        if self.transport.is_closing() or self._refusal is not None:
            return
        self._refusal = (status, message)
        if self._answering():
            self.flow.pause_reading()  # nothing more is read; on_response_complete sends the refusal
            return
        self._send_refusal()

    def _answering(self) -> bool:
        """Whether an earlier request on this connection still waits for its answer (uvicorn's latest cycle
        is the last request read; the pipeline holds those read and not yet started)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None and not self._answering():
            self._send_refusal()

    def _send_refusal(self) -> None:
        if self.transport.is_closing() or self._refusal is None:  # the last answer closed the connection
            return
        status, message = self._refusal
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
        # While a head is open the parser gets no more than the bytes that head has left, so that a head over the
        # limit never completes (uvicorn starts the request as the head completes). Counting after the parser had
        # the whole read missed every head that came in one read (up to 256 KiB): 100 KiB passed a 64 KiB limit.
        if self._refusal is not None:  # refused: what follows is not read (the answer may be waiting its turn)
            return
        view = memoryview(data)
        while view and not self.transport.is_closing() and self._refusal is None:
            if self._in_head:
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:  # the limit is reached and the head goes on
                    self._refuse(431, self._too_large())
                    return
                piece, view = view[:room], view[room:]
                self._head_bytes += len(piece)
                self._arm()
            else:
                piece, view = view, view[len(view):]
            # A callback's error (too many headers) arrives as a parser error: 400. uvicorn annotates `data` as bytes;
            # the httptools parser it feeds takes any buffer, so the memoryview slice goes in without a copy.
            super().data_received(piece)  # type: ignore[arg-type]
            if self.parser is None or self.parser.should_upgrade():  # closed, or no longer HTTP/1.1 (upgraded)
                return

    def _too_large(self) -> str:
        return f"the request line and headers are over {self.limits.max_header_bytes} bytes"

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._header_count, self._head_parsed = True, 0, 0

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} header fields")
            raise _HeadRefused  # stops the parser; the refusal is the connection's last answer, so no 400 after it
        self._head_parsed += len(name) + len(value) + 3  # at least ":" and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # A request sent right behind another in the same read (pipelining) begins inside a piece, where its bytes
        # cannot be counted: the parsed fields count for it. They are a lower bound of the head's size (the
        # parser wants CRLF line ends, and drops only the whitespace around values), so no head within the
        # limit is refused by them; method, two spaces, HTTP/x.y, CRLF, and the blank line: 14 bytes more.
        if self._head_parsed + len(self.parser.get_method()) + 14 > self.limits.max_header_bytes:
            self._refuse(431, self._too_large())
            raise _HeadRefused  # as above: stop the parser (uvicorn has not started this request)
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
