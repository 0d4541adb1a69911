"""A lease holder that does not reach its device while the other node does: how long until the takeover?
A real Redis with the sample configuration; both nodes' lease ticks and link reports sent every tick
through the real Redis Functions (`lease_tick`, `link_set`), as the two acquirers send them, so the
takeover is the function's own. The api's `takeover_in_ms` is checked against the moment the lease really
moves, and the dashboard (served by uvicorn, watched in headless Chromium without a reload) shows the
countdown, then the new holder."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aredis
import uvicorn

from fep_api.app import create_app
from fepha import heartbeat, redisfns
from fepha.config import NodeConfig
from tests.api.cdp import Browser
from tests.api.conftest import node_cfg
from tests.api.test_with_services import until
from tests.redisproc import RedisProc, free_port

TICK_S, TTL_S, TAKEOVER_S = 0.2, 2.0, 5.0


def acquirer_timers(takeover_s: float = TAKEOVER_S) -> dict[str, int]:
    """An acquirer's timers as its heartbeat reports them and its lease ticks send them."""
    return heartbeat.lease_timers(SimpleNamespace(lease_tick_s=TICK_S, lease_ttl_s=TTL_S, takeover_s=takeover_s))


@dataclass
class Nodes:
    """What each node's acquirer reports at each tick for RTU 1: 0 not reached, 1 fully, 2 in part; the
    timers its ticks go by, and whether its heartbeat reports them (`report`)."""

    reach: dict[str, int] = field(default_factory=lambda: {"A": 1, "B": 1})
    moved_at: float | None = None  # monotonic time the lease changed holder (seen by the ticking node)
    timers: dict[str, int] = field(default_factory=acquirer_timers)
    report: bool = True


async def ticking(r: aredis.Redis, nodes: Nodes) -> None:
    while True:
        t = nodes.timers
        for node in "AB":
            reach = nodes.reach[node]
            _, _, changed = await r.fcall(*redisfns.lease_tick(1, node, reach > 0, t["lease_ttl_ms"],
                                                                t["takeover_ms"], partly=reach == 2).argv)
            if int(changed) and nodes.moved_at is None and node == "B":
                nodes.moved_at = time.monotonic()
            await r.fcall(*redisfns.link_set(1, node, reach > 0, [901]).argv)
            await heartbeat.beat(r, "acquirer", node, TICK_S * 3, 1, **(t if nodes.report else {}))
        await asyncio.sleep(TICK_S)


@contextlib.asynccontextmanager
async def served(cfg: NodeConfig) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: _started(server), 10, "uvicorn started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _started(server: uvicorn.Server) -> bool:
    return server.started


ROW1 = "document.querySelector('#acq tr[data-rtu=\"1\"]')"


async def test_takeover_pending_shown_with_its_countdown(loaded: RedisProc, ar: aredis.Redis, make_api,
                                                         tmp_path: Path) -> None:
    cfg = node_cfg(loaded, lease_tick_s=TICK_S, lease_ttl_s=TTL_S, takeover_s=TAKEOVER_S)
    api = await make_api(cfg)
    nodes = Nodes()
    ticks = asyncio.create_task(ticking(ar, nodes))

    async def lease(reach: str | None = None) -> dict[str, Any] | None:
        got = (await api.get("/api/v1/leases")).json()["items"][0]
        return got if reach is None or got["reach"] == reach else None

    try:
        first = await until(lambda: lease("full"), 3, "RTU 1 held and reached fully")
        assert first["holder"] == "A" and first["reach_detail"] is None and first["takeover_in_ms"] is None
        async with served(cfg) as url:
            b = Browser(tmp_path / "profile")
            try:
                await b.open(url + "/")
                await b.wait("document.body.dataset.live === '1'", 20, "the dashboard live")
                await b.wait(f"{ROW1}.textContent.includes('✓ fully')", 5, "RTU 1 reached fully")

                # A's acquirer no longer reaches the device, B's does: a takeover pending, with its time
                nodes.reach["A"] = 0
                t_lost = time.monotonic()
                got = await until(lambda: lease("none"), 3, "RTU 1 not reached by its holder")
                seen = time.monotonic()
                assert got["holder"] == "A" and 0 < got["takeover_in_ms"] <= TAKEOVER_S * 1000, got
                assert "node B takes the lease over in" in got["reach_detail"], got
                due = seen + got["takeover_in_ms"] / 1000  # when the api says B takes it
                await b.wait(f"{ROW1}.textContent.includes('✗ not reached, B may take over in')", 5,
                             "RTU 1's row: the countdown")
                await b.wait("[...document.querySelectorAll('#v-why [data-why=\"reach\"]')]"
                             ".some(p => p.textContent.includes('node B takes the lease over in'))", 5,
                             "the reach line above the values")
                dash_s = time.monotonic() - t_lost
                later = await lease("none")
                assert later is not None and later["takeover_in_ms"] < got["takeover_in_ms"], (got, later)

                await until(lambda: _moved(nodes), TAKEOVER_S + 2, "B takes the lease over")
                assert nodes.moved_at is not None
                # the lease_tick function decided it: within a tick (and the api's read) of the forecast
                assert abs(nodes.moved_at - due) <= 2 * TICK_S + 0.2, (nodes.moved_at - due)
                moved = await until(lambda: lease("full"), 3, "B holds it, reaching it fully")
                assert moved["holder"] == "B" and moved["takeover_in_ms"] is None
                await b.wait(f"{ROW1}.dataset.holder === 'B' && {ROW1}.textContent.includes('✓ fully') && "
                             "!document.querySelector('#v-why [data-why]')", 5, "the new holder, reach cleared")
                print(f"takeover forecast {got['takeover_in_ms']} ms, moved {nodes.moved_at - due:+.3f} s "
                      f"from it; dashboard countdown {dash_s:.2f} s after the loss")

                # B reaches it in part only, A fully: A may take it back once B has not read it fully
                # for the takeover time
                nodes.reach.update(A=1, B=2)
                nodes.moved_at = None
                part = await until(lambda: lease("partial"), 3, "B reaches it in part")
                assert part["holder"] == "B" and "node A takes the lease over if it reads the device fully" \
                    in part["reach_detail"] and 0 < part["takeover_in_ms"] <= TAKEOVER_S * 1000, part
                await b.wait(f"{ROW1}.textContent.includes('⚠ in part only, A may take over in')", 5,
                             "RTU 1's row: in part")

                # neither node reaches it: no takeover, said so
                nodes.reach.update(A=0, B=0)
                none = await until(lambda: lease("none"), 3, "nobody reaches it")
                await until(lambda: _no_takeover(api), 3, "no takeover")
                await b.wait(f"{ROW1}.textContent.includes('✗ not reached, no takeover')", 5,
                             "RTU 1's row: no takeover")
                await asyncio.sleep(TAKEOVER_S + 0.5)
                still = await lease("none")
                assert still is not None and still["holder"] == none["holder"], (none, still)
            finally:
                await b.close()
    finally:
        ticks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticks


async def _moved(nodes: Nodes) -> bool:
    return nodes.moved_at is not None


async def _no_takeover(api: Any) -> bool:
    got = (await api.get("/api/v1/leases")).json()["items"][0]
    return got["takeover_in_ms"] is None and "does not reach it either: no takeover" in got["reach_detail"]


async def test_takeover_forecast_by_the_acquirers_timers(loaded: RedisProc, ar: aredis.Redis, make_api) -> None:
    """The api's own cfg says takeover_s 90 s, the acquirers' (an override in their environment) 1 s: the
    forecast follows the acquirers', as the move does; with no acquirer reporting its timers, the api says
    it went by its own."""
    api = await make_api(node_cfg(loaded, lease_tick_s=TICK_S, lease_ttl_s=TTL_S, takeover_s=90.0))
    nodes = Nodes(timers=acquirer_timers(takeover_s=1.0))
    ticks = asyncio.create_task(ticking(ar, nodes))

    async def lease(reach: str) -> dict[str, Any] | None:
        got = (await api.get("/api/v1/leases")).json()["items"][0]
        return got if got["reach"] == reach else None

    try:
        first = await until(lambda: lease("full"), 3, "RTU 1 held and reached fully")
        assert first["holder"] == "A", first
        nodes.reach["A"] = 0
        got = await until(lambda: lease("none"), 3, "RTU 1 not reached by its holder")
        seen = time.monotonic()
        assert 0 <= got["takeover_in_ms"] <= 1000 and "node B takes the lease over in" in got["reach_detail"], got
        assert (first["timers_from"], got["timers_from"]) == ("acquirers", "acquirers"), (first, got)
        due = seen + got["takeover_in_ms"] / 1000
        await until(lambda: _moved(nodes), 3, "B takes the lease over")
        assert nodes.moved_at is not None and abs(nodes.moved_at - due) <= 2 * TICK_S + 0.2, (nodes.moved_at - due)
        print(f"takeover forecast {got['takeover_in_ms']} ms by the acquirers' takeover_s (the api's: 90 s), "
              f"moved {nodes.moved_at - due:+.3f} s from it")

        nodes.report = False  # acquirers that do not report their timers: the api's own, and it says so
        await until(lambda: _timers_from(api, "api"), 3, "the forecast by the api's own timers")
    finally:
        ticks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticks


async def _timers_from(api: Any, source: str) -> bool:
    return (await api.get("/api/v1/leases")).json()["items"][0]["timers_from"] == source
