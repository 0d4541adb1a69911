"""se104s: the asyncio transport of one forwarding RTU's IEC 60870-5-104 server.

Only sockets and tasks live here. The protocol is elsewhere: `fepha.iec104.link` (APCI: sequence numbers,
k/w, t1-t3, STARTDT/STOPDT/TESTFR) and `station.py` (image, interrogations, commands, event queues and
buffering). Per connection: a reader task (bytes in, controls out to the ControlSink), a sender task (what
the station pumps out within the k window) and a timer task (the link's t1/t2/t3).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fepha.iec104.codec import ProtocolError
from fepha.iec104.link import LinkTimeout
from fepha.listen import Servers, listeners, serve_all

from ..allow import peer_name
from ..base import (
    STALLS,
    ForwardServer,
    OpeningSlot,
    Update,
    abort_unflushed,
    close_once,
    closed_during_stall,
)
from ..resume import Sid
from ..trace import TRACE
from .station import Control, Session, Station

log = logging.getLogger("fep_forwarder.se104s")
READ_CHUNK = 2048
"""Octets handled per read before the other connections get their turn: 128 interrogations at most (about
2 ms, 5 on a loaded machine); a 64 KiB read of a flooding master's 4,096 interrogations held the event loop
60 ms, even refused."""


@dataclass(eq=False)
class ConnIO:
    """The socket side of one session."""

    writer: asyncio.StreamWriter
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    resuming: bool = False  # the master's position is being fetched (`Se104Server._resume`)


class Se104Server(ForwardServer):
    protocol = "se104s"
    log = log
    forget_on_ack = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.t0 = float(self.options.get("t0", 30.0))  # TLS handshake limit ([se104s] t0_s)
        self.station = Station(self.rtu, self.options, self.run_control, f"se104s:{self.rtu.id}:{self.node}",
                               wake=self._wake, closed=self._closed, clients_changed=self._clients_changed,
                               acked=self.record_ack, counts=self.counts, make_room=self.make_room,
                               refusing=lambda: self.draining is not None)
        self._io: dict[Session, ConnIO] = {}
        self._server: Servers | None = None

    # --- ForwardServer -------------------------------------------------------------------------------

    async def start(self) -> None:
        STALLS.ensure_running()  # run_control asks it how long a request may have waited unread
        port = 2404 if self.rtu.listen_port is None else self.rtu.listen_port
        socks = listeners(self.bind, port, f"se104s RTU {self.rtu.id}")
        # TLS: the handshake runs in each connection's handler (`tls_accept`), after the ALLOW check
        self._server = await serve_all(functools.partial(asyncio.start_server, self.accept), socks)
        log.info("se104s RTU %s listening on %s:%s%s (CA %s)", self.rtu.id, self.bind, port,
                 " with TLS" if self.tls else "", self.station.ca)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.stop_handshakes()
        for s in list(self._io):
            self.station.close(s, "server stopping")
        tasks = [t for io in list(self._io.values()) for t in io.tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def unanswered(self) -> int:
        return self.station.unanswered()

    def load_image(self, updates: Sequence[Update]) -> None:
        # at the image's position (`image_at` moves it before the `advanced` hook): its changed values and
        # the history's start are of that entry
        self.station.position = max(self.station.position, self.position)
        self.station.load_image(updates)
        self.image_ready.set()

    def apply(self, updates: Sequence[Update]) -> None:
        self.station.apply(updates)

    def clients(self) -> dict[str, dict[str, Any]]:
        return {peer: {**state, "tls": self.tls is not None} for peer, state in self.station.clients().items()}

    def queue_depth(self) -> int:
        return self.station.queue_depth()

    # --- masters' positions (ForwardServer hooks) --------------------------------------------------------

    def advanced(self) -> None:
        self.station.advanced(self.position)

    def prune(self, floor: Sid) -> None:
        self.station.history.prune(floor)

    def history_max(self) -> int:
        return self.station.history.maxlen

    def backfill(self, since: Sid, past: Sequence[Update]) -> int:
        return self.station.backfill(since, past)

    async def _resume(self, s: Session, io: ConnIO) -> None:
        """STARTDT: fetch the master's recorded position (Redis, the freshest) and resume it from there
        (once the first image and the history behind it are loaded). One fetch per connection at a time: a
        STARTDT that comes during it (after a STOPDT) has the position fetched again once it is done; before,
        each STARTDT had a fetch of its own, and a master alternating STARTDT and STOPDT had one task per
        STARTDT waiting (a Redis read, then up to 2 s for the stream), 800 of them after 2 s."""
        try:
            while True:
                cursor = await self.resume_cursor(s.identity)
                if not s.awaiting_cursor:
                    break
                s.awaiting_cursor = False
            self.station.resume(s, cursor)
        finally:
            io.resuming = False

    # --- station hooks ---------------------------------------------------------------------------------

    def _wake(self, s: Session) -> None:
        io = self._io.get(s)
        if io is not None:
            io.wake.set()

    def _closed(self, s: Session) -> None:
        io = self._io.get(s)
        if io is None:
            return
        io.wake.set()
        try:
            close_once(io.writer)
        except (ConnectionError, OSError, RuntimeError):
            pass
        abort_unflushed(io.writer)

    def _clients_changed(self) -> None:
        if self.on_clients_changed is not None:
            self.on_clients_changed()

    # --- connections ---------------------------------------------------------------------------------

    def _flush(self, s: Session, io: ConnIO) -> None:
        """Write the S/U frames the link owes (I frames go through the sender)."""
        data = s.link.data_to_send()
        if data and not s.closed:
            io.writer.write(data)

    def handshake_bound(self) -> tuple[float, str]:
        return self.t0, "t0"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: OpeningSlot) -> None:
        """One master's connection (`ForwardServer.accept` admitted it): its opening ends at its first complete
        frame."""
        peer = peer_name(writer.get_extra_info("peername"))
        io = ConnIO(writer)
        s = self.station.connect(peer, time.monotonic())
        self._io[s] = io
        me = asyncio.current_task()
        if me is not None:
            io.tasks.add(me)
        io.tasks.add(asyncio.create_task(self._sender(s, io), name=f"se104s-send-{peer}"))
        io.tasks.add(asyncio.create_task(self._timers(s, io), name=f"se104s-timers-{peer}"))
        reason = "closed by the master"
        first = b""  # the connection's first octets: a TLS ClientHello at a plain-TCP server is said so
        try:
            while not s.closed:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                first = first or data
                ctls = self.station.receive(s, data, time.monotonic())
                if slot.open and s.link.frames_in:
                    slot.done()  # its first complete frame: its opening is over ([forwarder] opening_max)
                if ctls and closed_during_stall(writer):
                    log.warning("se104s RTU %s: master %s: %d command(s) not run: read after this forwarder was "
                                "stalled, from a connection the master had closed meanwhile (it gave up on them)",
                                self.rtu.id, peer, len(ctls))
                    for ctl in ctls:
                        self.station.dropped(ctl)
                    ctls = []
                for ctl in ctls:
                    self._run(io, ctl)
                if s.awaiting_cursor and not io.resuming:
                    s.awaiting_cursor, io.resuming = False, True
                    self._spawn(io, self._resume(s, io))
                self._flush(s, io)
                # a master that does not read what we owe it (TESTFR con, S frames): read no more from it
                # until it does, so its answers do not pile up without bound (t1 still runs)
                await writer.drain()
                await asyncio.sleep(0)  # the other connections' turn (read and drain need not yield)
        except ProtocolError as exc:
            why = self.tls_on_plain_port(first) or exc
            reason = f"protocol error: {why}"
            log.warning("se104s RTU %s: master %s sent a malformed frame (%s): closing that connection",
                        self.rtu.id, peer, why)
        except ssl.SSLError as exc:  # no valid TLS record (garbage, a forged or cut record), a fatal alert
            reason = self.tls_read_failure(exc)
            log.warning("se104s RTU %s: master %s: %s: closing that connection", self.rtu.id, peer, reason)
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
        except asyncio.CancelledError:
            reason = "server stopping"
        except Exception as exc:  # noqa: BLE001 - a frame we failed to handle: that connection only
            reason = f"internal error: {exc!r}"
            log.error("se104s RTU %s: master %s: frame not handled (%r): closing that connection", self.rtu.id,
                      peer, exc)
        finally:
            self.station.close(s, self.left_why(writer, reason))
            others = [t for t in io.tasks if t is not me]
            for t in others:
                t.cancel()
            try:
                await asyncio.gather(*others, return_exceptions=True)
            except asyncio.CancelledError:  # `stop` cancelled this handler while it was cleaning up: it goes on
                pass  # (a handler task that ended cancelled was logged as an error by asyncio's streams)
            self._io.pop(s, None)
            self.station.disconnect(s)
            try:
                close_once(writer)
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (TimeoutError, ConnectionError, OSError, asyncio.CancelledError):
                writer.transport.abort()  # a master that never reads what is still buffered

    def _run(self, io: ConnIO, ctl: Control) -> None:
        self._spawn(io, self.station.execute(ctl))

    def _spawn(self, io: ConnIO, coro: Any) -> None:
        task = asyncio.create_task(coro)
        io.tasks.add(task)
        task.add_done_callback(io.tasks.discard)

    async def _sender(self, s: Session, io: ConnIO) -> None:
        try:
            while not s.closed:
                await io.wake.wait()
                io.wake.clear()
                # the next slice of an image answer, once the master has taken most of what is queued
                more = self.station.build_due(s) and self.station.build(s)
                data = self.station.pump(s, time.monotonic())
                if data and not s.closed:
                    io.writer.write(data)
                    if TRACE is not None:
                        TRACE.wrote(s.events_queued)
                    await io.writer.drain()
                if more:  # the other connections' turn before the next slice (drain need not yield)
                    await asyncio.sleep(0)
        except (ConnectionError, OSError) as exc:
            self.station.close(s, f"send failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - that connection only, closed rather than left open and deaf
            log.error("se104s RTU %s: master %s: sending failed (%r): closing that connection", self.rtu.id, s.peer,
                      exc)
            self.station.close(s, f"internal error: {exc!r}")

    async def _timers(self, s: Session, io: ConnIO) -> None:
        p = s.link.params
        tick = max(0.02, min(p.t1, p.t2, p.t3) / 10)
        while not s.closed:
            await asyncio.sleep(tick)
            try:
                self.station.tick(s, time.monotonic())
            except LinkTimeout as exc:
                log.warning("se104s RTU %s: master %s: %s: closing", self.rtu.id, s.peer, exc)
                self.station.close(s, str(exc))
                return
            self._flush(s, io)
