"""IEC 104 acquisition rules: what the acquirer, as controlling station, makes of an RTU's ASDUs and what
it sends. Pure (no sockets, no clock, no Redis): tests/acquirer/test_iec104_rules.py drives them by table.

- `PointMap.intake` turns a monitoring ASDU into samples with their timestamps: the device's CP56Time2a
  when the type carries one (it becomes the value's timestamp, which se104s sends on unchanged), the time
  of reception otherwise, and instead of a tag marked invalid, impossible, or beyond the tolerances of a
  wrong device clock (`device_time`: CLOCK_AHEAD_MS ahead, CLOCK_BEHIND_MS behind); the device's quality
  bits (IV, NT, SB, BL, OV) carried as they are.
- `write_mode` / `changes_only` / `not_overtaken` / `Tail`: which received events are written (every
  one, changes only, interrogated snapshots not behind a newer event, not what was written already).
- `batches` splits events so that no write_values call carries a point twice (one stream entry per call).
- `command_asdu` / `CommandExchange`: a command (direct, or select then execute), answered by ACT_CON
  (positive or negative) and ACT_TERM.
- `Schedule`: general interrogation after every STARTDT (and an end of initialisation after it) and
  periodically, counter interrogation (after STARTDT always when the RTU has counters) and clock
  synchronisation then too, each if configured;
  `Interrogation`: the GI under way (until its ACT_TERM, or t1 without a frame of it).
- `reaches`: the lease rule's "this node reaches the device" for an IEC 104 connection (and, after a
  reload restarted the runner, for the one it closed, until the new runner's first connection attempt ends).
"""

from __future__ import annotations

import datetime
import math
import struct
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from fep_acquirer.changes import differs
from fepha import datatypes as dt
from fepha import points as pt
from fepha.iec104 import codec as c
from fepha.semodel.model import Point, Rtu

Event = tuple[int, tuple[float | int, int], int]  # point id, (value, quality), ts_ms
DP_INDETERMINATE = "IV"  # a double point in its intermediate (0) or indeterminate (3) state: value kept, IV

_MONITORING = {c.M_SP_NA_1, c.M_SP_TB_1, c.M_DP_NA_1, c.M_DP_TB_1, c.M_ME_NA_1, c.M_ME_NB_1, c.M_ME_NC_1,
               c.M_ME_TD_1, c.M_ME_TE_1, c.M_ME_TF_1, c.M_IT_NA_1, c.M_IT_TB_1, c.M_ME_ND_1}
# what the controlled station sends besides monitoring objects that the runner takes: answers to its own
# commands, interrogations, clock syncs, and the end of initialisation
_ANSWERS = {*c.COMMAND_BASE, c.C_IC_NA_1, c.C_CI_NA_1, c.C_CS_NA_1, c.C_RD_NA_1, c.C_TS_TA_1, c.C_RP_NA_1,
            c.M_EI_NA_1}
# Events: spontaneous data and the return information a command caused (remote or local): each is a change
# at the device, written even when its value equals the last one (not an interrogation's snapshot).
SPONTANEOUS_CAUSES = {c.COT_SPONT, c.COT_RETREM, c.COT_RETLOC}
# the causes IEC 60870-5-101's table of causes gives monitoring types: periodic, background, spontaneous,
# requested, return information (remote, local), interrogated (station and groups), counter interrogation
MONITORING_CAUSES = frozenset({c.COT_PERIODIC, c.COT_BACKGROUND, c.COT_SPONT, c.COT_REQ, c.COT_RETREM,
                               c.COT_RETLOC, *range(c.COT_INROGEN, c.COT_REQCOGEN + 5)})
IV = 0x80


def is_monitoring(type_id: int) -> bool:
    return type_id in _MONITORING


def read_as(type_id: int) -> int:
    """The point type whose objects `type_id` carries: M_ME_ND_1 (normalised, no quality) an M_ME_NA_1
    point's, a time-tagged type its untagged form's."""
    return c.M_ME_NA_1 if type_id == c.M_ME_ND_1 else c.base_type(type_id)


def cause_text(a: c.Asdu) -> str:
    """`a`'s cause of transmission as an operator reads it: the number, then "P/N" when negative and "test"
    when the test bit T is set ("7 P/N", "3 test"), never the raw octet with those bits in it."""
    return f"{a.cause}{' P/N' if a.negative else ''}{' test' if a.cot & c.TEST else ''}"


def refused(a: c.Asdu) -> str | None:
    """Why an ASDU from the RTU is ignored whatever it carries (None: it is not): the test bit T (an ASDU
    generated under test conditions, IEC 60870-5-101 7.2.3: not the process's state, not the answer to a
    command of ours, which never carries it; se104s refuses a test command likewise), or a monitoring type
    with a cause monitoring data does not have (MONITORING_CAUSES: an activation, a cause 0 or 44..63 is
    no report of the process). Its values were written as good before."""
    if a.cot & c.TEST:
        return f"type {a.type_id} (cause {a.cause}) has the test bit T set: ignored"
    if a.type_id in _MONITORING and a.cause not in MONITORING_CAUSES:
        return f"type {a.type_id} with cause {a.cause}, which monitoring data does not have: ignored"
    return None


def unsupported(a: c.Asdu) -> str | None:
    """Why an ASDU from the RTU is not taken (None: it is: monitoring data or an answer the runner
    reads): a type the acquirer cannot read leaves its points as they were, so it must be said."""
    if a.type_id in _MONITORING or a.type_id in _ANSWERS:
        return None
    first = a.objects[0][0] if a.objects else 0
    return (f"type {a.type_id} (IOA {first}{' ...' if len(a.objects) > 1 else ''}) is not a type the acquirer "
            "reads: ignored, its points keep their last value")


class Run(NamedTuple):
    """Consecutive objects of one ASDU written the same way (`write_mode`): with the device's time tags
    (`device_times`: each one's tag taken) or not (an untagged type, or tags the reception time replaced)."""

    mode: str
    device_times: bool
    events: list[Event]


@dataclass(frozen=True)
class Intake:
    """What one monitoring ASDU gave: its events in wire order, cut into `runs` (each object's write mode,
    `object_mode`), whether they were spontaneous or answers to an interrogation / periodic, whether its
    type carries time tags, the ASDU's type and cause, problems to log once (keyed so that each distinct
    problem is logged once), and the device's time tags the reception time replaced (`clock`: kind -> why,
    TAG_FAULTS; logged once per RTU and kind while it lasts, not per object or tag)."""

    runs: list[Run]
    spontaneous: bool
    problems: dict[str, str] = field(default_factory=dict)
    tagged: bool = False
    type_id: int = 0
    cause: int = 0
    clock: dict[str, str] = field(default_factory=dict)

    @property
    def events(self) -> list[Event]:
        return [e for r in self.runs for e in r.events]


def object_mode(type_id: int, cause: int, taken: bool) -> str:
    """How one object is written (`write_mode`), its own time tag deciding, not the ASDU's other objects:
    one whose tag the reception time replaced (`taken` False) as an untagged object of its type, since the
    same state sent again (a re-send after a cut) carries another reception time and cannot be told from a
    new report: the change rule then, not one event each (an integrated total stays a reading each time)."""
    return write_mode(type_id if taken else c.base_type(type_id), cause)


EVERY, CHANGES, IMAGE = "every", "changes", "image"


def write_mode(type_id: int, cause: int) -> str:
    """Which of a monitoring object's events are written:
    - EVERY: a spontaneous object (cause 3, 11, 12) with the device's time tag, or an integrated total:
      each is an event of its own, even with the same value and quality as the last (a repeated state at
      another time, a counter reading);
    - CHANGES: an untagged spontaneous status or measured value: only when its value or quality differs
      from the point's previous event (`changes_only`, the product's change rule without deadband: the RTU
      applied its own). Such an event gets our reception time, so the same state sent again (re-sent by
      the RTU after a connection closed before our acknowledgement reached it) cannot be told from a new
      one; one equal to the point's value and quality changes nothing a master can see except the time;
    - IMAGE: an answer to an interrogation or a periodic / background object: a snapshot, written when it
      changes the point (deadband as for Modbus, changes.py)."""
    if cause not in SPONTANEOUS_CAUSES:
        return IMAGE
    if type_id in c.TIME_TAGGED or c.base_type(type_id) == c.M_IT_NA_1:
        return EVERY
    return CHANGES


def changes_only(events: list[Event], last: Mapping[int, tuple[float | int, int]], dirty: set[int]) -> list[Event]:
    """The CHANGES events to write, in order: each compared with the point's previous event in `events`,
    or else with its last written sample `last` (what Redis holds); a point never written, or whose last
    write failed (`dirty`: Redis may hold something else), is written."""
    out: list[Event] = []
    prev: dict[int, tuple[float | int, int]] = {}
    for e in events:
        pid, s, _ = e
        before = prev.get(pid)
        if before is None and pid not in dirty:
            before = last.get(pid)
        if before is None or differs(before, s, 0.0):
            out.append(e)
        prev[pid] = s
    return out


def not_overtaken(events: list[Event], newer: set[int]) -> list[Event]:
    """Answers to a general interrogation, without the points that had a spontaneous event since the
    interrogation was sent (`newer`): the RTU reports every change spontaneously, so that event is at
    least as new as the snapshot (which may have been taken before it, or queued behind it); writing the
    answer after it could put an older state back."""
    return [e for e in events if e[0] not in newer] if newer else events


CLOCK_AHEAD_MS = 60_000
"""How far a device's time tag may lie ahead of our reception time and still be taken as the event's time.
A tag cannot be ahead by anything but a clock difference (transmission and buffering only make it older),
and two good clocks differ by milliseconds (both NTP / GPS synchronised) to seconds (a free-running RTC
drifts about 4 s a day at 50 ppm; our clock sync, `clock_sync_s`, sets it back). The clocks this catches
are off by hours (a device set to local time or summer time instead of UTC) to years (an RTC gone wrong
after a power cut, whose CP56Time2a year 70 from 1970 reads as 2070): one minute lets the first through
and stops the others, so it is a constant, not a setting."""

CLOCK_BEHIND_MS = 366 * 86_400_000
"""How far a tag may lie behind our reception time and still be taken: an RTU buffers its events while no
connection is started and sends them, with their tags, on the next STARTDT (hours, days: an outage), so
an old tag is normal and kept; none buffers a year (its buffer overflows long before). A tag older than
this comes from a clock reset (CP56Time2a year 00: 2000-01-01, or the firmware's date): the event is
not history but what happened now or within the outage."""

TAG_INVALID, TAG_IMPOSSIBLE, TAG_AHEAD, TAG_BEHIND = "time tag invalid", "time tag impossible", "clock ahead", "clock behind"
TAG_FAULTS = (TAG_INVALID, TAG_IMPOSSIBLE, TAG_AHEAD, TAG_BEHIND)
"""The kinds of time tag the reception time replaces: each is logged once per RTU while it lasts
(`Intake.clock`), cleared by an ASDU whose every tag is taken."""


class TagFault(NamedTuple):
    """Why a time tag was not taken: its kind (TAG_FAULTS), what that means, the tag (or empty)."""

    kind: str
    summary: str
    detail: str = ""


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _span(ms: int) -> str:
    for unit, size in (("days", 86_400_000), ("h", 3_600_000), ("min", 60_000)):
        if ms >= size:
            return f"{ms / size:.1f} {unit}"
    return f"{ms / 1000:.1f} s"


def device_time(elem: bytes, rx_ms: int) -> tuple[int, TagFault | None]:
    """Timestamp of a time-tagged element: its CP56Time2a, or the reception time with the fault when the
    tag is marked invalid (IV bit of the minutes octet), is not a possible date, lies more than
    CLOCK_AHEAD_MS ahead of the reception time (the device's clock is ahead) or more than CLOCK_BEHIND_MS
    behind it (its clock was reset)."""
    tag = elem[-7:]
    if tag[2] & 0x80:
        return rx_ms, TagFault(TAG_INVALID, "time tags marked invalid by the device")
    try:
        ts = c.cp56_ms(tag)
    except (ValueError, OverflowError):
        return rx_ms, TagFault(TAG_IMPOSSIBLE, "impossible time tags", tag.hex())
    if ts - rx_ms > CLOCK_AHEAD_MS:
        return rx_ms, TagFault(TAG_AHEAD, "the device's clock is ahead: time tags more than "
                               f"{CLOCK_AHEAD_MS // 1000} s ahead of the reception time",
                               f"{_iso(ts)}, {_span(ts - rx_ms)} ahead")
    if rx_ms - ts > CLOCK_BEHIND_MS:
        return rx_ms, TagFault(TAG_BEHIND, "the device's clock was reset: time tags more than "
                               f"{CLOCK_BEHIND_MS // 86_400_000} days behind the reception time", _iso(ts))
    return ts, None


def sample_of(p: Point, type_id: int, elem: bytes, rx_ms: int) -> tuple[float | int, int, int, TagFault | None]:
    """(engineering value, quality, ts_ms, time tag fault or None: `device_time`) of one monitoring element
    for point `p`."""
    problem: TagFault | None = None
    ts = rx_ms
    base = c.base_type(type_id)
    if type_id in c.TIME_TAGGED:
        ts, problem = device_time(elem, rx_ms)
        elem = elem[:-7]
    value, quality, _ = c.decode_element(base, elem)
    if base == c.M_DP_NA_1:
        dpi = int(value)
        if dpi in (0, 3):
            return 0, quality | IV, ts, problem  # intermediate / indeterminate: not a position
        return (1 if dpi == 2 else 0), quality, ts, problem
    if base == c.M_SP_NA_1:
        return int(value), quality, ts, problem
    if base == c.M_IT_NA_1:
        return dt.scaled(int(value), p.scale, p.offset), quality, ts, problem
    if not math.isfinite(value):
        return 0, quality | IV, ts, problem
    return dt.scaled(value, p.scale, p.offset), quality, ts, problem


class PointMap:
    """An iec104 RTU's points by IOA: monitored points and command targets apart."""

    def __init__(self, rtu: Rtu) -> None:
        self.monitored: dict[int, Point] = {p.address: p for p in rtu.points if p.kind in ("AI", "DI", "ACC")}
        self.commands: dict[int, Point] = {p.address: p for p in rtu.points if p.kind in ("DO", "AO")}
        self.by_id: dict[int, Point] = {p.id: p for p in rtu.points}

    def intake(self, a: c.Asdu, rx_ms: int) -> Intake:
        runs: list[Run] = []
        problems: dict[str, str] = {}
        clock: dict[str, str] = {}
        tagged = a.type_id in c.TIME_TAGGED
        modes = {taken: object_mode(a.type_id, a.cause, taken) for taken in (False, True)}
        for ioa, elem in a.objects:
            p = self.monitored.get(ioa)
            if p is None:
                problems[f"ioa {ioa}"] = f"IOA {ioa} (type {a.type_id}) is not a point of this RTU: ignored"
                continue
            want = c.TYPE_IDS[p.datatype]
            if c.base_type(want) != read_as(a.type_id):
                problems[f"ioa {ioa} type {a.type_id}"] = (f"IOA {ioa} came as type {a.type_id}, point {p.id} is "
                                                          f"configured as {p.datatype}: ignored")
                continue
            v, q, ts, fault = sample_of(p, a.type_id, elem, rx_ms)
            if fault:
                clock.setdefault(fault.kind, f"{fault.summary} (IOA {ioa} first{': ' if fault.detail else ''}"
                                             f"{fault.detail}): reception time used")
            taken = tagged and fault is None
            if not runs or runs[-1].device_times != taken:
                runs.append(Run(modes[taken], taken, []))
            runs[-1].events.append((p.id, (v, q), ts))
        return Intake(runs, a.cause in SPONTANEOUS_CAUSES, problems, tagged, a.type_id, a.cause, clock)


@dataclass
class Tail:
    """What the RTU sends again after our STARTDT: the frames it had not seen acknowledged (at most its k I
    frames: we acknowledge only what is written, at once), ahead of anything new. `recent`: this RTU's
    newest change records (point, record), read before the STARTDT (ours or the former holder's), each
    recognised once; `shown`: per point, the state the value hash holds once the objects kept so far are
    written; `moved`: the points an object kept since moved to another state."""

    recent: set[tuple[int, str]]
    shown: dict[int, tuple[float | int, int]] = field(default_factory=dict)
    moved: set[int] = field(default_factory=set)

    def take(self, runs: list[Run], held: Mapping[int, tuple[float | int, int]]) -> list[Run]:
        """The events of one spontaneous ASDU not yet written (`held`: what the value hash holds as far as
        the runner knows, its tracker's; the runs kept, in order).

        An event with the device's time tag whose record (point, value, quality and tag, to the ms) is among
        `recent` is recognised; an untagged one, or one whose tag the reception time replaced, carries our
        time and cannot be (the change rule applies to it, `object_mode`). An ASDU is sent again whole and
        its objects were written in wire order: every object before its last recognised one was handled
        already (written, or left by the change rule), and is dropped with it whatever its tag; else an
        object with the reception time ahead of a recognised event of the same point (SQ = 0 carries several
        events of one point) would be written again and leave the point on its earlier state.

        Across ASDUs the same holds for a point `moved`: an object of it with the reception time, in an
        earlier ASDU of the tail, was written again and changed its state (or its state was unknown), so
        every object of it is kept from then on, a recognised one too, and the point ends on its last state:
        the tail's events of it written twice rather than a state the device left behind."""
        if not self.recent:
            return runs
        last, n = -1, 0
        for r in runs:
            if not r.device_times:  # our reception time: never recognised, nothing to encode
                n += len(r.events)
                continue
            for pid, (v, q), ts in r.events:
                key = (pid, pt.encode(v, q, ts))
                if key in self.recent:
                    self.recent.discard(key)
                    last = n
                n += 1
        out: list[Run] = []
        n = 0
        for r in runs:
            kept: list[Event] = []
            for e in r.events:
                pid, state, _ = e
                if n > last or pid in self.moved:
                    before = self.shown.get(pid, held.get(pid))
                    if before is None or differs(before, state, 0.0):
                        self.moved.add(pid)
                    self.shown[pid] = state
                    kept.append(e)
                n += 1
            if kept:
                out.append(r._replace(events=kept))
        return out


def batches(events: Iterable[Event]) -> list[list[Event]]:
    """Events in order, cut so that no batch holds a point twice (a device's buffer may hold several
    events of one point: each must reach the change stream, in order)."""
    out: list[list[Event]] = []
    cur: list[Event] = []
    seen: set[int] = set()
    for e in events:
        if e[0] in seen:
            out.append(cur)
            cur, seen = [], set()
        cur.append(e)
        seen.add(e[0])
    if cur:
        out.append(cur)
    return out


# --- commands ------------------------------------------------------------------------------------------


def command_element(p: Point, value: float, select: bool, now_ms: int) -> bytes:
    """The command object for an engineering value: DO 0/1 (C_DC: OFF/ON), AO unscaled by SCALE/OFFSET.
    ValueError for a value the type cannot carry (the control fails without anything sent)."""
    type_id = c.TYPE_IDS[p.datatype]
    base = c.COMMAND_BASE[type_id]
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if base in (c.C_SC_NA_1, c.C_DC_NA_1):
        if value not in (0, 1):
            raise ValueError(f"{p.kind} point {p.id} takes 0 or 1, not {value}")
        raw = float(value)
    else:
        raw = dt.unscaled(value, p.scale, p.offset)
        if base == c.C_SE_NA_1 and not -1.0 <= raw <= c.NVA_MAX:
            raise ValueError(f"{raw} is outside the normalised range -1 .. +1 of {p.datatype}")
        if base == c.C_SE_NB_1 and not -32768 <= round(raw) <= 32767:
            raise ValueError(f"{raw} is outside the scaled range -32768 .. 32767 of {p.datatype}")
        if base == c.C_SE_NC_1:
            try:
                struct.pack("<f", raw)
            except OverflowError:
                raise ValueError(f"{raw} does not fit a short float") from None
        if base == c.C_SE_NB_1:
            raw = float(round(raw))
    return c.encode_command(type_id, raw, select=select, ts_ms=now_ms if type_id in c.TIME_TAGGED else None)


def command_asdu(p: Point, ca: int, value: float, select: bool, now_ms: int, cause: int = c.COT_ACT) -> bytes:
    return c.build_asdu(c.TYPE_IDS[p.datatype], cause, ca, [(p.address, command_element(p, value, select, now_ms))])


@dataclass
class CommandExchange:
    """One command to one IOA: direct (ACT -> ACT_CON -> ACT_TERM) or select before operate (select ACT ->
    ACT_CON, then execute ACT -> ACT_CON -> ACT_TERM). `feed` takes every ASDU the RTU sends and returns
    the next ASDU to send (the execute after a positive select) or None; `result` is set when done:
    (True, reason) or (False, reason)."""

    point: Point
    ca: int
    value: float
    sbo: bool
    now_ms: int
    phase: str = "select"  # select, execute, term, done
    result: tuple[bool, str] | None = None

    def __post_init__(self) -> None:
        if not self.sbo:
            self.phase = "execute"

    def first(self) -> bytes:
        return command_asdu(self.point, self.ca, self.value, self.phase == "select", self.now_ms)

    def execute(self, now_ms: int) -> bytes:
        return command_asdu(self.point, self.ca, self.value, False, now_ms)

    def mine(self, a: c.Asdu) -> bool:
        return (a.type_id == c.TYPE_IDS[self.point.datatype] and a.ca == self.ca
                and any(ioa == self.point.address for ioa, _ in a.objects))

    def feed(self, a: c.Asdu) -> str | None:
        """'execute' when the execute command must be sent now, else None (result may be set). Only an
        answer to what is under way counts: while the execute waits for its ACT_CON, a confirmation with
        S/E 1 (a select's, sent again) is not its answer, and an ACT_TERM before that ACT_CON (an earlier
        command's, late) is none either; once it is confirmed, only its ACT_TERM or a refusal (44-47)
        changes anything. Before, either made a command whose execute was never confirmed a success."""
        if self.result is not None or not self.mine(a):
            return None
        cause = a.cause
        if cause in (c.COT_UNKNOWN_TYPE, c.COT_UNKNOWN_COT, c.COT_UNKNOWN_CA, c.COT_UNKNOWN_IOA):
            self.finish(False, f"refused by the RTU: cause {cause} ({_COT_NAMES[cause]})")
        elif cause == c.COT_ACTCON and self.phase == "select":
            if a.negative:
                self.finish(False, "negative confirmation of the select")
                return None
            self.phase = "execute"
            return "execute"
        elif cause == c.COT_ACTCON and self.phase == "execute" and not self._selects(a):
            if a.negative:
                self.finish(False, "negative confirmation of the execute")
            else:
                self.phase = "term"
        elif cause == c.COT_ACTTERM and self.phase == "term":
            self.finish(True, "executed (ACT_CON, ACT_TERM)")
        return None

    def _selects(self, a: c.Asdu) -> bool:
        """The S/E bit of our object in `a` (the last octet before a time tag: SCO, DCO, QOS)."""
        elem = next(e for ioa, e in a.objects if ioa == self.point.address)
        size = c.element_size(c.COMMAND_BASE[a.type_id])
        return bool(size and len(elem) >= size and elem[size - 1] & 0x80)

    def finish(self, ok: bool, reason: str) -> None:
        self.phase, self.result = "done", (ok, reason)


_COT_NAMES = {c.COT_UNKNOWN_TYPE: "unknown type", c.COT_UNKNOWN_COT: "unknown cause",
              c.COT_UNKNOWN_CA: "unknown common address", c.COT_UNKNOWN_IOA: "unknown IOA"}


# --- interrogations and clock sync ------------------------------------------------------------------------


@dataclass
class Schedule:
    """When to send a general interrogation (GI), a counter interrogation (CI) and a clock sync (CS):
    right after every STARTDT con (CS first, so that the answers carry the set time), then every period;
    a period of 0 disables the periodic GI and CI, and CS entirely. The CI after STARTDT goes whenever the
    RTU has counters (`counters`: ACC points, which a GI does not bring), whatever `ci_period_s` says
    (the station initialisation of IEC 60870-5-5), and with a period > 0 also to an RTU without counters,
    as before. `due(now)` returns the kinds due now and re-arms them."""

    gi_period_s: float
    ci_period_s: float
    cs_period_s: float
    counters: bool = False
    next: dict[str, float] = field(default_factory=dict)
    running: bool = False  # data transfer started (`next` may be empty then: no periodic GI, CI, CS)

    def started(self, now: float) -> None:
        self.running = True
        self.next = {}
        self._initialise(now)

    def _initialise(self, now: float) -> None:
        """The station initialisation, after STARTDT or an RTU's end of initialisation: CS, GI, CI now."""
        self.next["gi"] = now
        if self.cs_period_s > 0:
            self.next["cs"] = now
        if self.ci_period_s > 0 or self.counters:
            self.next["ci"] = now

    def stopped(self) -> None:
        self.running = False
        self.next = {}

    def request_gi(self, now: float) -> bool:
        """An extra GI (the RTU restarted: end of initialisation; Redis lost our data: full image); False
        when none is needed (data transfer stopped, or a GI is due already)."""
        if not self.running or self.next.get("gi", math.inf) <= now:
            return False
        self.next["gi"] = now
        return True

    def initialised(self, now: float) -> bool:
        """The RTU reported the end of its initialisation (M_EI_NA_1) after the interrogations that
        followed our STARTDT: clock sync, GI and CI now, as after STARTDT (its clock, image and counters
        may be new); False while data transfer is stopped."""
        if not self.running:
            return False
        self._initialise(now)
        return True

    def due(self, now: float, wait: Collection[str] = ()) -> list[str]:
        """The kinds due now, each re-armed for its next period; a kind in `wait` stays due, unsent (a GI
        while one is open: an RTU refuses a second, or answers both interleaved)."""
        out: list[str] = [k for k in ("cs", "gi", "ci") if k in self.next and self.next[k] <= now and k not in wait]
        period = {"gi": self.gi_period_s, "ci": self.ci_period_s, "cs": self.cs_period_s}
        for k in out:
            if period[k] > 0:
                self.next[k] = now + period[k]
            else:
                del self.next[k]
        return out

    def deadline(self, wait: Collection[str] = ()) -> float | None:
        times = [t for k, t in self.next.items() if k not in wait]
        return min(times) if times else None


@dataclass
class Interrogation:
    """The general interrogation under way on one connection, from its sending (`sent`) to its ACT_TERM or
    refusal (`ended`). An RTU that confirms a GI and never terminates it (or never answers it at all) would
    keep it open for the whole connection: an end of initialisation would bring no GI any more, and
    interrogated answers sent later (unasked, cause 20) would still be judged against the events since that
    GI. So a GI is also given up when `quiet_s` (the link's t1, the time an RTU has to answer) passes
    without a frame of it (its ACT_CON, an interrogated answer: `heard`); `expired` says so once.
    `first`: it is the GI sent right after STARTDT.

    `watch`: interrogated answers are still judged against the spontaneous events since that GI was sent,
    from its sending until its ACT_TERM or refusal, our STOPDT, the connection's end or the next GI, also
    once it is given up: an RTU slower than t1 (a gateway polling the devices behind it) still answers it
    later, and a late snapshot must not overwrite a newer event of its point."""

    quiet_s: float
    deadline: float | None = None  # None: no GI open
    first: bool = False
    watch: bool = False

    def sent(self, now: float, first: bool) -> None:
        self.deadline, self.first, self.watch = now + self.quiet_s, first, True

    def heard(self, now: float) -> None:
        if self.deadline is not None:
            self.deadline = now + self.quiet_s

    def ended(self) -> None:
        self.deadline, self.first, self.watch = None, False, False

    def open(self, now: float) -> bool:
        return self.deadline is not None and now <= self.deadline

    def expired(self, now: float) -> bool:
        """True once when the open GI is given up (nothing of it for `quiet_s`): it is no longer open (a GI
        due may be sent), its late answers are still watched (`watch`)."""
        if self.deadline is None or now <= self.deadline:
            return False
        self.deadline, self.first = None, False
        return True

    def covers_restart(self, now: float) -> bool:
        """Whether an end of initialisation (M_EI_NA_1) needs no new GI: the GI sent right after STARTDT is
        open, which the RTU answers once initialised (it reports M_EI as soon as it is started, ahead of its
        answers, and accepts STARTDT only once its application runs). Any other GI open was sent before the
        application restarted without closing the connection, answered from the old image or dropped with
        it: clock sync, GI and CI are sent again (`Schedule.initialised`)."""
        return self.first and self.open(now)


def interrogation_asdu(kind: str, ca: int, now_ms: int) -> bytes:
    if kind == "gi":
        return c.interrogation(ca)
    if kind == "ci":
        return c.counter_interrogation(ca)
    return c.clock_sync(ca, now_ms)


def reaches(link_rx: float | None, carried_rx: float | None, now: float, window_s: float) -> bool:
    """An IEC 104 RTU is reached while its connection is open and it sent a frame within `window_s`
    (t3 + t1: an idle link is tested with TESTFR after t3 and closed when no answer comes within t1, so a
    standby node that never starts data transfer learns the same as the holder). `link_rx`: the time of
    the open connection's last frame (its opening counts as one; None: no connection open).

    `carried_rx`: after a reload restarted the runner (its channels unchanged), or after t1 closed a
    connection (a frame of ours left unanswered), the last frame of the connection closed, while the next
    connection attempt is under way (None otherwise): reached by it meanwhile, within the same window, as
    that connection would still have been.
    The attempt's end drops it: a connection that opens goes by its own frames, and carries on the old
    one's t3 / t1 timers from that time (`Iec104Runner.run`: its opening does not count as a frame then, so
    an RTU whose application hangs while its host accepts connections is not reached again at every
    reconnect); one that fails leaves the RTU not reached at once, as a connection that closes does."""
    last = link_rx if link_rx is not None else carried_rx
    return last is not None and now - last <= window_s
