"""The acquirer's stop with its local Redis hung (SIGSTOP: sockets open, no answer), the master healthy.

Real redis-server master and local replica, the acquirer built as fep-acquirer builds it (`app.master_client`)
but with redis-py's default retry policy on the local Redis (the longest wait; `app.local_client` re-sends
once, at once), holding RTU 1 of a PlcSim. The
configuration check reads the local Redis every `config_check_s`; a read sent to the hung Redis is answered
(with an error) only after four socket timeouts and up to 2 + 4 + 8 s of backoff, and the stop used to wait
for it (over 16 s at the product's 2 s timeout). Checked here: the stop gives that read up and the acquirer
ends within STOP_AT_MOST_S, with a socket timeout of 1 s that makes the old wait at least 3.7 s. And a
local Redis whose role is unreadable does not make the stop treat the master as unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fep_acquirer import app
from fepha import redisconn
from tests.acquirer.helpers import free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.redisproc import RedisProc
from tests.stopping import timed_stop

STOP_AT_MOST_S = 2.0
SOCKET_TIMEOUT_S = 1.0


@contextlib.asynccontextmanager
async def running_a(feproot, master: RedisProc, local: RedisProc, local_kw: dict[str, Any] | None = None,
                    hung_at_start: bool = False,
                    **cfg_kw: Any) -> AsyncIterator[tuple[app.Acquirer, asyncio.Event, asyncio.Task[None]]]:
    """Node A's acquirer as fep-acquirer builds it (its own clients of `master` and `local`) started on RTU 1
    of a PlcSim, `local` SIGSTOPped just before with `hung_at_start` -> (acquirer, its stop event, its task);
    stopped at the end with `local` resumed."""
    sim = await start_sim(load(master, merge(rtu_rows(1, free_port()))))
    local.caught_up(master)
    cfg = dataclasses.replace(node_cfg(feproot, master, "A", **cfg_kw), local_host=local.host, local_port=local.port)
    master_c, local_c = app.master_client(cfg), redisconn.local_async(cfg, **(local_kw or {}))
    acq = app.Acquirer(cfg, master_c, local_c)
    stop = asyncio.Event()
    if hung_at_start:
        local.pause()
    task = asyncio.create_task(acq.run(stop, config_check_s=0.05))
    try:
        yield acq, stop, task
    finally:
        local.resume()
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await master_c.aclose()
        await local_c.aclose()
        await sim.stop()


@contextlib.asynccontextmanager
async def holding_a(feproot, master: RedisProc, local: RedisProc, local_kw: dict[str, Any] | None = None,
                    **cfg_kw: Any) -> AsyncIterator[tuple[app.Acquirer, asyncio.Event, asyncio.Task[None]]]:
    """`running_a` once it holds RTU 1's lease and its ticks go through."""
    async with running_a(feproot, master, local, local_kw, **cfg_kw) as (acq, stop, task):
        await until(lambda: acq.runners and acq.runners[1].lease.held and acq.house.tick_ok)
        yield acq, stop, task


async def test_stop_does_not_wait_on_a_hung_local_redis(redis_pair, feproot) -> None:
    master, local = redis_pair
    async with holding_a(feproot, master, local, socket_timeout_s=SOCKET_TIMEOUT_S) as (_, stop, task):
        local.pause()
        await asyncio.sleep(0.3)  # a configuration check (every 0.05 s) is now waiting on the hung Redis
        await timed_stop(stop, task, STOP_AT_MOST_S, "the local Redis hangs")


async def test_a_killed_local_redis_does_not_make_the_stop_give_up_on_the_master(redis_pair, feproot, caplog) -> None:
    """The local Redis killed, its role unreadable: the master is still reached, so the planned stop goes to
    the handover at once (here: kept, node B is not running). It used to count the master as unreachable
    ("master Redis unreachable, leases not handed over", after waiting lease_ttl_s for it). The local client
    re-sends nothing (redis-py's backoff would only delay the reading that fails)."""
    caplog.set_level(logging.INFO, logger="acquirer")
    master, local = redis_pair
    async with holding_a(feproot, master, local, {"retry": Retry(NoBackoff(), 0)}) as (acq, stop, task):
        local.stop()
        await until(lambda: acq.house.roles.role == "")  # the role watch's reading failed
        await asyncio.sleep(2 * acq.cfg.lease_tick_s)  # ticks with the local role unreadable
        stop.set()
        await asyncio.wait_for(task, 5)
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopping")]
        assert not any("unreachable" in m for m in said), said
        assert any("keeping the leases of RTU 1" in m for m in said), said
