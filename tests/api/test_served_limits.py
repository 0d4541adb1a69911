"""The api shows NT by the freshness limits this node's forwarder serves SCADA by (its heartbeat reports
them), not by its own configuration, which may differ; by its own only while no forwarder reports any."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

from fep_loader.store import replace_config
from fepha import freshness, heartbeat
from fepha import keyspace as ks
from tests.api.conftest import node_cfg, populate, sample_rows
from tests.redisproc import RedisProc


async def _silent(replica: RedisProc, timeout: float = 5.0) -> None:
    """Until the replica has heard nothing from its master for a second (an idle master pings its replicas
    every 10 s): the replica's data is cut off for 1000 ms by Redis's own count."""
    deadline = time.monotonic() + timeout
    c = replica.client()
    while int(c.info("replication").get("master_last_io_seconds_ago", 0)) < 1:
        assert time.monotonic() < deadline, "the master kept talking to its replica"
        await asyncio.sleep(0.05)


async def test_nt_by_the_limits_the_forwarder_reports(redis_pair: tuple[RedisProc, RedisProc], feproot: Path,
                                                      make_api: Any) -> None:
    master, replica = redis_pair
    replace_config(master.client(), sample_rows(feproot), source="sample")
    async with aredis.Redis(host=master.host, port=master.port, decode_responses=True) as r:
        await populate(r)  # RTU 1 held by A: its values topical by any limits but rule 1's
        fwd_cfg = node_cfg(replica, master, quality_replica_down_s=30.0)  # node A's forwarder: 30 s
        await r.set(ks.heartbeat("forwarder", "A"),
                    heartbeat.payload("forwarder", "A", 1, 5.0, **freshness.Limits.of(fwd_cfg).report()),
                    px=heartbeat.lifetime_ms(5.0))
    replica.caught_up(master)
    # both apis read the same replica, with replica_down_s 0.5 s: node A's forwarder reports 30 s, node B's
    # none (no heartbeat of it)
    api_a = await make_api(node_cfg(replica, master, quality_replica_down_s=0.5))
    api_b = await make_api(node_cfg(replica, master, node_id="B", quality_replica_down_s=0.5))
    await _silent(replica)

    rtu_a = (await api_a.get("/api/v1/rtus/1")).json()
    rtu_b = (await api_b.get("/api/v1/rtus/1")).json()
    assert (rtu_a["values_nt"], rtu_a["limits_from"]) == (None, "forwarder"), rtu_a
    assert rtu_b["values_nt"].startswith("local Redis cut off from the master for "), rtu_b
    assert rtu_b["limits_from"] == "api"

    page_a = (await api_a.get("/api/v1/points", params={"rtu": 1})).json()
    page_b = (await api_b.get("/api/v1/points", params={"rtu": 1})).json()
    p101_a, p101_b = ({p["id"]: p for p in pg["items"]}[101] for pg in (page_a, page_b))
    assert (p101_a["stale"], page_a["limits_from"]) == (False, "forwarder"), p101_a
    assert (p101_b["stale"], p101_b["nt_reason"]) == (True, rtu_b["values_nt"]), p101_b
    assert page_b["limits_from"] == "api"

    # the overview by the same limits: A's master (the peer's Redis, its link up) is not suspected hung
    ov_a = (await api_a.get("/api/v1/overview")).json()
    ov_b = (await api_b.get("/api/v1/overview")).json()
    assert (ov_a["master_node"], ov_a["master_detail"]) == ("B", None), ov_a
    assert ov_b["master_node"] is None and "is still the master is unknown" in ov_b["master_detail"], ov_b

    # behind by the same limits: the links behind virtual points are current on A, not on B (and NT there)
    vps_a = (await api_a.get("/api/v1/virtual-points")).json()["items"]
    vps_b = (await api_b.get("/api/v1/virtual-points")).json()["items"]
    valued = [(a, b) for a, b in zip(vps_a, vps_b, strict=True) if a["quality"] is not None]
    assert valued and all(a["not_current"] is None and "NT" not in a["quality_flags"] and b["not_current"]
                          and "NT" in b["quality_flags"] for a, b in valued), valued
