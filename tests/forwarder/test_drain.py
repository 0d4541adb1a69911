"""The planned stop's rule (fep_forwarder.drain): when a draining server closes, table-driven."""

from __future__ import annotations

import math

import pytest

from fep_forwarder.drain import ANSWER_GRACE_S, CLOSE, GIVE_UP, WAIT, Drain

BOUND = 12.0

# (now, deadlines of the controls in flight, answers unsent, last outcome) -> action; the drain began at 100.0
CASES = [
    ("nothing in flight: close at once", 100.0, [], 0, None, CLOSE),
    ("a control in flight: wait for it", 100.5, [110.0], 0, None, WAIT),
    ("one of two still in flight", 103.0, [101.0, 110.0], 0, None, WAIT),
    ("past its own deadline: give up", 110.0, [110.0], 0, None, GIVE_UP),
    ("past the latest deadline of several", 110.5, [104.0, 110.0], 0, None, GIVE_UP),
    ("a sink with no deadline: the bound", 100.0 + BOUND, [math.inf], 0, None, GIVE_UP),
    ("a sink with no deadline, within the bound", 105.0, [math.inf], 0, None, WAIT),
    ("deadline beyond the bound: the bound wins", 100.0 + BOUND, [130.0], 0, None, GIVE_UP),
    ("answered, its answer not yet sent", 102.0, [], 2, 101.9, WAIT),
    ("answered and sent", 102.0, [], 0, 101.9, CLOSE),
    ("answer not taken within the grace", 101.9 + ANSWER_GRACE_S, [], 1, 101.9, GIVE_UP),
    ("answer queued before the drain, never sent", 100.0 + ANSWER_GRACE_S, [], 1, None, GIVE_UP),
    ("in flight and an answer unsent: wait", 104.0, [110.0], 3, 103.0, WAIT),
    ("bound reached with answers unsent", 100.0 + BOUND, [], 1, 100.0 + BOUND - 0.1, GIVE_UP),
]


@pytest.mark.parametrize(("now", "deadlines", "unsent", "last", "want"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_drain_verdict(now: float, deadlines: list[float], unsent: int, last: float | None, want: str) -> None:
    d = Drain(100.0, BOUND)
    if last is not None:
        d.outcome(last)
    v = d.verdict(now, deadlines, unsent)
    assert v.action == want, v
    assert (v.why != "") == (want != WAIT), v
