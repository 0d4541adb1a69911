"""A master left behind (docs/api.md "Under faults"): the local Redis is a master without an online replica
while the VIP leads to another Redis. Real Redis servers; the VIP is the other server's address."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from fepha import heartbeat
from tests.api.conftest import node_cfg, populate
from tests.redisproc import RedisProc


async def test_a_master_the_vip_does_not_lead_to_is_not_current(loaded: RedisProc, ar: Any, make_api: Any) -> None:
    """The local Redis (with state and fresh heartbeats of node A) is a master, and the VIP leads to
    another master: the api names the peer master and shows this copy's leases, links and values as not
    current. With the VIP on the local Redis, the same state is current."""
    await populate(ar)
    with RedisProc() as other:
        api = await make_api(node_cfg(loaded, other))
        o = (await api.get("/api/v1/overview")).json()
        assert (o["master_node"], [n["master"] for n in o["nodes"]]) == ("B", [False, True]), o
        assert "left behind as a master" in o["master_detail"], o
        lease = (await api.get("/api/v1/rtus/1")).json()["lease"]
        assert lease["lapsed"] is None and "left behind" in lease["not_current"], lease
        p = (await api.get("/api/v1/points/101")).json()
        assert "NT" in p["quality_flags"], p
        r = await api.get("/ready")
        assert r.status_code == 503 and any("left behind" in x for x in r.json()["reasons"]), r.text
    same = await make_api(node_cfg(loaded))
    o = (await same.get("/api/v1/overview")).json()
    assert o["master_node"] == "A" and o["master_detail"].startswith("no replica"), o
    assert (await same.get("/api/v1/rtus/1")).json()["lease"]["not_current"] is None


async def test_a_vip_that_does_not_answer_does_not_hold_the_pages(loaded: RedisProc, ar: Any, make_api: Any) -> None:
    """The VIP accepts connections and never answers (nobody serves it): each page waits for it at most
    Store.SPLIT_WAIT_S, not the client's timeouts, and shows the local state as it is."""
    await heartbeat.beat(ar, "acquirer", "A", 5.0, 1)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        api = await make_api(node_cfg(loaded, vip="127.0.0.1", port=port, socket_timeout_s=3.0))
        for _ in range(3):
            t0 = time.monotonic()
            r = await api.get("/api/v1/overview")
            took = time.monotonic() - t0
            assert r.status_code == 200 and took < 1.5, (r.status_code, took)
            o = r.json()
            assert o["master_node"] == "A" and "left behind" not in (o["master_detail"] or ""), o
    finally:
        server.close()


async def test_a_vip_left_on_this_host_without_keepalived_is_not_current(loaded: RedisProc, ar: Any, make_api: Any,
                                                                         tmp_path: Path) -> None:
    """The VIP leads to the local Redis (it is configured on this host) but keepalived's sign of life here
    is older than vrrp_alive_max_age_s (keepalived and start.sh killed, docs/ha.md): not current, master
    unknown, with the reason. A fresh sign (a live keepalived: a real master, or a split brain) or none at
    all (no keepalived on this host) leaves the same state current."""
    await populate(ar)
    alive = tmp_path / "vrrp.alive"
    alive.write_text("A MASTER\n")
    cfg = node_cfg(loaded, quality_vrrp_alive_file=str(alive), quality_vrrp_alive_max_age_s=2.0)
    fresh = await make_api(cfg)
    o = (await fresh.get("/api/v1/overview")).json()
    assert o["master_node"] == "A" and "left behind" not in o["master_detail"], o
    assert (await fresh.get("/ready")).status_code == 200
    os.utime(alive, (time.time() - 10, time.time() - 10))
    # the sign's age is read at every request, not only by the next VIP probe (at most once a second)
    assert (await fresh.get("/ready")).status_code == 503
    api = await make_api(cfg)
    o = (await api.get("/api/v1/overview")).json()
    assert o["master_node"] is None and [n["master"] for n in o["nodes"]] == [None, None], o
    assert "holding the VIP" in o["master_detail"] and "no sign of life from keepalived" in o["master_detail"], o
    lease = (await api.get("/api/v1/rtus/1")).json()["lease"]
    assert lease["lapsed"] is None and "holding the VIP" in lease["not_current"], lease
    p = (await api.get("/api/v1/points/101")).json()
    assert "NT" in p["quality_flags"], p
    r = await api.get("/ready")
    assert r.status_code == 503 and any("holding the VIP" in x for x in r.json()["reasons"]), r.text
    alive.unlink()
    none = await make_api(cfg)
    assert (await none.get("/ready")).status_code == 200


async def test_forwards_of_a_master_left_behind_show_every_source_nt(loaded: RedisProc, ar: Any,
                                                                      make_api: Any) -> None:
    """/rtus/{id}/forwards shows what masters are served: the forwarder serves every source NT on a master
    left behind, virtual points (link states) too; the api showed a virtual point's value as good."""
    await populate(ar)
    with RedisProc() as other:
        api = await make_api(node_cfg(loaded, other))
        items = (await api.get("/api/v1/rtus/10/forwards")).json()["items"]
        vps = [f for f in items if f["src"] in (901, 902)]
        assert vps and all(f["quality"] is not None for f in vps), items
        assert all("NT" in f["quality_flags"] for f in items if f["quality"] is not None), \
            [(f["src"], f["quality"], f["quality_flags"], f["value"]) for f in items]
    same = await make_api(node_cfg(loaded))
    items = (await same.get("/api/v1/rtus/10/forwards")).json()["items"]
    assert all("NT" not in f["quality_flags"] for f in items if f["src"] in (901, 902)), items
