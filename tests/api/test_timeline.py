"""The operator view's endpoints against a real Redis with state written through the real Redis Functions
and the real writers: the timeline (/events: merge, order, paging, filters), the points' quality filter
and age, forwarding points with their sources' values, trends from the change stream, the overview."""

from __future__ import annotations

import redis.asyncio as aredis

from fep_loader.store import replace_config
from fepha import events, points, redisfns
from fepha import keyspace as ks
from tests.api.conftest import node_cfg, populate, sample_rows


async def test_timeline_merges_every_source_newest_first(loaded, ar: aredis.Redis, make_api, feproot) -> None:
    await populate(ar, ctl_count=2)
    await events.add(ar, "channel", "A", 1, from_ch=1, to_ch=2, error="connection refused")
    await events.add(ar, "role", "B", role="master", was="slave")
    await events.add(ar, "master", "A", 10, peer="127.0.0.9:40000", state="connected")
    c = await make_api(node_cfg(loaded))
    body = (await c.get("/api/v1/events", params={"limit": 1000})).json()
    kinds = [e["kind"] for e in body["items"]]
    # written by the loader (config), lease_tick (lease), link_set (link), ctl_finish (control), events.add
    assert set(kinds) == {"config", "lease", "link", "control", "channel", "role", "master"}, kinds
    ids = [e["id"] for e in body["items"]]
    keys = [tuple(int(x) for x in i.replace(".", "-").split("-")) for i in ids]
    assert keys == sorted(keys, reverse=True) and len(set(ids)) == len(ids)
    assert body["items"][0]["text"] == "RTU 10 on node A: master 127.0.0.9:40000 connected"
    texts = [e["text"] for e in body["items"]]
    assert "RTU 1: lease nobody → A (epoch 1, initial)" in texts
    assert "RTU 2: node A link down (first report)" in texts
    assert "RTU 1 on node A: channel 1 → 2 after: connection refused" in texts
    assert "node B: Redis slave → master" in texts
    assert "configuration generation 1 loaded from sample" in texts
    assert any(t.startswith("RTU 1: control ") and t.endswith(": failed (device refused) by A") for t in texts)
    # paging with next_before walks the same list without gaps or repeats
    seen, before = [], None
    while True:
        params = {"limit": 3, **({"before": before} if before else {})}
        page = (await c.get("/api/v1/events", params=params)).json()
        seen += [e["id"] for e in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == ids
    # filters
    leases = (await c.get("/api/v1/events", params={"kind": "lease"})).json()["items"]
    assert [(e["rtu"], e["node"], e["fields"]["reason"]) for e in leases] == [(2, "B", "initial"),
                                                                              (1, "A", "initial")]
    rtu2 = (await c.get("/api/v1/events", params={"rtu": 2})).json()["items"]
    assert rtu2 and all(e["rtu"] == 2 for e in rtu2)
    assert {e["kind"] for e in rtu2} == {"lease", "link"}
    assert (await c.get("/api/v1/events", params={"kind": "nope"})).status_code == 422
    assert (await c.get("/api/v1/events", params={"before": "1-2.7"})).status_code == 422
    assert (await c.get("/api/v1/events", params={"before": "0-0"})).json()["items"] == []
    # a second configuration load is on the timeline too
    replace_config(loaded.client(), sample_rows(feproot), source="again")
    top = (await c.get("/api/v1/events", params={"kind": "config", "limit": 1})).json()
    assert top["items"][0]["fields"]["gen"] == "2" and top["next_before"] is not None


async def test_a_lease_granted_anew_after_an_unreadable_record_says_which_fields(loaded, ar: aredis.Redis,
                                                                                 make_api) -> None:
    await ar.fcall(*redisfns.lease_tick(1, "A", True, 10_000, 90_000).argv)
    await ar.hset(ks.lease(1), "reached_ms", "soon")
    holder, epoch, _ = await ar.fcall(*redisfns.lease_tick(1, "B", True, 10_000, 90_000).argv)
    c = await make_api(node_cfg(loaded))
    leases = (await c.get("/api/v1/events", params={"kind": "lease"})).json()["items"]
    assert (holder, epoch) == ("B", 2)
    assert leases[0]["text"] == "RTU 1: lease A → B (epoch 2, unreadable: reached_ms = 'soon')"


async def test_link_set_records_changes_only(loaded, ar: aredis.Redis) -> None:
    for up in (True, True, False, False, True):
        await ar.fcall(*redisfns.link_set(1, "A", up, [901]).argv)
    got = [(f["node"], f["rtu"], f["up"], f["was"]) for _, f in await ar.xrange(ks.EVENTS)
           if f["kind"] == "link"]
    assert got == [("A", "1", "1", ""), ("A", "1", "0", "1"), ("A", "1", "1", "0")]


async def test_points_quality_filter_and_age(loaded, ar: aredis.Redis, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    page = (await c.get("/api/v1/points", params={"rtu": 1, "quality": "IV"})).json()
    assert [p["id"] for p in page["items"]] == [102] and page["total"] == 1
    p = page["items"][0]
    assert p["stale"] and not p["valid"] and p["age_ms"] == page["time_ms"] - 1_700_000_000_000
    one = (await c.get("/api/v1/points/102")).json()  # one point: aged by its own page's clock (was null)
    assert one["age_ms"] is not None and one["age_ms"] >= p["age_ms"], one
    good = (await c.get("/api/v1/points", params={"rtu": 1, "quality": "good"})).json()["items"]
    assert {x["id"] for x in good} == {101, 105} and all(not x["stale"] for x in good)
    bad = (await c.get("/api/v1/points", params={"rtu": 1, "quality": "bad"})).json()
    assert 102 in {x["id"] for x in bad["items"]} and 103 in {x["id"] for x in bad["items"]}
    assert bad["total"] + len(good) == (await c.get("/api/v1/points", params={"rtu": 1})).json()["total"]
    assert (await c.get("/api/v1/points", params={"quality": "XX"})).status_code == 422


async def test_forwards_show_the_source_value(loaded, ar: aredis.Redis, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    rtus = (await c.get("/api/v1/rtus")).json()["items"]
    fwd = [r["id"] for r in rtus if r["type"] == "forwarding"]
    acq = [r["id"] for r in rtus if r["type"] == "acquisition"]
    body = (await c.get(f"/api/v1/rtus/{fwd[0]}/forwards")).json()
    by_src = {f["src"]: f for f in body["items"]}
    assert by_src[101]["value"] == 20.5 and by_src[101]["valid"] and by_src[101]["src_name"]
    if 102 in by_src:
        assert not by_src[102]["valid"] and "IV" in by_src[102]["quality_flags"]
    assert (await c.get(f"/api/v1/rtus/{acq[0]}/forwards")).status_code == 409
    assert (await c.get("/api/v1/rtus/999/forwards")).status_code == 404


async def test_trend_from_the_change_stream(loaded, ar: aredis.Redis, make_api) -> None:
    await populate(ar)
    t = int((await ar.time())[0]) * 1000
    for i in range(5):
        await ar.fcall(*redisfns.write_values(1, "A", 1, ["101", points.encode(10.0 + i, 0, t + i)]).argv)
    c = await make_api(node_cfg(loaded))
    body = (await c.get("/api/v1/trends", params={"rtu": 1, "seconds": 60})).json()
    s101 = next(s for s in body["series"] if s["id"] == 101)
    # populate's 20.5 carries a source time of 2023: outside the window, not drawn
    assert [x["value"] for x in s101["samples"]] == [10.0, 11.0, 12.0, 13.0, 14.0, 14.0]
    assert s101["samples"][-1]["ts_ms"] == body["time_ms"] and not body["truncated"]
    assert body["scanned"] >= 5
    assert (await c.get("/api/v1/trends", params={"rtu": 999})).status_code == 404


async def test_overview(loaded, ar: aredis.Redis, make_api) -> None:
    await populate(ar)
    await events.add(ar, "role", "A", role="master", was="slave")
    c = await make_api(node_cfg(loaded))
    o = (await c.get("/api/v1/overview")).json()
    assert o["master_node"] == "A" and o["replication"]["role"] == "master"
    assert [(n["node"], n["this"], n["master"], n["acquirer"]["alive"]) for n in o["nodes"]] == \
        [("A", True, True, True), ("B", False, None, False)]  # no replica connected: B's role unknown
    assert o["last_failover"]["text"] == "node A: Redis slave → master"
    assert o["cfg"]["gen"] == 1
