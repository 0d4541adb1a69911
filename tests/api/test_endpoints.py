"""Every endpoint against a real Redis holding the sample configuration and runtime state written through
the real Redis Functions: contents, paging, unknown ids, the token rules, the handover, a replica's view,
and a Redis outage (503, never 500)."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis.asyncio as aredis
from prometheus_client.parser import text_string_to_metric_families

from fep_loader.store import replace_config
from fepha import controls, heartbeat, redisfns
from fepha import keyspace as ks
from tests.api.conftest import TOKEN, node_cfg, populate, sample_rows
from tests.redisproc import RedisProc

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_health_is_answered_without_redis(make_api) -> None:
    c = await make_api(node_cfg(RedisProc(port=1)))  # nothing listens on port 1
    r = await c.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["node"] == "A"


async def test_ready_when_config_and_heartbeats(loaded, ar, make_api) -> None:
    c = await make_api(node_cfg(loaded))
    r = await c.get("/ready")
    assert r.status_code == 503
    body = r.json()
    assert not body["ready"]
    assert body["reasons"] == ["no heartbeat of acquirer on node A", "no heartbeat of forwarder on node A"]
    await populate(ar)
    r = await c.get("/ready")
    assert r.status_code == 200 and r.json()["ready"] and r.json()["reasons"] == []
    # node B's api is not ready: its services have no heartbeat
    cb = await make_api(node_cfg(loaded, node_id="B"))
    r = await cb.get("/ready")
    assert r.status_code == 503 and "no heartbeat of acquirer on node B" in r.json()["reasons"]


async def test_ready_without_configuration(redis_master, make_api) -> None:
    c = await make_api(node_cfg(redis_master))
    r = await c.get("/ready")
    assert r.status_code == 503
    assert r.json()["reasons"][0] == "no configuration loaded: run `sysload init` on the master's node"
    r = await c.get("/api/v1/rtus")
    assert r.status_code == 503 and "sysload init" in r.json()["detail"]


async def test_node(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    body = (await c.get("/api/v1/node")).json()
    assert (body["node"], body["peer"]) == ("A", "B")
    assert body["redis"]["role"] == "master" and body["redis"]["master"] is None
    assert body["redis"]["address"] == f"127.0.0.1:{loaded.port}"
    assert body["cfg"]["gen"] == 1 and body["cfg"]["source"] == "sample" and len(body["cfg"]["sha256"]) == 64
    hbs = {(h["service"], h["node"]): h for h in body["heartbeats"]}
    assert set(hbs) == {(s, n) for s in ("acquirer", "forwarder") for n in "AB"}
    assert hbs[("acquirer", "A")]["alive"] and hbs[("acquirer", "A")]["gen"] == 1
    assert not hbs[("forwarder", "B")]["alive"]


async def test_node_on_the_replica(redis_pair, make_api) -> None:
    master, replica = redis_pair
    c = await make_api(node_cfg(replica, master, node_id="B"))
    body = (await c.get("/api/v1/node")).json()
    assert body["node"] == "B" and body["redis"]["role"] == "slave"
    assert body["redis"]["master"] == f"127.0.0.1:{master.port}" and body["redis"]["link_status"] == "up"


async def test_rtus_show_leases_channels_links_and_masters(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    body = (await c.get("/api/v1/rtus")).json()
    assert body["gen"] == 1
    rtus = {r["id"]: r for r in body["items"]}
    assert sorted(rtus) == [1, 2, 3, 10, 11, 12]
    assert (rtus[3]["type"], rtus[3]["protocol"], rtus[3]["points"]) == ("acquisition", "iec104", 7)
    r1, r2 = rtus[1], rtus[2]
    assert (r1["type"], r1["protocol"], r1["points"]) == ("acquisition", "modbus_tcp", 10)
    assert r1["lease"]["holder"] == "A" and r1["lease"]["epoch"] == 1 and not r1["lease"]["lapsed"]
    assert 50_000 < r1["lease"]["remaining_ms"] <= 60_000
    assert r2["lease"]["holder"] == "B"
    ch = {s["node"]: s for s in r1["channel_state"]}
    assert ch["A"]["reported"] and ch["A"]["active"] == 1
    assert [(x["no"], x["connected"], x["error"]) for x in ch["A"]["channels"]] == \
        [(1, True, None), (2, False, "connection refused")]
    assert not ch["B"]["reported"]
    assert (r1["link"]["vala"], r1["link"]["valb"], r1["link"]["val"]) == (True, True, True)
    assert (r2["link"]["vala"], r2["link"]["valb"], r2["link"]["val"]) == (False, True, True)
    assert r1["clients"] is None and rtus[10]["lease"] is None
    assert rtus[10]["type"] == "forwarding" and rtus[10]["listen_port"] == 2404
    assert [(x["node"], x["peer"], x["state"]["started"]) for x in rtus[10]["clients"]] == \
        [("A", "127.0.0.9:40000", True)]
    assert [(x["node"], x["peer"]) for x in rtus[11]["clients"]] == [("B", "127.0.0.8:50000")]
    assert rtus[12]["clients"] == []
    assert r1["values_nt"] is None and r2["values_nt"] is None and rtus[10]["values_nt"] is None
    assert rtus[3]["values_nt"] == "no lease holder"  # as /points shows its values (NT)
    one = (await c.get("/api/v1/rtus/2")).json()
    now = {k: one["lease"][k] for k in ("remaining_ms", "reach_detail")}  # both say how long ago: time moved
    assert one == {**rtus[2], "lease": {**rtus[2]["lease"], **now}}
    assert one["lease"]["reach_detail"].startswith("holder B has not reached the device for ")


async def test_unknown_ids_are_404(loaded, ar, make_api) -> None:
    c = await make_api(node_cfg(loaded))
    for path, text in [("/api/v1/rtus/99", "RTU 99 is not in the configuration (generation 1)"),
                       ("/api/v1/rtus/-1", "RTU -1 is not in the configuration"),
                       ("/api/v1/points/99999", "point 99999 is not in the configuration (generation 1)"),
                       ("/api/v1/points/901", "point 901 is a virtual point: see /api/v1/virtual-points"),
                       ("/api/v1/points?rtu=77", "RTU 77 is not in the configuration")]:
        r = await c.get(path)
        assert r.status_code == 404, path
        assert text in r.json()["detail"]
    r = await c.post("/api/v1/rtus/99/handover", headers=AUTH)
    assert r.status_code == 404 and "RTU 99" in r.json()["detail"]
    for path in ["/api/v1/rtus/x", "/api/v1/points?kind=XX", "/api/v1/points?limit=0",
                 "/api/v1/points?offset=-1", "/api/v1/controls?limit=5000", "/api/v1/controls?before=abc"]:
        assert (await c.get(path)).status_code == 422, path


async def test_leases_and_virtual_points(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    leases = (await c.get("/api/v1/leases")).json()["items"]
    assert [(x["rtu"], x["name"], x["holder"], x["epoch"]) for x in leases] == \
        [(1, "Substation North", "A", 1), (2, "Pump Station 7", "B", 1), (3, "Substation South", None, 0)]
    vps = (await c.get("/api/v1/virtual-points")).json()["items"]
    assert [(v["id"], v["rtu"], v["vala"], v["valb"], v["val"], v["value"]) for v in vps] == \
        [(901, 1, True, True, True, 1), (902, 2, False, True, True, 1), (903, 3, None, None, None, None)]
    assert all(v["since_ms"] and v["valid"] for v in vps[:2])  # 903: no node has reported RTU 3's link


async def test_points_values_filters_and_paging(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    everything = (await c.get("/api/v1/points", params={"limit": 1000})).json()
    assert everything["total"] == 24 and [p["id"] for p in everything["items"]] == sorted(
        p["id"] for p in everything["items"])
    pages, offset = [], 0
    while True:
        page = (await c.get("/api/v1/points", params={"limit": 5, "offset": offset})).json()
        if not page["items"]:
            break
        pages += page["items"]
        offset += 5
    def timeless(items: list[dict]) -> list[dict]:  # age_ms and the reasons' "for 0.4 s" follow each page's clock
        return [{k: re.sub(r"\d+\.\d s\b", "_ s", v) if k.endswith("_reason") and v else v
                 for k, v in p.items() if k != "age_ms"} for p in items]
    assert timeless(pages) == timeless(everything["items"])
    ai1 = (await c.get("/api/v1/points", params={"rtu": 1, "kind": "AI"})).json()
    assert [p["id"] for p in ai1["items"]] == [101, 102, 103, 104] and ai1["total"] == 4
    p101, p102, p103, p104 = ai1["items"]
    assert (p101["value"], p101["quality"], p101["valid"], p101["ts_ms"]) == \
        (20.5, 0, True, 1_700_000_000_000)
    assert p101["time"] == "2023-11-14T22:13:20.000+00:00"
    assert p102["quality_flags"] == ["NT", "IV"] and not p102["valid"]
    assert p103["value"] is None and p103["error"] == "malformed value record 'garbage'"
    assert p104["value"] is None and p104["error"] is None and not p104["valid"]
    assert (await c.get("/api/v1/points/201")).json()["value"] == 3.25
    assert (await c.get("/api/v1/points", params={"rtu": 10})).json()["total"] == 0


async def test_controls_newest_first_paged(loaded, ar, make_api) -> None:
    pop = await populate(ar, ctl_count=7)
    c = await make_api(node_cfg(loaded))
    seen, before = [], None
    while True:
        params = {"limit": 3, **({"before": before} if before else {})}
        page = (await c.get("/api/v1/controls", params=params)).json()
        assert page["total"] == 7
        seen += page["items"]
        before = page["next_before"]
        if before is None:
            break
    assert [x["id"] for x in seen] == list(reversed(pop.ctl_ids))
    failed = [x for x in seen if x["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["result"] == "device refused" and failed[0]["executor"] == "A"
    assert seen[0]["rtu"] == 1 and seen[0]["point"] == 109 and seen[0]["origin"] == "test:6"
    assert (await c.get("/api/v1/controls", params={"before": "0-0"})).json()["items"] == []
    assert (await c.get("/api/v1/controls", params={"before": "1"})).json()["items"] == []
    # a control the loser of a split brain ran, copied here before its demotion (fepha.splitaudit)
    copied = {**(await ar.xrevrange(ks.CTL_AUDIT, count=1))[0][1], "from_split": "B", "split_id": "5-0"}
    await ar.xadd(ks.CTL_AUDIT, copied)
    top = (await c.get("/api/v1/controls", params={"limit": 1})).json()["items"][0]
    assert (top["id"], top["from_split"], top["split_id"]) == (pop.ctl_ids[-1], "B", "5-0")
    ev = (await c.get("/api/v1/events", params={"kind": "control", "limit": 1})).json()["items"][0]
    assert ev["text"].endswith("(run on node B during a split brain)") and ev["fields"]["from_split"] == "B"


async def test_one_control_by_id_as_it_stands_now(loaded, ar, make_api) -> None:
    """/controls/{id} reads the control's hash: finished ones with their result, a queued one (not in the
    audit yet) as queued; an id never given and one whose record expired are 404s that say which."""
    pop = await populate(ar, ctl_count=2)
    queued = await controls.submit(ar, 1, 109, 1.0, "test:queued", 10_000)
    c = await make_api(node_cfg(loaded))
    done, failed = [(await c.get(f"/api/v1/controls/{i}")).json() for i in pop.ctl_ids]
    assert (done["id"], done["state"], done["result"], done["executor"]) == (pop.ctl_ids[0], "done", "ok", "A")
    assert (failed["state"], failed["result"]) == ("failed", "device refused")
    q = (await c.get(f"/api/v1/controls/{queued}")).json()
    assert (q["state"], q["result"], q["origin"], q["finished_ms"]) == ("queued", None, "test:queued", None)
    for unknown in (queued + 1, 0, -1, 10**30):
        r = await c.get(f"/api/v1/controls/{unknown}")
        assert r.status_code == 404 and r.json()["detail"] == \
            f"control {unknown} does not exist: ids run from 1 to {queued}, the last one given", r.text
    await ar.delete(ks.control(pop.ctl_ids[0]))  # as its expiry a day later
    r = await c.get(f"/api/v1/controls/{pop.ctl_ids[0]}")
    assert r.status_code == 404 and "is no longer kept" in r.json()["detail"], r.text
    assert (await c.get("/api/v1/controls/abc")).status_code == 422


async def test_metrics(loaded, ar, make_api) -> None:
    await populate(ar)
    await controls.submit(ar, 2, 206, 1.0, "waiting", 10_000)  # queued, nobody executes it
    c = await make_api(node_cfg(loaded))
    r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(r.text) for s in fam.samples}
    assert samples[("fep_acquirer_changes_written_total", (("node", "A"),))] == 42
    assert samples[("fep_acquirer_write_errors_total", (("node", "A"),))] == 1
    assert samples[("fep_forwarder_stream_lag_ms", (("node", "A"),))] == 5
    assert samples[("fep_forwarder_control_latency_ms_count", (("node", "A"),))] == 2
    assert samples[("fep_forwarder_control_latency_ms_sum", (("node", "A"),))] == 30
    assert samples[("fep_lease_changes_total", ())] == 2  # RTU 1 to A, RTU 2 to B
    assert samples[("fep_controls_finished_total", ())] == 3
    assert samples[("fep_changes_entries_total", ())] >= 4
    assert 0 <= samples[("fep_changes_last_age_seconds", ())] < 60
    assert samples[("fep_lease_holder", (("node", "A"), ("rtu", "1")))] == 1
    assert samples[("fep_lease_holder", (("node", "B"), ("rtu", "1")))] == 0
    assert samples[("fep_link_up", (("node", "A"), ("rtu", "2")))] == 0
    assert samples[("fep_channel_connected", (("channel", "2"), ("node", "A"), ("rtu", "1")))] == 0
    assert samples[("fep_control_queue_depth", (("rtu", "1"),))] == 0
    assert samples[("fep_control_queue_depth", (("rtu", "2"),))] == 1
    assert samples[("fep_forwarder_connected_masters", (("node", "A"), ("rtu", "10")))] == 1
    assert samples[("fep_service_up", (("node", "A"), ("service", "acquirer")))] == 1
    assert samples[("fep_service_up", (("node", "B"), ("service", "acquirer")))] == 0
    assert samples[("fep_cfg_generation", ())] == 1
    # a second app's scrape is independent (no global registry)
    c2 = await make_api(node_cfg(loaded))
    assert (await c2.get("/metrics")).text.count("fep_cfg_generation 1.0") == 1


async def test_metrics_tls_ends_from_the_forwarders_heartbeats(loaded, ar, make_api) -> None:
    """`fep_tls_expiry_timestamp_seconds{node,file,cn}` from each forwarder's heartbeat (`tls_expiry`): the
    earliest per file and CN; entries that are not one (another writer's, garbled) give no sample and no 500.
    Before, the certificates' and CRLs' ends were said in the forwarder's log only."""
    ends = [{"file": "cert", "cn": "fep-server", "ms": 4_102_444_800_000},
            {"file": "ca", "cn": "fep-ca", "ms": 1_800_000_000_000},
            {"file": "ca", "cn": "fep-ca", "ms": 1_700_000_000_500},       # two CAs of one name: the earliest
            {"file": "crl", "cn": "fep-ca", "ms": 1e400}, {"file": 3, "cn": "x", "ms": 1}, "junk", {"cn": "y"}]
    await heartbeat.beat(ar, "forwarder", "A", 5.0, 1, tls_expiry=ends)
    await heartbeat.beat(ar, "forwarder", "B", 5.0, 1, tls_expiry="garbled")
    c = await make_api(node_cfg(loaded))
    r = await c.get("/metrics")
    assert r.status_code == 200, r.text
    got = {tuple(sorted(s.labels.items())): s.value for fam in text_string_to_metric_families(r.text)
           for s in fam.samples if s.name == "fep_tls_expiry_timestamp_seconds"}
    assert got == {(("cn", "fep-server"), ("file", "cert"), ("node", "A")): 4_102_444_800.0,
                   (("cn", "fep-ca"), ("file", "ca"), ("node", "A")): 1_700_000_000.5}, got


async def test_metrics_replication_link_and_whether_the_local_copy_is_current(redis_pair, make_api) -> None:
    """`fep_redis_replication_link_up` and `_lag_bytes` (as /api/v1/node shows the link) and
    `fep_redis_current` on each node: both up and current; the master gone, the replica's link down and its
    copy not current. Before, /metrics said only each Redis's role: a lost standby copy (replication broken
    while every service beats) or a node serving from a copy cut off had no series to alarm on."""
    master, replica = redis_pair

    async def scrape(c) -> dict[str, float]:
        r = await c.get("/metrics")
        assert r.status_code == 200, r.text
        return {s.name: s.value for fam in text_string_to_metric_families(r.text) for s in fam.samples
                if s.name.startswith(("fep_redis_replication", "fep_redis_current"))}

    on_a = await make_api(node_cfg(master))
    on_b = await make_api(node_cfg(replica, master, node_id="B"))
    got = await scrape(on_a)
    assert got["fep_redis_replication_link_up"] == 1 and got["fep_redis_current"] == 1, got
    assert 0 <= got["fep_redis_replication_lag_bytes"] < 10_000, got
    assert await scrape(on_b) == {"fep_redis_replication_link_up": 1, "fep_redis_current": 1}
    master.stop()
    want, end = {"fep_redis_replication_link_up": 0, "fep_redis_current": 0}, asyncio.get_running_loop().time() + 5
    while (got := await scrape(on_b)) != want:  # the replica sees its link down within a moment
        assert asyncio.get_running_loop().time() < end, got
        await asyncio.sleep(0.05)


async def test_metrics_without_configuration_or_streams(redis_master, make_api) -> None:
    c = await make_api(node_cfg(redis_master))
    r = await c.get("/metrics")
    assert r.status_code == 200
    assert "fep_cfg_generation 0.0" in r.text and "fep_lease_changes_total 0.0" in r.text


async def test_token_rules(loaded, ar, make_api) -> None:
    await populate(ar)
    url = "/api/v1/rtus/1/handover"
    c = await make_api(node_cfg(loaded))
    r = await c.post(url)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in r.json()["detail"]
    assert (await c.post(url, headers={"Authorization": "Bearer nope"})).status_code == 403
    assert (await c.post(url, headers={"Authorization": "Basic " + TOKEN})).status_code == 401
    assert (await c.get("/api/v1/rtus")).status_code == 200  # reads open by default
    # no token configured: actions disabled, whatever is sent
    off = await make_api(node_cfg(loaded, api_token=""))
    for headers in ({}, AUTH, {"Authorization": "Bearer "}):
        r = await off.post(url, headers=headers)
        assert r.status_code == 403 and "disabled" in r.json()["detail"]
    # reads closed: every read needs the token, probes and the dashboard do not
    closed = await make_api(node_cfg(loaded, api_open_reads=False))
    for path in ["/api/v1/node", "/api/v1/rtus", "/api/v1/rtus/1", "/api/v1/leases", "/api/v1/virtual-points",
                 "/api/v1/points", "/api/v1/points/101", "/api/v1/controls", "/metrics"]:
        assert (await closed.get(path)).status_code == 401, path
        assert (await closed.get(path, headers={"Authorization": "Bearer x"})).status_code == 403, path
        assert (await closed.get(path, headers=AUTH)).status_code == 200, path
    for path in ["/health", "/ready", "/", "/static/app.js", "/openapi.json"]:
        assert (await closed.get(path)).status_code == 200, path
    nobody = await make_api(node_cfg(loaded, api_open_reads=False, api_token=""))
    r = await nobody.get("/api/v1/rtus", headers=AUTH)
    assert r.status_code == 403 and "reads are disabled" in r.json()["detail"]


async def test_handover(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded, lease_ttl_s=5.0))
    url = "/api/v1/rtus/1/handover"
    r = await c.post(url, headers=AUTH)
    assert r.status_code == 202
    body = r.json()
    assert (body["status"], body["holder"], body["target"], body["epoch"]) == ("pending", "A", "B", 1)
    lease = (await c.get("/api/v1/rtus/1")).json()["lease"]
    assert lease["handover"] == "B" and lease["handover_until_ms"] == pytest.approx(body["until_ms"], abs=50)
    # B reaches the device: it takes the lease at its next tick, with a new epoch
    res = await ar.fcall(*redisfns.lease_tick(1, "B", True, 60_000, 90_000).argv)
    assert res[0] == "B" and res[1] == 2
    lease = (await c.get("/api/v1/rtus/1")).json()["lease"]
    assert (lease["holder"], lease["epoch"], lease["handover"]) == ("B", 2, None)
    r = await c.post(url, headers=AUTH, json={"target": "B"})
    assert r.status_code == 200 and r.json()["status"] == "already"
    r = await c.post("/api/v1/rtus/10/handover", headers=AUTH)
    assert r.status_code == 409 and "forwarding RTU" in r.json()["detail"]
    await ar.delete(ks.lease(2))
    r = await c.post("/api/v1/rtus/2/handover", headers=AUTH, json={"target": "A"})
    assert r.status_code == 409 and "no lease holder" in r.json()["detail"]
    r = await c.post("/api/v1/rtus/2/handover", headers=AUTH)
    assert r.status_code == 409 and "no lease holder" in r.json()["detail"]
    for bad in ({"target": "C"}, {"window_s": 0}, {"window_s": 601}, {"wait": "maybe"}):
        assert (await c.post(url, headers=AUTH, json=bad)).status_code == 422, bad


async def test_handover_wait(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    stop = asyncio.Event()

    async def node_b_ticks(reaches: bool) -> None:
        while not stop.is_set():
            await ar.fcall(*redisfns.lease_tick(1, "B", reaches, 60_000, 90_000).argv)
            await asyncio.sleep(0.05)

    # B does not reach the device: the window passes, A keeps the lease
    ticker = asyncio.create_task(node_b_ticks(False))
    r = await c.post("/api/v1/rtus/1/handover", headers=AUTH, json={"wait": True, "window_s": 0.5})
    stop.set()
    await ticker
    assert r.status_code == 409 and "did not take the lease" in r.json()["detail"]
    assert (await c.get("/api/v1/rtus/1")).json()["lease"]["holder"] == "A"
    # B reaches it: moved
    stop.clear()
    ticker = asyncio.create_task(node_b_ticks(True))
    r = await c.post("/api/v1/rtus/1/handover", headers=AUTH, json={"wait": True, "window_s": 5})
    stop.set()
    await ticker
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["holder"], r.json()["epoch"]) == ("moved", "B", 2)


async def test_handover_goes_to_the_master_from_the_replica_node(redis_pair, feproot, make_api) -> None:
    master, replica = redis_pair
    replace_config(master.client(), sample_rows(feproot))
    m = aredis.Redis(host=master.host, port=master.port, decode_responses=True)
    try:
        await m.fcall(*redisfns.lease_tick(1, "A", True, 60_000, 90_000).argv)
        assert await m.execute_command("WAIT", 1, 2000) == 1  # the replica has the lease
        c = await make_api(node_cfg(replica, master, node_id="B"))
        assert (await c.get("/api/v1/leases")).json()["items"][0]["holder"] == "A"
        r = await c.post("/api/v1/rtus/1/handover", headers=AUTH)
        assert r.status_code == 202 and r.json()["target"] == "B"
        assert await m.hget(ks.lease(1), "handover") == "B"
    finally:
        await m.aclose()


async def test_redis_outage_is_503_never_500(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    assert (await c.get("/api/v1/rtus")).status_code == 200  # the model is cached now
    loaded.stop()
    for path in ["/api/v1/node", "/api/v1/rtus", "/api/v1/rtus/1", "/api/v1/leases", "/api/v1/virtual-points",
                 "/api/v1/points", "/api/v1/points/101", "/api/v1/controls", "/metrics"]:
        r = await c.get(path)
        assert r.status_code == 503, path
        assert r.json()["detail"].startswith("Redis unreachable"), path
    r = await c.post("/api/v1/rtus/1/handover", headers=AUTH)
    assert r.status_code == 503
    r = await c.get("/ready")
    assert r.status_code == 503 and r.json()["reasons"][0].startswith("local Redis unreachable")
    assert (await c.get("/health")).status_code == 200
    loaded.start()  # back on the same port, empty: the api answers again without a restart
    r = await c.get("/api/v1/rtus")
    assert r.status_code == 503 and "sysload init" in r.json()["detail"]
