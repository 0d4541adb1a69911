"""The control executor at a planned stop: it ends as soon as `stopping` is set, idle in its BLPOP or holding
nothing, instead of sitting out its wait (`block_s`); and a control its BLPOP returns is still run
(`executor._wake_at`: the BLPOP is woken by a token on `ks.control_wake`, never cancelled)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import redis.asyncio as aredis

from fep_acquirer.executor import WAKE_TTL_MS, execute_loop
from fep_acquirer.lease import LeaseView
from fep_acquirer.metrics import Metrics
from fepha import controls, redisfns
from fepha import keyspace as ks
from fepha.logsetup import OnceLogger
from tests.redisproc import RedisProc

BLOCK_S = 2.0  # the executor's wait, long enough that sitting it out cannot pass for a prompt stop
PROMPT_S = 0.2


class Runner:
    """What the executor uses of an RtuRunner: its RTU id, lease view, write_point."""

    def __init__(self) -> None:
        self.rtu, self.lease, self.writes = SimpleNamespace(id=1), LeaseView("A"), []

    async def write_point(self, point: int, value: float, deadline: float | None = None) -> None:
        self.writes.append((point, value))


@pytest.fixture
async def master(redis_master: RedisProc) -> AsyncIterator[aredis.Redis]:
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)
    yield r
    await r.aclose()


async def stop_time(r: aredis.Redis, runner: Runner, before_stop: float = 0.3) -> float:
    stopping = asyncio.Event()
    loop = asyncio.create_task(execute_loop(r, "A", {1: runner}, Metrics("A"), OnceLogger(logging.getLogger("t")),
                                            stopping, block_s=BLOCK_S))
    try:
        await asyncio.sleep(before_stop)  # the executor is in its wait
        t0 = time.monotonic()
        stopping.set()
        await asyncio.wait([loop], timeout=BLOCK_S + 1)
        return time.monotonic() - t0
    finally:
        stopping.set()
        await asyncio.wait_for(loop, BLOCK_S + 1)


async def test_the_stop_does_not_wait_for_an_idle_blpop(master: aredis.Redis) -> None:
    runner = Runner()
    holder, epoch, _ = await master.fcall(*redisfns.lease_tick(1, "A", True, 60_000, 90_000).argv)
    assert runner.lease.update(holder, int(epoch)) == "gained"
    took = await stop_time(master, runner)
    assert took < PROMPT_S, f"the executor ended {took:.2f} s after the stop (its BLPOP waits {BLOCK_S} s)"
    assert not await master.exists(ks.control_wake("A"))  # its token was popped by the BLPOP it woke
    # a control queued now is run by the next executor of this node, one left token or not
    await master.lpush(ks.control_wake("A"), "stop")
    await master.pexpire(ks.control_wake("A"), WAKE_TTL_MS)
    stopping = asyncio.Event()
    loop = asyncio.create_task(execute_loop(master, "A", {1: runner}, Metrics("A"),
                                            OnceLogger(logging.getLogger("t")), stopping, block_s=BLOCK_S))
    try:
        res = await controls.execute(master, 1, 1002, 7, "test", 3000)
        assert res.ok and runner.writes == [(1002, 7.0)], res
    finally:
        stopping.set()
        await asyncio.wait_for(loop, BLOCK_S + 1)


async def test_the_stop_does_not_wait_for_the_idle_wait_of_an_executor_holding_nothing(master: aredis.Redis) -> None:
    took = await stop_time(master, Runner())
    assert took < PROMPT_S, f"the executor ended {took:.2f} s after the stop (its idle wait is {BLOCK_S} s)"
