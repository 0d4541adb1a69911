"""The counting rules of tests/ha/switchover.py as table tests without a network: lost, duplicated and the
duplicate bound must be able to fail."""

from __future__ import annotations

from tests.ha.plant import View, device_timelines
from tests.ha.switchover import count_switch, dup_bound

FLOAT = View(src=101, proto="iec104", key=1001, type="M_ME_NC_1", coef=1.0)
FLOAT2 = View(src=102, proto="iec104", key=1002, type="M_ME_NC_1", coef=1.0)
NORM = View(src=201, proto="iec104", key=1004, type="M_ME_NA_1", coef=0.1)  # clamps at 1: no sequence
DI = View(src=105, proto="iec104", key=1, type="M_SP_TB_1", coef=1.0)  # toggles: no sequence

DEV = device_timelines([{"t": t, "ev": "start" if t == 0 else "tick",
                         "values": {"101": t, "102": t, "201": 100 + t, "105": t % 2}} for t in range(6)])


def rx(ioa: int, value: float, cot: str = "SPONTANEOUS", node: str = "A", quality: str = "Quality set: {}, is_good: True") -> dict:
    return {"src": "iec104", "node": node, "ioa": ioa, "value": value, "cot": cot, "t": 0.0, "quality": quality}


def test_every_change_once_is_clean_and_only_sequences_count() -> None:
    recs = [rx(1001, v) for v in range(1, 6)] + [rx(1002, v, node="B") for v in range(1, 6)]
    c = count_switch(DEV, recs, [FLOAT, FLOAT2, NORM, DI], since=0.5, until=5, k=12)
    assert (c.made, c.lost, c.dup, c.points) == (10, 0, 0, 2)
    assert c.bound == 24  # two counted points of one type: k ASDUs of two events each


def test_lost_and_duplicated_and_interrogation_not_counted() -> None:
    recs = [rx(1001, v) for v in (1, 2, 3)] + [rx(1001, v, node="B") for v in (3, 5)] + [rx(1001, 4, "INTERROGATED_BY_STATION")]
    c = count_switch(DEV, recs, [FLOAT], since=0.5, until=5, k=12)
    assert (c.made, c.lost, c.dup) == (5, 1, 1) and c.per_point[1001] == (5, 1, 1)


def test_a_quality_change_is_not_a_duplicate_but_a_replay_is() -> None:
    nt = "Quality set: { NonTopical }, is_good: False"
    # 3 good, the same 3 with NT (no node acquires the device), good again: two quality changes, no duplicate
    recs = [rx(1001, v) for v in (1, 2, 3)] + [rx(1001, 3, quality=nt), rx(1001, 3, node="B")]
    recs += [rx(1001, v, node="B") for v in (4, 5)]
    assert count_switch(DEV, recs, [FLOAT], since=0.5, until=5, k=12).per_point[1001] == (5, 0, 0)
    # node B replays 2 and 3 with the quality of the previous reception: two duplicates
    recs = [rx(1001, v) for v in (1, 2, 3)] + [rx(1001, v, node="B") for v in (2, 3, 4, 5)]
    assert count_switch(DEV, recs, [FLOAT], since=0.5, until=5, k=12).per_point[1001] == (5, 0, 2)
    # a value first received with NT is received (not lost)
    recs = [rx(1001, v, quality=nt if v == 2 else "Quality set: {}, is_good: True") for v in range(1, 6)]
    assert count_switch(DEV, recs, [FLOAT], since=0.5, until=5, k=12).per_point[1001] == (5, 0, 0)


def test_bound_is_k_frames_of_the_fullest_type() -> None:
    assert dup_bound([FLOAT], 12) == 12 and dup_bound([FLOAT, FLOAT2, DI], 4) == 8 and dup_bound([], 12) == 0


def test_a_point_that_clamps_after_the_window_is_no_sequence() -> None:
    # 0.8, 0.9, clamped in the window [0.5, 3]; clamped twice more after it: those receptions are no duplicates
    dev = device_timelines([{"t": t, "ev": "start" if t == 0 else "tick", "values": {"201": 7 + t}} for t in range(6)])
    recs = [rx(1004, NORM.expected(7 + t)) for t in range(1, 6)]
    c = count_switch(dev, recs, [NORM], since=0.5, until=3, k=12)
    assert (c.points, c.made, c.dup) == (0, 0, 0)
