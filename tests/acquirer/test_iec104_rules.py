"""Table tests of the IEC 104 acquisition rules (services/acquirer/iec104rules.py) and of what the runner logs
of the ASDUs they ignore: no network, no clock."""

from __future__ import annotations

import logging
import struct
import types

import pytest

from fep_acquirer import iec104rules as rules
from fep_acquirer.iec104rtu import Iec104Runner
from fep_acquirer.metrics import Metrics
from fepha import points as pt
from fepha.config import NodeConfig
from fepha.iec104 import codec as c
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Channel, Point, Rtu

T = 1_790_000_000_123  # a device time tag (ms)
RX = 1_800_000_000_000  # our reception time (ms)


def point(pid: int, kind: str, ioa: int, typ: str, scale: float = 1.0, offset: float = 0.0,
          mode: str = "direct") -> Point:
    return Point(id=pid, rtu=1, kind=kind, name="", area="", address=ioa, datatype=typ, scale=scale,
                 offset=offset, ctlmode=mode)


SP = point(1, "DI", 100, "M_SP_TB_1")
DP = point(2, "DI", 101, "M_DP_NA_1")
NA = point(3, "AI", 200, "M_ME_NA_1", scale=100.0)
NB = point(4, "AI", 201, "M_ME_TE_1", scale=0.1, offset=-40)
NC = point(5, "AI", 202, "M_ME_NC_1")
IT = point(6, "ACC", 300, "M_IT_TB_1")
SC = point(7, "DO", 1000, "C_SC_NA_1", mode="sbo")
DC = point(8, "DO", 1001, "C_DC_TA_1")
SE_NA = point(9, "AO", 1100, "C_SE_NA_1", scale=100.0)
SE_NB = point(10, "AO", 1101, "C_SE_NB_1")
SE_NC = point(11, "AO", 1102, "C_SE_NC_1", scale=2.0, offset=1.0)
RTU = Rtu(id=1, name="r", rtutype=0, protocol="iec104", channels=(Channel(1, 1, "h", 2404, 7),),
          points=(SP, DP, NA, NB, NC, IT, SC, DC, SE_NA, SE_NB, SE_NC))


def tagged(elem: bytes, ts: int = T, invalid: bool = False) -> bytes:
    return elem + c.cp56(ts, invalid=invalid)


@pytest.mark.parametrize("p,type_id,elem,want", [
    (SP, c.M_SP_TB_1, tagged(b"\x01"), (1, 0, T)),
    (SP, c.M_SP_NA_1, b"\x00", (0, 0, RX)),                              # untagged: reception time
    (SP, c.M_SP_TB_1, tagged(b"\x01", invalid=True), (1, 0, RX)),        # tag marked invalid: reception time
    (SP, c.M_SP_NA_1, bytes((0x01 | 0x80 | 0x40,)), (1, 0xC0, RX)),     # IV + NT carried
    (SP, c.M_SP_NA_1, bytes((0x01 | 0x20 | 0x10,)), (1, 0x30, RX)),     # SB + BL carried
    (DP, c.M_DP_NA_1, b"\x02", (1, 0, RX)),                              # ON
    (DP, c.M_DP_NA_1, b"\x01", (0, 0, RX)),                              # OFF
    (DP, c.M_DP_NA_1, b"\x00", (0, 0x80, RX)),                           # intermediate: IV
    (DP, c.M_DP_TB_1, tagged(b"\x03"), (0, 0x80, T)),                    # indeterminate: IV
    (NA, c.M_ME_NA_1, struct.pack("<hB", 16384, 0), (50.0, 0, RX)),      # 0.5 x SCALE 100
    (NB, c.M_ME_TE_1, tagged(struct.pack("<hB", 650, 0x01)), (25.0, 0x01, T)),  # OV carried, scaled
    (NC, c.M_ME_NC_1, struct.pack("<fB", 231.5, 0), (231.5, 0, RX)),
    (NC, c.M_ME_NC_1, struct.pack("<fB", float("nan"), 0), (0, 0x80, RX)),
    (NC, c.M_ME_NC_1, struct.pack("<fB", 1.5, 0x0E | 0x01), (1.5, 0x01, RX)),  # reserved QDS bits: not quality
    (IT, c.M_IT_TB_1, tagged(struct.pack("<iB", 123456, 0)), (123456, 0, T)),
    (IT, c.M_IT_NA_1, struct.pack("<iB", -5, 0x80), (-5, 0x80, RX)),
])
def test_sample_of(p: Point, type_id: int, elem: bytes, want: tuple) -> None:
    v, q, ts, _ = rules.sample_of(p, type_id, elem, RX)
    assert (pytest.approx(v, abs=1e-3), q, ts) == want


def test_impossible_time_tag_uses_reception_time_and_says_so() -> None:
    bad = b"\x01" + struct.pack("<HBBBBB", 0, 0, 0, 0, 13, 26)  # day 0, month 13
    v, q, ts, problem = rules.sample_of(SP, c.M_SP_TB_1, bad, RX)
    assert (v, q, ts) == (1, 0, RX) and problem and problem[0] == rules.TAG_IMPOSSIBLE


AHEAD, BEHIND, DAY = rules.CLOCK_AHEAD_MS, rules.CLOCK_BEHIND_MS, 86_400_000


@pytest.mark.parametrize("tag,want,fault", [
    (RX, RX, None),
    (RX + 1500, RX + 1500, None),                        # small skew ahead: the device's time
    (RX + AHEAD, RX + AHEAD, None),                      # at the tolerance: taken
    (RX + AHEAD + 1, RX, rules.TAG_AHEAD),               # beyond it: reception time
    (RX + 3 * 3_600_000, RX, rules.TAG_AHEAD),           # a clock on local (summer) time east of UTC
    (RX + 5 * 365 * DAY, RX, rules.TAG_AHEAD),           # years ahead: an RTC gone wrong
    (RX - 2 * DAY, RX - 2 * DAY, None),                  # buffered during an outage: the event's own time
    (RX - 60 * DAY, RX - 60 * DAY, None),
    (RX - BEHIND, RX - BEHIND, None),                    # at the tolerance: taken
    (RX - BEHIND - 1, RX, rules.TAG_BEHIND),
    (946_684_800_000, RX, rules.TAG_BEHIND),             # 2000-01-01T00:00: an RTC reset to CP56Time2a year 00
])
def test_device_clock_tolerances(tag: int, want: int, fault: str | None) -> None:
    ts, got = rules.device_time(tagged(b"\x01", tag), RX)
    assert ts == want and (got[0] if got else None) == fault


def test_wrong_clock_is_one_fault_per_asdu_and_kind_and_all_replaced_tags_write_as_untagged() -> None:
    m = rules.PointMap(RTU)
    ahead = RX + 3 * 3_600_000
    objs = [(100, tagged(b"\x01", ahead)), (101, tagged(b"\x02", ahead + 10))]
    got = m.intake(asdu(c.M_SP_TB_1, c.COT_SPONT, objs[:1]), RX)
    assert got.events == [(1, (1, 0), RX)] and list(got.clock) == [rules.TAG_AHEAD] and not got.problems
    assert "IOA 100" in got.clock[rules.TAG_AHEAD] and "3.0 h ahead" in got.clock[rules.TAG_AHEAD]
    assert modes(got) == [rules.CHANGES]  # a re-send could not be recognised: the change rule
    # two points of one RTU, each with a wrong tag: one entry, not one per object
    sp, dp = (m.intake(asdu(t, c.COT_SPONT, [o]), RX) for t, o in ((c.M_SP_TB_1, objs[0]), (c.M_DP_TB_1, objs[1])))
    assert list(sp.clock) == list(dp.clock) == [rules.TAG_AHEAD]
    # one tag taken, two beyond: both faults named, each object written as its own tag says (below)
    got = m.intake(asdu(c.M_SP_TB_1, c.COT_SPONT, [(100, tagged(b"\x01")), (100, tagged(b"\x00", 946_684_800_000)),
                                                    (100, tagged(b"\x01", ahead))]), RX)
    assert got.events == [(1, (1, 0), T), (1, (0, 0), RX), (1, (1, 0), RX)]
    assert set(got.clock) == {rules.TAG_BEHIND, rules.TAG_AHEAD} and modes(got) == [rules.EVERY, rules.CHANGES]
    got = m.intake(asdu(c.M_SP_TB_1, c.COT_SPONT, [(100, tagged(b"\x01", invalid=True))]), RX)
    assert list(got.clock) == [rules.TAG_INVALID] and modes(got) == [rules.CHANGES]
    got = m.intake(asdu(c.M_SP_TB_1, c.COT_SPONT, [(100, tagged(b"\x01"))]), RX)   # a right clock again
    assert got.events == [(1, (1, 0), T)] and not got.clock and modes(got) == [rules.EVERY]
    got = m.intake(asdu(c.M_IT_TB_1, c.COT_SPONT, [(300, tagged(struct.pack("<iB", 7, 0), ahead))]), RX)
    assert got.events == [(6, (7, 0), RX)] and modes(got) == [rules.EVERY]  # a counter reading: each one still


def modes(got: rules.Intake) -> list[str]:
    return [r.mode for r in got.runs]


def asdu(type_id: int, cause: int, objs: list[tuple[int, bytes]], ca: int = 7, negative: bool = False) -> c.Asdu:
    return c.parse_asdu(c.build_asdu(type_id, cause | (c.NEGATIVE if negative else 0), ca, objs))


def test_intake_spontaneous_untagged_gi_unknown_ioa_and_wrong_type() -> None:
    m = rules.PointMap(RTU)
    got = m.intake(asdu(c.M_SP_TB_1, c.COT_SPONT, [(100, tagged(b"\x01")), (4242, tagged(b"\x00"))]), RX)
    assert got.spontaneous and got.tagged and got.events == [(1, (1, 0), T)]
    assert list(got.problems) == ["ioa 4242"] and "4242" in got.problems["ioa 4242"]
    got = m.intake(asdu(c.M_SP_NA_1, c.COT_INROGEN, [(100, b"\x00")]), RX)          # GI answer, untagged
    assert not got.spontaneous and not got.tagged and got.events == [(1, (0, 0), RX)]
    got = m.intake(asdu(c.M_ME_NC_1, c.COT_SPONT, [(100, struct.pack("<fB", 1.0, 0))]), RX)  # IOA of a DI
    assert got.events == [] and list(got.problems) == ["ioa 100 type 13"]
    got = m.intake(asdu(c.M_SP_NA_1, c.COT_SPONT, [(1000, b"\x01")]), RX)           # a command IOA
    assert got.events == [] and list(got.problems) == ["ioa 1000"]


@pytest.mark.parametrize("pids,want", [
    ([1, 2, 3], [[1, 2, 3]]),
    ([1, 1, 1], [[1], [1], [1]]),
    ([1, 2, 1, 3, 2], [[1, 2], [1, 3, 2]]),
    ([], []),
])
def test_batches_hold_a_point_at_most_once_in_order(pids: list[int], want: list[list[int]]) -> None:
    events = [(pid, (i, 0), i) for i, pid in enumerate(pids)]
    assert [[e[0] for e in b] for b in rules.batches(events)] == want
    assert [e for b in rules.batches(events) for e in b] == events


def test_tail_drops_what_the_former_holder_wrote_once_each() -> None:
    e1, e2, e3 = (1, (1, 0), T), (1, (0, 0), T + 1), (3, (5.0, 0), T + 2)
    held = {1: (0, 0), 3: (5.0, 0)}                                # what the value hash holds
    tail = rules.Tail({(1, pt.encode(1, 0, T)), (3, pt.encode(5.0, 0, T + 2))})
    assert tail.take([rules.Run(rules.EVERY, True, [e1, e3])], held) == [] and not tail.moved
    tail = rules.Tail({(1, pt.encode(1, 0, T)), (3, pt.encode(5.0, 0, T + 2))})
    assert tail.take([rules.Run(rules.EVERY, True, [e2, e3])], held) == []  # e2 before a recognised one
    tail = rules.Tail({(1, pt.encode(1, 0, T))})
    runs = [rules.Run(rules.EVERY, True, [e1])]
    assert tail.take(runs, held) == [] and tail.take(runs, held) == runs  # recognised once
    tail = rules.Tail({(3, pt.encode(5.0, 0, T + 2))})
    runs = [rules.Run(rules.CHANGES, False, [e3])]
    assert tail.take(runs, held) == runs and tail.recent            # the reception time's: never recognised


AHEAD_TAG = RX + 3 * 3_600_000  # a device clock 3 h ahead: the reception time replaces it


def sp(v: int, ts: int = T, invalid: bool = False) -> tuple[int, bytes]:
    return 100, tagged(bytes((v,)), ts, invalid)


def runs_of(got: rules.Intake) -> list[tuple[str, bool, list[tuple[int, int, int]]]]:
    return [(r.mode, r.device_times, [(pid, v, ts) for pid, (v, _), ts in r.events]) for r in got.runs]


E, C, IM = rules.EVERY, rules.CHANGES, rules.IMAGE


@pytest.mark.parametrize("type_id,cause,objs,want", [
    # SQ = 0, several events of one point: each object by its own tag, wire order kept
    (c.M_SP_TB_1, c.COT_SPONT, [sp(1), sp(0, AHEAD_TAG), sp(1, T + 5)],
     [(E, True, [(1, 1, T)]), (C, False, [(1, 0, RX)]), (E, True, [(1, 1, T + 5)])]),
    (c.M_SP_TB_1, c.COT_SPONT, [sp(0, AHEAD_TAG), sp(1, invalid=True), sp(0)],
     [(C, False, [(1, 0, RX), (1, 1, RX)]), (E, True, [(1, 0, T)])]),
    (c.M_SP_TB_1, c.COT_RETREM, [sp(1), sp(0, 946_684_800_000)], [(E, True, [(1, 1, T)]), (C, False, [(1, 0, RX)])]),
    # every tag taken, every tag replaced: one run, as before
    (c.M_SP_TB_1, c.COT_SPONT, [sp(1), sp(0, T + 1)], [(E, True, [(1, 1, T), (1, 0, T + 1)])]),
    (c.M_SP_TB_1, c.COT_SPONT, [sp(1, AHEAD_TAG), sp(0, AHEAD_TAG)], [(C, False, [(1, 1, RX), (1, 0, RX)])]),
    # a counter: every reading written, with its tag or ours (told apart: only a tag taken is recognised)
    (c.M_IT_TB_1, c.COT_SPONT, [(300, tagged(struct.pack("<iB", 7, 0))), (300, tagged(struct.pack("<iB", 8, 0), AHEAD_TAG))],
     [(E, True, [(6, 7, T)]), (E, False, [(6, 8, RX)])]),
    # interrogated: snapshots whatever their tags
    (c.M_SP_TB_1, c.COT_INROGEN, [sp(1), sp(0, AHEAD_TAG)], [(IM, True, [(1, 1, T)]), (IM, False, [(1, 0, RX)])]),
    # an untagged type: the change rule, no device time
    (c.M_SP_NA_1, c.COT_SPONT, [(100, b"\x01"), (100, b"\x00")], [(C, False, [(1, 1, RX), (1, 0, RX)])]),
])
def test_each_object_is_written_as_its_own_time_tag_says(type_id: int, cause: int, objs: list, want: list) -> None:
    """An object whose tag the reception time replaced follows the untagged change rule, one whose tag was
    taken is an event of its own, whatever the other objects of its ASDU carry."""
    assert runs_of(rules.PointMap(RTU).intake(asdu(type_id, cause, objs), RX)) == want


def written(runs: list[rules.Run], last: dict[int, tuple[float | int, int]]) -> list[rules.Event]:
    """What the runner writes of these runs, in order (`_publish`: EVERY each, CHANGES by the change rule
    against what the hash holds), `last` updated as the value hash would be."""
    out: list[rules.Event] = []
    for r in runs:
        evs = rules.changes_only(r.events, last, set()) if r.mode == rules.CHANGES else r.events
        for pid, s, _ in evs:
            last[pid] = s
        out += evs
    return out


@pytest.mark.parametrize("objs,first,state", [
    # a replaced object after a recognised one: it was handled, and is the change rule's anyway
    ([sp(1), sp(0, AHEAD_TAG)], [(1, (1, 0), T), (1, (0, 0), RX)], (0, 0)),
    # a replaced object ahead of a recognised event of its point: dropped with it, the point stays on its
    # last state (written again, it would come after the event and leave the point on the earlier state)
    ([sp(1, AHEAD_TAG), sp(0)], [(1, (1, 0), RX), (1, (0, 0), T)], (0, 0)),
    ([sp(1, AHEAD_TAG), sp(0), sp(1, AHEAD_TAG)], [(1, (1, 0), RX), (1, (0, 0), T), (1, (1, 0), RX)], (1, 0)),
    ([sp(1, invalid=True), sp(0), sp(1, T + 1), sp(0, AHEAD_TAG)],
     [(1, (1, 0), RX), (1, (0, 0), T), (1, (1, 0), T + 1), (1, (0, 0), RX)], (0, 0)),
])
def test_an_asdu_with_some_tags_replaced_sent_again_is_written_once(objs: list, first: list, state: tuple) -> None:
    """An ASDU whose tags are partly replaced (SQ = 0, several events of one point), written, then sent again
    by the RTU after a cut (with another reception time): the first time each object is written in order
    and the point ends on the last one's state; the second time nothing is written and the state stays."""
    m = rules.PointMap(RTU)
    last: dict[int, tuple[float | int, int]] = {1: (1 - first[0][1][0], 0)}  # the first object changes it
    got = m.intake(asdu(c.M_SP_TB_1, c.COT_SPONT, objs), RX)
    assert written(got.runs, last) == first and last[1] == state
    recent = {(pid, pt.encode(v, q, ts)) for pid, (v, q), ts in first if ts != RX}  # the change records
    again = m.intake(asdu(c.M_SP_TB_1, c.COT_SPONT, objs), RX + 5000)
    assert written(rules.Tail(recent).take(again.runs, last), last) == [] and last[1] == state


def test_resent_keeps_what_follows_the_last_recognised_object() -> None:
    """Only the objects up to the last recognised one were written before (a connection that closed in the
    middle of an ASDU's writes leaves the rest unwritten): those after it are kept, in order."""
    m = rules.PointMap(RTU)
    got = m.intake(asdu(c.M_SP_TB_1, c.COT_SPONT, [sp(1), sp(0, AHEAD_TAG), sp(1, T + 1), sp(0, T + 2)]), RX)
    recent = {(1, pt.encode(1, 0, T))}                             # the writes stopped after the first
    kept = rules.Tail(recent).take(got.runs, {1: (0, 0)})
    assert [(r.mode, [e[2] for e in r.events]) for r in kept] == [(C, [RX]), (E, [T + 1, T + 2])]


@pytest.mark.parametrize("type_id,cause,want", [
    (c.M_SP_TB_1, c.COT_SPONT, rules.EVERY),      # the device's time tag: a repeated state is an event
    (c.M_ME_TF_1, c.COT_RETREM, rules.EVERY),
    (c.M_IT_NA_1, c.COT_SPONT, rules.EVERY),      # integrated totals: every reading, even untagged
    (c.M_IT_TB_1, c.COT_SPONT, rules.EVERY),
    (c.M_SP_NA_1, c.COT_SPONT, rules.CHANGES),    # untagged status / measured: the change rule
    (c.M_DP_NA_1, c.COT_RETLOC, rules.CHANGES),
    (c.M_ME_NA_1, c.COT_SPONT, rules.CHANGES),
    (c.M_ME_NC_1, c.COT_RETREM, rules.CHANGES),
    (c.M_SP_TB_1, c.COT_INROGEN, rules.IMAGE),    # interrogated, periodic, background, counter request
    (c.M_SP_NA_1, c.COT_INROGEN + 5, rules.IMAGE),  # group 5's answer, asked or not: a snapshot
    (c.M_ME_NC_1, c.COT_PERIODIC, rules.IMAGE),
    (c.M_ME_NC_1, c.COT_BACKGROUND, rules.IMAGE),
    (c.M_IT_NA_1, c.COT_REQCOGEN, rules.IMAGE),
])
def test_write_mode(type_id: int, cause: int, want: str) -> None:
    assert rules.write_mode(type_id, cause) == want


def test_changes_only_applies_the_change_rule_in_order_without_deadband() -> None:
    last = {1: (1, 0), 3: (5.0, 0)}
    on, off, on2 = (1, (1, 0), RX), (1, (0, 0), RX + 1), (1, (1, 0), RX + 2)
    assert rules.changes_only([on], last, set()) == []                  # the value Redis holds: not a change
    assert rules.changes_only([on, off, on2], last, set()) == [off, on2]  # each against the one before
    assert rules.changes_only([(1, (1, 0x80), RX)], last, set()) == [(1, (1, 0x80), RX)]  # quality changed
    assert rules.changes_only([(3, (5.001, 0), RX)], last, set()) == [(3, (5.001, 0), RX)]  # any move
    assert rules.changes_only([(2, (0, 0), RX)], last, set()) == [(2, (0, 0), RX)]  # never written
    assert rules.changes_only([on, on2], last, {1}) == [on]            # last write failed: once, then the rule


def test_not_overtaken_drops_interrogated_points_with_a_newer_spontaneous_event() -> None:
    answers = [(1, (1, 0), RX), (3, (5.0, 0), RX)]
    assert rules.not_overtaken(answers, {1}) == [(3, (5.0, 0), RX)]
    assert rules.not_overtaken(answers, set()) == answers


@pytest.mark.parametrize("p,value,select,want", [
    (SC, 1, True, bytes((0x81,))),
    (SC, 0, False, bytes((0x00,))),
    (SE_NA, 50.0, False, struct.pack("<hB", 16384, 0)),
    (SE_NB, 1234.4, True, struct.pack("<hB", 1234, 0x80)),
    (SE_NC, 25.0, False, struct.pack("<fB", 12.0, 0)),              # (25 - 1) / 2
])
def test_command_element(p: Point, value: float, select: bool, want: bytes) -> None:
    assert rules.command_element(p, value, select, T) == want


def test_time_tagged_command_carries_the_time_and_double_command_maps_on_off() -> None:
    e = rules.command_element(DC, 1, False, T)
    assert e[0] == 2 and c.cp56_ms(e[1:]) == T
    assert rules.command_element(DC, 0, False, T)[0] == 1


@pytest.mark.parametrize("p,value,match", [
    (SC, 2, "0 or 1"),
    (SC, float("nan"), "finite"),
    (SE_NA, 150.0, "normalised"),
    (SE_NB, 40000, "scaled"),
    (SE_NC, 1e39, "short float"),
])
def test_command_values_the_type_cannot_carry_are_refused(p: Point, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rules.command_element(p, value, False, T)


def reply(p: Point, cause: int, negative: bool = False, ioa: int | None = None, ca: int = 7) -> c.Asdu:
    return asdu(c.TYPE_IDS[p.datatype], cause, [(p.address if ioa is None else ioa, b"\x01")], ca, negative)


def test_direct_command_con_then_term() -> None:
    ex = rules.CommandExchange(point(12, "DO", 1003, "C_SC_NA_1"), 7, 1, False, T)
    assert c.parse_asdu(ex.first()).objects[0][1] == b"\x01"             # execute, S/E 0
    assert ex.feed(reply(ex.point, c.COT_ACTCON, ioa=9999)) is None and ex.phase == "execute"  # not ours
    assert ex.feed(reply(ex.point, c.COT_ACTCON, ca=8)) is None and ex.phase == "execute"      # other CA
    assert ex.feed(reply(ex.point, c.COT_ACTCON)) is None and ex.phase == "term" and ex.result is None
    ex.feed(reply(ex.point, c.COT_ACTTERM))
    assert ex.result == (True, "executed (ACT_CON, ACT_TERM)")


def test_select_before_operate() -> None:
    ex = rules.CommandExchange(SC, 7, 1, True, T)
    assert c.parse_asdu(ex.first()).objects[0][1] == b"\x81"             # select
    assert ex.feed(reply(SC, c.COT_ACTCON)) == "execute"
    assert c.parse_asdu(ex.execute(T)).objects[0][1] == b"\x01"
    assert ex.feed(reply(SC, c.COT_ACTCON)) is None and ex.phase == "term"
    ex.feed(reply(SC, c.COT_ACTTERM))
    assert ex.result is not None and ex.result[0]


@pytest.mark.parametrize("sbo,answer,reason", [
    (True, (c.COT_ACTCON, True), "negative confirmation of the select"),
    (False, (c.COT_ACTCON, True), "negative confirmation of the execute"),
    (False, (c.COT_UNKNOWN_IOA, True), "unknown IOA"),
    (True, (c.COT_UNKNOWN_TYPE, False), "unknown type"),
])
def test_command_refusals(sbo: bool, answer: tuple[int, bool], reason: str) -> None:
    ex = rules.CommandExchange(SC, 7, 1, sbo, T)
    assert ex.feed(reply(SC, answer[0], negative=answer[1])) is None
    assert ex.result is not None and not ex.result[0] and reason in ex.result[1]


def test_schedule_after_startdt_and_periodic() -> None:
    s = rules.Schedule(gi_period_s=10, ci_period_s=0, cs_period_s=0)
    assert s.due(0) == [] and s.deadline() is None                   # nothing before STARTDT
    s.started(100)
    assert s.due(100) == ["gi"] and s.due(105) == [] and s.due(110) == ["gi"]
    s.stopped()
    assert s.due(1000) == []
    s = rules.Schedule(gi_period_s=0, ci_period_s=30, cs_period_s=60)
    s.started(0)
    assert s.due(0) == ["cs", "gi", "ci"] and s.due(29) == [] and s.due(30) == ["ci"] and s.due(60) == ["cs", "ci"]
    assert s.request_gi(61)                                         # RTU restarted / full image
    assert not s.request_gi(61)                                     # already due: no second one
    assert s.due(61) == ["gi"] and s.due(1000) == ["cs", "ci"]
    s.stopped()
    assert not s.request_gi(1001) and s.due(1001) == []             # stopped: the next STARTDT brings one


def test_schedule_end_of_initialisation_asks_clock_sync_gi_and_ci_as_after_startdt() -> None:
    s = rules.Schedule(gi_period_s=0, ci_period_s=30, cs_period_s=60)
    assert not s.initialised(0)                                     # stopped: the next STARTDT brings them
    s.started(0)
    assert s.due(0) == ["cs", "gi", "ci"]
    assert s.initialised(10) and s.due(10) == ["cs", "gi", "ci"]
    assert s.due(40) == ["ci"]                                      # periods run from the new ones
    s = rules.Schedule(gi_period_s=0, ci_period_s=0, cs_period_s=0)
    s.started(0)
    assert s.due(0) == ["gi"] and s.initialised(5) and s.due(5) == ["gi"] and s.deadline() is None
    assert s.request_gi(6) and s.due(6) == ["gi"]                   # no periodic GI: still asked for (full image)


def test_schedule_reads_counters_after_every_startdt_when_the_rtu_has_them_whatever_the_period() -> None:
    """ci_period_s 0 is no periodic CI, not none at all: a GI does not bring counters, so without the CI of
    the station initialisation an RTU's counters stayed IV after every reconnect until it sent them itself."""
    s = rules.Schedule(gi_period_s=0, ci_period_s=0, cs_period_s=0, counters=True)
    s.started(0)
    assert s.due(0) == ["gi", "ci"] and s.deadline() is None        # once, no periodic one
    assert s.initialised(5) and s.due(5) == ["gi", "ci"]             # end of initialisation: again
    s.stopped()
    s.started(9)
    assert s.due(9) == ["gi", "ci"]                                  # the next STARTDT (reconnect): again
    s = rules.Schedule(gi_period_s=0, ci_period_s=30, cs_period_s=0, counters=True)
    s.started(0)
    assert s.due(0) == ["gi", "ci"] and s.due(30) == ["ci"]          # with a period: as before


def test_interrogation_asdus() -> None:
    assert c.parse_asdu(rules.interrogation_asdu("gi", 7, T)).type_id == c.C_IC_NA_1
    assert c.parse_asdu(rules.interrogation_asdu("ci", 7, T)).type_id == c.C_CI_NA_1
    cs = c.parse_asdu(rules.interrogation_asdu("cs", 7, T))
    assert cs.type_id == c.C_CS_NA_1 and cs.ca == 7 and c.cp56_ms(cs.objects[0][1]) == T


@pytest.mark.parametrize("link_rx,carried,now,window,want", [
    (9.0, None, 10.0, 2.0, True),
    (7.0, None, 10.0, 2.0, False),       # silent longer than t3 + t1
    (None, None, 10.0, 2.0, False),      # no connection
    # a reload restarted the runner; its first connection attempt under way: the closed connection's last frame
    (None, 9.0, 10.0, 2.0, True),
    (None, 7.0, 10.0, 2.0, False),       # that one would have been given up by now too
    # the attempt's connection is open: its own frames (it starts from the carried time, Iec104Runner.run)
    (9.5, 7.0, 10.0, 2.0, True),
    (7.0, 9.0, 10.0, 2.0, False),        # a carried time no longer counts once a connection is open
])
def test_reaches(link_rx: float | None, carried: float | None, now: float, window: float, want: bool) -> None:
    assert rules.reaches(link_rx, carried, now, window) is want


@pytest.mark.parametrize("cause, event", [
    (c.COT_SPONT, True), (c.COT_RETREM, True), (c.COT_RETLOC, True),  # a change at the device
    (c.COT_INROGEN, False), (c.COT_INROGEN + 1, False), (c.COT_BACKGROUND, False), (c.COT_REQ, False),
    (c.COT_PERIODIC, False),
])
def test_return_information_of_a_command_is_an_event_like_spontaneous_data(cause: int, event: bool) -> None:
    """IEC 60870-5-101 causes 11 / 12: the state a remote or local command brought, reported once; an RTU
    that sends a breaker's new position that way must not see it dropped as an unchanged snapshot."""
    got = rules.PointMap(RTU).intake(asdu(c.M_SP_NA_1, cause, [(100, b"\x01")]), RX)
    assert got.spontaneous is event and got.events == [(1, (1, 0), RX)]


def test_time_tag_fields_out_of_range_use_reception_time() -> None:
    bad = b"\x01" + struct.pack("<HBBBBB", 0, 0, 31, 1, 1, 26)  # hour 31: no instant, not 1 January 07:00
    v, q, ts, problem = rules.sample_of(SP, c.M_SP_TB_1, bad, RX)
    assert (v, q, ts) == (1, 0, RX) and problem and problem[0] == rules.TAG_IMPOSSIBLE


def test_interrogation_open_until_act_term_or_t1_without_a_frame_of_it() -> None:
    g = rules.Interrogation(quiet_s=15)
    assert not g.open(0) and not g.expired(100)
    g.sent(0, first=True)
    assert g.open(15) and not g.expired(15)
    g.heard(10)                                                     # its ACT_CON, an answer: t1 again
    assert g.open(25) and not g.open(25.1)
    assert g.expired(26) and not g.expired(27) and not g.open(26)   # said once, then ended
    assert g.watch                                   # given up: its late answers still judged against events
    g.sent(30, first=False)
    g.ended()                                                        # ACT_TERM
    assert not g.open(30) and not g.expired(100) and not g.watch
    g.heard(200)                                                     # a late answer opens nothing
    assert not g.open(200)


@pytest.mark.parametrize("first,at,covered", [
    (True, 5, True),      # the GI right after STARTDT, open: the initialised station answers it
    (True, 20, False),    # never terminated, given up after t1: a GI is sent again
    (False, 5, False),    # a later GI (periodic, full image) open: sent before the restart
])
def test_end_of_initialisation_needs_a_gi_unless_the_one_after_startdt_is_open(first: bool, at: float,
                                                                                covered: bool) -> None:
    g = rules.Interrogation(quiet_s=15)
    g.sent(0, first=first)
    assert g.covers_restart(at) is covered
    g.ended()
    assert not g.covers_restart(at)


RX2 = RX + 5000  # the re-send's reception time


@pytest.mark.parametrize("frames,again", [
    # a replaced object that changed the point, then a later ASDU's recognised event of it: written again
    # (the replaced one could not be recognised), so the event is too and the point ends on its state
    ([[sp(1, AHEAD_TAG)], [sp(0)]], [(1, (1, 0), RX2), (1, (0, 0), T)]),
    ([[sp(1, AHEAD_TAG)], [sp(0), sp(1, T + 1)], [sp(0, T + 2)]],
     [(1, (1, 0), RX2), (1, (0, 0), T), (1, (1, 0), T + 1), (1, (0, 0), T + 2)]),
    # a replaced object equal to what the hash holds is no change: nothing moved, nothing written
    ([[sp(0, AHEAD_TAG)], [sp(1)], [sp(0, T + 1)]], []),
    ([[sp(1)], [sp(0, AHEAD_TAG)]], []),
    # untagged objects of an untagged type: the change rule alone (its residual: a pulse written again)
    ([[(100, b"\x01")], [(100, b"\x00")]], [(1, (1, 0), RX2), (1, (0, 0), RX2)]),
])
def test_a_tail_sent_again_ends_every_point_on_its_last_state(frames: list, again: list) -> None:
    """ASDUs written, then sent again after a cut (the RTU's unacknowledged tail, with our new reception
    time): what is written the second time, and the point ends on the state the first pass left."""
    m = rules.PointMap(RTU)

    def intake(objs: list, rx: int) -> rules.Intake:
        return m.intake(asdu(c.M_SP_TB_1 if len(objs[0][1]) > 1 else c.M_SP_NA_1, c.COT_SPONT, objs), rx)

    hashed: dict[int, tuple[float | int, int]] = {1: (1 - frames[0][0][1][0], 0)}  # the first object changes it
    first = [e for f in frames for e in written(intake(f, RX).runs, hashed)]
    state = hashed[1]
    tail = rules.Tail({(pid, pt.encode(v, q, ts)) for pid, (v, q), ts in first if ts != RX})
    assert [e for f in frames for e in written(tail.take(intake(f, RX2).runs, hashed), hashed)] == again
    assert hashed[1] == state


def test_a_gi_due_while_one_is_open_waits_for_it() -> None:
    s = rules.Schedule(gi_period_s=10, ci_period_s=10, cs_period_s=0)
    s.started(0)
    assert s.due(0) == ["gi", "ci"]
    assert s.due(10, wait=("gi",)) == ["ci"] and s.deadline(wait=("gi",)) == 20  # the GI stays due, unsent
    assert s.due(12, wait=("gi",)) == [] and s.deadline() == 10
    assert s.due(13) == ["gi"] and s.deadline() == 20                           # the open one ended: sent
    assert s.due(20, wait=("gi",)) == ["ci"] and s.due(23) == ["gi"] and s.deadline() == 30


def test_log_prefixes_say_ioa_type_and_cause_as_they_are(caplog) -> None:
    """What the runner logs of an ASDU it ignores names each number for what it is: the IOA as "ioa", the
    type id as "type", the cause as its number with "P/N" and "test" for those bits (not the raw octet)."""
    caplog.set_level(logging.WARNING, logger="t.prefix")
    run = Iec104Runner(RTU, NodeConfig(), None, Metrics("A"), OnceLogger(logging.getLogger("t.prefix")))  # type: ignore[arg-type]
    run.channel = RTU.channels[0]
    link = types.SimpleNamespace(started=True)
    sent = [(c.M_ME_NC_1, c.COT_SPONT, [(100, struct.pack("<fB", 1.0, 0))]),          # IOA of a DI
            (c.M_SP_NA_1, c.COT_SPONT | c.TEST, [(100, b"\x01")]),                     # test bit
            (c.M_SP_NA_1, c.COT_ACT | c.NEGATIVE | c.TEST, [(100, b"\x01")]),          # no monitoring cause
            (5, c.COT_SPONT, [(4243, b"\x05\x00")]),                                 # M_ST_NA_1: not read
            (c.C_IC_NA_1, c.COT_ACTCON | c.NEGATIVE, [(0, b"\x14")])]                  # GI refused
    for type_id, cot, objs in sent:
        assert run._asdu(link, c.build_asdu(type_id, cot, 7, objs), RX) in (None, [])  # type: ignore[arg-type]
    said = [m.split(": ")[0] for m in caplog.messages]
    assert said == ["rtu 1 ioa 100 type 13", "rtu 1 type 1 cause 3 test", "rtu 1 type 1 cause 6 P/N test",
                    "rtu 1 ioa 4243 type 5", "rtu 1 type 100"], caplog.messages
    assert "cause 7 P/N" in caplog.messages[-1]
