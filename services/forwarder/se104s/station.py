"""se104s station: the protocol logic of one forwarding RTU as an IEC 104 controlled station, no sockets.

What a master sees of the RTU is decided here: the image and interrogations (GI, counter interrogation),
clock synchronisation, commands (direct and select-before-operate, time tag checks), spontaneous events
and their buffering. Each master connection is a `Session` holding its `fepha.iec104.link.Link` (role
SERVER) and its queue. The transport (server.py) feeds received bytes to `receive`, runs `tick`, writes what
`pump` and the link return, and runs the controls `receive` hands back through `execute`.

Events are encoded once in `apply` and shared by every started session's queue; while no session has
started data transfer they wait in the station's buffer (IEC 104 redundancy group behaviour) and go, in
order, to the next master that sends STARTDT. docs/se104s.md says what happens when a queue or the buffer
is full.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fepha.controls import time_tag_too_old
from fepha.iec104 import codec as c
from fepha.iec104.link import Acked, AsduIn, Link, LinkParams, Role, Started, Stopped
from fepha.logsetup import OnceLogger
from fepha.points import Quality, Value
from fepha.semodel.model import FwdPoint, Rtu

from ..base import ControlSink, Update

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
class Session:
    """One master connection: its link and its queue of events and answers."""

    peer: str
    link: Link
    id: int = field(default_factory=lambda: next(_ids))
    queue: deque[Item] = field(default_factory=deque)
    events_queued: int = 0
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    sent: int = 0
    closed: bool = False

    @property
    def active(self) -> bool:
        """Data transfer started (STARTDT) and the connection not closed."""
        return self.link.started and not self.closed


@dataclass(frozen=True, slots=True)
class Control:
    """A command accepted for execution: the transport runs `Station.execute` for it."""

    session: Session
    asdu: c.Asdu
    fwd: FwdPoint
    value: float  # source units (COEF removed)


def _nothing(*_: Any) -> None:
    return None


class Station:
    """One forwarding RTU's IEC 104 station. `wake(session)`: the session has something to send (the
    transport calls `pump`); `closed(session)`: the station closed it (the transport closes the socket);
    `clients_changed()`: a master connected, left, started or stopped."""

    def __init__(self, rtu: Rtu, options: dict[str, Any], controls: ControlSink, origin: str,
                 wake: Callable[[Session], None] = _nothing, closed: Callable[[Session], None] = _nothing,
                 clients_changed: Callable[[], None] = _nothing) -> None:
        o = options
        self.rtu = rtu
        self.link_params = LinkParams.from_options(o)
        self.queue_max = int(o.get("queue_max", 200_000))
        self.buffer_max = int(o.get("buffer_max", 200_000))
        self.select_timeout_s = float(o.get("select_timeout_s", 30.0))
        self.control_timeout_ms = o.get("control_timeout_ms")
        self.command_max_age_ms = int(o.get("command_max_age_ms", 10_000))
        self.controls = controls
        self.origin = origin
        self.wake, self.on_closed, self.clients_changed = wake, closed, clients_changed
        self.ca = rtu.address
        # keyed by (table, ZFID): ZFIDs are unique per forwarding table only
        self.monitor: dict[tuple[str, int], tuple[FwdPoint, int]] = {}
        self.commands: dict[int, tuple[FwdPoint, int]] = {}
        for f in rtu.forwards:
            if f.kind in ("DO", "AO"):
                self.commands[f.addr] = (f, c.COMMAND_BASE[c.TYPE_IDS[f.type or "C_SC_NA_1"]])
            else:
                self.monitor[(f.table, f.id)] = (f, c.TYPE_IDS[f.type or DEFAULT_TYPES[f.kind]])
        self.image: dict[tuple[str, int], Value] = {}
        self.has_image = False
        self.buffer: deque[Item] = deque()
        self.sessions: set[Session] = set()
        self.selected: dict[int, Selection] = {}
        self.counts: dict[str, int] = dict.fromkeys(
            ("events_sent", "events_buffered", "events_dropped", "controls", "controls_ok",
             "control_latency_ms_sum"), 0)
        self._once = OnceLogger(log)
        # End of initialisation goes to the first master that starts data transfer.
        self.buffer.append((0, c.build_asdu(c.M_EI_NA_1, c.COT_INIT, self.ca, [(0, b"\x00")])))

    # --- image and events ----------------------------------------------------------------------------

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
        return {s.peer: {"active": s.active, "since_ms": s.since_ms, "queued": s.events_queued,
                         "unacked": s.link.in_flight, "sent": s.sent} for s in self.sessions}

    def queue_depth(self) -> int:
        return len(self.buffer) + sum(s.events_queued for s in self.sessions)

    def _event(self, u: Update) -> Item:
        f, type_id = self.monitor[(u.fwd.table, u.fwd.id)]
        v = u.value
        return type_id, c.ioa(f.addr) + c.element(type_id, v.value * f.coef, v.quality, v.ts_ms)

    def _emit(self, ups: Sequence[Update]) -> None:
        items = [self._event(u) for u in ups]
        active = [s for s in self.sessions if s.active]
        if not active:
            self._buffer(items)
            return
        for s in active:
            s.queue.extend(items)
            s.events_queued += len(items)
            if s.events_queued > self.queue_max:
                self._overflow(s)
            else:
                self.wake(s)

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

    def _overflow(self, s: Session) -> None:
        dropped = s.events_queued
        self.counts["events_dropped"] += dropped
        log.warning("se104s RTU %s: master %s does not keep up (%d events queued, limit %d): closing it; "
                    "it must reconnect and interrogate", self.rtu.id, s.peer, dropped, self.queue_max)
        s.queue.clear()
        s.events_queued = 0
        s.link.release_unacked()
        self.close(s, "queue full")

    # --- sessions ------------------------------------------------------------------------------------

    def connect(self, peer: str, now: float) -> Session:
        s = Session(peer, Link(Role.SERVER, self.link_params, now))
        self.sessions.add(s)
        log.info("se104s RTU %s: master %s connected", self.rtu.id, peer)
        self.clients_changed()
        return s

    def close(self, s: Session, reason: str) -> None:
        """The session ends (any reason): its selections go, its events go back to the buffer if no other
        master is started. Idempotent; `disconnect` removes it from the client list afterwards."""
        if s.closed:
            return
        was_active = s.active
        s.closed = True
        for sel_ioa in [a for a, sel in self.selected.items() if sel.conn == s.id]:
            del self.selected[sel_ioa]
        if was_active:
            self._hand_back(s)
        log.info("se104s RTU %s: master %s left (%s)", self.rtu.id, s.peer, reason)
        self.on_closed(s)

    def disconnect(self, s: Session) -> None:
        self.sessions.discard(s)
        self.clients_changed()

    def _hand_back(self, s: Session) -> None:
        """A started master stopped or left: if no other master is started, its unacknowledged and unsent
        events go back to the station buffer (front, in order) for the next master."""
        items = [it for sent in s.link.release_unacked() for it in sent]
        items += [it for it in s.queue if it[0]]
        s.queue.clear()
        s.events_queued = 0
        if items and not any(o.active for o in self.sessions if o is not s):
            self._buffer(items, front=True)

    # --- receiving -----------------------------------------------------------------------------------

    def receive(self, s: Session, data: bytes, now: float) -> list[Control]:
        """Octets from the master; returns the controls to run. Raises codec.ProtocolError for a frame
        that breaks the standard (the transport closes that connection only)."""
        controls: list[Control] = []
        for ev in s.link.receive(data, now):
            if isinstance(ev, AsduIn):
                self._on_asdu(s, c.parse_asdu(ev.asdu), controls)
            elif isinstance(ev, Started):
                self.clients_changed()
                if self.buffer:
                    items = list(self.buffer)
                    self.buffer.clear()
                    self._once.clear("buffer")
                    s.queue.extendleft(reversed(items))
                    s.events_queued += sum(1 for t, _ in items if t)
                self.wake(s)
            elif isinstance(ev, Stopped):
                self._hand_back(s)
                self.clients_changed()
            elif isinstance(ev, Acked):
                self.wake(s)
        return controls

    def tick(self, s: Session, now: float) -> None:
        """The link's timers; raises LinkTimeout when t1 expired (the transport closes the connection)."""
        s.link.tick(now)

    def _answer(self, s: Session, asdu: bytes) -> None:
        s.queue.append((0, asdu))
        self.wake(s)

    def _on_asdu(self, s: Session, a: c.Asdu, controls: list[Control]) -> None:
        if a.ca not in (self.ca, 0xFFFF):
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_CA, True))
            return
        if a.type_id == c.C_IC_NA_1:
            self._interrogation(s, a)
        elif a.type_id == c.C_CI_NA_1:
            self._counter_interrogation(s, a)
        elif a.type_id == c.C_CS_NA_1:
            if a.cause != c.COT_ACT:
                self._answer(s, c.mirror(a, c.COT_UNKNOWN_COT, True))
                return
            try:
                offset = c.cp56_ms(a.objects[0][1]) - int(time.time() * 1000)
            except ValueError:
                self._answer(s, c.mirror(a, c.COT_ACTCON, True))
                return
            log.info("se104s RTU %s: clock synchronisation from %s (master - local = %d ms; the system clock "
                     "is NTP's, not changed)", self.rtu.id, s.peer, offset)
            self._answer(s, c.mirror(a, c.COT_ACTCON))
        elif a.type_id in c.COMMAND_BASE:
            self._command(s, a, controls)
        else:
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_TYPE, True))

    def _interrogation(self, s: Session, a: c.Asdu) -> None:
        qoi = a.objects[0][1][0] if a.objects[0][1] else 0
        if a.cause != c.COT_ACT or not 20 <= qoi <= 36:
            self._answer(s, c.mirror(a, c.COT_ACTCON if a.cause == c.COT_ACT else c.COT_UNKNOWN_COT, True))
            return
        kinds = ("DI", "AI") if qoi == 20 else GROUP_KINDS.get(qoi - 20, ())
        self._answer(s, c.mirror(a, c.COT_ACTCON))
        self._image_answer(s, kinds, qoi)
        self._answer(s, c.mirror(a, c.COT_ACTTERM))

    def _counter_interrogation(self, s: Session, a: c.Asdu) -> None:
        qcc = a.objects[0][1][0] if a.objects[0][1] else 0
        rqt = qcc & 0x3F
        if a.cause != c.COT_ACT or not 1 <= rqt <= 5:
            self._answer(s, c.mirror(a, c.COT_ACTCON if a.cause == c.COT_ACT else c.COT_UNKNOWN_COT, True))
            return
        self._answer(s, c.mirror(a, c.COT_ACTCON))
        if rqt == 5:  # general request: every counter; groups 1..4 hold none (docs/se104s.md)
            self._image_answer(s, ("ACC",), c.COT_REQCOGEN)
        self._answer(s, c.mirror(a, c.COT_ACTTERM))

    def _image_answer(self, s: Session, kinds: tuple[str, ...], cot: int) -> None:
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
                self._answer(s, asdu)

    # --- commands -------------------------------------------------------------------------------------

    def _command(self, s: Session, a: c.Asdu, controls: list[Control]) -> None:
        if a.cause not in (c.COT_ACT, c.COT_DEACT):
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_COT, True))
            return
        con = c.COT_ACTCON if a.cause == c.COT_ACT else c.COT_DEACTCON
        if len(a.objects) != 1:
            self._answer(s, c.mirror(a, con, True))
            return
        addr, elem = a.objects[0]
        point = self.commands.get(addr)
        if point is None:
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_IOA, True))
            return
        fwd, base = point
        if c.COMMAND_BASE[a.type_id] != base:
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_TYPE, True))
            return
        try:
            cmd = c.decode_command(a.type_id, elem)
        except ValueError as exc:
            log.warning("se104s RTU %s: command from %s on IOA %s refused: %s", self.rtu.id, s.peer, addr, exc)
            self._answer(s, c.mirror(a, con, True))
            return
        now = time.monotonic()
        sel = self.selected.get(addr)
        if sel is not None and sel.deadline < now and sel.conn != s.id:
            del self.selected[addr]
            sel = None
        if a.cause == c.COT_DEACT:
            ok = sel is not None and sel.conn == s.id
            if ok:
                del self.selected[addr]
            self._answer(s, c.mirror(a, c.COT_DEACTCON, not ok))
            return
        if cmd.ts_ms is not None and time_tag_too_old(cmd.ts_ms, int(time.time() * 1000),
                                                      self.command_max_age_ms):
            log.warning("se104s RTU %s: command from %s on IOA %s has a time tag older than %d ms: refused",
                        self.rtu.id, s.peer, addr, self.command_max_age_ms)
            self._answer(s, c.mirror(a, c.COT_ACTCON, True))
            return
        if sel is not None and sel.conn != s.id:  # selected by another master
            self._answer(s, c.mirror(a, c.COT_ACTCON, True))
            return
        if cmd.select:
            self.selected[addr] = Selection(s.id, cmd.value, base, now + self.select_timeout_s)
            self._answer(s, c.mirror(a, c.COT_ACTCON))
            return
        if sel is not None:
            del self.selected[addr]
            if sel.deadline < now or sel.value != cmd.value:
                log.warning("se104s RTU %s: execute from %s on IOA %s %s: refused", self.rtu.id, s.peer,
                            addr, "after the select timed out" if sel.deadline < now else
                            "with another value than selected")
                self._answer(s, c.mirror(a, c.COT_ACTCON, True))
                return
        controls.append(Control(s, a, fwd, cmd.value / fwd.coef))

    async def execute(self, ctl: Control) -> None:
        """Run an accepted command through the ControlSink; positive ACT_CON + ACT_TERM only after the
        device accepted it, a negative ACT_CON otherwise."""
        s, a, fwd = ctl.session, ctl.asdu, ctl.fwd
        self.counts["controls"] += 1
        t0 = time.monotonic()
        out = await self.controls.execute(fwd, ctl.value, f"{self.origin}:{s.peer}", self.control_timeout_ms)
        self.counts["control_latency_ms_sum"] += int((time.monotonic() - t0) * 1000)
        if out.ok:
            self.counts["controls_ok"] += 1
            self._answer(s, c.mirror(a, c.COT_ACTCON))
            self._answer(s, c.mirror(a, c.COT_ACTTERM))
        else:
            log.warning("se104s RTU %s: control from %s on IOA %s: %s %s", self.rtu.id, s.peer, fwd.addr,
                        out.state, out.reason)
            self._answer(s, c.mirror(a, c.COT_ACTCON, True))

    # --- sending ----------------------------------------------------------------------------------------

    def pump(self, s: Session, now: float) -> bytes:
        """Move queued answers (always) and events (once started) into I frames while the k window
        allows; returns the octets to write (with any S/U frame the link owes)."""
        link = s.link
        while s.queue and not s.closed and link.window_open:
            if not s.active and s.queue[0][0]:
                break
            asdu, items = self._next_asdu(s)
            link.send(asdu, now, items)
        return link.data_to_send()

    def _next_asdu(self, s: Session) -> tuple[bytes, list[Item]]:
        """Pop the next ASDU: an answer as is, or a run of events of one type packed into one ASDU."""
        q = s.queue
        type_id, data = q.popleft()
        if not type_id:
            return data, []
        items = [(type_id, data)]
        limit = c.per_asdu(type_id)
        while q and len(items) < limit and q[0][0] == type_id:
            items.append(q.popleft())
        s.events_queued -= len(items)
        s.sent += len(items)
        self.counts["events_sent"] += len(items)
        asdu = c.header(type_id, len(items), c.COT_SPONT, self.ca) + b"".join(d for _, d in items)
        return asdu, items
