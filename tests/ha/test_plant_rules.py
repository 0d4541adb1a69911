"""The counting rules of tests/ha/plant.py (scenario 4's "no change lost", scenario 7's convergence), as
table tests without a network: a rule that cannot fail would prove nothing in the HA scenarios."""

from __future__ import annotations

import struct

import pytest

from tests.ha.plant import (
    View,
    count_changes,
    count_spontaneous,
    device_timelines,
    final_mismatches,
    proto_value,
    spontaneous_flips,
)

DI = View(src=105, proto="iec104", key=1, type="M_SP_TB_1", coef=1.0)
DP = View(src=107, proto="iec104", key=3, type="M_DP_NA_1", coef=1.0)
FLOAT = View(src=101, proto="iec104", key=1001, type="M_ME_NC_1", coef=1.0)
NORM = View(src=201, proto="iec104", key=1004, type="M_ME_NA_1", coef=0.1)
SCALED = View(src=103, proto="iec104", key=1003, type="M_ME_NB_1", coef=10.0)
MB_FLOAT = View(src=202, proto="modbus", key=("ir", 2), type="float32", coef=1.0)


def events(*changes: tuple[float, dict[int, float]]) -> list[dict]:
    return [{"t": t, "ev": "start" if i == 0 else "tick", "values": {str(k): v for k, v in vals.items()}}
            for i, (t, vals) in enumerate(changes)]


def iec(t: float, ioa: int, value: object, node: str = "B") -> dict:
    return {"src": "iec104", "node": node, "ioa": ioa, "value": value, "t": t}


DEV = device_timelines(events((0, {105: 0}), (10, {105: 1}), (20, {105: 0}), (30, {105: 1})))


@pytest.mark.parametrize(("received", "made", "lost"), [
    ([iec(1, 1, False), iec(11, 1, True), iec(21, 1, False), iec(31, 1, True)], 3, []),
    ([iec(11, 1, True), iec(31, 1, True)], 3, [(105, 1, 20, 0)]),              # 0 at 20..30 never seen
    ([iec(11, 1, True), iec(21, 1, False), iec(31, 1, True)], 3, []),
    ([iec(11, 1, True), iec(31.5, 1, False), iec(32, 1, True)], 3, []),        # late (full image) but in time
    ([iec(11, 1, True), iec(35, 1, False), iec(36, 1, True)], 3, [(105, 1, 20, 0)]),   # too late
    ([iec(11, 1, True), iec(21, 1, False, node="A"), iec(31, 1, True)], 3, [(105, 1, 20, 0)]),  # other node
    ([iec(9, 1, True), iec(21, 1, False), iec(31, 1, True)], 3, [(105, 1, 10, 1)]),   # before the change
])
def test_count_changes(received: list[dict], made: int, lost: list) -> None:
    c = count_changes(DEV, received, [DI], "B", since=5, until=35, late_s=2.5)
    assert (c.made, c.lost, c.di_made, c.di_lost) == (made, lost, made, len(lost))
    assert c.received == made - len(lost)


@pytest.mark.parametrize(("view", "device", "rec_value", "same"), [
    (FLOAT, 231.7, 231.7, True),                         # float32 rounding of both sides
    (FLOAT, 231.7, 231.8, False),
    (NORM, 5, "0.500000", True),                         # 5 * COEF 0.1, as c104 prints a NormalizedFloat
    (NORM, 12, "0.999969", True),                        # clamped to 1 - 2^-15
    (SCALED, 2.5, "25", True),
    (SCALED, 2.5, "26", False),
    (DP, 1, "Double.ON", True),
    (DP, 0, "Double.ON", False),
    (DI, 1, True, True),
    (MB_FLOAT, 3.0, list(struct.unpack(">HH", struct.pack(">f", 3.0))), True),
])
def test_protocol_views(view: View, device: float, rec_value: object, same: bool) -> None:
    rec = {"src": view.proto, "node": "B", "value": rec_value, "t": 1.0}
    if view.proto == "iec104":
        rec["ioa"] = view.key
    else:
        rec["kind"], rec["addr"] = view.key
    got = proto_value(rec, view)
    assert got is not None and view.same(got, device) is same


def test_final_mismatches() -> None:
    dev = device_timelines(events((0, {105: 0, 101: 0.0}), (10, {105: 1, 101: 1.0})))
    ok = [iec(1, 1, False), iec(1, 1001, 0.0), iec(11, 1, True), iec(11, 1001, 1.0)]
    assert final_mismatches(dev, ok, [DI, FLOAT], "B") == []
    assert final_mismatches(dev, ok[:3], [DI, FLOAT], "B") == [(101, 1001, 1.0, 0.0)]
    assert final_mismatches(dev, ok, [DI, FLOAT], "A") == [(105, 1, 1.0, None), (101, 1001, 1.0, None)]
    never_changed = device_timelines(events((0, {108: 0})))
    counter = View(src=108, proto="iec104", key=3001, type="M_IT_TB_1", coef=1.0)
    assert final_mismatches(never_changed, [], [counter], "B") == []   # not in a GI, never sent: fine


GAP = device_timelines(events((0, {106: 0}), (10, {106: 1}), (11, {106: 0}), (30, {106: 1})))
GAP_DI = View(src=106, proto="iec104", key=2, type="M_SP_NA_1", coef=1.0)


@pytest.mark.parametrize(("received", "lost"), [
    # both flips of the gap (10, 11) replayed at the takeover (14), then the change at 30
    ([iec(14, 2, True), iec(14.1, 2, False), iec(31, 2, True)], []),
    # replayed later than the takeover + late_s: the short state is lost (the 0 lasting until 30 is not)
    ([iec(17, 2, True), iec(17.1, 2, False), iec(31, 2, True)], [(106, 2, 10, 1)]),
    # the flip never delivered (what happened before the standby replayed the gap)
    ([iec(14.1, 2, False), iec(31, 2, True)], [(106, 2, 10, 1)]),
])
def test_count_changes_catch_up_after_the_takeover(received: list[dict], lost: list) -> None:
    c = count_changes(GAP, received, [GAP_DI], "B", since=5, until=35, late_s=2.5, catch_up=14)
    assert c.made == 3 and c.lost == lost


# --- bench/failover.py's spontaneous-event count ----------------------------------------------------------
RAMP = View(src=3001, proto="iec104", key=3001, type="M_ME_TF_1", coef=1.0)
RAMP_DEV = {3001: [(10.0, 1.0), (11.0, 2.0), (12.0, 3.0), (13.0, 4.0)],
            105: [(10.0, 1.0), (11.0, 0.0), (12.0, 1.0), (13.0, 0.0)]}


def spont(t: float, ioa: int, value: object, tt: float | None = None, cot: str = "SPONTANEOUS",
          quality: str | None = None) -> dict:
    return {**iec(t, ioa, value), "cot": cot, **({"tt": tt} if tt is not None else {}),
            **({"quality": quality} if quality is not None else {})}


NT, GOOD = "Quality set: { NonTopical }, is_good: False", "Quality set: {}, is_good: True"  # str(c104.Quality)


CLEAN = [spont(10.1 + i, 3001, float(i + 1), 10.0 + i) for i in range(4)] + \
        [spont(10.1 + i, 1, bool((i + 1) % 2), 10.0 + i) for i in range(4)]


@pytest.mark.parametrize("records, lost, dup, order, tag", [
    (CLEAN, 0, 0, 0, 0),
    # a GI answer is not an event: value 3 only answered to GI is lost
    ([r for r in CLEAN if not (r["ioa"] == 3001 and r["value"] == 3.0)] + [spont(12.5, 3001, 3.0, cot="INTERROGATED_BY_STATION")],
     1, 0, 0, 0),
    ([*CLEAN, spont(13.2, 3001, 4.0, 13.0)], 0, 1, 0, 0),                       # sent again after a takeover
    ([*CLEAN, spont(13.3, 3001, 2.0, 11.0)], 0, 1, 1, 1),                       # old value replayed late
    # DI: the last toggle lost, the state before it sent twice
    ([r for r in CLEAN if not (r["ioa"] == 1 and r["t"] > 13)] + [spont(13.2, 1, True, 12.0)], 1, 1, 0, 0),
    ([r for r in CLEAN if r["ioa"] == 1] + [spont(10.1 + i, 3001, float(i + 1), 5.0) for i in range(4)],
     0, 0, 0, 4),                                                              # time tags before the change
])
def test_count_spontaneous(records: list[dict], lost: int, dup: int, order: int, tag: int) -> None:
    c = count_spontaneous(RAMP_DEV, sorted(records, key=lambda r: r["t"]), [RAMP, DI], "B", 9.5, 14.0)
    assert (c.events, c.lost, c.dup, c.order, c.tag, c.quality) == (8, lost, dup, order, tag, 0)


def good(records: list[dict]) -> list[dict]:
    return [{**r, "quality": GOOD} for r in records]


@pytest.mark.parametrize("records, lost, dup, quality", [
    (good(CLEAN), 0, 0, 0),
    # the failover: the last values re-sent with NT (no live holder), then without (the new holder polls)
    ([*good(CLEAN), spont(13.2, 3001, 4.0, 13.0, quality=NT), spont(13.5, 3001, 4.0, 13.0, quality=GOOD),
      spont(13.2, 1, False, 13.0, quality=NT), spont(13.5, 1, False, 13.0, quality=GOOD)], 0, 0, 4),
    # the same value with the same quality again is still a duplicate, after a quality event too
    ([*good(CLEAN), spont(13.2, 3001, 4.0, 13.0, quality=GOOD)], 0, 1, 0),
    ([*good(CLEAN), spont(13.2, 3001, 4.0, 13.0, quality=NT), spont(13.5, 3001, 4.0, 13.0, quality=NT)], 0, 1, 1),
    ([*good(CLEAN), spont(13.2, 1, False, 13.0, quality=NT), spont(13.5, 1, False, 13.0, quality=NT)], 0, 1, 1),
    # a new value that comes with NT is a value event, not a quality-only one: nothing lost
    ([r for r in good(CLEAN) if r["t"] < 13] + [spont(13.1, 3001, 4.0, 13.0, quality=NT),
                                                 spont(13.1, 1, False, 13.0, quality=NT)], 0, 0, 0),
    # a quality event cannot stand in for a lost change: the DI's last toggle never came
    ([r for r in good(CLEAN) if not (r["ioa"] == 1 and r["t"] > 13)] + [spont(13.2, 1, True, 12.0, quality=NT)],
     1, 0, 1),
])
def test_count_spontaneous_quality_only(records: list[dict], lost: int, dup: int, quality: int) -> None:
    c = count_spontaneous(RAMP_DEV, sorted(records, key=lambda r: r["t"]), [RAMP, DI], "B", 9.5, 14.0)
    assert (c.events, c.lost, c.dup, c.quality) == (8, lost, dup, quality)


CLIP_DEV = {201: [(10.0, 9.0), (11.0, 10.0), (12.0, 11.0), (13.0, 12.0), (14.05, 13.0)]}  # NORM: coef 0.1,
# clipped from 10; the last change comes after the window (9.5-14.0) and arrives at 14.1


@pytest.mark.parametrize("values, lost, dup", [
    ([0.9, 0.999969, 0.999969, 0.999969], 0, 0),            # 10, 11, 12 all show the maximum (OV): one each
    ([0.9, 0.999969, 0.999969], 1, 0),                      # one of them never came
    ([0.9, 0.999969, 0.999969, 0.999969, 0.999969], 0, 1),  # one came twice
    ([0.999969, 0.999969, 0.999969], 1, 0),                 # 9 (0.9) lost
    ([0.9, 0.999969, 0.999969, 0.999969, None, 0.999969], 0, 0),  # 13 changed after the window, arrives then
])
def test_count_spontaneous_clipped_values_are_counted_per_change(values: list[float], lost: int, dup: int) -> None:
    recs = [spont(10.1 + 0.8 * i, NORM.key, x) for i, x in enumerate(values) if x is not None]  # the 6th: 14.1
    c = count_spontaneous(CLIP_DEV, recs, [NORM], "B", 9.5, 14.0)
    assert (c.events, c.lost, c.dup) == (4, lost, dup)


def sp(t: float, value: bool, quality: str = "Quality set: {}, is_good: True", cot: str = "SPONTANEOUS",
       ioa: int = 2, node: str = "B") -> dict:
    return {"src": "iec104", "node": node, "ioa": ioa, "cot": cot, "value": value, "quality": quality, "t": t}


NT_Q = "Quality set: { NonTopical }, is_good: False"


@pytest.mark.parametrize(("records", "flips"), [
    ([sp(1, True, cot="INTERROGATED_BY_STATION"), sp(11, False), sp(12, True)], [False, True]),
    # the CI run of 29 Nov: NT set and cleared on the state before the gap, then the two gap flips
    ([sp(1, True), sp(10.5, True, NT_Q), sp(11, True), sp(12, False), sp(12.1, True), sp(12.2, True),
      sp(15, False)], [False, True, False]),
    ([sp(1, True), sp(12, True), sp(13, False)], [False]),                  # a repeat is no flip
    ([sp(1, True), sp(12, False), sp(13, False, ioa=3), sp(14, True, node="A")], [False]),  # other points, nodes
    ([sp(1, True), sp(9, False), sp(12, True)], [True]),                     # before `since`: not counted
    ([sp(1, True), sp(12, False, cot="INTERROGATED_BY_STATION"), sp(13, True)], [True]),  # GI is no event
    ([sp(11, False), sp(12, False)], [False]),                               # first record after `since`
])
def test_spontaneous_flips(records: list[dict], flips: list[bool]) -> None:
    assert spontaneous_flips(records, "B", 2, 10.0) == flips
