"""Lease epochs are never granted twice for one RTU, on a real redis-server: the highest epoch granted is
kept apart from the lease hash (`fep:lease:epochs`), so a lease hash deleted outright (an operator's DEL, a
key lost) is granted anew above it, not at epoch 1 again where a fenced writer of an earlier tenure still
holding (node, 1) would match. Before: such a record restarted at epoch 1, reason `initial`.

Cost (2026-12-02, this 2-core machine shared with other work; main's functions.lua and this one loaded in
turn on one redis-server, 12 alternated rounds, medians; server side: INFO commandstats usec_per_call of
FCALL): a renewal by the holder 13.4 us before, 12.3 us after; a tick of the other node that grants nothing
10.9 / 10.9 us; a first-start grant (100 RTUs) 16.2 / 14.4 us; a handover grant 22.2 / 20.8 us; pipelined
wall time per renewal 16.6 / 15.7 us. One tick per round trip (3000 in a row): 0.043 ms at best both, 0.09 ms
median under the machine's load. No difference beyond the noise: the high-water is read only at grants."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from fep_loader.store import replace_config
from fepha import controls, redisfns
from fepha import keyspace as ks
from fepha.semodel import db

TTL_MS, TAKEOVER_MS = 10_000, 90_000


def tick(r, node: str, reaches: bool = True, rtu: int = 7) -> tuple[str, int, int]:
    got = r.fcall(*redisfns.lease_tick(rtu, node, reaches, TTL_MS, TAKEOVER_MS, polled_age_ms=5).argv)
    return got[0] or "", int(got[1]), int(got[2])


def write(r, node: str, epoch: int, rec: str) -> list:
    return r.fcall(*redisfns.write_values(7, node, epoch, ["1", rec]).argv)


def lease_events(r) -> list[dict[str, str]]:
    return [e for _, e in r.xrange(ks.LEASE_EVENTS)]


def test_the_first_grant_is_epoch_1_and_every_grant_is_kept_as_the_high_water(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    assert tick(r, "A") == ("A", 1, 1)
    assert r.hgetall(ks.LEASE_EPOCHS) == {"7": "1"}
    assert tick(r, "A") == ("A", 1, 0) and tick(r, "B") == ("A", 1, 0)  # renewals, no grant
    assert r.fcall(*redisfns.lease_handover(7, "B", 5000).argv)[2] == "pending"
    assert tick(r, "B") == ("B", 2, 1)
    assert r.hgetall(ks.LEASE_EPOCHS) == {"7": "2"}
    assert [e["reason"] for e in lease_events(r)] == ["initial", "handover"]
    assert all("detail" not in e for e in lease_events(r))


def test_a_deleted_lease_is_granted_above_every_epoch_granted_before(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    assert tick(r, "A") == ("A", 1, 1)
    assert write(r, "A", 1, "5|0|1000") == [1, 1, 1]
    r.delete(ks.lease(7))  # an operator's DEL; A's acquirer, paused, still holds (A, 1)
    assert tick(r, "B", reaches=False) == ("", 0, 0)  # absent: nobody holds it, a node not reaching takes nothing
    assert write(r, "A", 1, "6|0|1001")[0] == 0
    assert tick(r, "A") == ("A", 2, 1)  # the same node again: a new epoch all the same
    assert write(r, "A", 1, "7|0|1002") == [0, "A", 2]  # the writer of the earlier tenure stays fenced out
    r.fcall(*controls.submit_call(41, 7, 1, 5.0, "test", 10_000).argv)
    assert r.fcall(*controls.claim_call(7, "A", 1, 41).argv)[0] == 0  # and cannot claim a control either
    assert write(r, "A", 2, "8|0|1003") == [1, 1, 1]  # a count of its own (the record is new)
    assert r.hget(ks.values(7), "1") == "8|0|1003"
    ev = lease_events(r)[-1]
    assert (ev["reason"], ev["from"], ev["to"], ev["epoch"], ev["detail"]) == ("record missing", "", "A", "2",
                                                                                "high-water = 1")
    assert "lease of RTU 7 missing (deleted or lost; high-water = 1): granted anew at epoch 2" in \
        (redis_master.dir / "redis.log").read_text()
    assert r.fcall(*redisfns.lease_handover(7, "B", 5000).argv)[2] == "pending"
    assert tick(r, "B") == ("B", 3, 1)  # and on from there, as before
    r.delete(ks.lease(7))
    assert tick(r, "B") == ("B", 4, 1)
    assert [e["reason"] for e in lease_events(r)] == ["initial", "record missing", "handover", "record missing"]


def test_an_unreadable_high_water_gives_an_epoch_above_everything_readable(redis_master) -> None:
    r = redis_master.client()
    redisfns.load_sync(r)
    assert tick(r, "A") == ("A", 1, 1)
    r.hset(ks.LEASE_EPOCHS, "7", "x")
    assert tick(r, "A") == ("A", 1, 0)  # a renewal does not read it
    assert r.fcall(*redisfns.lease_handover(7, "B", 5000).argv)[2] == "pending"
    holder, epoch, changed = tick(r, "B")  # a grant on a readable record: above the clock, as `unreadable`
    assert (holder, changed) == ("B", 1) and epoch > time.time() * 1000 - 60_000
    ev = lease_events(r)[-1]
    assert (ev["reason"], ev["epoch"], ev["detail"]) == ("handover", str(epoch), "high-water = 'x'")
    assert r.hget(ks.LEASE_EPOCHS, "7") == str(epoch)  # rewritten by the grant
    assert "epoch high-water of RTU 7 unreadable (high-water = 'x')" in (redis_master.dir / "redis.log").read_text()
    r.delete(ks.lease(7))
    r.hset(ks.LEASE_EPOCHS, "7", "-3")  # both: the record gone, the high-water unreadable
    holder, again, _ = tick(r, "A")  # above the master's clock and every grant still in the lease events
    assert holder == "A" and again > epoch
    ev = lease_events(r)[-1]
    assert (ev["reason"], ev["detail"]) == ("record missing", "high-water = '-3'")
    r.hset(ks.lease(7), "epoch", "?")  # an unreadable record and an unreadable high-water
    r.hset(ks.LEASE_EPOCHS, "7", "")
    holder, third, _ = tick(r, "B")
    assert holder == "B" and third > again
    assert lease_events(r)[-1]["detail"] == "epoch = '?', high-water = ''"


def test_the_high_water_is_above_a_lower_record(redis_master) -> None:
    """A record whose epoch is below the high-water (recreated by hand): the next grant is above both."""
    r = redis_master.client()
    redisfns.load_sync(r)
    tick(r, "A")
    r.hset(ks.LEASE_EPOCHS, "7", 9)
    r.hset(ks.lease(7), "epoch", 3)
    r.hset(ks.lease(7), "expires_ms", 1)  # lapsed
    assert tick(r, "B") == ("B", 10, 1)
    assert lease_events(r)[-1]["reason"] == "lapsed"
    r.hset(ks.LEASE_EPOCHS, "7", "100000000000005")  # 15 digits, the most a readable one has: printed whole
    r.delete(ks.lease(7))
    assert tick(r, "A") == ("A", 100000000000006, 1)
    assert lease_events(r)[-1]["detail"] == "high-water = 100000000000005"


def test_sysload_init_keeps_the_high_water_also_of_an_rtu_it_removes(feproot: Path, redis_master) -> None:
    r = redis_master.client()
    rows, problems = db.read_rows(feproot / "db" / "SEMODEL.db")
    assert not problems
    replace_config(r, rows)
    assert tick(r, "A", rtu=1) == ("A", 1, 1) and tick(r, "A", rtu=2) == ("A", 1, 1)
    replace_config(r, rows)  # the same RTUs: leases and high-water kept
    assert r.hgetall(ks.LEASE_EPOCHS) == {"1": "1", "2": "1"} and tick(r, "A", rtu=1) == ("A", 1, 0)
    fewer = copy.deepcopy(rows)
    fewer["T004_RTU"] = [row for row in rows["T004_RTU"] if row["RTUID"] != 2]
    for t in ("T010_CHANNEL", "T011_POINT", "T036_VTPNT"):
        fewer[t] = [row for row in rows[t] if row.get("RTUID") != 2]
    replace_config(r, fewer)  # RTU 2 removed: its lease goes, the high-water stays
    assert not r.exists(ks.lease(2)) and r.hget(ks.LEASE_EPOCHS, "2") == "1"
    replace_config(r, rows)  # and added again: it counts on
    assert tick(r, "A", rtu=2) == ("A", 2, 1)
    assert lease_events(r)[-1]["reason"] == "record missing"
