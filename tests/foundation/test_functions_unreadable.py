"""Hash fields the Redis Functions read as numbers, left unreadable (an operator's mistaken HSET, a fault
injected into Redis), on a real redis-server: each function takes them as a clear, safe state instead of
failing at every call (before: `lease_tick` failed on every tick of both nodes for good, so the RTU was
never acquired again)."""

from __future__ import annotations

import time

import pytest

from fepha import controls, redisfns
from fepha import keyspace as ks

TTL_MS, TAKEOVER_MS = 10_000, 90_000
LEASE_NUMBERS = ("epoch", "expires_ms", "reached_ms", "answered_ms", "polled_ms", "since_ms", "handover_until_ms")


def tick(r, node: str, reaches: bool) -> tuple[str, int, int]:
    got = r.fcall(*redisfns.lease_tick(7, node, reaches, TTL_MS, TAKEOVER_MS, polled_age_ms=5).argv)
    return got[0] or "", int(got[1]), int(got[2])


def write(r, node: str, epoch: int | str, rec: str) -> list:
    call = redisfns.write_values(7, node, 0, ["1", rec])
    return r.fcall(call.name, len(call.keys), *call.keys, node, epoch, *call.args[2:])


@pytest.mark.parametrize("field,bad", [(f, "x") for f in LEASE_NUMBERS] + [
    ("epoch", ""), ("epoch", "07"), ("epoch", "-1"), ("epoch", "1e3"), ("expires_ms", "9" * 30), ("epoch", None)])
def test_an_unreadable_lease_is_granted_anew_at_an_epoch_no_writer_holds(redis_master, field: str,
                                                                         bad: str | None) -> None:
    """`bad` None: the field deleted (a record without an epoch: every grant writes one)."""
    r = redis_master.client()
    redisfns.load_sync(r)
    assert tick(r, "A", True) == ("A", 1, 1)
    assert write(r, "A", 1, "5|0|1000") == [1, 1, 1]
    if bad is None:
        r.hdel(ks.lease(7), field)
    else:
        r.hset(ks.lease(7), field, bad)
    assert tick(r, "A", False) == ("", 0, 0)  # as good as no holder: nobody holds it, no error
    assert tick(r, "B", False) == ("", 0, 0)
    assert write(r, "A", 1, "6|0|1001")[0] == 0  # the former holder is fenced out
    holder, epoch, changed = tick(r, "B", True)  # the first node that reaches it takes it
    assert (holder, changed) == ("B", 1)
    assert epoch == 2 if field != "epoch" else epoch > time.time() * 1000 - 60_000
    assert tick(r, "A", True) == ("B", epoch, 0) and tick(r, "B", True) == ("B", epoch, 0)  # one holder, stable
    lease = r.hgetall(ks.lease(7))
    assert all(lease[f].isdigit() for f in LEASE_NUMBERS if f in lease), lease  # nothing unreadable left
    assert write(r, "A", 1, "7|0|1002")[0] == 0 and write(r, "B", epoch, "8|0|1003")[:2] == [1, 1]
    assert r.hget(ks.values(7), "1") == "8|0|1003"
    events = [e for _, e in r.xrange(ks.LEASE_EVENTS)]
    assert [e["reason"] for e in events] == ["initial", "unreadable"], events
    assert events[1]["from"] == "A" and events[1]["to"] == "B" and events[1]["epoch"] == str(epoch)
    want = f"{field} missing" if bad is None else f"{field} = '{bad[:40]}{'...' if len(bad) > 40 else ''}'"
    assert events[1]["detail"] == want


def test_the_epoch_after_an_unreadable_one_is_above_every_epoch_still_readable(redis_master) -> None:
    """An earlier recovery's epochs (counted on from a clock since stepped back) are in the lease events:
    the new epoch is above them too, and above the clock's high-water mark."""
    r = redis_master.client()
    redisfns.load_sync(r)
    ahead = int(time.time() * 1000) + 3_600_000
    r.xadd(ks.LEASE_EVENTS, {"rtu": "7", "from": "", "to": "A", "epoch": str(ahead), "reason": "unreadable"})
    r.xadd(ks.LEASE_EVENTS, {"rtu": "8", "from": "", "to": "A", "epoch": str(ahead + 50), "reason": "initial"})
    r.hset(ks.lease(7), mapping={"holder": "A", "epoch": "oops", "expires_ms": "0"})
    assert tick(r, "B", True) == ("B", ahead + 1, 1)  # RTU 8's epochs are not RTU 7's
    r.hset(ks.lease(7), "epoch", "")
    r.hset(ks.CLOCK, "hw_ms", ahead + 100)  # clock_check has just seen a later time
    assert tick(r, "A", True)[:2] == ("A", ahead + 101)


def test_handover_of_an_unreadable_lease_is_none(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    tick(r, "A", True)
    r.hset(ks.lease(7), "epoch", "x")
    assert r.fcall(*redisfns.lease_handover(7, "B", 5000).argv) == ["", 0, "none"]
    r.hset(ks.lease(7), "epoch", "1")
    assert r.fcall(*redisfns.lease_handover(7, "B", 5000).argv) == ["A", 1, "pending"]


def test_writes_are_fenced_at_an_unreadable_epoch_and_an_unreadable_wseq_is_as_none(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    tick(r, "A", True)
    r.hset(ks.lease(7), "epoch", "x")
    assert write(r, "A", "x", "5|0|1000") == [0, "A", 0]  # even the same string: never at an unreadable epoch
    r.hset(ks.lease(7), mapping={"epoch": "1", "wtok": "a1", "wseq": "?"})
    call = redisfns.write_values(7, "A", 1, ["1", "6|0|1001"], wid=("a1", 3))
    assert r.fcall(*call.argv) == [1, 1, 1] and r.hmget(ks.lease(7), "wtok", "wseq") == ["a1", "3"]
    assert r.fcall(*call.argv) == [2, 0, 1]  # and idempotent again from there


def test_an_unreadable_link_stamp_counts_as_not_reporting(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    assert r.fcall(*redisfns.link_set(7, "A", True, [901]).argv) == ["1", "0", "1"]
    r.hset(ks.link(7), "seen_a", "later")
    assert r.fcall(*redisfns.link_refresh(7, [901]).argv) == ["0", "0", "0"]
    (_, last), = r.xrevrange(ks.EVENTS, count=1)
    assert last["reason"] == "not reporting (seen_a unreadable)" and last["node"] == "A"
    assert r.fcall(*redisfns.link_set(7, "A", True, [901]).argv) == ["1", "0", "1"]  # its next report counts


def test_a_control_whose_times_are_unreadable_is_never_executed(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    tick(r, "A", True)
    for ctl in (41, 42, 43):
        r.fcall(*controls.submit_call(ctl, 7, 1, 5.0, "test", 10_000).argv)
        assert r.lpop(ks.control_queue(7)) == str(ctl)
    r.hset(ks.control(41), "deadline_ms", "x")  # claim: expired, not executed
    assert r.fcall(*controls.claim_call(7, "A", 1, 41).argv) == [0, "expired"]
    assert r.hmget(ks.control(41), "state", "result") == ["expired", "deadline_ms unreadable: cannot tell "
                                                          "whether it passed"]
    assert r.fcall(*controls.claim_call(7, "A", 1, 42).argv)[0] == 1  # executing, then its deadline unreadable
    r.hset(ks.control(42), "deadline_ms", "")
    assert r.fcall(*controls.abandon_call(42).argv) == "unknown"
    r.hset(ks.control(43), "created_ms", "x")  # popped and never claimed: put back, its claim then decides
    assert r.fcall(*controls.requeue_call(43, 7, 200).argv) == 1 and r.lrange(ks.control_queue(7), 0, -1) == ["43"]
    r.hset(ks.control(43), "created_ms", "x")
    assert r.fcall(*controls.claim_call(7, "A", 1, 43).argv)[0] == 1


@pytest.mark.parametrize("call,at", [
    (redisfns.write_values(7, "A", 1, ["1", "9|0|1009"], maxlen=100, wid=("a1", 1)), 2),  # maxlen
    (redisfns.write_values(7, "A", 1, ["1", "9|0|1009"], wid=("a1", 1)), 5),              # wseq
    (redisfns.lease_tick(7, "A", True, TTL_MS, TAKEOVER_MS), 3),                          # ttl_ms
    (redisfns.lease_handover(7, "B", 5000), 1),
    (redisfns.link_set(7, "A", False, [901]), 3),                                         # live_ms
    (redisfns.link_refresh(7, [901]), 0),
])
def test_an_argument_that_is_not_a_number_is_refused_before_anything_is_written(redis_master, call, at: int) -> None:
    """Before: write_values given a bad maxlen updated the values hash and then failed before the change
    stream's record (a value no forwarder would ever be sent)."""
    import redis

    r = redis_master.client()
    redisfns.load_sync(r)
    tick(r, "A", True)
    r.fcall(*redisfns.link_set(7, "A", True, [901]).argv)
    before = {k: r.dump(k) for k in r.keys("*")}
    args = list(call.args)
    args[at] = "lots"
    with pytest.raises(redis.ResponseError, match=rf"fep-ha {call.name}: argument {at + 1} is not a number: 'lots'"):
        r.fcall(call.name, len(call.keys), *call.keys, *args)
    assert {k: r.dump(k) for k in r.keys("*")} == before
