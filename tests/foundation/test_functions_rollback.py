"""A data set rolled back (Redis restarted from an older copy, writes lost) is found by the holder's lease tick,
on a real redis-server: `write_values` counts the writes applied under the lease record (`wn`) and answers the
count; the holder passes the highest it was answered (`lease_tick`'s `written`). A record whose count is below
it is older than a write the holder saw applied: `rolled_back_ms` is stamped, the RTU's values are not current
for every reader (`fepha.freshness.rtu_reason`, the forwarder's and the api's rule) until the holder has written
them again and cleared it (`lease_synced`). Before: the holder's renewal made the old record look current."""

from __future__ import annotations

import time

from fepha import freshness, redisfns
from fepha import keyspace as ks
from tests.redisproc import RedisProc

TTL_MS, TAKEOVER_MS = 10_000, 90_000
LIM = freshness.Limits(replica_down_ms=6000, stale_polls=3, tick_ms=1000, poll_ms=1000)


def tick(r, node: str, written: int | None = None) -> list:
    return r.fcall(*redisfns.lease_tick(7, node, True, TTL_MS, TAKEOVER_MS, polled_age_ms=5, written=written).argv)


def write(r, node: str, epoch: int, rec: str) -> list:
    return r.fcall(*redisfns.write_values(7, node, epoch, ["1", rec]).argv)


def reason(r) -> str | None:
    now = r.time()
    return freshness.rtu_reason(r.hgetall(ks.lease(7)), now[0] * 1000 + now[1] // 1000, None, LIM)


def test_a_restart_from_an_older_copy_is_found_by_the_holders_tick_until_it_writes_again() -> None:
    with RedisProc() as rp:
        r = rp.client()
        redisfns.load_sync(r)
        assert tick(r, "A")[:3] == ["A", 1, 1]
        assert write(r, "A", 1, "5|0|1000") == [1, 1, 1]
        r.save()  # the copy: V1, one write
        assert write(r, "A", 1, "6|0|1001") == [1, 1, 2]  # V2, after it
        assert tick(r, "A", written=2) == ["A", 1, 0] and reason(r) is None
        rp.proc.kill()  # as SHUTDOWN NOSAVE
        rp.proc.wait(5)
        rp.proc = None
        rp.start()  # from the copy
        r = rp.client()
        assert r.hget(ks.values(7), "1") == "5|0|1000"  # V1 again
        assert reason(r) is None  # the copy's lease is still live: the holder's next tick finds the roll-back
        assert tick(r, "A", written=2) == ["A", 1, 0, 1]
        assert "rolled back" in reason(r) and r.hget(ks.lease(7), "wn") == "2"
        at = r.hget(ks.lease(7), "rolled_back_ms")
        time.sleep(0.01)
        assert tick(r, "A", written=2) == ["A", 1, 0, 1] and r.hget(ks.lease(7), "rolled_back_ms") == at  # kept
        assert write(r, "A", 1, "6|0|1002") == [1, 1, 3]  # a write alone is not the image: still not current
        assert "rolled back" in reason(r)
        assert r.fcall(*redisfns.lease_synced(7, "B", 1).argv) == 0  # not the holder
        assert r.fcall(*redisfns.lease_synced(7, "A", 2).argv) == 0  # not its epoch
        assert r.fcall(*redisfns.lease_synced(7, "A", 1).argv) == 1
        assert reason(r) is None and tick(r, "A", written=3) == ["A", 1, 0]
        assert r.fcall(*redisfns.lease_synced(7, "A", 1).argv) == 0  # nothing to clear


def test_the_count_is_not_a_roll_back_when_it_is_at_or_above_the_holders(redis_master) -> None:
    """A tick whose count is at or below the record's (a write applied after the count was taken, another
    runner of the holder that wrote meanwhile) and a tick without a count (a holder that has not written
    under this epoch, or an acquirer that does not send one) find nothing; nor does a node not holding."""
    r = redis_master.client()
    redisfns.load_sync(r)
    tick(r, "A")
    for i in range(3):
        write(r, "A", 1, f"{i}|0|1000")
    assert tick(r, "A", written=2) == tick(r, "A", written=3) == tick(r, "A") == ["A", 1, 0]
    assert tick(r, "B", written=9) == ["A", 1, 0] and reason(r) is None
    # unreadable (an operator's HSET): counted on from 0, never an error; the holder's count (4) is then above
    # it, taken as a roll-back: NT until the holder's rewrite, and the count goes on from the holder's
    r.hset(ks.lease(7), "wn", "x")
    assert write(r, "A", 1, "7|0|1001") == [1, 1, 1]
    assert tick(r, "A", written=4)[3] == 1 and r.hget(ks.lease(7), "wn") == "4"


def test_a_lease_renewed_before_a_restart_is_not_current_until_its_holder_renews_it_again() -> None:
    """The holder's renewals keep the master's replication id it read (`replid`); a Redis restarted from a copy
    gets a new one, so its lease record, renewed under the old id, is not current for a reader (whose ids are
    its local Redis's `replids`) from the first moment, before any tick: a copy younger than the other rules'
    limits (its lease not lapsed) was current until the holder's first tick. Renewed under the new id: current."""
    with RedisProc() as rp:
        r = rp.client()
        redisfns.load_sync(r)
        old = r.info("replication")["master_replid"]
        tick(r, "A")
        r.fcall(*redisfns.lease_tick(7, "A", True, TTL_MS, TAKEOVER_MS, polled_age_ms=5, replid=old).argv)
        assert r.hget(ks.lease(7), "replid") == old
        ids = freshness.replids(r.info("replication"))
        now = r.time()
        assert freshness.rtu_reason(r.hgetall(ks.lease(7)), now[0] * 1000 + now[1] // 1000, None, LIM, ids) is None
        r.save()
        rp.proc.kill()
        rp.proc.wait(5)
        rp.proc = None
        rp.start()
        r = rp.client()
        new = r.info("replication")["master_replid"]
        assert new != old
        ids = freshness.replids(r.info("replication"))
        now = r.time()
        got = freshness.rtu_reason(r.hgetall(ks.lease(7)), now[0] * 1000 + now[1] // 1000, None, LIM, ids)
        assert got is not None and "not renewed since this copy of the data set was loaded" in got, got
        r.fcall(*redisfns.lease_tick(7, "A", True, TTL_MS, TAKEOVER_MS, polled_age_ms=5, replid=new).argv)
        now = r.time()
        assert freshness.rtu_reason(r.hgetall(ks.lease(7)), now[0] * 1000 + now[1] // 1000, None, LIM, ids) is None
