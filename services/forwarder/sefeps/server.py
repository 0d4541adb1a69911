"""sefeps server: one forwarding RTU served to SCADA masters over TCP (optionally TLS), docs/sefeps.md.

Thin I/O around `codec`: one reader loop and one writer task per connection. The writer owns the socket's
output, so ordering is simple: control messages (welcome, res, hb, err) first, then a full image when one
is due, then change events from the connection's bounded queue. Changes are numbered by the server (seq)
and kept in a bounded history with the change-stream entry each came from: a master that reconnects
resumes without a full image, on this node by (session, seq), on either node by its recorded cursor
(fep_forwarder.resume; the master acknowledges with `ack`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from fep_forwarder.allow import peer_host, peer_name
from fep_forwarder.base import (
    STALLS,
    UNFLUSHED_GRACE_S,
    ForwardServer,
    OpeningSlot,
    Update,
    abort_unflushed,
    close_once,
    closed_during_stall,
    drain_unless_stalled,
)
from fep_forwarder.resume import History, Sid, acked_cursor
from fep_forwarder.sefeps import codec
from fepha.listen import Servers, listeners, serve_all
from fepha.semodel.model import FwdPoint

log = logging.getLogger("fep.forwarder.sefeps")
Event = tuple[int, codec.Entry, Sid]  # (seq, [addr, value, quality, ts_ms], stream entry it came from)

YIELD_EVERY = 64
"""Messages of one read handled before the other connections get a turn: a `resume` of this session costs
a pass over the history (10,000 events: about 1 ms), and one read of 64 KiB of them held the event loop
1.3 s."""

DEFAULTS: dict[str, Any] = {
    "heartbeat_s": 10.0,  # idle time before a heartbeat is sent; silence of 3x closes the connection
    "queue_max": 10_000,  # events queued per connection before it is resynchronised with a full image
    "replay_max": 10_000,  # events kept for resuming masters
    "image_chunk": 2_000,  # points per image frame
    "event_chunk": 500,  # points per ev frame
    "max_inflight": 16,  # commands running at once per connection
    "max_frame": codec.MAX_FRAME,
    "control_timeout_ms": None,  # None: the ControlSink's default
    "handshake_s": 30.0,  # with TLS: the handshake must end within it (as se104s's t0), else closed
}


class _Conn:
    """One master's connection."""

    def __init__(self, server: SefepsServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 opening: OpeningSlot) -> None:
        self.server = server
        self.opening = opening  # freed by its hello ([forwarder] opening_max)
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = peer_name(peer)
        self.identity = peer_host(peer)  # the master across reconnects and nodes: its address
        self.state = "hello"  # hello -> open -> closed
        self.name = ""
        self.version = 0
        self.out: deque[dict[str, Any]] = deque()  # control messages, sent first
        self.pending: deque[Event] = deque()  # events after hello, bounded
        self.inflight: deque[tuple[int, Sid]] = deque()  # (seq, stream entry) sent, not acknowledged
        self.cursor: Sid | None = None  # what this master acknowledged (None: not tracked yet)
        self.skip: Sid | None = None  # resumed at a cursor this node's stream has not reached yet
        self.need_image = False
        # resumed from the cursor: a full image is due once the events up to this seq are written (`hello`)
        self.image_after: int | None = None
        self.wake = asyncio.Event()
        now = time.monotonic()
        self.last_rx = self.last_tx = now
        self.since_ms = int(time.time() * 1000)
        self.sent_seq = 0  # the newest seq this master was sent (or holds, from its resume or welcome)
        self.acked_seq = 0  # the newest seq it acknowledged on this connection
        self.overflows = 0
        self.commands: dict[int, asyncio.Task] = {}
        self.tasks: list[asyncio.Task] = []  # reader and writer
        self.closing = False
        self.why = "closed by the master"  # why the connection ended, for the line that says it left

    # -- fed by the server ---------------------------------------------------------------------------
    def push(self, events: Sequence[Event]) -> None:
        if self.state != "open" or self.need_image or not events:
            return
        if self.skip is not None:  # resumed from another node ahead of this one: skip what it has
            events = [ev for ev in events if ev[2] > self.skip]
        if len(self.pending) + len(events) > self.server.opt["queue_max"]:
            # the master does not keep up: drop its queue, send it a full image instead (docs/sefeps.md)
            self.server.counts.events_dropped += len(self.pending) + len(events)
            self.pending.clear()
            self.need_image = True
            self.overflows += 1
            self.server.once.problem(f"sefeps RTU {self.server.rtu.id} master {self.peer}",
                                     "queue full, resynchronising with a full image")
        else:
            self.pending.extend(events)
        self.wake.set()

    def send(self, msg: dict[str, Any]) -> None:
        self.out.append(msg)
        self.wake.set()

    def fail(self, code: str, msg: str) -> None:
        """Tell the master why, then close: the writer sends what is queued up to the err, then closes."""
        if self.closing:
            return
        log.info("sefeps RTU %s master %s: %s: %s", self.server.rtu.id, self.peer, code, msg)
        self.why = f"after err {code}"
        self.out.clear()
        self.out.append(codec.error(code, msg))
        self.closing = True
        self.wake.set()

    # -- tasks ---------------------------------------------------------------------------------------
    async def read_loop(self) -> None:
        dec = codec.Decoder(codec.CLIENT_MESSAGES, self.server.opt["max_frame"])
        first = True
        while not self.closing:
            try:
                data = await self.reader.read(65536)
            except ssl.SSLError as exc:  # no valid TLS record (garbage, a forged or cut record), a fatal alert
                self.why = self.server.tls_read_failure(exc)
                log.warning("sefeps RTU %s master %s: %s: closing that connection", self.server.rtu.id, self.peer,
                            self.why)
                return
            except (ConnectionError, OSError) as exc:
                self.why = f"connection error: {exc}"
                return
            if not data:
                return
            if first and (why := self.server.tls_on_plain_port(data)) is not None:
                self.fail("frame", why)
                return
            first = False
            self.last_rx = time.monotonic()
            try:
                for n, msg in enumerate(dec.feed(data), 1):
                    if self.state == "hello" and msg["t"] == "hello":
                        self.opening.done()  # its opening is over: a hello, whatever its outcome (idempotent)
                        await self.hello(msg)
                    else:
                        self.handle(msg)
                    if self.closing:
                        return
                    if n % YIELD_EVERY == 0:  # the other connections' turn (a chunk holds ~1,500 resumes)
                        await asyncio.sleep(0)
            except codec.ProtocolError as exc:
                self.fail(exc.code, exc.msg)
                return
            try:  # answers to a master that does not read: read no more from it until it does
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                self.why = f"connection error: {exc}"
                return

    async def hello(self, msg: dict[str, Any]) -> None:
        """The first message. Without `resume`: a full image. With a resume of this server's session: the
        events after its seq. With one of another session (another node, or before a restart): the events
        after the master's recorded cursor, announced by `seq` in welcome, then a full image; only an image
        when there is no cursor. The image after the events: the cursor is per address, and a master with
        two links (one to each node, two processes on one host) would otherwise never get, on the link that
        resumed, a value its other link got before the cursor and that does not change again."""
        srv = self.server
        version = codec.negotiate(msg["versions"])
        if version is None:
            raise codec.ProtocolError("version", f"no common version; server speaks {list(codec.SUPPORTED)}")
        r = msg.get("resume")
        cursor = await srv.resume_cursor(self.identity) if r and r["session"] != srv.session else None
        if self.closing:
            return
        self.version, self.name, self.state = version, str(msg.get("name", "")), "open"
        moved = srv.events_after(cursor) if cursor is not None else None
        base = (moved[0][0] - 1 if moved else srv.seq) if moved is not None else None
        self.send(codec.welcome(version, srv.session, srv.rtu.id, srv.node, srv.opt["heartbeat_s"],
                                srv.catalog, resumed_seq=base))
        if moved is not None:
            self.cursor = cursor
            self.sent_seq = base or 0
            self.skip = cursor if cursor is not None and cursor > srv.position else None
            self.need_image = False
            self.pending = deque(moved)
            self.image_after = moved[-1][0] if moved else base
            self.wake.set()
            self.track()
        elif r and r["session"] == srv.session:
            self.resume(r["session"], r["seq"])
        else:
            self.start_image()

    def handle(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if self.state == "hello":
            raise codec.ProtocolError("proto", f"expected hello, got {t}")
        if t == "hello":
            raise codec.ProtocolError("proto", "hello after hello")
        if t == "hb":
            return
        if t == "resume":
            if msg["session"] == self.server.session:
                self.check_ack(msg["seq"], again=True)
            self.resume(msg["session"], msg["seq"])
        elif t == "ack":
            self.check_ack(msg["seq"])
            self.ack(msg["seq"])
        elif t == "cmd":
            self.command(msg["id"], msg["addr"], msg["value"])
        elif t == "bye":
            self.closing = True
            self.wake.set()

    def start_image(self) -> None:
        self.pending.clear()
        self.inflight.clear()
        self.need_image = True
        self.wake.set()

    def resume(self, session: str, seq: int) -> None:
        """Send the events after `seq` of this session (an image when they are not all kept). `seq` also
        acknowledges everything up to it: the cursor moves to the newest entry whose events all have a seq
        up to `seq`, never to the position (the events after `seq` are outstanding again)."""
        srv = self.server
        events = srv.events_after_seq(seq) if session == srv.session else None
        if events is None:
            self.start_image()
            return
        acked = [sid for q, sid in self.inflight if q <= seq]  # an image sent on this connection, too
        acked += [sid for sid, ev in srv.history.items if ev[0] <= seq]
        self.acked_seq, self.sent_seq = seq, max(self.sent_seq, seq)
        self.need_image = False
        self.pending = deque(events)
        self.inflight.clear()
        self.wake.set()
        self.track(acked)

    def check_ack(self, seq: int, again: bool = False) -> None:
        """An `ack` must lie between the last one and the newest seq sent: one behind the last (out of
        order) or past what was sent (the master cannot have applied that) is a protocol error, and moves
        no position. A `resume` of this session (`again`) may go back behind the last ack (the events after
        it come again; the position never moves back), never past what was sent."""
        if seq < self.acked_seq and not again:
            raise codec.ProtocolError("proto", f"seq {seq} is behind the {self.acked_seq} already acknowledged")
        if seq > self.sent_seq:
            raise codec.ProtocolError("proto", f"seq {seq} was never sent (the newest sent is {self.sent_seq})")

    def ack(self, seq: int) -> None:
        """The master applied everything up to `seq` of this session (checked by `check_ack`): move its
        cursor to the newest entry that completes (`resume.acked_cursor`: an ev frame can end inside an
        entry, whose events then span several frames)."""
        self.acked_seq = seq
        acked: list[Sid] = []
        while self.inflight and self.inflight[0][0] <= seq:
            acked.append(self.inflight.popleft()[1])
        self.track(acked)

    def track(self, acked: Sequence[Sid] = ()) -> None:
        """Recompute this master's cursor (after an ack, or when the stream position moved)."""
        if self.state != "open" or (self.need_image and not self.inflight):
            return  # an image is due: its dropped events are outstanding, their entries unknown
        first = self.inflight[0][1] if self.inflight else self.pending[0][2] if self.pending else None
        srv = self.server
        self.cursor = acked_cursor(self.cursor or (0, 0), acked, first, srv.position)
        srv.record_ack(self.identity, self.cursor)

    def command(self, cmd_id: int, addr: int, value: float) -> None:
        srv = self.server
        fwd = srv.commands_by_addr.get(addr)
        if closed_during_stall(self.writer):  # nobody to answer; the operator may send it again elsewhere
            log.warning("sefeps RTU %s master %s: cmd %s on %s = %s not run: read after this forwarder was "
                        "stalled, from a connection the master had closed meanwhile", srv.rtu.id, self.peer, cmd_id,
                        addr, value)
        elif cmd_id in self.commands:
            self.send(codec.result(cmd_id, False, "rejected", codec.REJECT_DUPLICATE_ID))
        elif (why := codec.command_problem(fwd, value, addr in srv.catalog_addrs)) is not None:
            log.info("sefeps RTU %s master %s: cmd %s on %s = %s rejected: %s", srv.rtu.id, self.peer, cmd_id,
                     addr, value, why)
            self.send(codec.result(cmd_id, False, "rejected", why))
        elif len(self.commands) >= srv.opt["max_inflight"]:
            self.send(codec.result(cmd_id, False, "rejected", codec.REJECT_BUSY))
        else:
            assert fwd is not None
            task = asyncio.create_task(self.run_command(cmd_id, fwd, value))
            self.commands[cmd_id] = task

    async def run_command(self, cmd_id: int, fwd: FwdPoint, value: float) -> None:
        srv = self.server
        try:
            out = await srv.run_control(fwd, codec.command_value(fwd, value),
                                        f"sefeps:{srv.rtu.id}@{srv.node}:{self.peer}")
            self.send(codec.result(cmd_id, out.ok, out.state, out.reason))
        finally:
            self.commands.pop(cmd_id, None)

    async def write_loop(self) -> None:
        opt = self.server.opt
        hb = float(opt["heartbeat_s"])
        try:
            while True:
                if (self.image_after is not None and self.skip is None
                        and not (self.pending and self.pending[0][0] <= self.image_after)):
                    # the resumed events are written (and this node reached the cursor): the image now
                    self.image_after, self.need_image = None, True
                if not (self.out or self.need_image or self.pending or self.closing):
                    self.wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), timeout=hb / 2)
                now = time.monotonic()
                if now - self.last_rx > 3 * hb and not self.closing:
                    self.fail("timeout", f"nothing received for {3 * hb:g} s")
                frames: list[dict[str, Any]] = []
                while self.out:
                    frames.append(self.out.popleft())
                if not self.closing and self.state == "open":
                    if self.need_image:
                        srv = self.server
                        self.need_image, self.image_after = False, None
                        self.pending.clear()
                        frames += codec.image_messages(srv.seq, srv.image_entries(), opt["image_chunk"])
                        self.sent_seq = srv.seq
                        # the image holds every change up to the stream position: acknowledged with its seq
                        # (after the events sent before it, which a master acknowledges first)
                        self.inflight.append((srv.seq, srv.position))
                    elif self.pending:
                        n = min(len(self.pending), opt["event_chunk"] * 8)
                        batch = [self.pending.popleft() for _ in range(n)]
                        frames += codec.event_messages([(q, e) for q, e, _ in batch], opt["event_chunk"])
                        self.inflight.extend((q, sid) for q, _, sid in batch)
                        self.sent_seq = batch[-1][0]
                        self.server.counts.events_sent += n
                if not frames and now - self.last_tx >= hb and not self.closing:
                    frames.append(codec.HB)
                if frames:
                    self.writer.write(b"".join(codec.encode(f) for f in frames))
                    self.last_tx = time.monotonic()
                    if not await drain_unless_stalled(self.writer, 3 * hb):
                        # it may send (so its silence does not close it) but does not read: the same limit
                        log.info("sefeps RTU %s master %s: nothing it was sent was read for %g s: closing",
                                 self.server.rtu.id, self.peer, 3 * hb)
                        self.why = f"read nothing for {3 * hb:g} s"
                        return
                if self.closing and not self.out:
                    return
        except (ConnectionError, OSError) as exc:
            self.why = f"send failed: {exc}"
            return

    def info(self) -> dict[str, Any]:
        return {"state": self.state, "name": self.name, "version": self.version, "since_ms": self.since_ms,
                "sent_seq": self.sent_seq, "pending": len(self.pending), "overflows": self.overflows,
                "commands": len(self.commands)}


class SefepsServer(ForwardServer):
    """Options (keyword arguments): see DEFAULTS."""

    protocol = "sefeps"
    log = log

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opt = {**DEFAULTS, **{k: v for k, v in self.options.items() if k in DEFAULTS and v is not None}}
        self.control_timeout_ms = self.opt["control_timeout_ms"]
        forwards = [f for f in self.rtu.forwards]
        self.catalog = [(f.addr, f.kind) for f in sorted(forwards, key=lambda f: f.addr)]
        self.catalog_addrs = {f.addr for f in forwards}
        self.commands_by_addr = {f.addr: f for f in forwards if f.kind in codec.COMMAND_KINDS}
        self.session = f"{self.node}{self.rtu.id}-{time.time_ns():x}"
        self.seq = 0
        self.image: dict[int, codec.Entry] = self._empty_image()
        self.history: History[Event] = History(int(self.opt["replay_max"]))
        self.conns: dict[_Conn, asyncio.Task] = {}
        self._server: Servers | None = None
        self._stopping = False
        # counts: events_sent, events_dropped (queued events replaced by a full image), controls,
        # controls_ok, control_latency_ms_sum, connections_refused, connections_opening_refused,
        # tls_handshakes_failed

    async def start(self) -> None:
        STALLS.ensure_running()  # run_control asks it how long a request may have waited unread
        self._stopping = False
        port = self.rtu.listen_port if self.rtu.listen_port is not None else 7070
        socks = listeners(self.bind, port, f"sefeps RTU {self.rtu.id}")
        # TLS: the handshake runs in each connection's handler (`tls_accept`), after the ALLOW check
        self._server = await serve_all(functools.partial(asyncio.start_server, self.accept), socks)
        log.info("sefeps RTU %s listening on %s:%s", self.rtu.id, self.bind, self.port)

    async def stop(self) -> None:
        srv, self._server = self._server, None
        self._stopping = True
        if srv is not None:
            srv.close()
        await self.stop_handshakes()
        for conn in list(self.conns):
            # cancel the connection's own tasks, not the stream handler task: on Python 3.11 a cancelled
            # handler task is logged as an error by asyncio.streams
            conn.closing = True
            for t in conn.tasks:
                t.cancel()
        if self.conns:
            await asyncio.gather(*self.conns.values(), return_exceptions=True)
        if srv is not None:
            await srv.wait_closed()

    def unanswered(self) -> int:
        """Results (and other control messages) queued and not yet written: the writer sends them first."""
        return sum(len(c.out) for c in self.conns if c.state != "closed")

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return int(self.rtu.listen_port or 0)
        return int(self._server.sockets[0].getsockname()[1])

    def image_entries(self) -> list[codec.Entry]:
        return [self.image[a] for a in sorted(self.image)]

    def _empty_image(self) -> dict[int, codec.Entry]:
        """Every monitored point (AI, DI, ACC) as a placeholder: a point with no value is in the image,
        marked IV, never left out (docs/sefeps.md)."""
        return {a: codec.placeholder(a) for a, k in self.catalog if k not in codec.COMMAND_KINDS}

    def load_image(self, updates: Sequence[Update]) -> None:
        self.image = self._empty_image()
        for u in updates:
            if u.fwd.rtu == self.rtu.id and u.fwd.addr in self.catalog_addrs:
                self.image[u.fwd.addr] = codec.entry(u.fwd, u.value)
        self.seq += 1
        self.history.reset(self.position)
        self.image_ready.set()
        for conn in self.conns:
            if conn.state == "open":
                conn.start_image()

    def apply(self, updates: Sequence[Update]) -> None:
        if len(self.history) + len(updates) > self.history.maxlen:
            self.make_room()
        events = self._events(updates)
        for ev in events:
            self.image[ev[1][0]] = ev[1]
            if self.history.append(ev[2], ev):
                self.once.problem(f"sefeps RTU {self.rtu.id} history", f"more than {self.history.maxlen} "
                                  "events not acknowledged by a known master: the oldest are dropped (such a "
                                  "master gets a full image when it comes back)")
        for conn in self.conns:
            conn.push(events)

    def _events(self, updates: Sequence[Update]) -> list[Event]:
        """The events of `updates` (this RTU's catalogued points), numbered on in this session."""
        out: list[Event] = []
        for u in updates:
            if u.fwd.rtu != self.rtu.id or u.fwd.addr not in self.catalog_addrs:
                continue
            self.seq += 1
            out.append((self.seq, codec.entry(u.fwd, u.value), u.sid))
        return out

    def history_max(self) -> int:
        return self.history.maxlen

    def backfill(self, since: Sid, past: Sequence[Update]) -> int:
        """The history behind the image just loaded (it reset the history), from the stream entries after
        `since` (ForwardServer.backfill). Their seqs follow the one the image took, which no master holds (a
        master connected now is sent the image later, with the newest seq), and live events follow them:
        the history's seqs stay contiguous, as an `ev` frame's (one seq, then one more per point) need. A
        resume of this session from before the image still gets an image (`events_after_seq`), one from
        inside these events the events after it."""
        if len(self.history):
            return 0
        self.history.start(self.position)  # as `advanced` does next: the history starts at the image
        return self.history.fill(since, ((ev[2], ev) for ev in self._events(past)))

    def clients(self) -> dict[str, dict[str, Any]]:
        return {c.peer: c.info() for c in self.conns}

    # -- resuming (fep_forwarder.resume) ----------------------------------------------------------------
    def advanced(self) -> None:
        self.history.start(self.position)
        for conn in self.conns:
            if conn.skip is not None and self.position >= conn.skip:
                conn.skip = None
                conn.wake.set()  # an image due after a resume waited for this node to reach the cursor
            if conn.cursor is not None and not conn.inflight and not conn.pending:
                conn.track()

    def prune(self, floor: Sid) -> None:
        self.history.prune(floor)

    def events_after(self, cursor: Sid) -> list[Event] | None:
        """Events after stream entry `cursor`, None when the history no longer covers it."""
        return self.history.since(cursor)

    def events_after_seq(self, seq: int) -> list[Event] | None:
        """Events after `seq` of this session, None when they are not all kept any more."""
        if seq > self.seq:
            return None
        if seq == self.seq:
            return []
        items = self.history.items
        if not items or items[0][1][0] > seq + 1:
            return None
        return [ev for _, ev in items if ev[0] > seq]

    def queue_depth(self) -> int:
        return sum(len(c.pending) for c in self.conns)

    def handshake_bound(self) -> tuple[float, str]:
        return float(self.opt["handshake_s"]), "handshake_s"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: OpeningSlot) -> None:
        """One master's connection (`ForwardServer.accept` admitted it): its opening ends with its hello."""
        conn = _Conn(self, reader, writer, slot)
        task = asyncio.current_task()
        assert task is not None
        self.conns[conn] = task
        wtask = asyncio.create_task(conn.write_loop())
        try:
            reader_task = asyncio.create_task(conn.read_loop())
            conn.tasks = [reader_task, wtask]
            try:
                await asyncio.wait({reader_task, wtask}, return_when=asyncio.FIRST_COMPLETED)
                if not wtask.done() and not self._stopping:  # the reader ended: peer closed, or fail() queued an err to send
                    conn.closing = True
                    conn.wake.set()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(wtask), 2.0)
            finally:
                reader_task.cancel()
                await asyncio.gather(reader_task, return_exceptions=True)
        finally:
            conn.state = "closed"
            wtask.cancel()
            for t in list(conn.commands.values()):
                t.cancel()
            await asyncio.gather(wtask, *conn.commands.values(), return_exceptions=True)
            close_once(writer)
            abort_unflushed(writer)
            try:  # TLS: a master that never answers close_notify would hold it for asyncio's 30 s shutdown timeout
                await asyncio.wait_for(writer.wait_closed(), UNFLUSHED_GRACE_S)
            except Exception:  # noqa: BLE001 - the timeout, or how the connection failed: let it go now
                writer.transport.abort()
            self.conns.pop(conn, None)
            log.info("sefeps RTU %s master %s left (%s)", self.rtu.id, conn.peer,
                     "server stopping" if self._stopping else self.left_why(writer, conn.why))
