"""The lease and fencing rules as the Redis Functions apply them, on a real redis-server.

Each case is a sequence of ticks (node, reaches, pause before it) and the holder/epoch expected after it.
"""

from __future__ import annotations

import time

import pytest

from fepha import keyspace as ks
from fepha import redisfns

TTL_MS, TAKEOVER_MS = 300, 200

# (node, reaches (True, False or "part"), sleep_before_s) -> (holder, epoch)
CASES = {
    "first reaching node takes it": [(("A", True, 0), ("A", 1)), (("B", True, 0), ("A", 1))],
    "a node that does not reach never grabs a free lease": [
        (("A", False, 0), ("", 0)), (("B", True, 0), ("B", 1)), (("A", True, 0), ("B", 1))],
    "holder that reaches keeps it": [
        (("A", True, 0), ("A", 1)), (("A", True, 0.15), ("A", 1)), (("B", True, 0.15), ("A", 1))],
    "takeover after the holder has not reached for the takeover time": [
        (("A", True, 0), ("A", 1)), (("A", False, 0.1), ("A", 1)), (("B", True, 0.05), ("A", 1)),
        (("A", False, 0.1), ("A", 1)), (("B", True, 0), ("B", 2))],
    "no takeover by a node that does not reach either": [
        (("A", True, 0), ("A", 1)), (("A", False, 0.25), ("A", 1)), (("B", False, 0), ("A", 1))],
    "no stealing back": [
        (("A", True, 0), ("A", 1)), (("A", False, 0.25), ("A", 1)), (("B", True, 0), ("B", 2)),
        (("B", True, 0.1), ("B", 2)), (("A", True, 0.15), ("B", 2))],
    "a lapsed lease goes to a node that reaches the device": [
        (("A", True, 0), ("A", 1)), (("B", False, 0.4), ("A", 1)), (("B", True, 0), ("B", 2))],
    "a holder reaching its device only in part is taken over by a node that reaches it fully": [
        (("A", True, 0), ("A", 1)), (("A", "part", 0.1), ("A", 1)), (("B", True, 0.05), ("A", 1)),
        (("A", "part", 0.1), ("A", 1)), (("B", True, 0), ("B", 2)),
        (("B", True, 0.1), ("B", 2)), (("A", True, 0.15), ("B", 2)),  # no stealing back
        (("B", "part", 0.1), ("B", 2)), (("A", "part", 0.15), ("B", 2)),  # a partial node never takes over
        (("A", True, 0), ("A", 3))],  # B in part for the takeover time, A fully: a move, not a flap
    "reaching in part takes a free or lapsed lease, never over a holder that reaches it": [
        (("A", "part", 0), ("A", 1)), (("A", "part", 0.15), ("A", 1)), (("B", "part", 0.1), ("A", 1)),
        (("A", "part", 0), ("A", 1)), (("B", "part", 0.4), ("B", 2)), (("A", True, 0.25), ("A", 3))],
    "two nodes reaching in part (a lossy device): no move": [
        (("A", True, 0), ("A", 1)), (("A", "part", 0.1), ("A", 1)), (("B", "part", 0.05), ("A", 1)),
        (("A", "part", 0.1), ("A", 1)), (("B", "part", 0.05), ("A", 1)), (("A", "part", 0.1), ("A", 1)),
        (("B", "part", 0), ("A", 1))],
    "a holder that does not reach the device at all is taken over by a node reaching it in part": [
        (("A", True, 0), ("A", 1)), (("A", False, 0.1), ("A", 1)), (("B", "part", 0.05), ("A", 1)),
        (("A", False, 0.1), ("A", 1)), (("B", "part", 0), ("B", 2))],
    "a lease lapsed for one more TTL goes to whoever ticks; a reaching node then takes it over": [
        (("A", True, 0), ("A", 1)), (("B", False, 0.7), ("B", 2)), (("A", True, 0), ("A", 3))],
}


@pytest.mark.parametrize("case", list(CASES))
def test_lease_rules(redis_master, case: str) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    for (node, reaches, pause), (holder, epoch) in CASES[case]:
        time.sleep(pause)
        partly = reaches == "part"
        got = r.fcall(*redisfns.lease_tick(7, node, bool(reaches), TTL_MS, TAKEOVER_MS, partly=partly).argv)
        assert (got[0] or "", int(got[1])) == (holder, epoch), (case, node, reaches)
    moves = r.xrange(ks.LEASE_EVENTS)
    assert len(moves) == CASES[case][-1][1][1]


def test_fenced_write_only_by_the_holder_at_its_epoch(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    r.fcall(*redisfns.lease_tick(7, "A", True, 10_000, 90_000).argv)
    assert r.fcall(*redisfns.write_values(7, "A", 1, ["1", "5|0|1000"]).argv)[0] == 1
    assert r.fcall(*redisfns.write_values(7, "B", 1, ["1", "6|0|1001"]).argv) == [0, "A", 1]
    assert r.fcall(*redisfns.write_values(7, "A", 0, ["1", "7|0|1002"]).argv) == [0, "A", 1]
    assert r.hget(ks.values(7), "1") == "5|0|1000"
    assert r.xlen(ks.CHANGES) == 1


def test_a_write_sequence_is_applied_once(redis_master) -> None:
    """The same write twice (a write that timed out, re-sent): one hash update, one stream record; a late
    copy of an older write is not applied over a newer one; another token (a new holder or a restarted
    acquirer) starts its own sequence; the fencing comes first (a write of a lease no longer held is
    fenced out whatever its sequence)."""
    r = redis_master.client()
    redisfns.load_sync(r)
    r.fcall(*redisfns.lease_tick(7, "A", True, 10_000, 90_000).argv)

    def write(node: str, epoch: int, rec: str, wid: tuple[str, int]) -> list:
        return r.fcall(*redisfns.write_values(7, node, epoch, ["1", rec, "2", rec], wid=wid).argv)

    assert write("A", 1, "5|0|1000", ("a1", 1)) == [1, 2, 1]              # and the writes applied so far
    assert write("A", 1, "5|0|1000", ("a1", 1)) == [2, 0, 1]              # the same batch again
    assert r.xlen(ks.CHANGES) == 1
    assert write("A", 1, "6|0|1001", ("a1", 3)) == [1, 2, 2]               # a gap is no reason to refuse
    assert write("A", 1, "4|0|999", ("a1", 2)) == [2, 0, 2]                # older than the one applied
    assert r.hmget(ks.values(7), "1", "2") == ["6|0|1001", "6|0|1001"]
    assert write("A", 1, "7|0|1002", ("a2", 1)) == [1, 2, 3]               # a restarted runner's own sequence
    assert write("B", 1, "8|0|1003", ("b1", 9)) == [0, "A", 1]            # fenced, not "already applied"
    r.hset(ks.lease(7), mapping={"holder": "B", "epoch": 2})
    assert write("A", 1, "8|0|1003", ("a2", 2)) == [0, "B", 2]
    assert write("B", 2, "8|0|1003", ("b1", 1)) == [1, 2, 4]
    assert [f["1"] for _, f in r.xrange(ks.CHANGES)] == ["5|0|1000", "6|0|1001", "7|0|1002", "8|0|1003"]
    assert r.hmget(ks.lease(7), "wtok", "wseq") == ["b1", "1"]


async def test_a_claim_waits_for_the_replica(redis_pair) -> None:
    """A control is executed only once its claim is on the replica (else a failover could run it twice)."""
    import redis.asyncio as aioredis

    from fepha import controls

    master, replica = redis_pair
    redisfns.load_sync(master.client())
    m = aioredis.Redis(host=master.host, port=master.port, decode_responses=True)
    try:
        await m.fcall(*redisfns.lease_tick(7, "A", True, 60_000, 90_000).argv)

        async def pop_and_claim(wait_ms: int) -> tuple[int, controls.Claimed | None]:
            ctl = await controls.submit(m, 7, 1, 5.0, "test", 10_000)
            assert int(await m.lpop(ks.control_queue(7))) == ctl
            return ctl, await controls.claim(m, 7, "A", 1, ctl, replica_wait_ms=wait_ms)

        ctl, got = await pop_and_claim(3000)  # a fresh replica's first acknowledgement takes up to 1 s
        assert got is not None and got.point == 1 and got.value == 5.0
        replica.pause()  # attached but not acknowledging: a lagging replica
        try:
            ctl, got = await pop_and_claim(300)
        finally:
            replica.resume()
        assert got is None
        res = await controls.wait(m, ctl, 1000)
        assert res.state == controls.FAILED and res.reason == controls.NOT_REPLICATED
    finally:
        await m.aclose()


def test_a_control_popped_and_never_claimed_is_put_back_in_its_queue(redis_master) -> None:
    """ctl_requeue: a control still queued `after_ms` after it was created and in no queue (its executor's
    BLPOP answer was lost) goes back to the head of its queue, once; not before `after_ms`, not while it is
    still queued there, and never once claimed (executing) or final."""
    from fepha import controls

    r = redis_master.client()
    redisfns.load_sync(r)
    r.fcall(*redisfns.lease_tick(7, "A", True, 60_000, 90_000).argv)
    ctl = 41
    r.fcall(*controls.submit_call(ctl, 7, 1, 5.0, "test", 10_000).argv)
    q = ks.control_queue(7)
    assert r.fcall(*controls.requeue_call(ctl, 7, 200).argv) == 0 and r.lrange(q, 0, -1) == [str(ctl)]  # queued
    assert r.lpop(q) == str(ctl)  # popped; the answer lost with its connection
    assert r.fcall(*controls.requeue_call(ctl, 7, 200).argv) == 0  # too soon: its executor may be claiming it
    time.sleep(0.25)
    assert r.fcall(*controls.requeue_call(ctl, 7, 200).argv) == 1 and r.lrange(q, 0, -1) == [str(ctl)]
    assert r.fcall(*controls.requeue_call(ctl, 7, 200).argv) == 0 and r.llen(q) == 1  # there already
    assert r.lpop(q) == str(ctl)
    assert r.fcall(*controls.claim_call(7, "A", 1, ctl).argv)[0] == 1  # claimed: executing
    assert r.fcall(*controls.requeue_call(ctl, 7, 200).argv) == 0 and r.llen(q) == 0
    assert r.fcall(*controls.requeue_call(99, 7, 200).argv) == 0 and r.llen(q) == 0  # no such control
