"""A real ControlSink over Redis for the forwarder tests: `fepha.controls.execute` against a real
redis-server, and a test task playing the acquirer's executor with `fepha.controls.claim/finish`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from fep_forwarder.base import ControlOutcome
from fepha import controls, redisfns
from fepha import keyspace as ks
from fepha.semodel.model import FwdPoint


@dataclass
class RedisSink:
    master: Any
    rtu_of: dict[int, int]  # source point -> acquisition RTU
    timeout_ms: int = 2000

    async def execute(self, fwd: FwdPoint, value: float, origin: str,
                      timeout_ms: int | None = None) -> ControlOutcome:
        rtu = self.rtu_of.get(fwd.src)
        if rtu is None:
            return ControlOutcome(False, "rejected", f"point {fwd.src} has no acquisition RTU")
        res = await controls.execute(self.master, rtu, fwd.src, value, origin, timeout_ms or self.timeout_ms)
        return ControlOutcome(res.ok, res.state, res.reason)


@dataclass
class Executor:
    """Executes controls of one acquisition RTU as lease holder `node`; value 99 fails on the device."""

    master: Any
    rtu: int
    node: str = "A"
    executed: list[tuple[int, float]] = field(default_factory=list)

    async def run(self) -> None:
        holder, epoch, _ = await self.master.fcall(*redisfns.lease_tick(self.rtu, self.node, True, 60_000,
                                                                        90_000).argv)
        assert holder == self.node
        while True:
            got = await self.master.blpop([ks.control_queue(self.rtu)], timeout=1)
            if not got:
                continue
            claimed = await controls.claim(self.master, self.rtu, self.node, int(epoch), int(got[1]))
            if claimed is None:
                continue
            self.executed.append((claimed.point, claimed.value))
            ok = claimed.value != 99
            await controls.finish(self.master, claimed.id, ok, "written" if ok else "device refused the write")


@contextlib.asynccontextmanager
async def redis_controls(proc: Any, rtu_of: dict[int, int], executor_rtus: tuple[int, ...] = ()
                         ) -> AsyncIterator[tuple[RedisSink, list[Executor]]]:
    """A RedisSink on a RedisProc, with executor tasks for `executor_rtus`; everything closed on exit."""
    master = aredis.Redis(host=proc.host, port=proc.port, decode_responses=True)
    await redisfns.load_async(master)
    execs = [Executor(master, r) for r in executor_rtus]
    tasks = [asyncio.create_task(e.run()) for e in execs]
    try:
        yield RedisSink(master, rtu_of), execs
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await master.aclose()
