"""Listening sockets that stay sane when the process runs out of file descriptors.

asyncio (CPython 3.11) answers an accept() failing with EMFILE/ENFILE by logging a traceback and
scheduling a retry a second later, but goes on trying the rest of its backlog loop: up to 100 tracebacks
and 100 retries per wake-up, which multiply every second (measured on fep-forwarder: from 5 to 1,868 log
records per second within 10 s, growing with the CPU). New connections meanwhile wait unanswered in the
kernel's backlog.

`listeners()` returns the sockets for `loop.create_server(sock=...)` / `asyncio.start_server(sock=...)`
(one per address the listen host resolves to, joined by `serve_all`) whose accept() handles that itself, as libuv does: it keeps one spare descriptor; when accept() fails for want
of descriptors it frees the spare, accepts the waiting connection and closes it at once (the peer sees a
clean close, not a hang), takes the spare back, and does so for every connection waiting; then it tells
asyncio "nothing more to accept". Refusals are counted and logged at most once a minute (WARNING), the
next connection accepted after such a warning too (INFO). Established connections are not touched. When
not even the spare can be had back, asyncio's own handling applies, once per wake-up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

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


def listeners(host: str, port: int, what: str, backlog: int = 100) -> list[GuardedListener]:
    """Bound, listening, non-blocking GuardedListeners on `host`:`port`, one per address `host` resolves to
    (a name such as "localhost" with ::1 and 127.0.0.1: both, as asyncio's create_server does with a host
    string; binding only getaddrinfo's first answer left the other family unserved). All on one port: with
    port 0 the first socket's port is taken for the others. When IPv4 and IPv6 addresses are both bound, the
    IPv6 sockets are IPv6-only (else "::" would take the IPv4 port too); a lone IPv6 address keeps the
    system's default. SO_REUSEADDR, as asyncio's servers; `what` names them in the log. Raises OSError when
    an address cannot be bound (none is left open then)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addrs: list[tuple[socket.AddressFamily, Any]] = []
    for family, _, _, _, addr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, addr) not in addrs:
            addrs.append((family, addr))
    for attempt in range(5):
        try:
            return _bind_all(addrs, port, what, backlog)
        except OSError as exc:
            # port 0: the port chosen for the first address may be taken on another one; choose again
            if not (port == 0 and len(addrs) > 1 and exc.errno == errno.EADDRINUSE and attempt < 4):
                raise
    raise AssertionError("unreachable")


def _bind_all(addrs: list[tuple[socket.AddressFamily, Any]], port: int, what: str,
              backlog: int) -> list[GuardedListener]:
    both = len({family for family, _ in addrs}) > 1
    socks: list[GuardedListener] = []
    try:
        for family, addr in addrs:
            if port == 0 and socks:  # the port the system chose for the first address
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            # IPPROTO_TCP, not 0: an accepted socket takes the listener's proto, and asyncio sets TCP_NODELAY
            # only on sockets whose proto says TCP; with 0 every connection served (SCADA masters, the api)
            # ran Nagle against the peer's delayed ACK: 22 ms median, 44 ms p99 added to se104s's sends
            sock = GuardedListener(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and both:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
            sock.setup(what)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Servers:
    """Several asyncio servers (one per listening socket) as one: `loop.create_server(sock=...)` takes a
    single socket. Offers what the services use of `asyncio.Server`."""

    def __init__(self, servers: list[asyncio.Server]) -> None:
        self.servers = servers

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(s for srv in self.servers for s in srv.sockets)

    def is_serving(self) -> bool:
        return any(srv.is_serving() for srv in self.servers)

    def close(self) -> None:
        for srv in self.servers:
            srv.close()

    async def wait_closed(self) -> None:
        for srv in self.servers:
            await srv.wait_closed()


async def serve_all(create: Callable[..., Awaitable[asyncio.Server]], socks: list[GuardedListener]) -> Servers:
    """`create(sock=sock)` (a partial of asyncio.start_server or loop.create_server) for every socket of
    `socks`, as one Servers.
    When one fails, the servers already made and every socket are closed."""
    servers: list[asyncio.Server] = []
    try:
        for sock in socks:
            servers.append(await create(sock=sock))
    except BaseException:
        for srv in servers:
            srv.close()
        for sock in socks:
            sock.close()
        raise
    return Servers(servers)
