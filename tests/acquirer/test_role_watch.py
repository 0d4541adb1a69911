"""Issue 13, link cut: the master's node vanishes without a FIN, this node's Redis is promoted, the VIP
moves here. A lease tick in flight then waits on the vanished master; the role watch must end that wait
at the promotion (docs/ha.md, "Where a link cut's failover time goes")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import pytest
import redis.asyncio as aredis

from fep_acquirer.app import Acquirer
from fep_acquirer.housekeeping import role_moved
from fepha import redisconn, redisfns
from tests.acquirer.helpers import free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.redisproc import RedisProc


@pytest.mark.parametrize(("seen", "now", "moved"), [
    (None, "master", False),   # first look: nothing to compare with
    (None, "", False),
    ("slave", "slave", False),
    ("slave", "master", True),  # promoted: the VIP came here
    ("master", "slave", True),  # demoted: the VIP went away
    ("slave", "", False),       # local Redis not answering: no move, the tick reports it
    ("master", "", False),
])
def test_role_moved(seen, now, moved):
    assert role_moved(seen, now) is moved


class Vip:
    """The VIP as a TCP forwarder on a free loopback port: each new connection goes to the Redis the VIP
    leads to when it is opened; connections opened before a move stay with the old one (as a VIP move
    leaves established connections with the old peer)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        self.writers += [w, uw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        for t in (asyncio.create_task(pipe(r, uw)), asyncio.create_task(pipe(ur, w))):
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def test_promotion_ends_a_tick_waiting_on_the_vanished_master(redis_master, feproot):
    """A (simulated: renews RTU 1's lease on master R) vanishes silently: R is SIGSTOPped, so the
    tick B has in flight on R gets no answer and no FIN, as after a power cut. B's own Redis L is then
    promoted and the "VIP" (the master client's address) leads to L. B must take the lapsed lease within
    a second of the promotion, not after its 3 s socket timeout and redis-py's retries."""
    ttl_ms = 600
    rows = merge(rtu_rows(1, free_port()))
    model = load(redis_master, rows)
    sim = await start_sim(model)
    with RedisProc(replicaof=(redis_master.host, redis_master.port)) as local_proc:
        local_proc.wait_synced()
        vip = Vip((redis_master.host, redis_master.port))
        vip_port = await vip.start()
        cfg = dataclasses.replace(node_cfg(feproot, redis_master, "B", socket_timeout_s=3.0,
                                           lease_ttl_s=ttl_ms / 1000), port=vip_port, local_port=local_proc.port)
        master, local = redisconn.master_async(cfg), redisconn.local_async(cfg)
        a_conn = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
        a_alive = asyncio.Event()
        a_alive.set()

        async def node_a() -> None:
            while a_alive.is_set():
                await a_conn.fcall(*redisfns.lease_tick(1, "A", True, ttl_ms, 60_000, 0).argv)
                await asyncio.sleep(0.1)

        a_task = asyncio.create_task(node_a())
        acq = Acquirer(cfg, master, local)
        stop = asyncio.Event()
        task = asyncio.create_task(acq.run(stop, config_check_s=0.1))
        try:
            await until(lambda: acq.runners and acq.runners[1].reaches() and acq.runners[1].lease.holder == "A", 5)
            a_alive.clear()
            await a_task
            redis_master.pause()  # silent: in-flight and new commands on R get no answer, no RST
            await asyncio.sleep(0.8)  # A's lease lapses (L has it by replication); B's ticks hang on R
            assert not acq.runners[1].lease.held
            local_proc.client().execute_command("REPLICAOF", "NO", "ONE")
            vip.target = (local_proc.host, local_proc.port)
            t_promoted = time.monotonic()
            await until(lambda: acq.runners[1].lease.held, 6, step=0.02)
            took = time.monotonic() - t_promoted
            assert took < 1.0, f"lease taken {took:.2f} s after the promotion"
        finally:
            a_alive.clear()
            with contextlib.suppress(Exception):
                await a_task
            redis_master.resume()
            stop.set()
            await task
            await master.aclose()
            await local.aclose()
            await a_conn.aclose()
            await sim.stop()
            await vip.close()
