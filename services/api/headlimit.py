"""A request whose head is too long gets an answer, not a reset: 414 when its request line (the URI) is longer
than `MAX_HEAD` bytes, 431 when its header fields take the head past it (RFC 9110 §15.5.15, RFC 6585 §5).

uvicorn's h11 protocol answered a head that did not fit h11's 16 kB buffer with a 400 and closed at once,
the rest of the request unread: the kernel then reset the connection and the client saw the reset, not the
400 (a 1 MB URL: "connection reset"); a longer head that happened to arrive in one piece was taken whole.
`Protocol` looks at the head before h11 does, answers one that is over the limit however it arrives,
half-closes, and reads on (discarding) until the client closes, `LINGER_BYTES` were discarded or
`LINGER_S` passed, so the answer is read rather than reset away.

A head must also arrive whole within `head_timeout_s` (`[api] head_timeout_s`) of the connection, or of its
first byte after a previous request: uvicorn timed only the wait between requests, so a connection that
sent nothing, or half a head, held its socket and a place in the server for good. A late head is answered
408 (nothing received: the connection is closed without an answer).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD = 16 * 1024
"""Longest request head (request line and header fields) taken, bytes: h11's own buffer limit."""
LINGER_S = 5.0
LINGER_BYTES = 16 * 1024 * 1024

REASONS = {408: "Request Timeout", 414: "URI Too Long", 431: "Request Header Fields Too Large"}


def too_long(head: bytes, limit: int = MAX_HEAD) -> int | None:
    """414 or 431 when the request head that starts `head` is longer than `limit`; None when it fits (or is
    not complete yet and still could)."""
    end = head.find(b"\r\n\r\n")
    if (len(head) if end == -1 else end + 4) <= limit:
        return None
    line = head.find(b"\n")
    return 414 if line == -1 or line + 1 > limit else 431


def answer(status: int, limit: int = MAX_HEAD, detail: str | None = None) -> bytes:
    what = "request line (method, URI, version)" if status == 414 else "request head (with its header fields)"
    body = json.dumps({"detail": detail or f"{what} longer than {limit} bytes"}).encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with the head limits above (`uvicorn.Config(http=Protocol.with_timeout(s))`)."""

    head_timeout_s = 10.0

    @classmethod
    def with_timeout(cls, head_timeout_s: float) -> type[Protocol]:
        return type("Protocol", (cls,), {"head_timeout_s": head_timeout_s})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._discarded = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._refused or self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:
            self._refuse(408, f"the request head did not arrive whole within {self.head_timeout_s:g} s")
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)

    def handle_events(self) -> None:
        """uvicorn's loop over what h11 has buffered: called on new data and after a response (a pipelined
        request buffered meanwhile); with their side IDLE the buffer starts a request head."""
        if not self._refused and self.conn.their_state is h11.IDLE:
            status = too_long(self.conn.trailing_data[0])
            if status is not None:
                self._refuse(status)
                return
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # a whole head: the request is the app's
        elif self.conn.trailing_data[0]:
            self._arm()  # part of the next head (between requests uvicorn's keep-alive timer runs)

    def _refuse(self, status: int, detail: str | None = None) -> None:
        self._refused = True
        self._disarm()
        self._unset_keepalive_if_required()
        self.transport.write(answer(status, detail=detail))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
