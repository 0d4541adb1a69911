"""Listening sockets that stay sane when the process runs out of file descriptors.

asyncio (CPython 3.11) answers an accept() failing with EMFILE/ENFILE by logging a traceback and
scheduling a retry a second later, but goes on trying the rest of its backlog loop: up to 100 tracebacks
and 100 retries per wake-up, which multiply every second (measured on fep-forwarder: from 5 to 1,868 log
records per second within 10 s, growing with the CPU). New connections meanwhile wait unanswered in the
kernel's backlog.

`listener()` returns a socket for `loop.create_server(sock=...)` / `asyncio.start_server(sock=...)` whose
accept() handles that itself, as libuv does: it keeps one spare descriptor; when accept() fails for want
of descriptors it frees the spare, accepts the waiting connection and closes it at once (the peer sees a
clean close, not a hang), takes the spare back, and does so for every connection waiting; then it tells
asyncio "nothing more to accept". Refusals are counted and logged at most once a minute (WARNING), the
next connection accepted after such a warning too (INFO). Established connections are not touched. When
not even the spare can be had back, asyncio's own handling applies, once per wake-up.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time

log = logging.getLogger("fepha.listen")

OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
LOG_EVERY_S = 60.0
"""At most one warning (with the count of refusals so far) per listener in this time."""


class GuardedListener(socket.socket):
    """A listening TCP socket whose accept() refuses connections cleanly while descriptors are used up."""

    refused: int
    """Connections closed at once because no descriptor was left for them (since start)."""

    def setup(self, what: str) -> None:
        self.what = what
        self.refused = 0
        self.warned = False  # a warning logged, its "accepting again" not yet
        self.last_warning = -LOG_EVERY_S
        self.gave_up = -1.0  # when accept() last let asyncio see EMFILE (no spare descriptor either)
        self.spare: int | None = _spare()

    def accept(self) -> tuple[socket.socket, object]:
        while True:
            try:
                conn, addr = super().accept()
            except OSError as exc:
                if exc.errno not in OUT_OF_FDS:
                    raise
                if not self._refuse_one():
                    # no spare descriptor: asyncio's own handling (one log and one retry a second later),
                    # but once per wake-up, not once per backlog slot
                    now = time.monotonic()
                    if now - self.gave_up < 0.5:
                        raise ConnectionAbortedError(errno.ECONNABORTED, "out of file descriptors") from exc
                    self.gave_up = now
                    raise
                continue
            if self.warned:
                self.warned = False
                log.info("%s: accepting connections again (%d refused so far while out of file descriptors)",
                         self.what, self.refused)
            return conn, addr

    def _refuse_one(self) -> bool:
        """Out of descriptors: close the oldest waiting connection through the spare descriptor. False when
        there is no spare and none can be had. Raises BlockingIOError when no connection is waiting
        (asyncio stops accepting for this wake-up)."""
        if self.spare is None and (spare := _spare()) is not None:
            self.spare = spare
        if self.spare is None:
            return False
        os.close(self.spare)
        self.spare = None
        try:
            fd, _ = self._accept()  # type: ignore[attr-defined]  # socket.socket's own: the bare descriptor
        except OSError:
            self.spare = _spare()
            raise
        os.close(fd)
        self.spare = _spare()
        self.refused += 1
        now = time.monotonic()
        if now - self.last_warning >= LOG_EVERY_S:
            self.last_warning, self.warned = now, True
            log.warning("%s: out of file descriptors: new connections are closed at once until some are "
                        "free, established ones go on (%d refused so far)", self.what, self.refused)
        return True

    def close(self) -> None:
        if getattr(self, "spare", None) is not None:
            os.close(self.spare)  # type: ignore[arg-type]
            self.spare = None
        super().close()


def _spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def listener(host: str, port: int, what: str, backlog: int = 100) -> GuardedListener:
    """A bound, listening, non-blocking GuardedListener on `host`:`port` (SO_REUSEADDR, as asyncio's
    servers); `what` names it in the log. Raises OSError when the address cannot be bound."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = GuardedListener(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(backlog)
        sock.setblocking(False)
        sock.setup(what)
    except BaseException:
        sock.close()
        raise
    return sock
