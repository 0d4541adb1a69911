"""Issue 13, link cut: the master's node vanishes without a FIN, this node's Redis is promoted, the VIP
moves here. A lease tick in flight then waits on the vanished master; the role watch must end that wait
at the promotion (docs/ha.md, "Where a link cut's failover time goes")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import redis.asyncio as aredis

from fep_acquirer.app import Acquirer
from fepha import redisconn, redisfns
from tests.acquirer.helpers import free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.redisproc import RedisProc
from tests.vip import Vip


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
