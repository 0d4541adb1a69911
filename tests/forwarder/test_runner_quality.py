"""Staleness is a quality (issue 10b), end to end: a real redis-server (pair), the forwarder runner, a real
c104 master on se104s, a sefeps client and a pymodbus client on modbus_trains' quality unit. The acquirer
is played by a task that ticks the lease and the link as the acquirer's housekeeping does."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import c104
import pytest
import redis.asyncio as aredis
from pymodbus.client import AsyncModbusTcpClient

from fep_forwarder import app
from fep_loader.store import replace_config
from fep_tools.sefeps_client import SefepsClient
from fepha import keyspace as ks
from fepha import points, redisfns
from fepha.points import Quality
from fepha.semodel import db
from tests.redisproc import RedisProc, free_port

from .se104s_fixtures import c104_master, until
from .test_runner import SAMPLE_POINTS, forwarder, node_cfg, se104s_rows, wait_listening

TICK_S, TTL_MS = 0.2, 1000
WATCHED = (1001, 1003, 1, 4)  # sources 101, 103, 105 of RTU 1 and virtual point 901 (RTU 1's link)


class Holder:
    """Plays node A's acquirer for one RTU: every tick a lease tick (with its poll age) and a link report.
    `alive` False = killed or frozen (no tick at all); `polling` False = ticks go on, polls do not complete."""

    def __init__(self, r: aredis.Redis, rtu: int, ttl_ms: int = TTL_MS, poll_age: bool = True) -> None:
        self.r, self.rtu, self.ttl_ms, self.poll_age = r, rtu, ttl_ms, poll_age
        self.alive, self.polling = True, True
        self.last_poll = time.monotonic()
        self.epoch = 0
        self.task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        if self.polling:
            self.last_poll = time.monotonic()
        age = int((time.monotonic() - self.last_poll) * 1000) if self.poll_age else None
        vps = [901] if self.rtu == 1 else [902]
        _, epoch, _ = await self.r.fcall(*redisfns.lease_tick(self.rtu, "A", True, self.ttl_ms, 90_000, age).argv)
        self.epoch = int(epoch)
        await self.r.fcall(*redisfns.link_set(self.rtu, "A", True, vps, live_ms=self.ttl_ms).argv)

    async def run(self) -> None:
        while True:
            if self.alive:
                await self.tick()
            await asyncio.sleep(TICK_S)

    async def __aenter__(self) -> Self:
        await self.tick()
        self.task = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def write(self, **pairs: float) -> None:
        ts = int(time.time() * 1000)
        flat = [x for pid, v in pairs.items() for x in (pid.lstrip("p"), points.encode(v, 0, ts))]
        res = await self.r.fcall(*redisfns.write_values(self.rtu, "A", self.epoch, flat).argv)
        assert int(res[0]) == 1, res


def quality_cfg(proc: RedisProc, **kw: Any) -> Any:
    return node_cfg(proc, lease_ttl_s=TTL_MS / 1000, lease_tick_s=TICK_S, **kw)


def spont_q(m: Any, ioa: int) -> list[tuple[Any, bool]]:
    """Spontaneous (value, NT) of one IOA, in arrival order."""
    return [(r.value, c104.Quality.NonTopical in r.quality) for r in m.values("SPONTANEOUS") if r.ioa == ioa]


async def gi(m: Any) -> dict[int, tuple[Any, bool]]:
    """A general interrogation: IOA -> (value, NT) of the answer."""
    n0 = len(m.values("INTERROGATED_BY_STATION"))
    assert await m.interrogate(1)
    await until(lambda: len(m.values("INTERROGATED_BY_STATION")) >= n0 + len(WATCHED), what="GI answer")
    await asyncio.sleep(0.2)
    return {r.ioa: (r.value, c104.Quality.NonTopical in r.quality)
            for r in m.values("INTERROGATED_BY_STATION")[n0:]}


@contextlib.asynccontextmanager
async def rule1_scene(r: aredis.Redis, cfg: Any, port: int) -> AsyncIterator[tuple[Holder, Any]]:
    """Node A holds RTU 1 with a lease of a minute and no poll stamps (only rule 1, the local Redis cut
    off, can fire), the forwarder `cfg` runs, and a c104 master's first GI shows every watched value
    topical."""
    async with Holder(r, 1, ttl_ms=60_000, poll_age=False) as h:
        await h.write(p101=7.0, p103=20.0, p105=1)
        async with forwarder(cfg):
            await wait_listening(port)
            async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
                first = await gi(m)
                assert all(not first[ioa][1] for ioa in WATCHED), first
                yield h, m


async def test_replica_cut_off_sets_nt_on_every_value_then_recovery_clears_it(
        redis_pair: tuple[RedisProc, RedisProc], feproot: Path) -> None:
    """Issue 10 problem 2: node B's Redis loses its replication link -> NT on every value served on B
    within quality_replica_down_s (+ one check period), cleared spontaneously with the fresh value after.
    Not before it by more than a second: a quiet link's silence before the cut (Redis's
    master_last_io_seconds_ago, whole seconds) counts as cut off (fepha.freshness.ReplicaWatch), and "1"
    may mean 0.01 s (CI saw NT 0.59 s after the cut with a 1.5 s limit)."""
    master, replica = redis_pair
    port = free_port()
    replace_config(master.client(), se104s_rows(feproot, port))
    r = aredis.Redis(host=master.host, port=master.port, decode_responses=True)
    await redisfns.load_async(r)
    limit_s = 2.5
    # lease TTL of a minute and no poll stamps: only rule 1 (replica cut off) can fire here
    cfg = dataclasses.replace(quality_cfg(master, quality_replica_down_s=limit_s), node_id="B",
                              local_host=replica.host, local_port=replica.port)
    try:
        async with rule1_scene(r, cfg, port) as (h, m):
            t0 = time.monotonic()
            replica.client().replicaof("127.0.0.1", free_port())  # an address nobody answers
            await until(lambda: all(spont_q(m, i) and spont_q(m, i)[-1][1] for i in WATCHED), 10,
                        "NT on every watched value")
            took = time.monotonic() - t0
            assert limit_s - 1.1 <= took <= limit_s + TICK_S + 1.0, took
            assert spont_q(m, 1001)[-1] == (pytest.approx(7.0), True)  # the frozen value, marked NT
            during = await gi(m)
            assert all(during[ioa][1] for ioa in WATCHED), during
            await h.write(p101=9.0)  # on the master only: B cannot see it yet
            n = {i: len(spont_q(m, i)) for i in WATCHED}
            replica.client().replicaof(master.host, master.port)
            await until(lambda: spont_q(m, 1001)[-1] == (pytest.approx(9.0), False), 10,
                        "fresh value with NT cleared")
            for i in WATCHED:
                await until(lambda i=i: len(spont_q(m, i)) > n[i] and not spont_q(m, i)[-1][1], 5,
                            f"NT cleared on {i}")
            after = await gi(m)
            assert all(not after[ioa][1] for ioa in WATCHED), after
    finally:
        await r.aclose()


async def test_rtu_without_live_holder_gets_nt_and_its_link_point_falls(redis_master: RedisProc,
                                                                         feproot: Path) -> None:
    """The holder stops ticking (killed or frozen): NT on its RTU's values within TTL + one tick (+ one
    check), and its virtual point falls to 0 through the forwarder's link_refresh (no acquirer alive).
    It comes back: the lapsed lease is taken again and the fresh value goes out with NT cleared."""
    port = free_port()
    replace_config(redis_master.client(), se104s_rows(feproot, port))
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)
    try:
        async with Holder(r, 1) as h, forwarder(quality_cfg(redis_master)):
            await h.write(p101=1.0, p103=2.0, p105=1)
            await wait_listening(port)
            async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
                first = await gi(m)
                assert all(not first[ioa][1] for ioa in WATCHED) and first[4][0] is True, first
                t0 = time.monotonic()
                h.alive = False
                await until(lambda: all(spont_q(m, i) and spont_q(m, i)[-1][1] for i in (1001, 1003, 1)), 10,
                            "NT on the RTU's values")
                took = time.monotonic() - t0
                assert took <= 2 * TTL_MS / 1000 + 1.0, took
                await until(lambda: spont_q(m, 4) and spont_q(m, 4)[-1] == (False, False), 5, "link point 0")
                assert time.monotonic() - t0 <= 2 * TTL_MS / 1000 + 1.0
                h.alive = True
                await asyncio.sleep(2 * TICK_S)
                await h.write(p101=5.0)
                await until(lambda: spont_q(m, 1001)[-1] == (pytest.approx(5.0), False), 5, "fresh, NT cleared")
                await until(lambda: not spont_q(m, 1003)[-1][1] and spont_q(m, 4)[-1] == (True, False), 5,
                            "NT cleared on the unchanged value, link point back to 1")
    finally:
        await r.aclose()


async def test_holder_that_stops_polling_gets_nt_after_the_configured_polls(redis_master: RedisProc,
                                                                              feproot: Path) -> None:
    """The holder keeps its lease but completes no poll: NT after quality_stale_polls poll periods (RTU 1
    polls every 500 ms) plus one lease tick; polls again: NT cleared."""
    port = free_port()
    replace_config(redis_master.client(), se104s_rows(feproot, port))
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)
    try:
        async with Holder(r, 1) as h, forwarder(quality_cfg(redis_master, quality_stale_polls=2)):
            await h.write(p101=1.0, p103=2.0, p105=1)
            await wait_listening(port)
            async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
                await gi(m)
                await asyncio.sleep(1.5)  # polling on: nothing turns NT
                assert not any(q for i in WATCHED for _, q in spont_q(m, i))
                t0 = time.monotonic()
                h.polling = False
                await until(lambda: all(spont_q(m, i) and spont_q(m, i)[-1][1] for i in (1001, 1003, 1)), 10,
                            "NT on the RTU's values")
                took = time.monotonic() - t0
                assert 2 * 0.5 - TICK_S <= took <= 2 * 0.5 + 2 * TICK_S + 1.0, took
                assert not any(q for _, q in spont_q(m, 4))  # the link point is not judged by polls
                h.polling = True
                await until(lambda: all(not spont_q(m, i)[-1][1] for i in (1001, 1003, 1)), 5, "NT cleared")
    finally:
        await r.aclose()


async def test_nt_on_sefeps_and_the_modbus_trains_quality_unit(redis_master: RedisProc, feproot: Path) -> None:
    """The same verdict on the other protocols: sefeps events carry quality 0x40, the modbus_trains quality
    unit reads 0x40 at the value's address; both clear when the holder is back."""
    rows, _ = db.read_rows(feproot / "db" / "SEMODEL.db")
    ports = {10: free_port(), 11: free_port(), 12: free_port()}
    rows["T004_RTU"] = [dict(x, LISTENPORT=ports[x["RTUID"]]) if x["RTUID"] in ports else x
                        for x in rows["T004_RTU"]]
    replace_config(redis_master.client(), rows)
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)
    nt = int(Quality.NT)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(quality_cfg(redis_master), stop, {"quality_unit": 9}))
        async with Holder(r, 1) as h1, Holder(r, 2) as h2:
            await h1.write(p101=3.0)
            await h2.write(p201=4.5)
            for p in ports.values():
                await wait_listening(p)
            # the runner passes its options to every server; quality_unit is modbus_trains'
            sef = SefepsClient("127.0.0.1", ports[12])
            await sef.connect()
            mb = AsyncModbusTcpClient("127.0.0.1", port=ports[11], timeout=2, retries=0)
            assert await mb.connect()
            try:
                img = await sef.wait_image()
                assert img[1][0] == pytest.approx(3.0) and not img[1][1] & nt
                h1.alive = h2.alive = False
                while True:
                    _, addr, value, q, _ = await sef.next_change(5)
                    if addr == 1 and q & nt:
                        assert value == pytest.approx(3.0)
                        break

                async def mb_quality() -> int:
                    return (await mb.read_input_registers(0, count=2, device_id=9)).registers[0]
                end = time.monotonic() + 5
                while not (await mb_quality()) & nt:
                    assert time.monotonic() < end, "NT on the quality unit"
                    await asyncio.sleep(0.1)
                h1.alive = h2.alive = True
                while True:
                    _, addr, value, q, _ = await sef.next_change(5)
                    if addr == 1 and not q & nt:
                        break
                end = time.monotonic() + 5
                while (await mb_quality()) & nt:
                    assert time.monotonic() < end, "NT cleared on the quality unit"
                    await asyncio.sleep(0.1)
            finally:
                mb.close()
                await sef.close()
                stop.set()
                await asyncio.wait_for(task, 10)
    finally:
        await r.aclose()


async def test_master_left_behind_sets_nt_on_every_value_then_demotion_clears_it(
        redis_pair: tuple[RedisProc, RedisProc], feproot: Path) -> None:
    """keepalived moved the VIP to the peer and promoted its Redis, and this node's Redis stayed a master
    (docs/ha.md): nothing here moves any more, so every value this node serves is NT, the link (virtual)
    points included, within two checks; when this Redis becomes a replica of the new master, NT clears."""
    async with demotion_scene(redis_pair, feproot) as (r, rp, h, m):
        await asyncio.sleep(2.5)  # the peer follows this master: not left behind, nothing NT
        assert not any(spont_q(m, i) and spont_q(m, i)[-1][1] for i in WATCHED)
        t0 = time.monotonic()
        await rp.replicaof("NO", "ONE")   # the VIP's Redis promoted; ours stays a master
        h.r = rp                          # the holder writes through the VIP, to the new master
        await until(lambda: all(spont_q(m, i) and spont_q(m, i)[-1][1] for i in WATCHED), 10,
                    "NT on every watched value")
        took = time.monotonic() - t0
        assert took <= 2 * TICK_S + 1.0 + 1.0, took   # two checks (the probe runs beside the first)
        during = await gi(m)
        assert all(during[ioa][1] for ioa in WATCHED), during
        await h.write(p101=9.0)           # on the new master only
        await demote(r, rp)               # demoted: follows the master again
        await until(lambda: spont_q(m, 1001)[-1] == (pytest.approx(9.0), False), 10,
                    "fresh value with NT cleared")
        after = await gi(m)
        assert all(not after[ioa][1] for ioa in WATCHED), after


async def test_demoted_under_a_connected_master_it_sends_every_change_made_meanwhile(
        redis_pair: tuple[RedisProc, RedisProc], feproot: Path) -> None:
    """The rolling upgrade's second step on the node that held the VIP: the peer's Redis is promoted and the
    holder writes there while this node's Redis is still a master, then this one is demoted (REPLICAOF) and
    catches up. Its forwarder, still serving a master, reads the stream on from its last entry, so each
    change made on the new master meanwhile reaches the master as an event of its own. It took REPLICAOF's
    UNBLOCKED answer to its stream read for a lost connection and reloaded the full image, which sends only
    each point's latest value: here 9.0 never came (the upgrade's SCADA master missed one device tick)."""
    async with demotion_scene(redis_pair, feproot) as (r, rp, h, m):
        await rp.replicaof("NO", "ONE")   # the VIP's Redis promoted; ours still a master
        h.r = rp                          # the holder writes through the VIP, to the new master
        await h.write(p101=9.0)
        await h.write(p101=10.0)
        await demote(r, rp)               # catches up with the new master
        await until(lambda: any(v == pytest.approx(10.0) for v, _ in spont_q(m, 1001)), 10, "10.0 at the master")
        assert [v for v, _ in spont_q(m, 1001) if v in (9.0, 10.0)] == [9.0, 10.0], spont_q(m, 1001)


async def demote(r: aredis.Redis, rp: aredis.Redis) -> None:
    """`r`'s Redis made a replica of `rp`'s (keepalived's script, or start.sh, at the VIP's move)."""
    kw = rp.connection_pool.connection_kwargs
    await r.replicaof(kw["host"], kw["port"])


@contextlib.asynccontextmanager
async def demotion_scene(redis_pair: tuple[RedisProc, RedisProc], feproot: Path
                         ) -> AsyncIterator[tuple[aredis.Redis, aredis.Redis, Holder, Any]]:
    """`rule1_scene` on this node's Redis (`r`, a master) with the forwarder's VIP at its peer's (`rp`, its
    replica, in step: the functions and the lease there), which a test promotes as keepalived does when the
    VIP moves: (r, rp, holder, c104 master)."""
    mine, peer = redis_pair
    port = free_port()
    replace_config(mine.client(), se104s_rows(feproot, port))
    r = aredis.Redis(host=mine.host, port=mine.port, decode_responses=True)
    rp = aredis.Redis(host=peer.host, port=peer.port, decode_responses=True)
    await redisfns.load_async(r)
    peer.wait_synced()
    cfg = dataclasses.replace(quality_cfg(mine, quality_replica_down_s=30.0), vip=peer.host, port=peer.port)
    try:
        async with rule1_scene(r, cfg, port) as (h, m):
            for _ in range(100):   # the peer has the functions and the lease (replicated) before it is promoted
                if await rp.function_list() and await rp.hget(ks.lease(1), "holder") == "A":
                    break
                await asyncio.sleep(0.05)
            yield r, rp, h, m
    finally:
        await r.aclose()
        await rp.aclose()
