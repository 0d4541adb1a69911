"""se104s station: the protocol logic of one forwarding RTU as an IEC 104 controlled station, no sockets.

What a master sees of the RTU is decided here: the image and interrogations (GI, counter interrogation),
clock synchronisation, commands (direct and select-before-operate, time tag checks), spontaneous events
and their buffering. Each master connection is a `Session` holding its `fepha.iec104.link.Link` (role
SERVER) and its queue. The transport (server.py) feeds received bytes to `receive`, runs `tick`, writes what
`pump` and the link return, and runs the controls `receive` hands back through `execute`.

Events are encoded once in `apply`, each tagged with the change-stream entry it came from, and shared by
every started session's queue. The station keeps them in a `History` as long as a known master has not
acknowledged them (the IEC 104 redundancy-group buffer, limited to what masters still need): a master that
sends STARTDT is resumed after the position it acknowledged last, on this node or the other one (the
transport fetches it from Redis and calls `resume`); a master new to the system, or whose position is
older than the history, gets end of initialisation and interrogates. docs/se104s.md says what happens
when a queue or the history is full, and the duplicates a switchover may bring (at most k APDUs).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fepha.controls import time_tag_too_old
from fepha.iec104 import codec as c
from fepha.iec104.link import Acked, AsduIn, Link, LinkParams, Role, Started, Stopped
from fepha.logsetup import OnceLogger
from fepha.points import Quality, Value
from fepha.semodel.model import FwdPoint, Rtu

from ..allow import peer_host
from ..base import ControlOutcome, Counters, Update
from ..resume import ZERO, History, Sid, acked_cursor
from ..trace import TRACE

log = logging.getLogger("fep_forwarder.se104s")

DEFAULT_TYPES = {"AI": "M_ME_NC_1", "DI": "M_SP_NA_1", "ACC": "M_IT_NA_1"}
GROUP_KINDS = {1: ("DI",), 2: ("AI",)}  # interrogation groups: 1 status points, 2 measured values
# Event = (type id, ioa + element, stream entry): encoded once, shared by every queue.
# Answer = (0, whole ASDU, ZERO).
Item = tuple[int, bytes, Sid]
_ids = itertools.count(1)
CONTROLS_MAX = 64
"""Commands of one master executing at once; one more gets a negative ACT_CON at once (sefeps: 16 per
connection). A master flooding valid executes had every one of them queued for the device together."""
ANSWERS_MAX = 20_000
"""Answer ASDUs (confirmations, interrogated and read data) queued unsent for one master before it is closed:
a master that sends requests without acknowledging what it is sent had the server queue their answers
without bound (the k window holds them; only S and U frames reach its socket). An interrogation's answer
is built as the master takes it (`BUILD_AHEAD`), unless other answers pile up too (`Station.build_due`)."""
SLICE_POINTS = 1_000
"""Points of an image answer (interrogation, background scan) built at a time: the transport builds the next
slice after the event loop has served the other connections (`Station.build`): about 1 ms each. A station
interrogation of a 10,000-point RTU built at once held the loop about 9 ms."""
BUILD_AHEAD = 64
"""ASDUs of image answers (interrogated data, background scans) queued unsent for a master (or twice its k,
if more) below which the transport builds the next slice (`Station.build_due`): the answer is built as the
master takes it, not all at once ahead of it, so a deactivation stops what it has not been sent yet, and its
values are those of when they are sent. Built back to back, the 5 slices of a 5,000-point RTU were all
queued before the master's DEACT sent on its ACT_CON was read."""
_ENDING = -1
"""`Session.in_progress` of an interrogation deactivated whose positive DEACT_CON is not sent yet: no
qualifier matches it (another DEACT gets a negative DEACT_CON), and another interrogation of its type is
still refused until that DEACT_CON is sent."""
# station-wide commands (IOA 0) and the causes each takes
_STATION_WIDE = {c.C_IC_NA_1: (c.COT_ACT, c.COT_DEACT), c.C_CI_NA_1: (c.COT_ACT, c.COT_DEACT),
                 c.C_CS_NA_1: (c.COT_ACT,), c.C_TS_TA_1: (c.COT_ACT,), c.C_RP_NA_1: (c.COT_ACT,)}
# answers that carry no value of the process and go ahead of the events queued for their master (`_answer`):
# those of commands, clock synchronisation, test and reset process, and every refusal with cause 44 .. 47
_AHEAD_TYPES = frozenset((*c.COMMAND_BASE, c.C_CS_NA_1, c.C_TS_TA_1, c.C_RP_NA_1))
_AHEAD_CAUSES = frozenset(range(c.COT_UNKNOWN_TYPE, c.COT_UNKNOWN_IOA + 1))
# and the ACT_CON (positive or negative) of an interrogation or counter interrogation: it carries no value,
# and a master times the ACT_CON of its interrogation out within seconds; the values and the ACT_TERM keep
# their place behind the events queued before the interrogation; so does a positive DEACT_CON (it ends the
# interrogation, after the values already queued), while a negative one (a refusal, it ends nothing) goes
# ahead unless one of its type is in progress (`Station._deactivate`)
_AHEAD_CONFIRMED = frozenset((c.C_IC_NA_1, c.C_CI_NA_1))
_IMAGE_CAUSES = frozenset((c.COT_BACKGROUND, *range(c.COT_INROGEN, c.COT_INROGEN + 17),
                           *range(c.COT_REQCOGEN, c.COT_REQCOGEN + 5)))


def _goes_ahead(asdu: bytes) -> bool:
    """An answer that goes ahead of the events queued for its master (`Station._answer`)."""
    cause = asdu[2] & 0x3F
    return (asdu[0] in _AHEAD_TYPES or cause in _AHEAD_CAUSES
            or (asdu[0] in _AHEAD_CONFIRMED and (cause == c.COT_ACTCON
                                                 or (cause == c.COT_DEACTCON and bool(asdu[2] & c.NEGATIVE)))))


def _interrogation_item(asdu: bytes) -> bool:
    """An answer ASDU that belongs to an interrogation or a scan: its values (cause 2, 20 .. 41) or the
    interrogation's own confirmation and termination."""
    return asdu[0] in (c.C_IC_NA_1, c.C_CI_NA_1) or (asdu[2] & 0x3F) in _IMAGE_CAUSES


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
    # command answers to send after the answers at the head of `queue`, before its first event (`_answer`)
    ahead: deque[Item] = field(default_factory=deque)
    inflight: deque[list[Item]] = field(default_factory=deque)  # events of each unacknowledged I frame
    awaiting_cursor: bool = False  # started; the transport fetches its cursor and calls Station.resume
    resumed: bool = False  # started and resumed: events flow
    cursor: Sid | None = None  # what this master acknowledged, as a stream entry
    skip: Sid | None = None  # resumed at a cursor this node's stream has not reached yet
    # image answers (kinds, cause, the ASDU to send after them) built once it is resumed and `skip` is clear
    held: list[tuple[tuple[str, ...], int, bytes | None, int]] = field(default_factory=list)
    # image answers released and being built, a slice at a time (`Station.build`): [next point, held entry]
    building: deque[list[Any]] = field(default_factory=deque)
    # interrogation types (C_IC_NA_1, C_CI_NA_1) confirmed to this master and not ended yet (its ACT_TERM or
    # positive DEACT_CON not sent), each with its qualifier (QOI, QCC; `_ENDING` once deactivated): another
    # of the same type is refused (`Station._busy`), a DEACT of the same qualifier stops it (`_deactivate`)
    in_progress: dict[int, int] = field(default_factory=dict)
    interrogations_refused: int = 0
    events_queued: int = 0
    image_queued: int = 0  # ASDUs of image answers (interrogated data, background scan) queued and not sent
    controls: int = 0  # commands accepted and not answered yet (`Station.execute`)
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    sent: int = 0
    closed: bool = False
    group: str | None = None  # single_active: every connection is one redundancy group, one cursor

    @property
    def answers_waiting(self) -> int:
        """Answers queued and not sent yet (every queued item that is not an event, `ahead` included)."""
        return len(self.queue) + len(self.ahead) - self.events_queued

    @property
    def active(self) -> bool:
        """Data transfer started (STARTDT) and the connection not closed."""
        return self.link.started and not self.closed

    @property
    def identity(self) -> str:
        """The master across connections and nodes: its address (or the station's one redundancy group)."""
        return self.group or peer_host(tuple(self.peer.rsplit(":", 1)))

    def first_outstanding(self) -> Sid | None:
        """The stream entry of the oldest event sent or queued and not acknowledged."""
        for items in self.inflight:
            if items:
                return items[0][2]
        return next((it[2] for it in self.queue if it[0]), None)


@dataclass(frozen=True, slots=True)
class Control:
    """A command accepted for execution: the transport runs `Station.execute` for it."""

    session: Session
    asdu: c.Asdu
    fwd: FwdPoint
    value: float  # source units (COEF removed)
    not_after_ms: int | None = None  # a time-tagged command: its tag + command_max_age_ms (wall clock)


def _nothing(*_: Any) -> None:
    return None


class Station:
    """One forwarding RTU's IEC 104 station. `wake(session)`: the session has something to send (the
    transport calls `pump`); `closed(session)`: the station closed it (the transport closes the socket);
    `clients_changed()`: a master connected, left, started or stopped."""

    def __init__(self, rtu: Rtu, options: dict[str, Any],
                 run_control: Callable[..., Awaitable[ControlOutcome]], origin: str,
                 wake: Callable[[Session], None] = _nothing, closed: Callable[[Session], None] = _nothing,
                 clients_changed: Callable[[], None] = _nothing,
                 acked: Callable[[str, Sid], None] = _nothing, counts: Counters | None = None,
                 make_room: Callable[[], None] = _nothing, refusing: Callable[[], bool] = lambda: False) -> None:
        o = options
        self.rtu = rtu
        self.link_params = LinkParams.from_options(o)
        self.queue_max = int(o.get("queue_max", 200_000))
        self.answers_max = int(o.get("answers_max", ANSWERS_MAX))
        self.controls_max = int(o.get("controls_max", CONTROLS_MAX))
        self.buffer_max = int(o.get("buffer_max", 200_000))
        self.select_timeout_s = float(o.get("select_timeout_s", 30.0))
        self.command_max_age_ms = int(o.get("command_max_age_ms", 10_000))
        # One started connection at a time, as a field RTU's redundancy group (tools/rtu104sim.py): all its
        # connections share one cursor, so a connection that starts resumes where the stopped one was
        # acknowledged. se104s serves every started master, each with its own.
        self.single_active = bool(o.get("single_active", False))
        # Interrogated data (20 .. 36) and background scans (2) as the type without time tag, as IEC
        # 60870-5-101's table of causes per type has it; off by default: masters that keep one type per IOA
        # (c104 and the SCADA point lists keyed that way) drop the other form (docs/se104s.md).
        self.untagged_answers = bool(o.get("untagged_answers", False))
        self.run_control = run_control
        self.origin = origin
        self.wake, self.on_closed, self.clients_changed, self.acked = wake, closed, clients_changed, acked
        self.make_room = make_room
        self.refusing = refusing  # the forwarder's planned stop: a select is refused too (ForwardServer.drain)
        self.position: Sid = ZERO  # the newest stream entry handed to the station (ForwardServer.advance)
        self.ca = rtu.address
        # keyed by (table, ZFID): ZFIDs are unique per forwarding table only
        self.monitor: dict[tuple[str, int], tuple[FwdPoint, int]] = {}
        self.commands: dict[int, tuple[FwdPoint, int]] = {}
        self.readable: dict[int, tuple[str, int]] = {}  # IOA -> `monitor` key of a status or measured point
        for f in rtu.forwards:
            if f.kind in ("DO", "AO"):
                self.commands[f.addr] = (f, c.COMMAND_BASE[c.TYPE_IDS[f.type or "C_SC_NA_1"]])
            else:
                self.monitor[(f.table, f.id)] = (f, c.TYPE_IDS[f.type or DEFAULT_TYPES[f.kind]])
                if f.kind in ("DI", "AI"):
                    self.readable.setdefault(f.addr, (f.table, f.id))
        self._points = list(self.monitor.items())  # in the order image answers are built, a slice at a time
        self.image: dict[tuple[str, int], Value] = {}
        self.has_image = False
        self.history: History[Item] = History(self.buffer_max)
        self.sessions: set[Session] = set()
        self.selected: dict[int, Selection] = {}
        self.counts = counts if counts is not None else Counters()
        self._once = OnceLogger(log)

    # --- image and events ----------------------------------------------------------------------------

    def load_image(self, updates: Sequence[Update]) -> None:
        """Replace the image. After a reload or stream gap, values that differ from the previous image are
        also sent as spontaneous events: an IEC 104 master interrogates only when it connects. Events
        before the image may be missing from the history now: a master behind it interrogates."""
        old, had = self.image, self.has_image
        self.image = {}
        changed: list[Update] = []
        for u in updates:
            key = (u.fwd.table, u.fwd.id)
            if key not in self.monitor:
                continue
            self.image[key] = u.value
            if had and old.get(key) != u.value:
                changed.append(Update(u.fwd, u.value, self.position))
        self.has_image = True
        self.history.start(self.position)
        if had:
            self.history.reset(self.position)
        if changed:
            self._emit(changed)

    def apply(self, updates: Sequence[Update]) -> None:
        """Update the image and send each update as a spontaneous event, except a stored value sent again
        that this point's type shows exactly as before (`same_object`)."""
        ups = self._changes(updates, self.image)
        if ups:
            self._emit(ups)

    def _changes(self, updates: Sequence[Update], image: dict[tuple[str, int], Value]) -> list[Update]:
        """The updates of this station's points that are events against `image` (updated on the way)."""
        ups = []
        for u in updates:
            key = (u.fwd.table, u.fwd.id)
            if key not in self.monitor:
                continue
            prev = image.get(key)
            image[key] = u.value
            if prev is None or not self.same_object(key, prev, u.value):
                ups.append(u)
        return ups

    def backfill(self, since: Sid, past: Sequence[Update]) -> int:
        """The history behind the image, from the stream entries after `since` (ForwardServer.backfill):
        the events the live path (`apply`) would have made of them, queued to no one."""
        items = [self._event(u) for u in self._changes(past, {})]
        return self.history.fill(since, ((it[2], it) for it in items))

    def same_object(self, key: tuple[str, int], prev: Value, new: Value) -> bool:
        """True when `new` is the stored value `prev` again (same value and timestamp) and the point's type
        encodes both alike: the forwarder re-sends every value whose NT state flipped (docs/forwarder.md),
        but integrated totals (M_IT_*) have no NT bit, so that re-send would be the same object twice at the
        master, a duplicate event (bench/failover.py counted them). A new value or timestamp is always sent,
        even where it encodes alike (a normalized value clipped at its maximum is still a change)."""
        if prev.value != new.value or prev.ts_ms != new.ts_ms:
            return False
        if prev.quality == new.quality:
            return True
        f, type_id = self.monitor[key]
        return (c.element(type_id, prev.value * f.coef, prev.quality, prev.ts_ms)
                == c.element(type_id, new.value * f.coef, new.quality, new.ts_ms))

    def clients(self) -> dict[str, dict[str, Any]]:
        return {s.peer: {"active": s.active, "since_ms": s.since_ms, "queued": s.events_queued,
                         "unacked": s.link.in_flight, "sent": s.sent} for s in self.sessions}

    def queue_depth(self) -> int:
        """Events queued for started masters, plus those kept for masters that are away."""
        return len(self.history) + sum(s.events_queued for s in self.sessions)

    def unanswered(self) -> int:
        """Answers (command confirmations, interrogation answers: every queued item that is not an event)
        queued on open connections and not yet sent, and image answers still being built (the planned stop
        waits for them)."""
        return sum(s.answers_waiting + len(s.building) for s in self.sessions if not s.closed)

    def _event(self, u: Update) -> Item:
        f, type_id = self.monitor[(u.fwd.table, u.fwd.id)]
        v = u.value
        return type_id, c.ioa(f.addr) + c.element(type_id, v.value * f.coef, v.quality, v.ts_ms), u.sid

    def _emit(self, ups: Sequence[Update]) -> None:
        items = [self._event(u) for u in ups]
        if len(self.history) + len(items) > self.history.maxlen:
            self.make_room()
        dropped = 0
        for it in items:
            dropped += self.history.append(it[2], it)
        if dropped:
            self.counts.events_dropped += dropped
            self._once.problem("buffer", f"se104s RTU {self.rtu.id}: more than {self.buffer_max} events not "
                               "acknowledged by a known master: dropping the oldest (such a master "
                               "interrogates when it comes back)")
        active = [s for s in self.sessions if s.active]
        if not active:
            self.counts.events_buffered += len(items)
            return
        for s in active:
            if not s.resumed:
                continue  # gets them from the history when resumed
            mine = items if s.skip is None else [it for it in items if it[2] > s.skip]
            s.queue.extend(mine)
            s.events_queued += len(mine)
            if s.events_queued > self.queue_max:
                self._overflow(s)
            else:
                self.wake(s)

    def _overflow(self, s: Session) -> None:
        dropped = s.events_queued
        self.counts.events_dropped += dropped
        log.warning("se104s RTU %s: master %s does not keep up (%d events queued, limit %d): closing it; "
                    "it must reconnect and interrogate", self.rtu.id, s.peer, dropped, self.queue_max)
        s.queue.clear()
        s.ahead.clear()
        s.events_queued = 0
        s.link.release_unacked()
        s.inflight.clear()
        self.close(s, "queue full")

    # --- where masters stand (fep_forwarder.resume) ------------------------------------------------------

    def resume(self, s: Session, cursor: Sid | None) -> None:
        """Start sending events to a started master whose recorded position is `cursor` (None: none
        known). Covered by the history: the events after it, ahead of anything queued meanwhile (a general
        interrogation's answer comes after them, so the master ends with current values) but the answers
        that go ahead of events (`_answer`: its ACT_CON, a command's confirmations), then the image as
        a background scan (cause 2, not events): the cursor is per master address, and a master that keeps
        connections to both nodes started at once (two links it keeps apart) would otherwise never get, on
        the second link, the values its first link's interrogation gave it. A cursor ahead of this node's
        stream (`skip`): the events up to it are not sent (the master has them), and the scan, like the
        answer to an interrogation, is built only once this node's stream reaches the cursor (`advanced`):
        built earlier, it would show the master values older than those it acknowledged on the other node,
        as current, and no event would correct them. Otherwise: end of initialisation, and the master's
        interrogation gives it the image."""
        s.awaiting_cursor = False
        if s.closed or not s.active or s.resumed:
            return
        ei = (0, c.build_asdu(c.M_EI_NA_1, c.COT_INIT, self.ca, [(0, b"\x00")]), ZERO)
        booted = cursor is None and self.single_active
        if booted:  # a device's first started connection: end of initialisation, then all it buffered
            cursor = self.history.floor
        events = self.history.since(cursor) if cursor is not None else None
        if cursor is None or events is None:
            s.queue.appendleft(ei)
            log.info("se104s RTU %s: master %s %s: end of initialisation, it interrogates", self.rtu.id,
                     s.peer, "is new" if cursor is None else "was away longer than the history")
            s.cursor, s.skip = self.position, None
        else:
            if events:  # the answers queued meanwhile that go ahead of events (`_answer`) go ahead of these
                s.ahead.extend(it for it in s.queue if _goes_ahead(it[1]))
                s.queue = deque(it for it in s.queue if not _goes_ahead(it[1]))
            s.queue.extendleft(reversed(events))
            s.events_queued += len(events)
            log.info("se104s RTU %s: master %s resumed after stream entry %s: %d events", self.rtu.id, s.peer,
                     f"{cursor[0]}-{cursor[1]}", len(events))
            s.cursor = cursor
            s.skip = cursor if cursor > self.position else None
            if booted:
                s.queue.appendleft(ei)
            else:  # the image as a background scan (cause 2) after what it missed: see `resume`
                s.held.append((("DI", "AI"), c.COT_BACKGROUND, None, 0))
        s.resumed = True
        self.acked(s.identity, s.cursor)
        self._release(s)
        self.wake(s)

    def advanced(self, position: Sid) -> None:
        """The runner handed over everything up to `position`: masters with nothing outstanding have
        acknowledged up to it."""
        self.position = position
        for s in self.sessions:
            if s.skip is not None and position >= s.skip:
                s.skip = None
                self._release(s)
            if s.resumed and s.active and s.events_queued == 0 and not any(s.inflight):
                self._track(s)

    def _track(self, s: Session, acked: Sequence[Sid] = ()) -> None:
        cur = acked_cursor(s.cursor or ZERO, acked, s.first_outstanding(), self.position)
        if cur != s.cursor:
            s.cursor = cur
            self.acked(s.identity, cur)

    def _on_acked(self, s: Session, n: int) -> None:
        """`n` I frames acknowledged: the cursor moves to the newest entry they complete
        (`resume.acked_cursor`): when one entry's events fill more than one APDU (several types) and the
        master acknowledges every w frames, each acknowledgement can end inside an entry."""
        acked = [it[2] for _ in range(min(n, len(s.inflight))) for it in s.inflight.popleft()]
        if s.resumed:
            self._track(s, acked)

    # --- sessions ------------------------------------------------------------------------------------

    def connect(self, peer: str, now: float) -> Session:
        s = Session(peer, Link(Role.SERVER, self.link_params, now),
                    group="redundancy-group" if self.single_active else None)
        self.sessions.add(s)
        log.info("se104s RTU %s: master %s connected", self.rtu.id, peer)
        self.clients_changed()
        return s

    def close(self, s: Session, reason: str) -> None:
        """The session ends (any reason): its selections go. What it had not acknowledged stays in the
        history (its cursor is known), for its next connection on either node. Idempotent; `disconnect`
        removes it from the client list afterwards."""
        if s.closed:
            return
        s.closed = True
        for sel_ioa in [a for a, sel in self.selected.items() if sel.conn == s.id]:
            del self.selected[sel_ioa]
        s.queue.clear()  # nothing more is sent on it: sorting out the answers to keep, as a STOPDT does,
        s.ahead.clear()  # took 15 ms for a flooding master closed with 20,000 of them queued
        self._stop_events(s)
        log.info("se104s RTU %s: master %s left (%s)", self.rtu.id, s.peer, reason)
        self.on_closed(s)

    def disconnect(self, s: Session) -> None:
        self.sessions.discard(s)
        self.clients_changed()

    def _stop_events(self, s: Session) -> None:
        """A master stopped or left: drop its queued events (the history keeps them for its resume) and
        interrogation answers; command confirmations stay."""
        s.link.release_unacked()
        s.inflight.clear()
        s.events_queued = 0
        s.resumed = s.awaiting_cursor = False
        s.skip = None
        s.building.clear()
        s.in_progress.clear()
        # No I frame goes out until the next STARTDT (link.py), which resumes the master afresh: an image
        # answer built now and sent then would come after the resumed events and show older values as
        # current. Interrogations in progress are dropped (the master interrogates again); command
        # confirmations stay queued.
        s.held = []
        lead = next((n for n, it in enumerate(s.queue) if it[0]), len(s.queue))  # in the order `pump` sends
        merged = [*itertools.islice(s.queue, lead), *s.ahead, *itertools.islice(s.queue, lead, None)]
        s.queue = deque(it for it in merged if not it[0] and not _interrogation_item(it[1]))
        s.ahead.clear()
        s.image_queued = 0

    def _stop_others(self, s: Session) -> None:
        """single_active: `s` started, so the connection started before it is stopped (without a word, as
        a redundancy group does); what it had not got acknowledged stays in the history for `s`."""
        for o in self.sessions:
            if o is not s and o.active:
                o.link.started = False
                self._stop_events(o)

    # --- receiving -----------------------------------------------------------------------------------

    def receive(self, s: Session, data: bytes, now: float) -> list[Control]:
        """Octets from the master; returns the controls to run. Raises codec.ProtocolError for a frame
        that breaks the standard (the transport closes that connection only)."""
        controls: list[Control] = []
        for ev in s.link.receive(data, now):
            if isinstance(ev, AsduIn):
                self._on_asdu(s, c.parse_asdu(ev.asdu), controls)
                if s.closed or self._answers_overflow(s):
                    return []  # nor are the controls it asked for run: nobody would be told their outcome
            elif isinstance(ev, Started):
                if self.single_active:
                    self._stop_others(s)
                self.clients_changed()
                s.awaiting_cursor = True  # the transport fetches its position and calls `resume`
            elif isinstance(ev, Stopped):
                self._stop_events(s)
                self.clients_changed()
            elif isinstance(ev, Acked):
                self._on_acked(s, len(ev.tags))
                self.wake(s)
        return controls

    def _answers_overflow(self, s: Session) -> bool:
        """More than `answers_max` answers wait unsent for `s`: it is closed (True)."""
        if s.answers_waiting <= self.answers_max:
            return False
        log.warning("se104s RTU %s: master %s sends requests without reading their answers (more than %d "
                    "unsent): closing it", self.rtu.id, s.peer, self.answers_max)
        self.close(s, "answers not read")
        return True

    def tick(self, s: Session, now: float) -> None:
        """The link's timers; raises LinkTimeout when t1 expired (the transport closes the connection)."""
        s.link.tick(now)

    def _answer(self, s: Session, asdu: bytes, in_turn: bool = False) -> None:
        """Queue an answer. A command's (its ACT_CON, ACT_TERM, DEACT_CON, or its refusal) goes ahead of the
        events queued for the master, behind the answers already ahead of them, as lib60870's servers send
        every answer to a request from a queue of their own: on a backlogged link (a slow or lossy master
        link, before t1 closes it) it waited behind every queued event, past the master's command timeout,
        for a command that had run (docs/ha.md "Degraded links", 800 ms). So do the other answers that carry
        no value (`_AHEAD_TYPES`, `_AHEAD_CAUSES`: the confirmations of clock synchronisation, test and reset
        process, and every refusal with cause 44 .. 47), which waited behind the events as well, and the
        ACT_CON of an interrogation or counter interrogation (`_AHEAD_CONFIRMED`, positive or negative: many
        masters give up an interrogation whose ACT_CON does not come within seconds). Interrogated and read
        values keep their place, and so do an interrogation's ACT_TERM and DEACT_CON (which end it): a
        current value must not overtake an older event. `in_turn`: queued in its turn all the same (the
        refusal of an interrogation sent while the master's previous one is in progress, `_busy`).
        Kept apart in `ahead` (`_next_asdu` takes them in that order): found by a scan of the queue, each cost
        as many steps as answers were ahead of the events, and a master flooding commands that it did not
        acknowledge stalled the process 6 s."""
        item = (0, asdu, ZERO)
        if s.events_queued and not in_turn and _goes_ahead(asdu):
            s.ahead.append(item)
        else:
            s.queue.append(item)
        self.wake(s)

    def _on_asdu(self, s: Session, a: c.Asdu, controls: list[Control]) -> None:
        """One ASDU from a master, checked as IEC 60870-5-101/104 asks: common address (cause 46; the
        broadcast address only for the station-wide C_IC, C_CI, C_CS and C_RP, answered with our own
        address), type (44), cause (45), information object address (47; 0 for station-wide commands).
        Answers mirror the master's originator address."""
        if a.ca != self.ca and not (a.ca == c.BROADCAST_CA and a.type_id in c.BROADCAST_TYPES):
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_CA, True))
            return
        a = dataclasses.replace(a, ca=self.ca)
        if a.type_id in c.COMMAND_BASE:
            self._command(s, a, controls)
            return
        if a.type_id == c.C_RD_NA_1:
            self._read(s, a)
        elif a.type_id not in _STATION_WIDE:
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_TYPE, True))
        elif a.cause not in _STATION_WIDE[a.type_id]:
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_COT, True))
        elif a.objects[0][0] != 0:
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_IOA, True))
        elif a.cause == c.COT_DEACT:
            self._deactivate(s, a)
        elif a.type_id == c.C_IC_NA_1:
            self._interrogation(s, a)
        elif a.type_id == c.C_CI_NA_1:
            self._counter_interrogation(s, a)
        elif a.type_id == c.C_CS_NA_1:
            try:
                if a.objects[0][1][2] & 0x80:  # IV: the master's own clock is not valid
                    raise ValueError("time marked invalid")
                offset = c.cp56_ms(a.objects[0][1]) - int(time.time() * 1000)
            except ValueError:
                self._answer(s, c.mirror(a, c.COT_ACTCON, True))
                return
            log.info("se104s RTU %s: clock synchronisation from %s (master - local = %d ms; the system clock "
                     "is NTP's, not changed)", self.rtu.id, s.peer, offset)
            self._answer(s, c.mirror(a, c.COT_ACTCON))
        elif a.type_id == c.C_TS_TA_1:  # test command: confirmed with its test sequence counter and time
            self._answer(s, c.mirror(a, c.COT_ACTCON))
        else:  # C_RP_NA_1: a forwarder has no process to reset
            log.warning("se104s RTU %s: reset process (QRP %d) from %s refused", self.rtu.id,
                        a.objects[0][1][0], s.peer)
            self._answer(s, c.mirror(a, c.COT_ACTCON, True))

    def _interrogation(self, s: Session, a: c.Asdu) -> None:
        qoi = a.objects[0][1][0]
        if not 20 <= qoi <= 36:
            self._answer(s, c.mirror(a, c.COT_ACTCON, True))
            return
        if self._busy(s, a):
            return
        kinds = ("DI", "AI") if qoi == 20 else GROUP_KINDS.get(qoi - 20, ())
        self._answer(s, c.mirror(a, c.COT_ACTCON))
        self._image_answer(s, kinds, qoi, c.mirror(a, c.COT_ACTTERM), a.oa)

    def _busy(self, s: Session, a: c.Asdu) -> bool:
        """An interrogation (C_IC_NA_1, any QOI) or counter interrogation of `s` is in progress, confirmed
        and its ACT_TERM not sent yet: another of the same type gets a negative ACT_CON (cause 7, P/N 1) and
        True. Each was queued in full before: a master flooding station interrogations that it acknowledged
        had the image built for every one, and held the event loop 0.5 s at a time (docs/se104s.md)."""
        if a.type_id not in s.in_progress:
            s.in_progress[a.type_id] = a.objects[0][1][0]
            return False
        if not s.interrogations_refused:  # once per connection: a flood would log each
            log.warning("se104s RTU %s: master %s sent an interrogation while its previous one is in progress: "
                        "refused (negative ACT_CON), as any more on this connection", self.rtu.id, s.peer)
        s.interrogations_refused += 1
        # in its turn, not ahead: a master flooding interrogations had their refusals overtake, again and
        # again, the answer of the one in progress (one answered in 2 s of flood instead of five)
        self._answer(s, c.mirror(a, c.COT_ACTCON, True), in_turn=True)
        return True

    def _deactivate(self, s: Session, a: c.Asdu) -> None:
        """DEACT (cause 8) of an interrogation or counter interrogation: the one of that type in progress for
        `s` with the same qualifier (QOI, QCC) ends. What is not built of its answer is not built, its ACT_TERM
        is not sent (dropped from the queue if it was built) and a positive DEACT_CON is queued behind the
        answers already queued, which stay: the DEACT_CON is the last answer of that interrogation, and the
        next one of its type is accepted once it is sent (`_next_asdu`). Nothing of that type in progress,
        or another qualifier: a negative DEACT_CON (docs/se104s.md), ahead of the events queued for the master
        when none of that type is in progress (a refusal that ends nothing: as a negative ACT_CON), else in its
        turn (behind the answer in progress, and behind the positive DEACT_CON of a first DEACT)."""
        qual = a.objects[0][1][0]
        ok = s.in_progress.get(a.type_id) == qual and self._drop_answer(s, a.type_id)
        if ok:
            s.in_progress[a.type_id] = _ENDING
            log.info("se104s RTU %s: master %s deactivated its interrogation (type %d, qualifier %d): the rest of "
                     "its answer is not sent", self.rtu.id, s.peer, a.type_id, qual)
        self._answer(s, c.mirror(a, c.COT_DEACTCON, not ok), in_turn=not ok and a.type_id in s.in_progress)

    @staticmethod
    def _drop_answer(s: Session, type_id: int) -> bool:
        """Drop what is left of the answer to `s`'s interrogation of `type_id` in progress: held (waiting for
        the master's position), being built (the slices not built yet) or built in full (its ACT_TERM still
        queued). False when none is found."""
        for i, (_, _, then, _) in enumerate(s.held):
            if then is not None and then[0] == type_id:
                del s.held[i]
                return True
        for job in s.building:
            then = job[1][2]
            if then is not None and then[0] == type_id:
                s.building.remove(job)
                return True
        for back, (kind, data, _) in enumerate(reversed(s.queue)):  # after its answer: looked for from the end
            if not kind and data[0] == type_id and data[2] & 0x3F == c.COT_ACTTERM:
                del s.queue[len(s.queue) - 1 - back]
                return True
        return False

    def _counter_interrogation(self, s: Session, a: c.Asdu) -> None:
        """QCC: RQT 1 .. 4 (groups: none hold counters here) or 5 (general); FRZ 0 (read) only: the FEP
        cannot freeze or reset a device's counters, so FRZ 1 .. 3 get a negative ACT_CON."""
        qcc = a.objects[0][1][0]
        rqt, frz = qcc & 0x3F, qcc >> 6
        if not 1 <= rqt <= 5 or frz:
            self._answer(s, c.mirror(a, c.COT_ACTCON, True))
            return
        if self._busy(s, a):
            return
        self._answer(s, c.mirror(a, c.COT_ACTCON))
        # general request: every counter; groups 1..4 hold none (docs/se104s.md)
        self._image_answer(s, ("ACC",) if rqt == 5 else (), c.COT_REQCOGEN, c.mirror(a, c.COT_ACTTERM), a.oa)

    def _read(self, s: Session, a: c.Asdu) -> None:
        """C_RD_NA_1 (cause 5 only): the point's value with cause 'requested', or cause 47 for an address
        that is not a status or measured point (integrated totals do not take cause 5 in IEC 60870-5-101's
        table: counters are read by counter interrogation)."""
        if a.cause != c.COT_REQ:
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_COT, True))
            return
        addr = a.objects[0][0]
        key = self.readable.get(addr)
        if key is None:
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_IOA, True))
            return
        f, type_id = self.monitor[key]
        v = self.image.get(key) or Value(0, int(Quality.IV), int(time.time() * 1000))
        self._answer(s, c.build_asdu(type_id, c.COT_REQ, self.ca,
                                     [(addr, c.element(type_id, v.value * f.coef, v.quality, v.ts_ms))], a.oa))

    def _image_answer(self, s: Session, kinds: tuple[str, ...], cot: int, then: bytes | None = None,
                      oa: int = 0) -> None:
        """Queue the image of `kinds` with cause `cot` and originator address `oa`, then `then` (an
        interrogation's ACT_TERM). A started master's answer waits while its position is being fetched or
        is ahead of this node's stream (`resume`): this node's image would be older than what the master
        had, shown as current."""
        s.held.append((kinds, cot, then, oa))
        self._release(s)

    def _release(self, s: Session) -> None:
        """Start building the held image answers, unless `s` must still wait (`_image_answer`): the first
        slice now, the others when the transport calls `build`."""
        if s.closed:
            s.held = []
            s.building.clear()
        if not s.held or (s.active and (not s.resumed or s.skip is not None)):
            return
        held, s.held = s.held, []
        s.building.extend([0, h] for h in held)
        self.build(s)

    def build(self, s: Session) -> bool:
        """Queue the next `SLICE_POINTS` points of the image answers being built for `s` (each answer's
        ACT_TERM after its last slice); True while more remain: the transport calls again once the event
        loop has served the other connections and the master has taken most of what is queued (`build_due`).
        Each slice carries the image as it is when built, queued behind the events already queued and ahead
        of later ones, so a point's interrogated value never follows a newer event of it (IEC 60870-5-101 7.4.5 lets events interleave with an interrogation).
        As far as `answers_max` allows: 4,000 interrogations read with the STARTDT, held while the master's
        position was read, were built at once (276,000 ASDUs, the event loop held 10 s)."""
        budget = SLICE_POINTS
        while s.building and budget > 0 and not s.closed:
            job = s.building[0]
            start, (kinds, cot, then, oa) = job
            end = min(start + budget, len(self._points)) if kinds else len(self._points)
            self._queue_image(s, kinds, cot, oa, self._points[start:end])
            budget -= end - start
            job[0] = end
            if end == len(self._points):
                s.building.popleft()
                if then is not None:
                    self._answer(s, then)
            if self._answers_overflow(s):
                return False
        if s.building:
            self.wake(s)
        return bool(s.building)

    def build_due(self, s: Session) -> bool:
        """An image answer is being built for `s` and few enough of its ASDUs wait unsent (`BUILD_AHEAD`)
        that the transport builds the next slice now; otherwise it builds it once the master has taken
        more (the station wakes it from `pump`). Unless as many other answers wait (a master sending
        requests faster than it takes their answers, the refusals of a flood of interrogations): then the
        slices are built on, back to back, or the answer would fall behind the answers to every later
        request and the connection be closed (`answers_max`) before it ends."""
        ahead = max(BUILD_AHEAD, 2 * s.link.params.k)
        return bool(s.building) and (s.image_queued < ahead or s.answers_waiting - s.image_queued >= ahead)

    def _queue_image(self, s: Session, kinds: tuple[str, ...], cot: int, oa: int,
                     points: Sequence[tuple[tuple[str, int], tuple[FwdPoint, int]]]) -> None:
        now = int(time.time() * 1000)
        by_type: dict[int, list[tuple[int, bytes]]] = {}
        for key, (f, type_id) in points:
            if f.kind not in kinds:
                continue
            v = self.image.get(key) or Value(0, int(Quality.IV), now)
            if self.untagged_answers:
                type_id = c.answer_type(type_id, cot)
            by_type.setdefault(type_id, []).append(
                (f.addr, c.element(type_id, v.value * f.coef, v.quality, v.ts_ms)))
        for type_id, objs in by_type.items():
            for asdu in c.pack(type_id, cot, self.ca, objs, oa):
                self._answer(s, asdu)
                s.image_queued += 1

    # --- commands -------------------------------------------------------------------------------------

    def _command(self, s: Session, a: c.Asdu, controls: list[Control]) -> None:
        if a.cause not in (c.COT_ACT, c.COT_DEACT):
            self._answer(s, c.mirror(a, c.COT_UNKNOWN_COT, True))
            return
        con = c.COT_ACTCON if a.cause == c.COT_ACT else c.COT_DEACTCON
        if len(a.objects) != 1 or a.cot & c.TEST:  # a test ASDU (T bit) must not operate anything
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
        if cmd.select and self.refusing():  # its execute would be refused: say so now
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
        if s.controls >= self.controls_max:
            self._once.problem(f"controls {s.identity}", f"se104s RTU {self.rtu.id}: master {s.peer} has {s.controls} "
                               "commands executing: more are refused until they are answered")
            self._answer(s, c.mirror(a, c.COT_ACTCON, True))
            return
        s.controls += 1
        controls.append(Control(s, a, fwd, cmd.value / fwd.coef,
                                None if cmd.ts_ms is None else cmd.ts_ms + self.command_max_age_ms))

    def dropped(self, ctl: Control) -> None:
        """`ctl` was answered, or will not be run (the transport drops it): no longer executing."""
        ctl.session.controls -= 1
        if ctl.session.controls < self.controls_max // 2:
            self._once.clear(f"controls {ctl.session.identity}")

    async def execute(self, ctl: Control) -> None:
        """Run an accepted command (ForwardServer.run_control: counted, never raises); positive ACT_CON +
        ACT_TERM only after the device accepted it, a negative ACT_CON otherwise."""
        s, a, fwd = ctl.session, ctl.asdu, ctl.fwd
        try:
            out = await self.run_control(fwd, ctl.value, f"{self.origin}:{s.peer}", not_after_ms=ctl.not_after_ms)
        finally:
            self.dropped(ctl)
        if out.ok:
            self._answer(s, c.mirror(a, c.COT_ACTCON))
            self._answer(s, c.mirror(a, c.COT_ACTTERM))
        else:
            self._answer(s, c.mirror(a, c.COT_ACTCON, True))

    # --- sending ----------------------------------------------------------------------------------------

    def pump(self, s: Session, now: float) -> bytes:
        """Move queued answers and events into I frames while data transfer is started (never before
        STARTDT or after STOPDT: IEC 104 sends only U frames then) and the k window allows; returns the
        octets to write (with any S/U frame the link owes)."""
        link = s.link
        while (s.queue or s.ahead) and s.active and link.window_open:
            if not s.resumed:
                break  # its position is being fetched: what it missed goes first
            asdu, items = self._next_asdu(s)
            link.send(asdu, now, items)
            s.inflight.append(items)
            if TRACE is not None:
                TRACE.sent(items)
        if self.build_due(s):
            self.wake(s)  # the next slice of an answer being built
        return link.data_to_send()

    def _next_asdu(self, s: Session) -> tuple[bytes, list[Item]]:
        """Pop the next ASDU: an answer as is, or a run of events of one type packed into one ASDU. The
        answers at the head of the queue go first, then the command answers put `ahead` of the events."""
        q = s.queue
        if s.ahead and not (q and not q[0][0]):
            return s.ahead.popleft()[1], []
        first = q.popleft()
        type_id, data, _ = first
        if not type_id:
            if data[2] & 0x3F in _IMAGE_CAUSES:
                s.image_queued -= 1
            elif data[0] in s.in_progress and (data[2] & 0x3F == c.COT_ACTTERM or (
                    data[2] & 0x3F == c.COT_DEACTCON and not data[2] & c.NEGATIVE)):
                del s.in_progress[data[0]]  # that interrogation is over: the master may ask again
            return data, []
        items = [first]
        limit = c.per_asdu(type_id)
        while q and len(items) < limit and q[0][0] == type_id:
            items.append(q.popleft())
        s.events_queued -= len(items)
        s.sent += len(items)
        self.counts.events_sent += len(items)
        asdu = c.header(type_id, len(items), c.COT_SPONT, self.ca) + b"".join(d for _, d, _ in items)
        return asdu, items
