"""Live updates for dashboards: `GET /api/v1/stream` (server-sent events) fed by one shared reader.

One `Hub` per api process reads Redis for everybody: it follows the change stream and the three timeline
streams with one blocking XREAD on the local Redis and reads the health picture (overview and RTUs) once
per period. Each message is serialised once and put into every interested client's queue. A client is a
bounded `asyncio.Queue`: a client that falls `queue` messages behind (a stalled browser, a dead
connection the kernel has not noticed) is dropped with a final `overflow` message (what it had queued is
discarded), never waited for, so one slow dashboard costs the others nothing and no worker is held. At most
`max_clients` clients at once, counted until their responses end. A client that does not read at all
would keep its response blocked on its socket (its place, a task, its buffers) until the connection
closes: `LiveResponse` gives every write `write_timeout_s` and aborts the connection when one does not
complete in that time (the socket's buffers are full: nothing was taken). A client is counted and logged
as dropped once, whichever way it goes. The hub runs only while at least one client is connected.

Messages (`event:` name, JSON `data:`):
  hello     {node, time_ms}: first message; the client reloads its snapshot from the REST endpoints
  values    {rtu, items: [{id, value, quality, quality_flags, valid, ts_ms}]}: one change-stream entry
            (rtu is "vp" for virtual points); only for the RTUs the client asked for (`rtu=`), all if none
  timeline  an `Event` of /api/v1/events
  health    {overview, rtus}: /api/v1/overview and /api/v1/rtus, every `health_s`
  overflow  {detail}: the client fell behind and is dropped (reconnect and reload)
  unavailable {detail}: the local Redis stopped answering; every stream ends (what a client shows is no
            longer followed, so it must not go on looking live: the dashboard polls, and sees the 503s)
A comment line (`: keepalive`) every `keepalive_s` keeps proxies and dead-peer detection working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rex
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from fep_api import views
from fep_api.state import NoConfig, Store
from fepha import keyspace as ks

log = logging.getLogger("fep_api.live")

BUFFER = 64 * 1024
"""Bytes a stream connection buffers on this side, in the kernel and again in the process: what a client
that does not read fills before its writes block and `write_timeout_s` runs (loopback autotuning let the
kernel take megabytes: at a dashboard's few kB/s, many minutes)."""

TRANSPORT = "fep.transport"
"""Scope key of the connection's asyncio transport, when the server lets it be found (app.py): ASGI gives an
app no way to abort a connection, and a graceful close keeps a socket whose peer never reads open for good."""


class TooManyClients(Exception):
    """The configured number of stream clients is reached (503)."""


def _reason(exc: Exception) -> str:
    """Why the streams ended, worded as the REST endpoints word their 503s."""
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | ConnectionError | TimeoutError):
        return f"Redis unreachable: {exc}"
    if isinstance(exc, rex.RedisError):
        return f"Redis error: {exc}"
    return f"live updates failed: {type(exc).__name__}: {exc}"


def sse(event: str, data: Any) -> str:
    """One server-sent-events message."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(eq=False)
class Client:
    rtus: frozenset[str] | None
    """RTU ids (strings as in the change stream, "vp" for virtual points) whose values it wants; None: all."""
    values: bool
    queue: asyncio.Queue[str]
    dropped: bool = False
    ended: bool = False
    """The hub ended the stream (`unavailable` is the last message in the queue)."""
    sent: int = 0
    peer: str = ""
    """host:port of the client, for the log."""

    def wants(self, rtu: str) -> bool:
        return self.values and (self.rtus is None or rtu in self.rtus)

    def offer(self, msg: str) -> bool:
        """Queue a message; False when it was dropped or its queue is full."""
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(msg)
            return True
        except asyncio.QueueFull:
            return False


@dataclass
class Hub:
    store: Store
    max_clients: int
    queue: int
    health_s: float = 1.0
    keepalive_s: float = 15.0
    block_ms: int = 500
    clients: set[Client] = field(default_factory=set)
    """The clients messages are offered to."""
    places: set[Client] = field(default_factory=set)
    """Every client whose response has not ended, dropped ones too (a client that does not read keeps its
    response blocked on its socket): what the limit counts, so such connections cannot pile up."""
    dropped_total: int = 0
    _task: asyncio.Task[None] | None = None
    _nt: dict[str, str] = field(default_factory=dict)
    """RTU id (as the change stream names it) -> why its values are served NT (`values_nt` of the last
    health picture): their changes are sent with NT, as /points shows them and SCADA is served them."""

    def join(self, rtus: frozenset[str] | None, values: bool, peer: str = "") -> Client:
        if len(self.places) >= self.max_clients:
            raise TooManyClients(f"{len(self.places)} live clients already (limit [api] stream_clients = "
                                 f"{self.max_clients}): reload later, or poll the REST endpoints")
        c = Client(rtus, values, asyncio.Queue(self.queue), peer=peer)
        self.clients.add(c)
        self.places.add(c)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="fep-api-live-hub")
        return c

    def drop(self, c: Client, why: str) -> None:
        """Stop offering `c` messages and discard what it had queued (it reloads anyway: only `overflow` is
        left to send); counted and logged once per client."""
        self.clients.discard(c)
        if c.dropped:
            return
        c.dropped = True
        while not c.queue.empty():
            c.queue.get_nowait()
        self.dropped_total += 1
        log.info("live client %s dropped: %s", c.peer or "?", why)

    def leave(self, c: Client) -> None:
        """Its response ended: its place is free."""
        self.clients.discard(c)
        self.places.discard(c)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for c in list(self.clients):
            c.dropped = True
        self.clients.clear()
        self.places.clear()

    def _end_all(self, msg: str) -> None:
        """Queue `msg` as every client's last message and let go of them all (the reader then stops)."""
        for c in list(self.clients):
            c.offer(msg)
            c.ended = True
        self.clients.clear()

    def _broadcast(self, msg: str, rtu: str | None = None) -> None:
        for c in list(self.clients):
            if (rtu is None or c.wants(rtu)) and not c.offer(msg):
                self.drop(c, f"{self.queue} messages behind")

    async def _tails(self) -> dict[str, str]:
        """The newest id of every followed stream ("0-0" for an empty one): only what comes after counts."""
        names = [ks.CHANGES, *views.EVENT_SOURCES]
        pipe = self.store.local.pipeline(transaction=False)
        for n in names:
            pipe.xrevrange(n, max="+", min="-", count=1)
        res = await pipe.execute()
        return {n: (r[0][0] if r else "0-0") for n, r in zip(names, res, strict=True)}

    async def _health(self) -> str:
        overview = await self.store.overview()
        try:
            rtus = (await self.store.rtus()).model_dump(mode="json")
        except NoConfig:
            rtus = None
        self._nt = {str(r["id"]): r["values_nt"] for r in (rtus or {}).get("items", []) if r.get("values_nt")}
        return sse("health", {"overview": overview.model_dump(mode="json"), "rtus": rtus})

    async def _run(self) -> None:
        """Follow Redis while anybody listens; a Redis error ends every stream with `unavailable`."""
        tails: dict[str, str] | None = None
        next_health = 0.0
        while self.clients:
            try:
                if tails is None:
                    tails = await self._tails()
                now = time.monotonic()
                if now >= next_health:
                    self._broadcast(await self._health())
                    next_health = now + self.health_s
                block = max(1, min(self.block_ms, int((next_health - time.monotonic()) * 1000)))
                res = await self.store.local.xread(tails, count=500, block=block)
                for stream, entries in res or []:
                    for sid, f in entries:
                        tails[stream] = sid
                        self._entry(stream, sid, f)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: nothing here is followed any more
                log.info("live hub: %s: %s: ending %d streams", type(exc).__name__, exc, len(self.clients))
                self._end_all(sse("unavailable", {"detail": _reason(exc)}))

    def _entry(self, stream: str, sid: str, f: dict[str, str]) -> None:
        if stream == ks.CHANGES:
            rtu = f.get("r", "")
            if any(c.wants(rtu) for c in self.clients):
                if rtu in self._nt:  # changes that still come while the RTU is not topical (a holder whose
                    # lease stamps are ahead of this Redis's clock, writes lagging behind its polls) were sent
                    # with the stored quality: the dashboard showed them good over the NT of its snapshot
                    f = {k: v if k == "r" else views.served(v, True) for k, v in f.items()}
                self._broadcast(sse("values", views.live_values(rtu, f)), rtu)
            return
        ev = views.event(views.EVENT_SOURCES.index(stream), sid, f)
        if ev is not None:
            self._broadcast(sse("timeline", ev.model_dump(mode="json")))

    async def messages(self, c: Client, node: str, duration_s: float | None) -> AsyncIterator[str]:
        """What one client receives, until it disconnects (the server cancels this generator), falls
        behind, or `duration_s` passed."""
        loop = asyncio.get_running_loop()
        end = None if duration_s is None else loop.time() + duration_s
        try:
            yield sse("hello", {"node": node, "time_ms": int(time.time() * 1000)})
            while True:
                timeout = self.keepalive_s if end is None else min(self.keepalive_s, end - loop.time())
                if timeout <= 0:
                    return
                if c.dropped and c.queue.empty():
                    yield sse("overflow", {"detail": f"more than {self.queue} messages behind: reconnect"})
                    return
                if c.ended and c.queue.empty():
                    return
                try:
                    msg = await asyncio.wait_for(c.queue.get(), timeout)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                c.sent += 1
                yield msg
        finally:
            self.leave(c)


class LiveResponse(StreamingResponse):
    """The stream's response: every write gets `write_timeout_s`. A write that does not complete in that time
    waits for a socket whose buffers are full, a peer that takes nothing: the client is dropped and its
    connection aborted (reset: a close would wait for the unsent data for as long as the peer keeps its
    window shut), which frees its place, its task and its buffers. A client that reads, however slowly,
    completes its writes and keeps its stream (falling `queue` messages behind still drops it)."""

    def __init__(self, hub: Hub, client: Client, content: AsyncIterator[str], write_timeout_s: float,
                 headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.hub = hub
        self.client = client
        self.write_timeout_s = write_timeout_s
        self._abort: Callable[[], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = scope.get(TRANSPORT)
        if transport is not None:
            self._abort = lambda: reset(transport)
            bound(transport)
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        stalled = False

        async def timed(msg: Any) -> None:
            nonlocal stalled
            try:
                await asyncio.wait_for(send(msg), self.write_timeout_s)
            except TimeoutError:
                stalled = True
                raise

        try:
            await super().stream_response(timed)
        except TimeoutError:
            if not stalled:
                raise
            self.hub.drop(self.client, f"took no data for {self.write_timeout_s:g} s: connection aborted")
            if self._abort is not None:
                self._abort()
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()  # its `finally` frees the place now, not when it is collected


def bound(transport: Any) -> None:
    """Give a stream connection `BUFFER` bytes of send buffer in the kernel (a fixed SO_SNDBUF, which Linux
    doubles for its bookkeeping, ends autotuning) and in the process (uvicorn waits for the transport to
    drain below its high-water mark before the next write)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    with contextlib.suppress(AttributeError, NotImplementedError):
        transport.set_write_buffer_limits(high=BUFFER)


def reset(transport: Any) -> None:
    """Close a connection with a reset: with SO_LINGER 0 the kernel drops what is unsent and sends RST (a
    plain close would leave an orphan socket queueing that data behind the peer's shut window)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
