"""A holder told by its lease tick that the master's values are older than its writes (`rolled_back_ms`,
docs/keyspace.md "A data set rolled back") writes again what differs from the master's and clears the mark:
both acquisition runners, against a real redis-server and the real Writer (no device: the runner's last
samples are set as a poll or an RTU's events leave them)."""

from __future__ import annotations

import logging
import time
import types

import redis.asyncio as aredis

from fep_acquirer.iec104rtu import Iec104Runner
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner
from fep_acquirer.writer import Writer
from fepha import keyspace as ks
from fepha import points, redisfns
from fepha.config import NodeConfig
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Channel, Point, Rtu
from tests.acquirer.test_iec104_rules import RTU as IEC_RTU
from tests.redisproc import RedisProc

MB_RTU = Rtu(id=1, name="r", rtutype=0, protocol="modbus_tcp", channels=(Channel(1, 1, "h", 502, 1),),
             points=(Point(id=101, rtu=1, kind="AI", name="", area="HR", address=0, datatype="int16"),
                     Point(id=102, rtu=1, kind="AI", name="", area="HR", address=1, datatype="int16")))


async def _resynced(runner, r: aredis.Redis, rid: int, pids: tuple[int, int]) -> None:
    a, b = pids
    _, epoch, _ = await r.fcall(*redisfns.lease_tick(rid, "A", True, 60_000, 90_000, 0).argv)
    runner.lease.update("A", int(epoch))
    runner.writer.start()
    try:
        # the rolled-back copy: point a at 1 (the holder has 2 since), b as the holder has it
        assert (await runner.writer.write(rid, int(epoch), [str(a), points.encode(1, 0, 1000),
                                                            str(b), points.encode(5, 0, 1000)])).ok
        runner.samples.update({a: (2.0, 0), b: (5.0, 0)})
        await r.hset(ks.lease(rid), "rolled_back_ms", "1")
        runner.resync()
        await runner._resync
        assert await r.hget(ks.lease(rid), "rolled_back_ms") is None  # cleared: current again
        assert points.decode(await r.hget(ks.values(rid), str(a))).value == 2  # written again
        assert await r.hget(ks.values(rid), str(b)) == points.encode(5, 0, 1000)  # the same: not written
        assert int(await r.hget(ks.lease(rid), "wn")) == 2  # one write of the image, no more
    finally:
        await runner.writer.stop()


async def test_the_modbus_runner_writes_what_differs_then_clears_the_mark() -> None:
    with RedisProc() as rp:
        r = aredis.Redis(host=rp.host, port=rp.port, decode_responses=True)
        try:
            await redisfns.load_async(r)
            run = RtuRunner(MB_RTU, NodeConfig(), Writer(r, "A"), Metrics("A"), OnceLogger(logging.getLogger("t")))
            run.last_ok, run.polled_ts_ms = time.monotonic(), int(time.time() * 1000)
            await _resynced(run, r, 1, (101, 102))
        finally:
            await r.aclose()


async def test_the_iec104_runner_writes_what_differs_then_clears_the_mark() -> None:
    with RedisProc() as rp:
        r = aredis.Redis(host=rp.host, port=rp.port, decode_responses=True)
        try:
            await redisfns.load_async(r)
            run = Iec104Runner(IEC_RTU, NodeConfig(), Writer(r, "A"), Metrics("A"),
                               OnceLogger(logging.getLogger("t")))
            run.link = types.SimpleNamespace(last_rx=time.monotonic())  # reached: a frame just now
            pids = tuple(p.id for p in IEC_RTU.points if p.kind == "AI")[:2]
            await _resynced(run, r, IEC_RTU.id, pids)  # type: ignore[arg-type]
        finally:
            await r.aclose()
