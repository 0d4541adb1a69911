"""Fixtures of the api tests: a real Redis holding the sample configuration, runtime state written through
the real Redis Functions (as the acquirer writes it), and the app under httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis

from fep_api.app import create_app
from fep_loader.store import replace_config
from fepha import controls, heartbeat, points, redisfns
from fepha import keyspace as ks
from fepha.config import NodeConfig
from fepha.semodel import db
from tests.redisproc import RedisProc

TOKEN = "s3cret-token"


def node_cfg(local: RedisProc, master: RedisProc | None = None, **kw: Any) -> NodeConfig:
    """A node whose local Redis is `local` and whose VIP points at `master` (default: the same)."""
    master = master or local
    base: dict[str, Any] = {"node_id": "A", "ip": "127.0.0.1", "vip": master.host, "port": master.port,
                            "local_host": local.host, "local_port": local.port, "api_token": TOKEN,
                            "heartbeat_s": 1.0, "lease_tick_s": 0.2, "lease_ttl_s": 5.0,
                            "socket_timeout_s": 1.0}
    base.update(kw)
    return NodeConfig(**base)


def sample_rows(feproot: Path) -> dict:
    rows, problems = db.read_rows(feproot / "db" / "SEMODEL.db")
    assert not problems
    return rows


@pytest.fixture
def loaded(redis_master: RedisProc, feproot: Path) -> RedisProc:
    """The master with the sample configuration (generation 1) and the function libraries."""
    replace_config(redis_master.client(), sample_rows(feproot), source="sample")
    return redis_master


@dataclass
class Populated:
    """What `populate` wrote, for assertions."""

    ctl_ids: list[int]


async def populate(r: aredis.Redis, ctl_count: int = 3) -> Populated:
    """Runtime state as the two acquirers and forwarders write it, through the real functions:
    RTU 1 held by A (both nodes reach it), RTU 2 held by B (only B reaches it), values, links, channel
    states, forwarder clients, heartbeats of node A, counters, and `ctl_count` finished controls."""
    ttl, takeover = 60_000, 90_000
    assert (await r.fcall(*redisfns.lease_tick(1, "A", True, ttl, takeover).argv))[0] == "A"
    assert (await r.fcall(*redisfns.lease_tick(1, "B", True, ttl, takeover).argv))[0] == "A"
    assert (await r.fcall(*redisfns.lease_tick(2, "B", True, ttl, takeover).argv))[0] == "B"
    ts = 1_700_000_000_000
    w = await r.fcall(*redisfns.write_values(1, "A", 1, [
        "101", points.encode(20.5, 0, ts), "105", points.encode(1, 0, ts),
        "102", points.encode(0.0, int(points.Quality.IV | points.Quality.NT), ts), "103", "garbage"]).argv)
    assert int(w[0]) == 1
    await r.fcall(*redisfns.write_values(2, "B", 1, ["201", points.encode(3.25, 0, ts)]).argv)
    await r.fcall(*redisfns.link_set(1, "A", True, [901]).argv)
    await r.fcall(*redisfns.link_set(1, "B", True, [901]).argv)
    await r.fcall(*redisfns.link_set(2, "A", False, [902]).argv)
    await r.fcall(*redisfns.link_set(2, "B", True, [902]).argv)
    await r.hset(ks.channel_state(1, "A"), mapping={"active": 1, "ch1_connected": 1, "ch1_since_ms": ts,
                                                    "ch1_error": "", "ch1_switches": 0, "ch2_connected": 0,
                                                    "ch2_error": "connection refused", "ch2_switches": 0})
    await r.hset(ks.channel_state(2, "A"), mapping={"active": 2, "ch1_connected": 0, "ch2_connected": 0,
                                                    "ch1_error": "timeout", "ch2_switches": 3})
    await r.hset(ks.fwd_clients(10, "A"), "127.0.0.9:40000", '{"since_ms": 1700000000000, "started": true}')
    await r.hset(ks.fwd_clients(11, "B"), "127.0.0.8:50000", "not json")
    for s in heartbeat.SERVICES:
        await heartbeat.beat(r, s, "A", 5.0, 1)
    await r.hset(ks.metrics("acquirer", "A"),
                 mapping={"changes_written": 42, "polls": 100, "write_errors": 1})
    await r.hset(ks.metrics("forwarder", "A"), mapping={"events_sent": 7, "controls": 2, "controls_ok": 1,
                                                        "control_latency_ms_sum": 30, "stream_lag_ms": 5,
                                                        "clients": 1})
    ids = []
    for i in range(ctl_count):
        cid = await controls.submit(r, 1, 109, float(i % 2), f"test:{i}", 10_000)
        assert int(await r.lpop(ks.control_queue(1))) == cid  # as the holder's executor pops it
        c = await controls.claim(r, 1, "A", 1, cid)
        assert c is not None
        assert await controls.finish(r, cid, i != 1, "ok" if i != 1 else "device refused")
        ids.append(cid)
    return Populated(ids)


async def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fep-api")


@pytest.fixture
async def make_api() -> AsyncIterator[Any]:
    """make_api(cfg) -> httpx client of a fresh app; every app's lifespan is closed at the end."""
    opened: list[tuple[Any, Any, httpx.AsyncClient]] = []

    async def make(cfg: NodeConfig) -> httpx.AsyncClient:
        app = create_app(cfg)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        c = await client_for(app)
        opened.append((app, ctx, c))
        return c

    yield make
    for _app, ctx, c in reversed(opened):
        await c.aclose()
        await ctx.__aexit__(None, None, None)


@pytest.fixture
async def ar(loaded: RedisProc) -> AsyncIterator[aredis.Redis]:
    r = aredis.Redis(host=loaded.host, port=loaded.port, decode_responses=True)
    yield r
    await r.aclose()
