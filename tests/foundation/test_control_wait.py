"""A forwarder's wait for a queued control's result, when the link to the master fails under it
(fepha.controls.wait; docs/forwarder.md "At a promotion").

Seen in the HA lab with 30 % loss between the nodes: adverts lost, the VIP moved to B while a setpoint
sent to A's se104s was queued through it; B executed it, and A's role watch dropped the connection that
waited for its reply 48 ms later: the SCADA master got a negative confirmation for a setpoint the device
had received. Reading a reply runs nothing, so the wait reads again on a new connection."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fepha import controls, redisfns, rolewatch
from fepha import keyspace as ks

RTU = 7


def client(r) -> aioredis.Redis:
    """As the forwarder's control client (redisconn.master_async_once): no command sent twice."""
    return aioredis.Redis(host=r.host, port=r.port, decode_responses=True, retry=Retry(NoBackoff(), 0))


async def run_it(m: aioredis.Redis, ctl: int, ok: bool = True) -> None:
    """What the holder's executor does: pop, claim (no replica: runs), finish."""
    assert int(await m.lpop(ks.control_queue(RTU))) == ctl
    assert await controls.claim(m, RTU, "A", 1, ctl) is not None
    assert await controls.finish(m, ctl, ok, "written")


async def test_a_control_run_while_its_wait_lost_the_connection_is_confirmed_done(redis_master) -> None:
    redisfns.load_sync(redis_master.client())
    m, ex = client(redis_master), client(redis_master)
    try:
        await ex.fcall(*redisfns.lease_tick(RTU, "A", True, 60_000, 90_000).argv)
        ctl = await controls.submit(m, RTU, 1, 5.0, "test", 3000)
        waiting = asyncio.create_task(controls.wait(m, ctl, 3000))
        await asyncio.sleep(0.3)
        await rolewatch.drop_connections(m)  # the role watch, as the VIP moves: the BLPOP fails at once
        await asyncio.sleep(0.2)
        await run_it(ex, ctl)
        res = await asyncio.wait_for(waiting, 5)
        assert (res.state, res.reason) == (controls.DONE, "written")
    finally:
        await m.aclose()
        await ex.aclose()


async def test_a_control_whose_reply_was_read_is_answered_by_its_final_state(redis_master) -> None:
    """The reply popped by a read whose answer was lost: at the deadline the control's own state says done."""
    redisfns.load_sync(redis_master.client())
    m = client(redis_master)
    try:
        await m.fcall(*redisfns.lease_tick(RTU, "A", True, 60_000, 90_000).argv)
        ctl = await controls.submit(m, RTU, 1, 5.0, "test", 300)
        await run_it(m, ctl, ok=False)
        assert await m.lpop(ks.control_reply(ctl))  # consumed, as by the lost read
        res = await asyncio.wait_for(controls.wait(m, ctl, 300), 5)
        assert (res.state, res.reason) == (controls.FAILED, "written")
    finally:
        await m.aclose()


async def test_a_control_the_master_does_not_hold_is_unknown_at_its_deadline(redis_master) -> None:
    """The VIP moved to a Redis that never got the control: unknown once the deadline has passed."""
    redisfns.load_sync(redis_master.client())
    m = client(redis_master)
    try:
        res = await asyncio.wait_for(controls.wait(m, 424242, 300), 5)
        assert res.state == controls.UNKNOWN and not res.ok
    finally:
        await m.aclose()


async def test_an_outcome_after_the_answer_unknown_is_recorded_once_and_not_replied(redis_master) -> None:
    """Claimed, then its executor slow past the deadline: the forwarder answers unknown; the device was
    written all the same, so the late outcome goes to the hash and the audit (`answered` says what the
    master was told), no second reply, and only once."""
    redisfns.load_sync(redis_master.client())
    m = client(redis_master)
    try:
        await m.fcall(*redisfns.lease_tick(RTU, "A", True, 60_000, 90_000).argv)
        ctl = await controls.submit(m, RTU, 1, 5.0, "test", 200)
        assert int(await m.lpop(ks.control_queue(RTU))) == ctl
        assert await controls.claim(m, RTU, "A", 1, ctl) is not None
        res = await asyncio.wait_for(controls.wait(m, ctl, 200), 5)
        assert res.state == controls.UNKNOWN
        assert await controls.finish(m, ctl, True, "written") == controls.FINISHED_LATE
        assert await m.hmget(ks.control(ctl), "state", "result", "answered") == ["done", "written", "unknown"]
        audit = [f for _, f in await m.xrange(ks.CTL_AUDIT) if f["id"] == str(ctl)]
        assert [(f["state"], f.get("answered")) for f in audit] == [("unknown", None), ("done", "unknown")]
        assert await m.llen(ks.control_reply(ctl)) == 0
        assert await controls.finish(m, ctl, False, "again") == 0  # one outcome only
        assert await m.hget(ks.control(ctl), "state") == "done"
    finally:
        await m.aclose()
