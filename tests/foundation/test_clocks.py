"""Stamps written by another master clock (docs/ha.md "Clocks"), rule by rule, on a real redis-server.

A stamp "from a clock `skew` ms ahead" is what the current master finds after the promotion of a replica
whose clock is `skew` ms behind the former master's, or after its own clock stepped back by `skew`: the
stamp is written here as this server's TIME + skew, as the former clock would have written it. The
offsets are the ones docs/ha.md discusses: 2 s, 30 s and 10 min, both ways.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aredis

from fepha import controls, redisfns
from fepha import keyspace as ks
from fepha.freshness import Limits, rtu_reason

TTL_MS, TAKEOVER_MS, LIVE_MS = 300, 400, 300
SKEWS = [2_000, 30_000, 600_000, -2_000, -30_000, -600_000]


def now_ms(r) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


def tick(r, node: str, reaches: bool = True, ttl_ms: int = TTL_MS, takeover_ms: int = TAKEOVER_MS,
         partly: bool = False) -> list:
    """One lease tick of `node` for RTU 7, as its acquirer makes it (its last poll just completed)."""
    return r.fcall(*redisfns.lease_tick(7, node, reaches, ttl_ms, takeover_ms, 0, partly=partly).argv)


def until_holder(r, node: str, limit_s: float, ttl_ms: int = TTL_MS, takeover_ms: int = TAKEOVER_MS,
                 every_s: float = 0.02) -> float | None:
    """`node` ticks (reaching) until it holds RTU 7's lease -> seconds it took, None if not within limit_s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if tick(r, node, ttl_ms=ttl_ms, takeover_ms=takeover_ms)[0] == node:
            return time.monotonic() - t0
        time.sleep(every_s)
    return None


@pytest.fixture
def r(redis_master):
    c = redis_master.client()
    redisfns.load_sync(c)
    return c


@pytest.mark.parametrize("skew", SKEWS)
def test_dead_holders_lease_stamped_by_another_clock_lapses_within_its_ttl(r, skew: int) -> None:
    """A held the lease on the former clock and died; B reaches the device. Behind (skew > 0): before the
    fix B waited skew + TTL (10 min) while A's values looked current; now the stamps are set back and the
    lease lapses one TTL later. Ahead (skew < 0, beyond the TTL): lapsed at once, as before."""
    assert tick(r, "A")[0] == "A"
    s = now_ms(r) + skew
    r.hset(ks.lease(7), mapping={"expires_ms": s + TTL_MS, "reached_ms": s, "polled_ms": s})
    took = until_holder(r, "B", 2.0)
    assert took is not None, f"B never got the lease of dead A (stamps {skew} ms ahead)"
    assert took < (TTL_MS + 250) / 1000
    if skew > 0:
        assert took >= (TTL_MS - 50) / 1000, "a lease set back must still last its TTL, not be stolen"


@pytest.mark.parametrize("skew", [2_000, 600_000])
def test_live_holder_keeps_its_lease_and_its_stamps_are_set_back_once(r, skew: int) -> None:
    tick(r, "A")
    s = now_ms(r) + skew
    r.hset(ks.lease(7), mapping={"expires_ms": s + TTL_MS, "reached_ms": s, "polled_ms": s})
    assert tick(r, "A", reaches=False)[:2] == ["A", 1]
    now = now_ms(r)
    lease = r.hgetall(ks.lease(7))
    assert int(lease["expires_ms"]) <= now + TTL_MS
    assert int(lease["reached_ms"]) <= now and int(lease["polled_ms"]) <= now


@pytest.mark.parametrize("partly", [False, True])
@pytest.mark.parametrize("skew", [30_000, 600_000])
def test_takeover_counts_from_now_when_the_reached_stamp_is_ahead(r, skew: int, partly: bool) -> None:
    """A holds and keeps ticking without reaching the device; its reached_ms and answered_ms came from a
    clock ahead. B (reaching, fully or in part) takes over after the takeover time, not after skew +
    takeover."""
    tick(r, "A")
    r.hset(ks.lease(7), mapping={"reached_ms": now_ms(r) + skew, "answered_ms": now_ms(r) + skew})
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        tick(r, "A", reaches=False)
        if tick(r, "B", partly=partly)[0] == "B":
            break
        time.sleep(0.02)
    took = time.monotonic() - t0
    assert (TAKEOVER_MS - 50) / 1000 <= took < (TAKEOVER_MS + 300) / 1000


@pytest.mark.parametrize("skew", SKEWS)
def test_link_state_of_a_dead_node_decays_within_live_ms(r, skew: int) -> None:
    """A reported 'reaches' (seen_a) on the former clock, then died; forwarders' link_refresh decays it."""
    r.fcall(*redisfns.link_set(7, "A", True, [900], live_ms=LIVE_MS).argv)
    r.hset(ks.link(7), "seen_a", now_ms(r) + skew)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0 and r.fcall(*redisfns.link_refresh(7, [900], LIVE_MS).argv)[2] == "1":
        time.sleep(0.02)
    assert time.monotonic() - t0 < (LIVE_MS + 250) / 1000, f"A's link still up (seen_a {skew} ms ahead)"


def submit(r, ctl_id: int, timeout_ms: int = 10_000) -> None:
    r.fcall(*controls.submit_call(ctl_id, 7, 3, 1.0, "test", timeout_ms).argv)


def claim(r, ctl_id: int) -> list:
    holder, epoch = tick(r, "A")[:2]
    r.lpop(ks.control_queue(7))
    return r.fcall(*controls.claim_call(7, holder, int(epoch), ctl_id).argv)


@pytest.mark.parametrize("skew", [2_000, 30_000, 600_000])
def test_control_queued_by_a_clock_ahead_is_expired_never_run_late(r, skew: int) -> None:
    """Queued on the former master whose clock was ahead: its deadline (created + 10 s) lies up to 10 min
    ahead here, so before the fix it ran up to skew after its real deadline."""
    tick(r, "A")
    submit(r, 1)
    s = now_ms(r) + skew
    r.hset(ks.control(1), mapping={"created_ms": s, "deadline_ms": s + 10_000})
    got = claim(r, 1)
    assert got == [0, "expired"]
    assert "cannot be judged" in r.hget(ks.control(1), "result")
    assert r.lpop(ks.control_reply(1)).startswith("expired|")


@pytest.mark.parametrize("skew", [2_000, 30_000, 600_000])
def test_control_queued_before_a_step_back_is_expired(r, skew: int) -> None:
    """The control's own stamps look consistent (it waited longer than the step was big), but a lease tick
    found the clock behind what it had seen before: queued under the former gen, it is not executed. A
    control queued after the step runs: nothing is refused forever."""
    tick(r, "A")
    submit(r, 1)
    r.hset(ks.CLOCK, "hw_ms", now_ms(r) + skew)  # the ticks before the step saw the clock this far ahead
    tick(r, "A")
    assert r.hget(ks.CLOCK, "gen") == "1"
    assert claim(r, 1) == [0, "expired"]
    submit(r, 2)
    assert claim(r, 2)[0] == 1


def test_control_claimed_during_a_step_not_yet_seen_by_a_tick_is_expired(r) -> None:
    tick(r, "A")
    submit(r, 1)
    r.hset(ks.CLOCK, "hw_ms", now_ms(r) + 30_000)
    r.lpop(ks.control_queue(7))
    assert r.fcall(*controls.claim_call(7, "A", 1, 1).argv) == [0, "expired"]


def test_control_on_an_unchanged_clock_still_runs(r) -> None:
    tick(r, "A")
    submit(r, 1)
    time.sleep(0.06)
    tick(r, "A")  # hw_ms moves forward: no step
    assert r.hget(ks.CLOCK, "gen") in (None, "0")
    assert claim(r, 1)[0] == 1


@pytest.mark.parametrize("state, final", [("queued", "expired"), ("executing", "unknown")])
def test_abandon_after_a_step_back_ends_the_wait_at_once(r, state: str, final: str) -> None:
    """The forwarder's own timer says the deadline passed; the master's clock, stepped back, says not yet.
    Before the fix the forwarder asked again every 0.2 s until that clock caught up (up to 10 min)."""
    tick(r, "A")
    submit(r, 1)
    r.hset(ks.control(1), "state", state)
    assert r.fcall(*controls.abandon_call(1).argv) == state  # same clock, deadline ahead: left as it is
    r.hset(ks.CLOCK, "hw_ms", now_ms(r) + 30_000)
    tick(r, "A")
    assert r.fcall(*controls.abandon_call(1).argv) == final


LIM = Limits(replica_down_ms=6000, stale_polls=3, tick_ms=1000, poll_ms=1000)


@pytest.mark.parametrize("skew, stale", [(0, False), (900, False), (2_000, True), (30_000, True),
                                         (600_000, True), (-900, False), (-2_000, False), (-30_000, True)])
@pytest.mark.parametrize("field", ["polled_ms", "since_ms"])
def test_forwarder_judges_a_lease_stamped_by_a_clock_more_than_a_tick_ahead_not_current(skew, stale, field) -> None:
    """The forwarder and the api compare the lease's stamps with their local Redis's clock. A holder that
    just ticked wrote polled_ms = its now (since_ms: when it took the lease, earlier); seen from a clock
    `skew` behind that, the lease's expiry lies skew later than it should: before the fix a dead holder's
    values looked current for skew + TTL. Ahead of it (skew < 0), the lease looks lapsed beyond TTL + tick.
    Without polled_ms (an acquirer that does not report it) since_ms tells the same."""
    now = 1_000_000_000
    written = now + skew
    lease = {"holder": "A", "expires_ms": str(written + 3000), "since_ms": str(written - 60_000)}
    lease[field] = str(written)
    assert (rtu_reason(lease, now, 1000, LIM) is not None) is stale


def test_forwarder_does_not_judge_by_another_nodes_lease_ttl() -> None:
    """A holder configured with a longer lease_ttl_s writes expires_ms further ahead: not a clock matter."""
    now = 1_000_000_000
    lease = {"holder": "A", "expires_ms": str(now + 60_000), "since_ms": str(now - 5), "polled_ms": str(now)}
    assert rtu_reason(lease, now, 1000, LIM) is None


@pytest.mark.parametrize("state, expect", [("done", "done"), ("failed", "failed"), (None, "unknown")])
async def test_wait_ends_when_the_reply_expired_before_it_was_read(redis_master, state, expect) -> None:
    """The reply list lives 60 s: on a master whose clock is more than that ahead of the one that set it,
    it is gone at once (Redis keeps expiries as absolute times). The waiting forwarder then learns the
    final state from the control; before, it asked the master again every 0.2 s for ever."""
    c = redis_master.client()
    redisfns.load_sync(c)
    submit(c, 1, timeout_ms=100)
    if state:
        c.hset(ks.control(1), mapping={"state": state, "result": "written"})
    else:
        c.delete(ks.control(1))
    a = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    try:
        got = await asyncio.wait_for(controls.wait(a, 1, 100), 3)
    finally:
        await a.aclose()
    assert got.state == expect


@pytest.mark.parametrize("state, expect", [("queued", "expired"), ("executing", "executing"), ("done", "done"),
                                           (None, "missing")])
def test_expire_at_the_submitters_deadline_ends_only_a_queued_control(r, state, expect) -> None:
    """`ctl_expire` (the forwarder's own deadline, docs/ha.md "Clocks"): the deadline below lies 2 s ahead on
    this clock (a master behind the one that set it by less than the failover time: no gen, no created_ms
    ahead), yet a queued control is expired and never claimed after it; any other state is left as it is."""
    tick(r, "A")
    submit(r, 1, timeout_ms=100)
    r.hset(ks.control(1), "deadline_ms", int(r.hget(ks.control(1), "deadline_ms")) + 2_000)
    if state is None:
        r.delete(ks.control(1))
    elif state != "queued":
        r.hset(ks.control(1), "state", state)
    assert r.fcall(*controls.expire_call(1).argv) == expect
    if state == "queued":
        assert r.lpop(ks.control_reply(1)) == "expired|deadline passed before execution (by its submitter's clock)"
        assert claim(r, 1) == [0, "state expired"]
        assert [a["state"] for _, a in r.xrange(ks.CTL_AUDIT)] == ["expired"]
    else:
        assert r.llen(ks.control_reply(1)) == 0 and not r.exists(ks.CTL_AUDIT)
        assert r.hget(ks.control(1), "state") == state


T_MS = 200


@pytest.mark.parametrize("behind_ms, claim_at_s, expect", [
    (0, 0.15, "expired"),       # same clock, as before: expired (at the latest by the late claim itself)
    (2_000, 0.15, "expired"),   # master 2 s behind: before, claimed 0.15 s after the deadline and run
    (2_000, -0.15, "done"),     # claimed before the deadline: not stopped, its outcome within LATE_S is the answer
])
async def test_wait_expires_a_queued_control_at_its_own_deadline_whatever_the_master_clock(
        redis_master, behind_ms: int, claim_at_s: float, expect: str) -> None:
    """The forwarder's wait counts the deadline on its own monotonic clock. An executor pops the control
    `claim_at_s` after that deadline (or before it) and claims it; the master's clock is `behind_ms` behind
    the one that set deadline_ms. Before, `wait` abandoned it only LATE_S after the deadline, and on a clock
    behind not until that clock got there: the claim 0.15 s late ran the control."""
    c = redis_master.client()
    redisfns.load_sync(c)
    tick(c, "A")
    a = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    try:
        sent = time.monotonic()
        ctl_id = await controls.submit(a, 7, 3, 1.0, "test", T_MS)
        c.hset(ks.control(ctl_id), "deadline_ms", int(c.hget(ks.control(ctl_id), "deadline_ms")) + behind_ms)

        async def executor() -> list:
            await asyncio.sleep(max(0.0, sent + T_MS / 1000 + claim_at_s - time.monotonic()))
            got = claim(c, ctl_id)
            if got[0] == 1:
                await asyncio.sleep(0.2 - claim_at_s)  # the device write: its outcome within LATE_S
                await controls.finish(a, ctl_id, True, "written")
            return got

        ex = asyncio.create_task(executor())
        res = await asyncio.wait_for(controls.wait(a, ctl_id, T_MS, since=sent), 3)
        took = time.monotonic() - sent
        claimed = await ex
    finally:
        await a.aclose()
    assert res.state == expect, res
    assert (claimed[0] == 1) is (expect == "done"), f"claimed {claim_at_s} s after its deadline: {claimed}"
    assert took < T_MS / 1000 + controls.LATE_S, f"answered {took:.2f} s after the submit"


async def test_wait_with_a_library_from_before_ctl_expire_abandons_as_before(redis_master) -> None:
    """A master holding the fepctl library of before (no `ctl_expire`): the wait goes on as it did, the
    control abandoned LATE_S after the deadline on the master's clock."""
    c = redis_master.client()
    src = next(s for s in redisfns.library_sources() if "ctl_expire" in s)
    c.function_load(src.replace("redis.register_function('ctl_expire', ctl_expire)\n", ""), replace=True)
    submit(c, 1, timeout_ms=100)
    a = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    try:
        t0 = time.monotonic()
        res = await asyncio.wait_for(controls.wait(a, 1, 100), 3)
        took = time.monotonic() - t0
    finally:
        await a.aclose()
    assert res.state == "expired" and res.reason == "deadline passed before execution"
    assert 0.1 + controls.LATE_S <= took < 1.5
