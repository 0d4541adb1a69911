"""The figures of tests/ha/degraded_run.py that docs/ha.md's "Degraded links" rows quote, as table tests
without a network: which deadline a set-point's write is compared with, and what a master with a link to
each node missed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ha.degraded_run import either_link, rate_changes, setpoint_figures
from tests.ha.plant import View, count_spontaneous

ANS = {"value": 2001, "sent": 100.0, "answered": 100.5, "ok": True}
CTL = {"value": "2001", "created_ms": "103000", "deadline_ms": "108000", "finished_ms": "103400",
       "state": "done"}


def write(t: float, v: int = 2001) -> dict[str, Any]:
    return {"t": t, "values": [v]}


@pytest.mark.parametrize(("answer", "writes", "audit", "expected"), [
    # read by the forwarder 3 s after it was sent (TCP retransmissions), written 6 s after: late for the
    # master, 2 s within the deadline the forwarder gave it
    (ANS, [write(106.0)], [CTL], {"writes": 1, "write_after_client_deadline": True,
                                  "write_after_fep_deadline": False, "fep_received_s": 3.0, "state": "done"}),
    (ANS, [write(108.5)], [CTL], {"write_after_client_deadline": True, "write_after_fep_deadline": True}),
    (ANS, [write(103.4), write(104.0)], [CTL], {"writes": 2, "write_after_client_deadline": False}),
    # no ACT_CON within the client's timeout (10 s), written: the answer was lost, not the control
    ({**ANS, "answered": 110.0, "ok": False}, [write(103.4)], [CTL],
     {"no_answer": True, "writes": 1, "finished_s": 3.4}),
    ({**ANS, "answered": 101.0, "ok": False}, [], [{**CTL, "state": "expired", "finished_ms": "108000"}],
     {"no_answer": False, "writes": 0, "state": "expired", "write_after_fep_deadline": False}),
    # never read by the forwarder: no control, nothing written
    ({**ANS, "answered": 110.0, "ok": False}, [write(103.0, 2002)], [{**CTL, "value": "2002"}],
     {"no_answer": True, "writes": 0, "controls": 0}),
])
def test_setpoint_figures(answer: dict, writes: list, audit: list, expected: dict) -> None:
    row = setpoint_figures([answer], writes, audit, deadline_s=5.0, client_timeout_s=10.0)[0]
    assert {k: row.get(k) for k in expected} == expected
    assert ("fep_received_s" in row) == (row["controls"] == 1)


FLOAT = View(src=101, proto="iec104", key=1001, type="M_ME_NC_1", coef=1.0)
DEV = {101: [(0.0, 1.0), (10.0, 2.0), (11.0, 3.0), (12.0, 4.0), (30.0, 5.0)]}


def spont(t: float, value: float, node: str) -> dict[str, Any]:
    return {"src": "iec104", "node": node, "ioa": 1001, "value": value, "t": t, "cot": "SPONTANEOUS"}


def test_a_change_on_the_other_link_only_is_lost_on_one_link_not_by_the_master() -> None:
    recs = [spont(10.1, 2.0, "A"), spont(10.1, 2.0, "B"), spont(11.1, 3.0, "B"), spont(12.1, 4.0, "B"),
            {"src": "iec104-state", "node": "A", "state": "CLOSED", "t": 10.5},
            {**spont(20.0, 4.0, "A"), "cot": "BACKGROUND_SCAN"}]
    assert count_spontaneous(DEV, recs, [FLOAT], "A", 5, 20).lost == 2
    assert count_spontaneous(DEV, either_link(recs), [FLOAT], "AB", 5, 20).lost == 0
    assert count_spontaneous(DEV, either_link(recs[:2]), [FLOAT], "AB", 5, 20).lost == 2


def test_rate_changes_are_the_window_s() -> None:
    assert rate_changes(DEV, 5.0, 20.0) == [(10.0, 2.0), (11.0, 3.0), (12.0, 4.0)]
    assert rate_changes(DEV, 40.0, 50.0) == []
