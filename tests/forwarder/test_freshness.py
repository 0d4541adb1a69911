"""The staleness rules (issue 10b) as tables: when a forwarded value gets NT, and when it loses it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fep_forwarder.freshness import NT, Limits, ReplicaWatch, Staleness, judge, overlay, rtu_reason
from fepha.freshness import replids
from fepha.points import Quality, Value

LIM = Limits(replica_down_ms=6000, stale_polls=3, tick_ms=1000, poll_ms=2000)
NOW = 1_000_000

# lease hash, poll_ms (the RTU's POLLMS, None: LIM.poll_ms) -> reason prefix or None
RTU_CASES = {
    "holder renewing and polling": ({"holder": "A", "expires_ms": NOW + 2000, "polled_ms": NOW - 500}, 1000, None),
    "no lease at all": ({}, 1000, "no lease holder"),
    "empty holder": ({"holder": "", "expires_ms": NOW + 2000}, 1000, "no lease holder"),
    "a holder that is no node (was topical)": ({"holder": "C", "expires_ms": NOW + 2000}, 1000, "lease held by 'C'"),
    "expired within one tick: the takeover window": ({"holder": "A", "expires_ms": NOW - 1000}, 1000, None),
    "expired longer than one tick": ({"holder": "A", "expires_ms": NOW - 1001}, 1000, "lease of A lapsed"),
    "a holder without a readable expiry (was: lapsed since the epoch)": (
        {"holder": "A", "expires_ms": "soon"}, 1000, "lease of A has no readable expiry"),
    "last poll 3 periods + 1 tick ago: still topical": (
        {"holder": "B", "expires_ms": NOW + 1, "polled_ms": NOW - 4000}, 1000, None),
    "last poll longer ago": ({"holder": "B", "expires_ms": NOW + 1, "polled_ms": NOW - 4001}, 1000,
                             "holder B has not completed a poll"),
    "slow RTU: 10 s polls, 20 s old poll is fine": (
        {"holder": "B", "expires_ms": NOW + 1, "polled_ms": NOW - 20_000}, 10_000, None),
    "holder that never polled (polled_ms 0)": ({"holder": "A", "expires_ms": NOW + 1, "polled_ms": 0}, 1000,
                                               "holder A has not completed a poll"),
    "no POLLMS: 3 polls of the node's default 2 s + 1 tick, 7 s old poll is fine": (
        {"holder": "B", "expires_ms": NOW + 1, "polled_ms": NOW - 7000}, None, None),
    "no POLLMS: a poll older than that": ({"holder": "B", "expires_ms": NOW + 1, "polled_ms": NOW - 7001}, None,
                                          "holder B has not completed a poll"),
    "no polled_ms: judged by the lease only": ({"holder": "A", "expires_ms": NOW + 1}, 1000, None),
    "renewed and polling, but rolled back (was topical)": (
        {"holder": "A", "expires_ms": NOW + 2000, "polled_ms": NOW - 500, "rolled_back_ms": NOW - 10}, 1000,
        "values older than the last write of holder A: the data set was rolled back"),
    "rolled back and lapsed: the lapse first": (
        {"holder": "A", "expires_ms": NOW - 5000, "rolled_back_ms": NOW - 10}, 1000, "lease of A lapsed"),
}


@pytest.mark.parametrize("case", list(RTU_CASES))
def test_rtu_rules(case: str) -> None:
    lease, poll_ms, want = RTU_CASES[case]
    got = rtu_reason({k: str(v) for k, v in lease.items()}, NOW, poll_ms, LIM)
    assert (got is None) == (want is None), got
    if want:
        assert got is not None and got.startswith(want)


def test_a_lease_renewed_under_another_copy_of_the_data_set_is_not_topical() -> None:
    """`replid` (kept by the holder's renewals) among the local Redis's ids: its own, or the one a promoted
    replica took over (master_replid2: no NT at a failover); another (a restart from a copy): NT. No id known
    on either side: not judged. An unset master_replid2 (all zeros) is no id."""
    lease = {"holder": "A", "expires_ms": str(NOW + 2000), "polled_ms": str(NOW - 500), "replid": "r0"}
    ids = replids({"master_replid": "r1", "master_replid2": "r0"})
    assert rtu_reason(lease, NOW, 1000, LIM, ids) is None
    fresh = replids({"master_replid": "r1", "master_replid2": "0" * 40})
    assert fresh == {"r1"}
    got = rtu_reason(lease, NOW, 1000, LIM, fresh)
    assert got is not None and got.startswith("lease of A not renewed since this copy of the data set was loaded")
    assert rtu_reason(lease, NOW, 1000, LIM) is None and replids(None) == frozenset()
    assert rtu_reason({k: v for k, v in lease.items() if k != "replid"}, NOW, 1000, LIM, fresh) is None


# (INFO replication or None = unreachable, now_ms) steps -> ms cut off after each
REPLICA_CASES = {
    "master": [(({"role": "master"}, 0), 0), (({"role": "master"}, 9000), 0)],
    "replica with its link up": [(({"role": "slave", "master_link_status": "up"}, 0), 0)],
    "link up but silent (packets dropped): the time since the master's last byte": [
        (({"role": "slave", "master_link_status": "up", "master_last_io_seconds_ago": 0}, 0), 0),
        (({"role": "slave", "master_link_status": "up", "master_last_io_seconds_ago": 7}, 7000), 7000),
        (({"role": "slave", "master_link_status": "up", "master_last_io_seconds_ago": -1}, 8000), 0)],
    "link down, Redis says since 4 s (whole seconds: at least 3)": [
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": 4}, 10_000), 3000),
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": 7}, 13_000), 6000)],
    "link just went down (Redis says 1 s, may be 0.1 s): counted from the first sight": [
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": 1}, 10_000), 0),
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": 2}, 10_700), 700)],
    "link down, never connected (-1): counted from the first sight": [
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": -1}, 10_000), 0),
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": -1}, 12_500), 2500)],
    "link back up resets": [
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": 9}, 10_000), 8000),
        (({"role": "slave", "master_link_status": "up"}, 11_000), 0),
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": 0}, 12_000), 0)],
    "a silent link that Redis then ends (repl-timeout) counts on from the master's last byte": [
        (({"role": "slave", "master_link_status": "up", "master_last_io_seconds_ago": 4}, 10_000), 4000),
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": 0}, 11_000), 5000),
        (({"role": "slave", "master_link_status": "down", "master_link_down_since_seconds": 1}, 12_000), 6000)],
    "local Redis unreachable": [((None, 5000), 0), ((None, 8000), 3000), (({"role": "master"}, 9000), 0)],
}


@pytest.mark.parametrize("case", list(REPLICA_CASES))
def test_replica_watch(case: str) -> None:
    w = ReplicaWatch()
    for (info, now), want in REPLICA_CASES[case]:
        assert w.observe(info, now) == want


def test_judge_and_flips() -> None:
    fresh = {"holder": "A", "expires_ms": str(NOW + 1000), "polled_ms": str(NOW)}
    s = judge(0, {1: fresh, 2: {}}, {1: 1000, 2: 1000}, NOW, LIM)
    assert s.all is None and set(s.rtus) == {2}
    assert s.stale(2) and not s.stale(1) and not s.stale(None)
    cut = judge(6001, {1: fresh}, {1: 1000}, NOW, LIM)
    assert cut.all and cut.stale(1) and cut.stale(None)  # rule 1 covers virtual points too
    assert judge(6000, {1: fresh}, {1: 1000}, NOW, LIM).all is None  # exactly the limit: not yet
    assert s.flipped(cut, [1, 2, None]) == {1, None}
    assert Staleness().flipped(s, [1, 2, None]) == {2}


OVERLAY_CASES = [  # (quality in Redis, stale) -> quality sent
    (0, False, 0), (0, True, NT), (int(Quality.IV), True, int(Quality.IV) | NT),
    (int(Quality.IV), False, int(Quality.IV)), (NT, True, NT), (NT, False, NT)]


@pytest.mark.parametrize("q,stale,want", OVERLAY_CASES)
def test_overlay(q: int, stale: bool, want: int) -> None:
    v = Value(5, q, 123)
    got = overlay(v, stale)
    assert (got.value, got.quality, got.ts_ms) == (5, want, 123)


def test_limits_of_a_configuration_and_reported() -> None:
    """The one conversion (the forwarder judges by it and reports it); what is reported reads back the same."""
    lim = Limits.of(SimpleNamespace(replica_down_s=6.5, quality_stale_polls=4, lease_tick_s=0.25, poll_ms=500))
    assert lim == Limits(6500, 4, 250, 500)
    assert lim.report() == {"replica_down_ms": 6500, "stale_polls": 4, "lease_tick_ms": 250, "poll_ms": 500}
    assert Limits.reported(lim.report()) == lim
