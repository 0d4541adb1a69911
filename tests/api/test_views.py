"""The api's decoding rules as tables, without Redis: leases, channel and link states, value records,
stream ids, heartbeats, control audit entries."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from fep_api import views
from fepha import freshness, heartbeat, points
from fepha.semodel.model import Channel, Rtu, VirtualPoint
from fepha.semodel.model import Point as SemPoint

NOW = 1_000_000


@pytest.mark.parametrize("h, expect", [
    ({}, {"holder": None, "epoch": 0, "remaining_ms": None, "lapsed": False, "handover": None}),
    ({"holder": "A", "epoch": "3", "since_ms": "10", "expires_ms": str(NOW + 500), "reached_ms": "7"},
     {"holder": "A", "epoch": 3, "since_ms": 10, "remaining_ms": 500, "lapsed": False, "reached_ms": 7}),
    ({"holder": "B", "epoch": "2", "expires_ms": str(NOW - 1)},
     {"holder": "B", "remaining_ms": -1, "lapsed": True}),
    ({"holder": "A", "epoch": "1", "expires_ms": str(NOW + 9), "reached_ms": "0"}, {"reached_ms": None}),
    # a pending handover is shown while its window is open, and no longer once it passed
    ({"holder": "A", "epoch": "1", "handover": "B", "handover_until_ms": str(NOW + 1)},
     {"handover": "B", "handover_until_ms": NOW + 1}),
    ({"holder": "A", "epoch": "1", "handover": "B", "handover_until_ms": str(NOW - 1)},
     {"handover": None, "handover_until_ms": None}),
    # garbage in a field is shown as unknown, not raised
    ({"holder": "Z", "epoch": "x", "expires_ms": "soon"}, {"holder": None, "epoch": 0, "expires_ms": None}),
    # a holder with no readable expiry renews nothing: lapsed (was false, beside its values served NT)
    ({"holder": "A", "epoch": "1"}, {"holder": "A", "remaining_ms": None, "lapsed": True, "reach": None}),
    ({"holder": "A", "epoch": "1", "expires_ms": "soon"}, {"lapsed": True}),
    ({"holder": "A", "epoch": "1", "expires_ms": "inf"}, {"expires_ms": None, "lapsed": True}),
])
def test_lease(h: dict, expect: dict) -> None:
    got = views.lease(h, NOW).model_dump()
    assert {k: got[k] for k in expect} == expect


RTU = Rtu(id=1, name="r", rtutype=0, protocol="modbus_tcp",
          channels=(Channel(1, 1, "10.0.0.1", 502, 1), Channel(1, 2, "10.0.0.2", 502, 1)))


def test_channels_reported_and_not() -> None:
    st = views.channels(RTU, "B", {"active": "2", "ch1_connected": "0", "ch1_error": "refused",
                                   "ch1_since_ms": "0",
                                   "ch2_connected": "1", "ch2_since_ms": "5", "ch2_switches": "4"})
    assert st.reported and st.active == 2
    c1, c2 = st.channels
    assert (c1.no, c1.host, c1.connected, c1.error, c1.switches) == (1, "10.0.0.1", False, "refused", None)
    assert c1.since_ms is None  # never connected
    assert (c2.connected, c2.since_ms, c2.switches, c2.error) == (True, 5, 4, None)
    empty = views.channels(RTU, "A", {})
    assert not empty.reported and empty.active is None
    assert [c.connected for c in empty.channels] == [None, None]


def test_link_and_virtual_point() -> None:
    lk = {"vala": "0", "valb": "1", "val": "1", "since_a": "1", "since_b": "2", "since": "3"}
    assert views.link(lk).model_dump() == {"vala": False, "valb": True, "val": True, "since_a_ms": 1,
                                           "since_b_ms": 2, "since_ms": 3, "not_current": None}
    assert views.link({}).model_dump() == {"vala": None, "valb": None, "val": None, "since_a_ms": None,
                                           "since_b_ms": None, "since_ms": None, "not_current": None}
    vp = views.virtual_point(VirtualPoint(901, 1, "link"), "1|0|3", lk)
    assert (vp.val, vp.value, vp.valid, vp.since_ms) == (True, 1, True, 3)


@pytest.mark.parametrize("record, expect", [
    (None, {"value": None, "quality": None, "valid": False, "error": None}),
    ("20.5|0|1700000000000", {"value": 20.5, "quality": 0, "quality_flags": [], "valid": True,
                              "ts_ms": 1700000000000, "time": "2023-11-14T22:13:20.000+00:00"}),
    (f"3|{0x80 | 0x40}|5", {"value": 3, "quality": 0xC0, "quality_flags": ["NT", "IV"], "valid": False}),
    (f"1|{0x01 | 0x20}|5", {"quality_flags": ["OV", "SB"], "valid": True}),
    ("nan|0|5", {"value": None, "valid": True}),
    ("x|y", {"value": None, "error": "malformed value record 'x|y'"}),
])
def test_value_fields(record: str | None, expect: dict) -> None:
    got = views.point(_point(), record).model_dump()
    assert {k: got[k] for k in expect} == expect


def _point():
    from fepha.semodel.model import Point
    return Point(id=101, rtu=1, kind="AI", name="v", area="hr", address=0, datatype="float32")


def test_value_fields_use_the_shared_codec() -> None:
    rec = points.encode(7.0, int(points.Quality.BL), 9)
    assert views.value_fields(rec)["value"] == 7 and views.value_fields(rec)["quality_flags"] == ["BL"]


@pytest.mark.parametrize("s, parsed, before", [
    ("5-3", (5, 3), "5-2"),
    ("5-0", (5, 0), f"4-{2**64 - 1}"),
    ("5", (5, 0), f"4-{2**64 - 1}"),
    ("0-0", (0, 0), None),
    ("-1", None, None), ("a-b", None, None), ("5-", None, None), ("", None, None), ("1-2-3", None, None),
    (f"{2**64}-0", None, None), (f"1-{2**64}", None, None),
])
def test_stream_ids(s: str, parsed: tuple | None, before: str | None) -> None:
    assert views.parse_stream_id(s) == parsed
    if parsed is not None:
        assert views.id_before(parsed) == before


def test_heartbeat_fresh_old_missing_broken() -> None:
    now_ms = int(time.time() * 1000)
    raw = json.dumps({"pid": 7, "host": "h", "ts_ms": now_ms, "gen": 3})
    fresh = views.heartbeat("acquirer", "A", raw, 6)
    assert fresh.alive and fresh.pid == 7 and fresh.gen == 3 and fresh.age_s is not None and fresh.age_s < 5
    old = views.heartbeat("acquirer", "A", json.dumps({"pid": 7, "ts_ms": now_ms - 60_000}), 6)
    assert not old.alive and "old" in old.detail
    missing = views.heartbeat("forwarder", "B", None, 6)
    assert not missing.alive and missing.detail == "no heartbeat of forwarder on node B"
    broken = views.heartbeat("forwarder", "B", "{not json", 6)
    assert not broken.alive and broken.pid is None
    # a key without a TTL (another writer's) is judged by its ts_ms: one that is not a finite number is no age
    # (NaN was "alive (nan s ago)"; none, a string or a JSON list raised: a 500 on /node, /rtus, /metrics)
    for garbled in ('{"pid": 7}', '{"pid": 7, "ts_ms": "now"}', '{"pid": 7, "ts_ms": NaN}', '{"ts_ms": true}',
                    "[1, 2]", '{"ts_ms": 1e400}'):
        hb = views.heartbeat("acquirer", "A", garbled, 6, pttl_ms=-1)
        assert hb.alive is False and "age is unknown" in hb.detail, (garbled, hb)
    assert views.to_int(json.loads('{"x": 1e400}')["x"]) is None  # was OverflowError: every page a 500


def test_control_entry() -> None:
    c = views.control("9-1", {"id": "4", "rtu": "1", "point": "109", "value": "1.0", "state": "done",
                              "result": "ok", "executor": "A", "epoch": "2", "finished_ms": "77",
                              "origin": "x"})
    assert (c.stream_id, c.id, c.value, c.state, c.epoch, c.finished_ms, c.claimed_ms) == \
        ("9-1", 4, 1.0, "done", 2, 77, None)
    assert views.control("1-0", {"value": "nan", "id": "z"}).model_dump()["value"] is None
    assert (c.from_split, c.split_id) == (None, None)
    # run on the loser of a split brain, copied to the winner's audit before its demotion (fepha.splitaudit)
    f = {"id": "4", "rtu": "1", "point": "109", "value": "1", "state": "done", "executor": "B",
         "from_split": "B", "split_id": "5-0"}
    s = views.control("9-2", f)
    assert (s.id, s.state, s.from_split, s.split_id) == (4, "done", "B", "5-0")
    ev = views.event(2, "9-2", f)
    assert ev is not None and ev.text == "RTU 1: control 4 point 109 = 1: done by B (run on node B during a split brain)"


def test_forwarder_clients() -> None:
    got = views.clients("A", {"b:2": '{"since_ms": 1}', "a:1": "plain", "c:3": "[1]"})
    assert [(c.peer, c.state) for c in got] == [("a:1", {"raw": "plain"}), ("b:2", {"since_ms": 1}),
                                                ("c:3", {"value": [1]})]


# --- under faults (docs/api.md "Under faults") ---------------------------------------------------------

def test_heartbeat_age_from_the_keys_ttl_not_from_clocks_of_other_hosts() -> None:
    """The peer's clock 60 s behind or ahead of this host's: its heartbeat key exists (Redis applies its
    TTL of 3 periods), so it is alive and its age comes from the remaining TTL, neither '60 s old' (dead)
    nor negative."""
    now_ms = int(time.time() * 1000)
    for skew_ms in (-60_000, 60_000):
        raw = json.dumps({"pid": 7, "host": "peer", "ts_ms": now_ms + skew_ms, "gen": 3})
        hb = views.heartbeat("acquirer", "B", raw, 6, pttl_ms=5_000)
        assert (hb.alive, hb.age_s, hb.pid) == (True, 1.0, 7), hb
    assert views.heartbeat("acquirer", "B", raw, 6, pttl_ms=6_500).age_s == 0.0  # never negative


@pytest.mark.parametrize("ahead_ms", [2_500, 30_000, 600_000])
def test_heartbeat_whose_expiry_a_clock_ahead_set_is_unknown_not_alive(ahead_ms: int) -> None:
    """Redis keeps a key's expiry as an absolute time: a key written by a master whose clock was ahead of
    this Redis's (the master before a promotion, or this one before its clock stepped back) has more left
    than its lifetime here and would keep a dead service alive that much longer (docs/ha.md "Clocks")."""
    raw = json.dumps({"pid": 7, "host": "peer", "ts_ms": 1, "gen": 3})
    hb = views.heartbeat("acquirer", "B", raw, 6, pttl_ms=6_000 + ahead_ms)
    assert (hb.alive, hb.age_s) == (None, None), hb
    assert f"expires {ahead_ms} ms later" in hb.detail


def test_heartbeat_judged_by_its_writers_lifetime_when_it_gives_one() -> None:
    """A service whose heartbeat_s (5 s: lifetime 15 s) differs from this api's (lifetime 6 s) is alive,
    with its age from its own lifetime; 2.5 s beyond that lifetime and more than a period: unknown."""
    raw = json.dumps({"pid": 7, "host": "peer", "ts_ms": 1, "gen": 3, "ttl_ms": 15_000})
    assert (views.heartbeat("acquirer", "B", raw, 6, pttl_ms=14_000).alive,
            views.heartbeat("acquirer", "B", raw, 6, pttl_ms=14_000).age_s) == (True, 1.0)
    assert views.heartbeat("acquirer", "B", raw, 6, pttl_ms=20_001).alive is None


def test_heartbeat_missing_on_a_cut_off_replica_is_unknown_not_dead() -> None:
    hb = views.heartbeat("forwarder", "A", None, 6, pttl_ms=-2,
                         unknown="cut off from the master for 7000 ms (replication link down)")
    assert hb.alive is None and hb.age_s is None
    assert hb.detail.startswith("unknown: no heartbeat of forwarder on node A") and "7000 ms" in hb.detail
    assert views.heartbeat("forwarder", "A", None, 6, pttl_ms=-2).alive is False  # not cut off: dead


def test_replica_link_down_has_no_lag_but_a_down_time() -> None:
    """Redis reports master_last_io_seconds_ago = -1 while the link is down: not a lag of -1 s."""
    rep = views.replication({"role": "slave", "master_host": "10.0.0.1", "master_port": 6379,
                             "master_link_status": "down", "master_last_io_seconds_ago": -1,
                             "master_link_down_since_seconds": 12})
    assert (rep.link_status, rep.lag_s, rep.down_s) == ("down", None, 12.0)
    up = views.replication({"role": "slave", "master_host": "10.0.0.1", "master_port": 6379,
                            "master_link_status": "up", "master_last_io_seconds_ago": 0})
    assert (up.lag_s, up.down_s) == (0.0, None)


def test_state_not_current_is_null_with_a_reason() -> None:
    why = "the acquirer of node A is not seen alive (no heartbeat of acquirer on node A)"
    st = views.channels(RTU, "A", {"active": "1", "ch1_connected": "1", "ch1_since_ms": "5",
                                   "ch2_error": "refused", "ch2_switches": "2"}, why)
    assert st.reported and st.active is None and st.not_current == why
    assert [(c.connected, c.since_ms, c.error, c.switches) for c in st.channels] == \
        [(None, None, None, None), (None, None, None, 2)]
    assert views.channels(RTU, "A", {}, why).not_current is None  # nothing reported, nothing to qualify
    cut = "local Redis cut off from the master for 7000 ms (replication link down)"
    ls = views.lease({"holder": "A", "epoch": "3", "expires_ms": str(NOW - 5000)}, NOW, cut)
    assert (ls.holder, ls.epoch, ls.remaining_ms, ls.lapsed, ls.not_current) == ("A", 3, None, None, cut)
    lk = views.link({"vala": "1", "valb": "1", "val": "1", "since": "3"}, cut)
    assert (lk.vala, lk.valb, lk.val, lk.since_ms, lk.not_current) == (None, None, None, 3, cut)
    vp = views.virtual_point(VirtualPoint(901, 1, "link"), "1|0|3", {"vala": "1", "val": "1"}, cut)
    assert (vp.val, vp.value, vp.quality_flags, vp.not_current) == (None, 1, ["NT"], cut)


def test_age_of_a_source_time_ahead_of_this_clock_is_null() -> None:
    assert views.aged(views.value_fields("1|0|2000"), 1000)["age_ms"] is None
    assert views.aged(views.value_fields("1|0|1000"), 1500)["age_ms"] == 500


OWN = views.LeaseTimers(ttl_ms=3000, takeover_ms=90_000, tick_ms=1000)
T = views.NodeTimers(OWN)  # no acquirer reports its timers: the api's own
RENEWED = NOW - 200  # the holder's last tick: expires_ms = RENEWED + TTL
LIVE = {"holder": "A", "epoch": "2", "since_ms": "1000", "expires_ms": str(RENEWED + 3000)}


@pytest.mark.parametrize("h, link, expect", [
    # reached fully at the last renewal: nothing to say
    ({**LIVE, "reached_ms": str(RENEWED), "answered_ms": str(RENEWED)}, {"valb": "1"}, ("full", None, None)),
    # answered in part since 5 s: B can take over in 85 s if it reads the device fully
    ({**LIVE, "reached_ms": str(NOW - 5000), "answered_ms": str(RENEWED)}, {"valb": "1"},
     ("partial", "in part only", 85_000)),
    ({**LIVE, "reached_ms": str(NOW - 5000), "answered_ms": str(RENEWED)}, {"valb": "0"},
     ("partial", "node B does not reach the device: no takeover", None)),
    # not reached for 60 s: B, which reaches it, takes over in 30 s; unknown link: "if it reaches"
    ({**LIVE, "reached_ms": str(NOW - 60_000), "answered_ms": str(NOW - 60_000)}, {"valb": "1"},
     ("none", "node B takes the lease over in 30.0 s", 30_000)),
    ({**LIVE, "reached_ms": str(NOW - 60_000), "answered_ms": str(NOW - 60_000)}, {},
     ("none", "takes the lease over if it reaches the device in 30.0 s", 30_000)),
    ({**LIVE, "reached_ms": str(NOW - 95_000), "answered_ms": str(NOW - 95_000)}, {"valb": "1"},
     ("none", "at its next tick", 0)),
    ({**LIVE, "reached_ms": str(NOW - 60_000), "answered_ms": str(NOW - 60_000)}, {"valb": "0"},
     ("none", "node B does not reach it either: no takeover", None)),
    # a lease written before answered_ms existed: reached_ms stands for both
    ({**LIVE, "reached_ms": str(NOW - 60_000)}, {"valb": "1"}, ("none", "for 60.0 s", 30_000)),
])
def test_lease_reach_and_takeover(h: dict, link: dict, expect: tuple) -> None:
    ls = views.lease(h, NOW, None, link, T)
    assert (ls.reach, ls.takeover_in_ms) == (expect[0], expect[2]), ls
    assert (ls.reach_detail is None) if expect[1] is None else (expect[1] in (ls.reach_detail or "")), ls
    assert ls.timers_from == "api", ls


SHORT = views.LeaseTimers(ttl_ms=3000, takeover_ms=20_000, tick_ms=1000)
LONG_TTL = views.LeaseTimers(ttl_ms=10_000, takeover_ms=90_000, tick_ms=1000)
LOST = {**LIVE, "reached_ms": str(NOW - 5000), "answered_ms": str(NOW - 5000)}  # A not reached for 5 s


@pytest.mark.parametrize("reported, h, expect", [
    # B, which would take over, reports takeover_s 20 s (the api's is 90): B takes over in 15 s, not 85
    ({"A": OWN, "B": SHORT}, LOST, ("none", "in 15.0 s", 15_000, "acquirers")),
    # the holder's takeover_s is not the one that acts: B's (the api's) 90 s
    ({"A": SHORT, "B": OWN}, LOST, ("none", "in 85.0 s", 85_000, "acquirers")),
    # B reports none (an older acquirer): A's stand for both
    ({"A": SHORT, "B": None}, LOST, ("none", "in 15.0 s", 15_000, "acquirers")),
    ({"B": SHORT}, LOST, ("none", "in 15.0 s", 15_000, "acquirers")),
    # a partial holder: B's takeover time in the detail too
    ({"A": OWN, "B": SHORT}, {**LIVE, "reached_ms": str(NOW - 5000), "answered_ms": str(RENEWED)},
     ("partial", "takeover time (20.0 s): in 15.0 s", 15_000, "acquirers")),
    # the holder's TTL dates its last renewal: with A's 10 s TTL, expires_ms - 10 s is 7.2 s before NOW, so a
    # reach stamped 5 s ago is of its last renewal (full); by the api's 3 s TTL it would not be
    ({"A": LONG_TTL, "B": LONG_TTL}, LOST, ("full", None, None, "acquirers")),
    ({}, LOST, ("none", "in 85.0 s", 85_000, "api")),
    ({"A": None, "B": None}, LOST, ("none", "in 85.0 s", 85_000, "api")),
])
def test_takeover_by_the_timers_of_the_acquirer_that_acts(reported: dict, h: dict, expect: tuple) -> None:
    ls = views.lease(h, NOW, None, {"valb": "1"}, views.NodeTimers(OWN, reported))
    assert (ls.reach, ls.takeover_in_ms, ls.timers_from) == (expect[0], expect[2], expect[3]), ls
    assert (ls.reach_detail is None) if expect[1] is None else (expect[1] in (ls.reach_detail or "")), ls


@pytest.mark.parametrize("raw, expect", [
    (json.dumps({"node": "B", **heartbeat.lease_timers(SimpleNamespace(lease_ttl_s=2.0, takeover_s=30.0,
                                                                            lease_tick_s=0.5))}),
     views.LeaseTimers(ttl_ms=2000, takeover_ms=30_000, tick_ms=500)),
    (json.dumps({"node": "B", "ttl_ms": 6000}), None),  # an acquirer that does not report them
    (json.dumps({"lease_ttl_ms": 2000, "takeover_ms": 0, "lease_tick_ms": 500}), None),
    (json.dumps({"lease_ttl_ms": 2000, "takeover_ms": "x", "lease_tick_ms": 500}), None),
    (json.dumps([1, 2]), None), ("{not json", None), (None, None),
])
def test_timers_reported_in_a_heartbeat(raw: str | None, expect: views.LeaseTimers | None) -> None:
    assert views.reported_timers(raw) == expect


OWN_LIM = freshness.Limits(replica_down_ms=10_000, stale_polls=3, tick_ms=1000, poll_ms=1000)  # the api's own
FWD_CFG = SimpleNamespace(replica_down_s=30.0, quality_stale_polls=2, lease_tick_s=0.5, poll_ms=2000)  # the forwarder's
POLLED = {"holder": "A", "since_ms": str(NOW - 60_000), "expires_ms": str(NOW + 2000), "polled_ms": str(NOW - 4500)}


@pytest.mark.parametrize("raw, expect, nt", [
    # the forwarder's heartbeat: 2 polls of its default 2 s + 0.5 s, the lease of an RTU with no POLLMS polled
    # 4.5 s ago is topical to SCADA
    (heartbeat.payload("forwarder", "A", 1, 1.0, servers=[10], **freshness.Limits.of(FWD_CFG).report()),
     (freshness.Limits(30_000, 2, 500, 2000), "forwarder"), None),
    # no forwarder reports them (none, an older one, a garbled key): the api's own, 3 polls of 1 s + 1 s
    (None, (OWN_LIM, "api"), "holder A has not completed a poll for 4500 ms"),
    (heartbeat.payload("forwarder", "A", 1, 1.0, servers=[10]), (OWN_LIM, "api"), "holder A"),
    (json.dumps({"replica_down_ms": 30_000, "stale_polls": 0, "lease_tick_ms": 500, "poll_ms": 2000}),
     (OWN_LIM, "api"), "holder"),
    (json.dumps({"replica_down_ms": "x", "stale_polls": 5, "lease_tick_ms": 500, "poll_ms": 2000}),
     (OWN_LIM, "api"), "holder"),
    # a forwarder that reports no default poll period (an older version): the api's own limits, all of them
    (json.dumps({"replica_down_ms": 30_000, "stale_polls": 2, "lease_tick_ms": 500}), (OWN_LIM, "api"), "holder"),
    ("{not json", (OWN_LIM, "api"), "holder"),
])
def test_nt_by_the_limits_the_forwarder_reports(raw: str | None, expect: tuple[freshness.Limits, str],
                                                nt: str | None) -> None:
    lim, src = views.served_limits(raw, OWN_LIM)
    assert (lim, src) == expect
    why = freshness.rtu_reason(POLLED, NOW, None, lim)  # an RTU with no POLLMS: the default of the limits
    assert why == nt if nt is None else why is not None and why.startswith(nt), why


def test_lease_reach_only_of_a_live_current_lease() -> None:
    stale = {**LIVE, "reached_ms": "1", "answered_ms": "1"}
    assert views.lease(stale, NOW, "local Redis cut off", {}, T).reach is None  # not current
    assert views.lease({**stale, "expires_ms": str(NOW - 1)}, NOW, None, {}, T).reach is None  # lapsed
    assert views.lease({}, NOW, None, {}, T).reach is None  # no holder
    assert views.lease(stale, NOW).reach is None  # no timers given (metrics)


def test_point_reasons_only_where_the_flag_is() -> None:
    p = SemPoint(id=5, rtu=1, kind="AI", name="p", area="hr", address=0, datatype="int16")
    why = ("holder A has not completed a poll for 900 ms", "holder A has not reached the device for 2.0 s")
    good, nt, iv = (views.point(p, rec, NOW, why) for rec in ("1|0|5", "1|64|5", "1|128|5"))
    assert (good.nt_reason, good.iv_reason) == (None, None)
    assert (nt.nt_reason, nt.iv_reason) == (why[0], None)
    assert (iv.nt_reason, iv.iv_reason) == (None, why[1])
    assert views.point(p, "1|192|5").iv_reason is None  # no reason known: null, not a guess
