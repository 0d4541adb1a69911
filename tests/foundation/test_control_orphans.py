"""Claims an acquirer process left unfinished, answered `unknown` by its node's next process as it starts
(`ctl_orphan` in fepha/controls.lua, `controls.answer_orphans`), on a real redis-server: only a claim still
executing for that node under a process that has no connection to the master left, once, with one audit
entry; the claim of a live process (its named connection there), of the other node or of a process from
before instances were written, is left as it is."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from fepha import controls, redisfns
from fepha import keyspace as ks

RTU = 7


def named(r, node: str, instance: str) -> aioredis.Redis:
    return aioredis.Redis(host=r.host, port=r.port, decode_responses=True,
                          client_name=controls.presence_name(node, instance))


async def claimed(m: aioredis.Redis, node: str, instance: str = "") -> int:
    """A control submitted, popped and claimed by `node`'s process `instance` (now `executing`)."""
    ctl = await controls.submit(m, RTU, 1, 5.0, "test", 10_000)
    assert int(await m.lpop(ks.control_queue(RTU))) == ctl
    assert await controls.claim(m, RTU, node, int(await m.hget(ks.lease(RTU), "epoch")), ctl,
                                instance=instance) is not None
    return ctl


async def closed(c: aioredis.Redis, r) -> None:
    """`c` closed, and its connection gone from the server (as a killed process's, which the kernel closes)."""
    name = c.connection_pool.connection_kwargs["client_name"]
    await c.aclose()
    for _ in range(100):
        if name not in {x["name"] for x in r.client_list()}:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} still connected")


def audit(r, ctl: int) -> list[str]:
    return [f["state"] for _, f in r.xrange(ks.CTL_AUDIT) if f["id"] == str(ctl)]


async def test_only_the_claims_of_a_gone_process_of_the_node_are_answered_unknown_once(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    me, twin, gone = named(redis_master, "A", "new"), named(redis_master, "A", "twin"), named(redis_master, "A", "old")
    b = named(redis_master, "B", "old")
    try:
        await me.fcall(*redisfns.lease_tick(RTU, "A", True, 60_000, 90_000).argv)
        old = await claimed(gone, "A", "old")
        await closed(gone, r)  # that process's end
        live = await claimed(twin, "A", "twin")  # a second acquirer of node A, by mistake: alive
        legacy = await claimed(me, "A")  # a claim without an instance: whose it is cannot be told
        finished = await claimed(me, "A", "old")
        assert await controls.finish(me, finished, True, "written", "A") == controls.FINISHED
        assert r.smembers(ks.control_claims("A")) == {str(old), str(live)}
        await b.ping()  # node B's process "old" is connected: nothing of node A's is its
        abandoned = await claimed(me, "A", "old")
        r.srem(ks.control_claims("A"), abandoned)
        assert await controls.answer_orphans(me, "A", "new") == [old]
        assert r.lpop(ks.control_reply(old)) == f"unknown|{controls.RESTARTED}"
        assert audit(r, old) == ["unknown"]
        assert r.hget(ks.control(old), "instance") == "old"
        for ctl in (live, legacy, abandoned):
            assert r.hget(ks.control(ctl), "state") == "executing"
        assert r.smembers(ks.control_claims("A")) == {str(live)}
        assert await controls.answer_orphans(me, "A", "new") == []  # once
        assert await controls.finish(me, old, True, "written", "A") == controls.FINISHED_LATE  # cannot come: gone
        assert await controls.finish(twin, live, True, "written", "A") == controls.FINISHED  # the twin's own
        assert r.smembers(ks.control_claims("A")) == set()
    finally:
        for c in (me, twin, b):
            await c.aclose()


async def test_nothing_is_judged_when_the_master_does_not_show_this_process(redis_master) -> None:
    """A process whose own connection CLIENT LIST does not show (names not kept): every other one would look
    gone, so nothing is answered."""
    r = redis_master.client()
    redisfns.load_sync(r)
    plain = aioredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    gone = named(redis_master, "A", "old")
    try:
        await plain.fcall(*redisfns.lease_tick(RTU, "A", True, 60_000, 90_000).argv)
        old = await claimed(gone, "A", "old")
        await closed(gone, r)
        assert await controls.answer_orphans(plain, "A", "new") is None
        assert r.hget(ks.control(old), "state") == "executing"
    finally:
        await plain.aclose()


async def test_the_deadline_and_the_restart_answer_a_claim_once_whichever_comes_first(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    m = named(redis_master, "A", "new")
    try:
        await m.fcall(*redisfns.lease_tick(RTU, "A", True, 60_000, 90_000).argv)
        ctl = await claimed(m, "A", "old")
        r.hset(ks.control(ctl), "deadline_ms", 1)  # past: the forwarder's abandon ends it first
        assert await m.fcall(*controls.abandon_call(ctl).argv) == controls.UNKNOWN
        assert await m.fcall(*controls.orphan_call(ctl, "A", "old").argv) == controls.UNKNOWN  # as it was left
        assert audit(r, ctl) == ["unknown"] and r.llen(ks.control_reply(ctl)) == 1
        assert not r.sismember(ks.control_claims("A"), ctl)
        ctl = await claimed(m, "A", "old")
        assert await m.fcall(*controls.orphan_call(ctl, "A", "old").argv) == controls.UNKNOWN
        r.hset(ks.control(ctl), "deadline_ms", 1)
        assert await m.fcall(*controls.abandon_call(ctl).argv) == controls.UNKNOWN
        assert audit(r, ctl) == ["unknown"] and r.llen(ks.control_reply(ctl)) == 1
        assert await m.fcall(*controls.orphan_call(999, "A", "old").argv) == "missing"
    finally:
        await m.aclose()
