"""The planned stop's rules (fep_forwarder.drain): when a draining server closes, and what a configuration reload
does to the servers (nothing once the stop began); table-driven."""

from __future__ import annotations

import math

import pytest

from fep_forwarder.drain import ANSWER_GRACE_S, CLOSE, GIVE_UP, WAIT, Drain, reload_plan

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


# (servers running: RTU -> signature, the new configuration's forwarding RTUs, planned stop began)
#   -> (applied, servers stopped, servers started)
RELOADS = [
    ("unchanged: nothing moves", {10: "a", 12: "b"}, {10: "a", 12: "b"}, False, (True, (), ())),
    ("changed: restarted", {10: "a", 12: "b"}, {10: "a2", 12: "b"}, False, (True, (10,), (10,))),
    ("gone: stopped", {10: "a", 12: "b"}, {12: "b"}, False, (True, (10,), ())),
    ("new: started", {10: "a"}, {10: "a", 13: "c"}, False, (True, (), (13,))),
    ("its start had failed: started again", {}, {10: "a"}, False, (True, (), (10,))),
    ("stopping, unchanged", {10: "a", 12: "b"}, {10: "a", 12: "b"}, True, (False, (), ())),
    ("stopping, changed: not restarted, kept", {10: "a", 12: "b"}, {10: "a2", 12: "b"}, True, (False, (), ())),
    ("stopping, gone: kept until its drain ends", {10: "a", 12: "b"}, {12: "b"}, True, (False, (), ())),
    ("stopping, new: not started", {10: "a"}, {10: "a", 13: "c"}, True, (False, (), ())),
    ("stopping before any server ran", {}, {10: "a"}, True, (False, (), ())),
]


@pytest.mark.parametrize(("running", "wanted", "stopping", "want"), [c[1:] for c in RELOADS],
                         ids=[c[0] for c in RELOADS])
def test_reload_plan(running: dict[int, str], wanted: dict[int, str], stopping: bool,
                     want: tuple[bool, tuple[int, ...], tuple[int, ...]]) -> None:
    plan = reload_plan(running, wanted, stopping)
    assert (plan.apply, plan.stop, plan.start) == want
