"""se104s: the asyncio IEC 60870-5-104 server of one forwarding RTU.

Thin I/O around `codec`: one reader task per connection (frames in, commands out to the ControlSink), one
sender task (events and answers out within the k window), one timer task (t1/t2/t3). Events are encoded
once in `apply` and shared by every started connection's queue; while no connection has started data
transfer they wait in the server's buffer (IEC 104 redundancy group behaviour) and go, in order, to the
next master that sends STARTDT. docs/se104s.md says what happens when a queue or the buffer is full.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fepha.controls import time_tag_too_old
from fepha.logsetup import OnceLogger
from fepha.points import Quality, Value
from fepha.semodel.model import FwdPoint

from ..base import ForwardServer, Update
from . import codec as c

log = logging.getLogger("fep_forwarder.se104s")

DEFAULT_TYPES = {"AI": "M_ME_NC_1", "DI": "M_SP_NA_1", "ACC": "M_IT_NA_1"}
GROUP_KINDS = {1: ("DI",), 2: ("AI",)}  # interrogation groups: 1 status points, 2 measured values
# Event = (type id, ioa + element): encoded once, shared by every queue. Answer = (0, whole ASDU).
Item = tuple[int, bytes]
_ids = itertools.count(1)


@dataclass
class Selection:
    conn: int
    value: float
    type_id: int
    deadline: float


@dataclass(eq=False)
class Conn:
    """One master connection: sequence numbers, window, queue."""

    peer: str
    writer: asyncio.StreamWriter
    id: int = field(default_factory=lambda: next(_ids))
    active: bool = False
    vs: int = 0  # next send sequence number
    vr: int = 0  # next expected receive sequence number
    ack: int = 0  # oldest send sequence number the master has not acknowledged
    unacked: deque[tuple[int, float, list[Item]]] = field(default_factory=deque)
    queue: deque[Item] = field(default_factory=deque)
    events_queued: int = 0
    rx_unacked: int = 0
    rx_first_unacked: float = 0.0
    last_rx: float = field(default_factory=time.monotonic)
    test_sent: float | None = None
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    sent: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class Se104Server(ForwardServer):
    protocol = "se104s"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        self.k = int(o.get("k", 12))
        self.w = int(o.get("w", 8))
        self.t0 = float(o.get("t0", 30.0))
        self.t1 = float(o.get("t1", 15.0))
        self.t2 = float(o.get("t2", 10.0))
        self.t3 = float(o.get("t3", 20.0))
        self.queue_max = int(o.get("queue_max", 200_000))
        self.buffer_max = int(o.get("buffer_max", 200_000))
        self.select_timeout_s = float(o.get("select_timeout_s", 30.0))
        self.control_timeout_ms = o.get("control_timeout_ms")
        self.command_max_age_ms = int(o.get("command_max_age_ms", 10_000))
        self.ca = self.rtu.address
        self.origin = f"se104s:{self.rtu.id}:{self.node}"
        # keyed by (table, ZFID): ZFIDs are unique per forwarding table only
        self.monitor: dict[tuple[str, int], tuple[FwdPoint, int]] = {}
        self.commands: dict[int, tuple[FwdPoint, int]] = {}
        for f in self.rtu.forwards:
            if f.kind in ("DO", "AO"):
                self.commands[f.addr] = (f, c.COMMAND_BASE[c.TYPE_IDS[f.type or "C_SC_NA_1"]])
            else:
                self.monitor[(f.table, f.id)] = (f, c.TYPE_IDS[f.type or DEFAULT_TYPES[f.kind]])
        self.image: dict[tuple[str, int], Value] = {}
        self.has_image = False
        self.buffer: deque[Item] = deque()
        self.conns: set[Conn] = set()
        self.selected: dict[int, Selection] = {}
        self.counts: dict[str, int] = dict.fromkeys(
            ("events_sent", "events_buffered", "events_dropped", "controls", "controls_ok",
             "control_latency_ms_sum"), 0)
        self._server: asyncio.base_events.Server | None = None
        self._once = OnceLogger(log)
        # End of initialisation goes to the first master that starts data transfer.
        self.buffer.append((0, c.build_asdu(c.M_EI_NA_1, c.COT_INIT, self.ca, [(0, b"\x00")])))

    # --- ForwardServer -------------------------------------------------------------------------------

    async def start(self) -> None:
        port = 2404 if self.rtu.listen_port is None else self.rtu.listen_port
        self._server = await asyncio.start_server(self._serve, self.bind, port, ssl=self.tls,
                                                  ssl_handshake_timeout=self.t0 if self.tls else None,
                                                  reuse_address=True)
        log.info("se104s RTU %s listening on %s:%s%s (CA %s)", self.rtu.id, self.bind, port,
                 " with TLS" if self.tls else "", self.ca)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            self._close(conn, "server stopping")
        tasks = [t for conn in list(self.conns) for t in conn.tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def load_image(self, updates: Sequence[Update]) -> None:
        """Replace the image. After a reload or stream gap, values that differ from the previous image are
        also sent as spontaneous events: an IEC 104 master interrogates only when it connects."""
        old, had = self.image, self.has_image
        self.image = {}
        changed: list[Update] = []
        for u in updates:
            key = (u.fwd.table, u.fwd.id)
            if key not in self.monitor:
                continue
            self.image[key] = u.value
            if had and old.get(key) != u.value:
                changed.append(u)
        self.has_image = True
        if changed:
            self._emit(changed)

    def apply(self, updates: Sequence[Update]) -> None:
        ups = [u for u in updates if (u.fwd.table, u.fwd.id) in self.monitor]
        for u in ups:
            self.image[(u.fwd.table, u.fwd.id)] = u.value
        if ups:
            self._emit(ups)

    def clients(self) -> dict[str, dict[str, Any]]:
        return {conn.peer: {"active": conn.active, "since_ms": conn.since_ms, "queued": conn.events_queued,
                            "unacked": c.seq_diff(conn.vs, conn.ack), "sent": conn.sent,
                            "tls": self.tls is not None} for conn in self.conns}

    def queue_depth(self) -> int:
        return len(self.buffer) + sum(conn.events_queued for conn in self.conns)

    def counters(self) -> dict[str, int]:
        return dict(self.counts)

    # --- events ---------------------------------------------------------------------------------------

    def _event(self, u: Update) -> Item:
        f, type_id = self.monitor[(u.fwd.table, u.fwd.id)]
        v = u.value
        return type_id, c.ioa(f.addr) + c.element(type_id, v.value * f.coef, v.quality, v.ts_ms)

    def _emit(self, ups: Sequence[Update]) -> None:
        items = [self._event(u) for u in ups]
        active = [conn for conn in self.conns if conn.active]
        if not active:
            self._buffer(items)
            return
        for conn in active:
            conn.queue.extend(items)
            conn.events_queued += len(items)
            if conn.events_queued > self.queue_max:
                self._overflow(conn)
            else:
                conn.wake.set()

    def _buffer(self, items: Sequence[Item], front: bool = False) -> None:
        events = sum(1 for t, _ in items if t)
        self.counts["events_buffered"] += events
        if front:
            self.buffer.extendleft(reversed(items))
        else:
            self.buffer.extend(items)
        dropped = 0
        while len(self.buffer) > self.buffer_max:
            t, _ = self.buffer.popleft()
            dropped += 1 if t else 0
        if dropped:
            self.counts["events_dropped"] += dropped
            self._once.problem("buffer", f"se104s RTU {self.rtu.id}: no master started and the buffer of "
                               f"{self.buffer_max} events is full: dropping the oldest events")
        elif not self.buffer:
            self._once.clear("buffer")

    def _overflow(self, conn: Conn) -> None:
        dropped = conn.events_queued
        self.counts["events_dropped"] += dropped
        log.warning("se104s RTU %s: master %s does not keep up (%d events queued, limit %d): closing it; "
                    "it must reconnect and interrogate", self.rtu.id, conn.peer, dropped, self.queue_max)
        conn.queue.clear()
        conn.events_queued = 0
        conn.unacked.clear()
        self._close(conn, "queue full")

    # --- connections ---------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        conn = Conn(peer, writer)
        self.conns.add(conn)
        log.info("se104s RTU %s: master %s connected", self.rtu.id, peer)
        self._clients_changed()
        me = asyncio.current_task()
        if me is not None:
            conn.tasks.add(me)
        conn.tasks.add(asyncio.create_task(self._sender(conn), name=f"se104s-send-{peer}"))
        conn.tasks.add(asyncio.create_task(self._timers(conn), name=f"se104s-timers-{peer}"))
        frames = c.FrameReader()
        reason = "closed by the master"
        try:
            while not conn.closed:
                data = await reader.read(65536)
                if not data:
                    break
                conn.last_rx = time.monotonic()
                conn.test_sent = None
                for frame in frames.feed(data):
                    self._on_frame(conn, frame)
        except c.ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("se104s RTU %s: master %s sent a malformed frame (%s): closing that connection",
                        self.rtu.id, peer, exc)
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
        except asyncio.CancelledError:
            reason = "server stopping"
        except Exception as exc:  # noqa: BLE001 - a frame we failed to handle: that connection only
            reason = f"internal error: {exc!r}"
            log.error("se104s RTU %s: master %s: frame not handled (%r): closing that connection", self.rtu.id,
                      peer, exc)
        finally:
            self._close(conn, reason)
            others = [t for t in conn.tasks if t is not me]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            self.conns.discard(conn)
            self._clients_changed()
            try:
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (TimeoutError, ConnectionError, OSError, asyncio.CancelledError):
                pass

    def _clients_changed(self) -> None:
        if self.on_clients_changed is not None:
            self.on_clients_changed()

    def _close(self, conn: Conn, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        was_active = conn.active
        conn.active = False
        conn.wake.set()
        for sel_ioa in [a for a, s in self.selected.items() if s.conn == conn.id]:
            del self.selected[sel_ioa]
        if was_active:
            self._hand_back(conn)
        log.info("se104s RTU %s: master %s left (%s)", self.rtu.id, conn.peer, reason)
        try:
            conn.writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass

    def _hand_back(self, conn: Conn) -> None:
        """A started master stopped or left: if no other master is started, its unacknowledged and unsent
        events go back to the server buffer (front, in order) for the next master."""
        items = [it for _, _, sent in conn.unacked for it in sent]
        items += [it for it in conn.queue if it[0]]
        conn.unacked.clear()
        conn.queue.clear()
        conn.events_queued = 0
        if items and not any(o.active for o in self.conns if o is not conn):
            self._buffer(items, front=True)

    def _write(self, conn: Conn, data: bytes) -> None:
        if not conn.closed:
            conn.writer.write(data)

    # --- receiving -----------------------------------------------------------------------------------

    def _on_frame(self, conn: Conn, f: c.Frame) -> None:
        if f.kind == "U":
            self._on_u(conn, f.code)
            return
        self._on_ack(conn, f.nr)
        if f.kind == "S":
            return
        if f.ns != conn.vr:
            raise c.ProtocolError(f"send sequence number {f.ns}, expected {conn.vr}")
        conn.vr = (conn.vr + 1) & 0x7FFF
        if conn.rx_unacked == 0:
            conn.rx_first_unacked = time.monotonic()
        conn.rx_unacked += 1
        if conn.rx_unacked >= self.w:
            self._write(conn, c.s_frame(conn.vr))
            conn.rx_unacked = 0
        self._on_asdu(conn, c.parse_asdu(f.asdu))

    def _on_ack(self, conn: Conn, nr: int) -> None:
        outstanding = c.seq_diff(conn.vs, conn.ack)
        if c.seq_diff(nr, conn.ack) > outstanding:
            raise c.ProtocolError(f"acknowledges {nr}, only {conn.ack}..{conn.vs} were sent")
        while conn.unacked and c.seq_diff(nr, conn.unacked[0][0]) > 0 and \
                c.seq_diff(nr, conn.unacked[0][0]) <= outstanding:
            conn.unacked.popleft()
        conn.ack = nr
        conn.wake.set()

    def _on_u(self, conn: Conn, code: int) -> None:
        if code == c.STARTDT_ACT:
            self._write(conn, c.u_frame(c.STARTDT_CON))
            if not conn.active:
                conn.active = True
                self._clients_changed()
                if self.buffer:
                    items = list(self.buffer)
                    self.buffer.clear()
                    self._once.clear("buffer")
                    conn.queue.extendleft(reversed(items))
                    conn.events_queued += sum(1 for t, _ in items if t)
                conn.wake.set()
        elif code == c.STOPDT_ACT:
            if conn.active:
                conn.active = False
                self._hand_back(conn)
                self._clients_changed()
            self._write(conn, c.u_frame(c.STOPDT_CON))
        elif code == c.TESTFR_ACT:
            self._write(conn, c.u_frame(c.TESTFR_CON))
        elif code == c.TESTFR_CON:
            conn.test_sent = None
        else:
            raise c.ProtocolError(f"unexpected U frame 0x{code:02x} from a master")

    def _answer(self, conn: Conn, asdu: bytes) -> None:
        conn.queue.append((0, asdu))
        conn.wake.set()

    def _on_asdu(self, conn: Conn, a: c.Asdu) -> None:
        if a.ca not in (self.ca, 0xFFFF):
            self._answer(conn, c.mirror(a, c.COT_UNKNOWN_CA, True))
            return
        if a.type_id == c.C_IC_NA_1:
            self._interrogation(conn, a)
        elif a.type_id == c.C_CI_NA_1:
            self._counter_interrogation(conn, a)
        elif a.type_id == c.C_CS_NA_1:
            if a.cause != c.COT_ACT:
                self._answer(conn, c.mirror(a, c.COT_UNKNOWN_COT, True))
                return
            try:
                offset = c.cp56_ms(a.objects[0][1]) - int(time.time() * 1000)
            except ValueError:
                self._answer(conn, c.mirror(a, c.COT_ACTCON, True))
                return
            log.info("se104s RTU %s: clock synchronisation from %s (master - local = %d ms; the system clock "
                     "is NTP's, not changed)", self.rtu.id, conn.peer, offset)
            self._answer(conn, c.mirror(a, c.COT_ACTCON))
        elif a.type_id in c.COMMAND_BASE:
            self._command(conn, a)
        else:
            self._answer(conn, c.mirror(a, c.COT_UNKNOWN_TYPE, True))

    def _interrogation(self, conn: Conn, a: c.Asdu) -> None:
        qoi = a.objects[0][1][0] if a.objects[0][1] else 0
        if a.cause != c.COT_ACT or not 20 <= qoi <= 36:
            self._answer(conn, c.mirror(a, c.COT_ACTCON if a.cause == c.COT_ACT else c.COT_UNKNOWN_COT, True))
            return
        kinds = ("DI", "AI") if qoi == 20 else GROUP_KINDS.get(qoi - 20, ())
        self._answer(conn, c.mirror(a, c.COT_ACTCON))
        self._image_answer(conn, kinds, qoi)
        self._answer(conn, c.mirror(a, c.COT_ACTTERM))

    def _counter_interrogation(self, conn: Conn, a: c.Asdu) -> None:
        qcc = a.objects[0][1][0] if a.objects[0][1] else 0
        rqt = qcc & 0x3F
        if a.cause != c.COT_ACT or not 1 <= rqt <= 5:
            self._answer(conn, c.mirror(a, c.COT_ACTCON if a.cause == c.COT_ACT else c.COT_UNKNOWN_COT, True))
            return
        self._answer(conn, c.mirror(a, c.COT_ACTCON))
        if rqt == 5:  # general request: every counter; groups 1..4 hold none (docs/se104s.md)
            self._image_answer(conn, ("ACC",), c.COT_REQCOGEN)
        self._answer(conn, c.mirror(a, c.COT_ACTTERM))

    def _image_answer(self, conn: Conn, kinds: tuple[str, ...], cot: int) -> None:
        now = int(time.time() * 1000)
        by_type: dict[int, list[tuple[int, bytes]]] = {}
        for key, (f, type_id) in self.monitor.items():
            if f.kind not in kinds:
                continue
            v = self.image.get(key) or Value(0, int(Quality.IV), now)
            by_type.setdefault(type_id, []).append(
                (f.addr, c.element(type_id, v.value * f.coef, v.quality, v.ts_ms)))
        for type_id, objs in by_type.items():
            for asdu in c.pack(type_id, cot, self.ca, objs):
                self._answer(conn, asdu)

    # --- commands -------------------------------------------------------------------------------------

    def _command(self, conn: Conn, a: c.Asdu) -> None:
        if a.cause not in (c.COT_ACT, c.COT_DEACT):
            self._answer(conn, c.mirror(a, c.COT_UNKNOWN_COT, True))
            return
        con = c.COT_ACTCON if a.cause == c.COT_ACT else c.COT_DEACTCON
        if len(a.objects) != 1:
            self._answer(conn, c.mirror(a, con, True))
            return
        addr, elem = a.objects[0]
        point = self.commands.get(addr)
        if point is None:
            self._answer(conn, c.mirror(a, c.COT_UNKNOWN_IOA, True))
            return
        fwd, base = point
        if c.COMMAND_BASE[a.type_id] != base:
            self._answer(conn, c.mirror(a, c.COT_UNKNOWN_TYPE, True))
            return
        try:
            cmd = c.decode_command(a.type_id, elem)
        except ValueError as exc:
            log.warning("se104s RTU %s: command from %s on IOA %s refused: %s", self.rtu.id, conn.peer, addr, exc)
            self._answer(conn, c.mirror(a, con, True))
            return
        now = time.monotonic()
        sel = self.selected.get(addr)
        if sel is not None and sel.deadline < now and sel.conn != conn.id:
            del self.selected[addr]
            sel = None
        if a.cause == c.COT_DEACT:
            ok = sel is not None and sel.conn == conn.id
            if ok:
                del self.selected[addr]
            self._answer(conn, c.mirror(a, c.COT_DEACTCON, not ok))
            return
        if cmd.ts_ms is not None and time_tag_too_old(cmd.ts_ms, int(time.time() * 1000),
                                                      self.command_max_age_ms):
            log.warning("se104s RTU %s: command from %s on IOA %s has a time tag older than %d ms: refused",
                        self.rtu.id, conn.peer, addr, self.command_max_age_ms)
            self._answer(conn, c.mirror(a, c.COT_ACTCON, True))
            return
        if sel is not None and sel.conn != conn.id:  # selected by another master
            self._answer(conn, c.mirror(a, c.COT_ACTCON, True))
            return
        if cmd.select:
            self.selected[addr] = Selection(conn.id, cmd.value, base, now + self.select_timeout_s)
            self._answer(conn, c.mirror(a, c.COT_ACTCON))
            return
        if sel is not None:
            del self.selected[addr]
            if sel.deadline < now or sel.value != cmd.value:
                log.warning("se104s RTU %s: execute from %s on IOA %s %s: refused", self.rtu.id, conn.peer,
                            addr, "after the select timed out" if sel.deadline < now else
                            "with another value than selected")
                self._answer(conn, c.mirror(a, c.COT_ACTCON, True))
                return
        task = asyncio.create_task(self._execute(conn, a, fwd, cmd.value / fwd.coef))
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    async def _execute(self, conn: Conn, a: c.Asdu, fwd: FwdPoint, value: float) -> None:
        self.counts["controls"] += 1
        t0 = time.monotonic()
        out = await self.controls.execute(fwd, value, f"{self.origin}:{conn.peer}", self.control_timeout_ms)
        self.counts["control_latency_ms_sum"] += int((time.monotonic() - t0) * 1000)
        if out.ok:
            self.counts["controls_ok"] += 1
            self._answer(conn, c.mirror(a, c.COT_ACTCON))
            self._answer(conn, c.mirror(a, c.COT_ACTTERM))
        else:
            log.warning("se104s RTU %s: control from %s on IOA %s: %s %s", self.rtu.id, conn.peer, fwd.addr,
                        out.state, out.reason)
            self._answer(conn, c.mirror(a, c.COT_ACTCON, True))

    # --- sending ----------------------------------------------------------------------------------------

    async def _sender(self, conn: Conn) -> None:
        try:
            while not conn.closed:
                await conn.wake.wait()
                conn.wake.clear()
                wrote = False
                while conn.queue and not conn.closed and c.seq_diff(conn.vs, conn.ack) < self.k:
                    if not conn.active and conn.queue[0][0]:
                        break
                    asdu, items = self._next_asdu(conn)
                    self._write(conn, c.i_frame(conn.vs, conn.vr, asdu))
                    conn.unacked.append((conn.vs, time.monotonic(), items))
                    conn.vs = (conn.vs + 1) & 0x7FFF
                    conn.rx_unacked = 0
                    wrote = True
                if wrote and not conn.closed:
                    await conn.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._close(conn, f"send failed: {exc}")

    def _next_asdu(self, conn: Conn) -> tuple[bytes, list[Item]]:
        """Pop the next ASDU: an answer as is, or a run of events of one type packed into one ASDU."""
        q = conn.queue
        type_id, data = q.popleft()
        if not type_id:
            return data, []
        items = [(type_id, data)]
        limit = c.per_asdu(type_id)
        while q and len(items) < limit and q[0][0] == type_id:
            items.append(q.popleft())
        conn.events_queued -= len(items)
        conn.sent += len(items)
        self.counts["events_sent"] += len(items)
        asdu = c.header(type_id, len(items), c.COT_SPONT, self.ca) + b"".join(d for _, d in items)
        return asdu, items

    async def _timers(self, conn: Conn) -> None:
        tick = max(0.02, min(self.t1, self.t2, self.t3) / 10)
        while not conn.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if conn.unacked and now - conn.unacked[0][1] > self.t1:
                log.warning("se104s RTU %s: master %s did not acknowledge within t1=%ss: closing",
                            self.rtu.id, conn.peer, self.t1)
                self._close(conn, "t1 expired")
                return
            if conn.test_sent is not None and now - conn.test_sent > self.t1:
                self._close(conn, "no TESTFR con within t1")
                return
            if conn.rx_unacked and now - conn.rx_first_unacked >= self.t2:
                self._write(conn, c.s_frame(conn.vr))
                conn.rx_unacked = 0
            if conn.test_sent is None and now - conn.last_rx >= self.t3:
                self._write(conn, c.u_frame(c.TESTFR_ACT))
                conn.test_sent = now
