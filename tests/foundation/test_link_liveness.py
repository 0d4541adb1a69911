"""Link liveness (issue 10a) as the Redis Functions apply it, on a real redis-server.

A node's link state counts only while that node keeps reporting it (`link_set` at every lease tick); a
state of 1 not reported for live_ms decays to 0 at the next `link_set` of the other node or `link_refresh`
of any live process, so the virtual point falls to 0 when no live node reaches the device. Each case is a
sequence of steps (op, node, state, pause before it) and the link's (vala, valb, val) after it.
"""

from __future__ import annotations

import time

import pytest

from fepha import keyspace as ks
from fepha import points, redisfns

LIVE_MS = 300
RTU, VP = 7, 77

# (op, node, state, pause_s) -> (vala, valb, val); op "set" = link_set by node, "refresh" = link_refresh
CASES = {
    "both reach: 1": [(("set", "A", 1, 0), ("1", "0", "1")), (("set", "B", 1, 0), ("1", "1", "1"))],
    "issue 10 problem 1: B dies, then the device is cut -> 0 at A's next report": [
        (("set", "A", 1, 0), ("1", "0", "1")), (("set", "B", 1, 0), ("1", "1", "1")),
        (("set", "A", 1, 0.2), ("1", "1", "1")), (("set", "A", 0, 0.2), ("0", "0", "0"))],
    "B silent, A still reaches: B's state decays, val stays 1": [
        (("set", "B", 1, 0), ("0", "1", "1")), (("set", "A", 1, 0), ("1", "1", "1")),
        (("set", "A", 1, 0.35), ("1", "0", "1"))],
    "a report within live_ms keeps the state": [
        (("set", "B", 1, 0), ("0", "1", "1")), (("set", "A", 0, 0.2), ("0", "1", "1")),
        (("set", "B", 1, 0.2), ("0", "1", "1")), (("set", "A", 0, 0.2), ("0", "1", "1"))],
    "both acquirers dead: a refresh decays both": [
        (("set", "A", 1, 0), ("1", "0", "1")), (("set", "B", 1, 0), ("1", "1", "1")),
        (("refresh", "", 0, 0.1), ("1", "1", "1")), (("refresh", "", 0, 0.3), ("0", "0", "0"))],
    "a node that comes back counts again": [
        (("set", "A", 1, 0), ("1", "0", "1")), (("refresh", "", 0, 0.35), ("0", "0", "0")),
        (("set", "A", 1, 0), ("1", "0", "1"))],
    "refresh of a link nobody reported leaves it alone": [(("refresh", "", 0, 0), ("", "", ""))],
}


def _step(r, op: str, node: str, state: int) -> list[str]:
    if op == "set":
        call = redisfns.link_set(RTU, node, bool(state), [VP], live_ms=LIVE_MS)
    else:
        call = redisfns.link_refresh(RTU, [VP], live_ms=LIVE_MS)
    return [str(x) for x in r.fcall(*call.argv)]


@pytest.mark.parametrize("case", list(CASES))
def test_link_liveness_rules(redis_master, case: str) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    for (op, node, state, pause), want in CASES[case]:
        time.sleep(pause)
        got = tuple(_step(r, op, node, state))
        assert got == want, (case, op, node, state)
        if want[2]:
            h = r.hgetall(ks.link(RTU))
            assert (h.get("vala", "0"), h.get("valb", "0"), h["val"]) == want  # the hash says the same
            assert points.decode(r.hget(ks.VPOINTS, str(VP))).value == int(want[2])


def test_decay_is_one_change_record_on_the_master_clock(redis_master) -> None:
    """The fall to 0 goes out once in the change stream (forwarders send it spontaneously)."""
    r = redis_master.client()
    redisfns.load_sync(r)
    _step(r, "set", "A", 1)
    n0 = r.xlen(ks.CHANGES)
    time.sleep(0.35)
    for _ in range(3):
        _step(r, "refresh", "", 0)
    entries = r.xrange(ks.CHANGES)[n0:]
    assert [e[1][str(VP)].split("|")[0] for e in entries] == ["0"]
    h = r.hgetall(ks.link(RTU))
    t_s, t_us = r.time()
    assert 0 <= t_s * 1000 + t_us // 1000 - int(h["since"]) < 1000


def test_lease_records_the_holders_last_poll(redis_master) -> None:
    """polled_ms (issue 10b): set by the holder's tick from its poll age, not by the other node."""
    r = redis_master.client()
    redisfns.load_sync(r)
    r.fcall(*redisfns.lease_tick(RTU, "A", True, 10_000, 90_000, 250).argv)
    t_s, t_us = r.time()
    now = t_s * 1000 + t_us // 1000
    p1 = int(r.hget(ks.lease(RTU), "polled_ms"))
    assert 200 <= now - p1 <= 350
    r.fcall(*redisfns.lease_tick(RTU, "B", True, 10_000, 90_000, 0).argv)  # not the holder: ignored
    assert int(r.hget(ks.lease(RTU), "polled_ms")) == p1
    r.fcall(*redisfns.lease_tick(RTU, "A", True, 10_000, 90_000, -1).argv)  # no poll: stamp kept
    assert int(r.hget(ks.lease(RTU), "polled_ms")) == p1
    r.fcall(*redisfns.lease_tick(RTU, "A", True, 10_000, 90_000, 0).argv)
    assert int(r.hget(ks.lease(RTU), "polled_ms")) > p1
