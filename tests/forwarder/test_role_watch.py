"""Link cut seen by the forwarder: the master's node vanishes without a FIN, this node's Redis is promoted,
the VIP moves here. The forwarder's connections to the VIP still lead to the vanished master; its role
watch must drop them at the promotion (docs/forwarder.md, "At a promotion"): a control waiting on one is
answered negatively at once and never re-sent, the next control reaches the new master."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import c104
import redis.asyncio as aredis

from fep_loader.store import replace_config
from fepha import keyspace as ks
from fepha import redisfns
from tests.redisproc import RedisProc, free_port
from tests.vip import Vip

from .ctl_helpers import Executor
from .se104s_fixtures import c104_master
from .test_runner import SAMPLE_POINTS, forwarder, node_cfg, se104s_rows, wait_listening


def setpoint(v: int) -> c104.ScaledCmd:
    return c104.ScaledCmd(target=c104.Int16(v))


@dataclasses.dataclass
class Pair:
    """Node B's forwarder on Redis L (a replica of master R), writing to R through the VIP; SCADA (a c104
    master) on B's se104s server, whose set-points (IOA 6001 -> point 110 of acquisition RTU 1) are
    executed by A (an executor on R) until `promote`."""

    r: RedisProc
    local: RedisProc
    vip: Vip
    m: Any
    exec_a: Executor
    exec_b: Executor
    tasks: list[asyncio.Task[Any]]

    async def vanish_a(self) -> None:
        """A's node vanishes: R is SIGSTOPped (no answer, no FIN, as after a power cut)."""
        self.tasks[0].cancel()
        await asyncio.gather(self.tasks[0], return_exceptions=True)
        self.r.pause()

    async def promote(self) -> float:
        """keepalived on B: L promoted, the VIP leads to L; B's acquirer takes RTU 1. Returns the time."""
        self.local.client().execute_command("REPLICAOF", "NO", "ONE")
        self.vip.target = (self.local.host, self.local.port)
        t = time.monotonic()
        await self.exec_b.master.delete(ks.lease(1))  # A's lease lapsed
        self.tasks.append(asyncio.create_task(self.exec_b.run()))
        return t

    async def audit(self) -> list[tuple[str, str]]:
        """(value, final state) of every control in L's audit stream."""
        return [(a[1]["value"], a[1]["state"]) for a in await self.exec_b.master.xrange(ks.CTL_AUDIT)]


@contextlib.asynccontextmanager
async def pair(r: RedisProc, feproot: Path) -> AsyncIterator[Pair]:
    port = free_port()
    replace_config(r.client(), se104s_rows(feproot, port))
    redisfns.load_sync(r.client())
    with RedisProc(replicaof=(r.host, r.port)) as local:
        local.wait_synced()
        vip = Vip((r.host, r.port))
        cfg = dataclasses.replace(node_cfg(r), node_id="B", port=await vip.start(), local_host=local.host,
                                  local_port=local.port, role_watch_s=0.1)
        on_r = aredis.Redis(host=r.host, port=r.port, decode_responses=True)
        on_l = aredis.Redis(host=local.host, port=local.port, decode_responses=True)
        exec_a = Executor(on_r, 1, "A")
        tasks = [asyncio.create_task(exec_a.run())]
        try:
            async with forwarder(cfg):
                await wait_listening(port)
                async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
                    assert await m.command(6001, setpoint(1))  # through the VIP to R: executed by A
                    assert exec_a.executed == [(110, 1.0)]
                    try:
                        yield Pair(r, local, vip, m, exec_a, Executor(on_l, 1, "B"), tasks)
                    finally:
                        r.resume()  # before the forwarder stops, should the test end before the promotion
        finally:
            r.resume()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await on_r.aclose()
            await on_l.aclose()
            await vip.close()


async def test_a_control_after_the_promotion_reaches_the_new_master(redis_master: RedisProc,
                                                                    feproot: Path) -> None:
    """Set-point 2, sent just after the promotion, is executed on L and confirmed within a second: without
    the role watch, it goes out on a pooled connection to R and waits out the 2 s socket timeout."""
    async with pair(redis_master, feproot) as p:
        await p.vanish_a()
        await asyncio.sleep(0.5)  # B's commands on R hang
        t_promoted = await p.promote()
        await asyncio.sleep(0.3)  # keepalived promoted L; SCADA sends a set-point to B
        t_sent = time.monotonic()
        assert await p.m.command(6001, setpoint(2))
        took = time.monotonic() - t_sent
        assert took < 1.0, f"set-point 2 confirmed {took:.2f} s after it was sent"
        assert p.exec_b.executed == [(110, 2.0)]
        assert await p.audit() == [("1.0", "done"), ("2.0", "done")]
        assert time.monotonic() - t_promoted < 1.5


async def test_a_control_in_flight_at_the_promotion_fails_at_once_and_is_not_resent(
        redis_master: RedisProc, feproot: Path) -> None:
    """Set-point 2 is in flight on R when L is promoted: it is answered negatively within a second of
    the promotion and never executed (not re-sent to L: for all B knows it reached R and was replicated);
    set-point 3, sent next, is executed on L. Without the role watch, set-point 2 waits out the socket
    timeout, then redis-py re-sends it to the VIP's new place."""
    async with pair(redis_master, feproot) as p:
        await p.vanish_a()
        in_flight = asyncio.create_task(p.m.command(6001, setpoint(2)))
        p.tasks.append(in_flight)
        await asyncio.sleep(0.5)  # set-point 2 waits on R
        assert not in_flight.done()
        t_promoted = await p.promote()
        assert not await in_flight
        took = time.monotonic() - t_promoted
        assert took < 1.0, f"set-point 2 answered {took:.2f} s after the promotion"
        assert await p.m.command(6001, setpoint(3))
        assert p.exec_b.executed == [(110, 3.0)]
        assert await p.audit() == [("1.0", "done"), ("3.0", "done")]
