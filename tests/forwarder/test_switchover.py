"""A SCADA master that moves from node A's forwarder to node B's resumes from its acknowledged position
(fep:fwd:ack:{rtu}): two real forwarders (node A on 127.0.0.1, node B on 127.0.0.2, same port) on one real
redis-server, real clients. It gets what it had not acknowledged, in order, as events, and no event it had;
then a full image (sefeps: the cursor is per address, docs/sefeps.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from fep_loader.store import replace_config
from fep_tools.sefeps_client import SefepsClient
from fepha import keyspace as ks
from fepha import redisfns
from fepha.semodel import db
from tests.redisproc import RedisProc, free_port

from .test_runner import Writer, forwarder, node_cfg

SEFEPS = 12  # sample RTU; its AI at addr 1 forwards point 101 of acquisition RTU 1


def only_rtu(feproot: Path, rid: int, port: int) -> dict[str, list[dict[str, Any]]]:
    rows, problems = db.read_rows(feproot / "db" / "SEMODEL.db")
    assert not problems
    rows["T004_RTU"] = [dict(r, LISTENPORT=port) if r["RTUID"] == rid else r for r in rows["T004_RTU"]
                        if r["RTUID"] == rid or r["RTUTYPE"] != 2]
    for t in ("T005_ZFAI", "T006_ZFDI", "T007_ZFACC", "T008_ZFDO", "T009_ZFAO"):
        rows[t] = [r for r in rows.get(t, []) if r["RTUID"] == rid]
    return rows


async def listening(host: str, port: int) -> None:
    end = time.monotonic() + 10
    while True:
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            assert time.monotonic() < end, f"nothing listens on {host}:{port}"
            await asyncio.sleep(0.05)


async def until_cursor(r: aredis.Redis, rid: int, ident: str, at_least: str, timeout: float = 5.0) -> str:
    want = tuple(map(int, at_least.split("-")))
    end = time.monotonic() + timeout
    while True:
        cur = await r.hget(ks.fwd_acked(rid), ident)
        if cur and tuple(map(int, cur.split("-"))) >= want:
            return cur
        assert time.monotonic() < end, f"cursor of {ident} is {cur}, waiting for {at_least}"
        await asyncio.sleep(0.05)


async def last_entry(r: aredis.Redis) -> str:
    return (await r.xrevrange(ks.CHANGES, "+", "-", count=1))[0][0]


async def values_until(c: SefepsClient, last: float, before: float, caplog: pytest.LogCaptureFixture) -> list[Any]:
    """The values of the changes `c` receives up to the one of value `last`, `before` being the value held
    (good) before them. A change that repeats the value before it with another quality is left out only when
    a forwarder logged a stall meanwhile: every master then sees NT set and cleared, values unchanged
    (docs/forwarder.md "A stalled forwarder": the test process starved for over 1 s on a loaded machine).
    A repeat with the same quality is a duplicate and stays in."""
    got: list[Any] = []
    prev = (before, 0)
    while not got or got[-1] != last:
        _, _, v, q, _ = await c.next_change()
        quality_only = v == prev[0] and q != prev[1]
        prev = (v, q)
        if quality_only and "was stalled for" in caplog.text:
            continue
        got.append(v)
    return got


async def test_sefeps_master_moves_to_the_other_node_without_loss_or_duplicates(
        redis_master: RedisProc, feproot: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    replace_config(redis_master.client(), only_rtu(feproot, SEFEPS, port))
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)
    w = Writer(r)
    await w.write(1, p101=0.0)
    cfg_a = node_cfg(redis_master)
    cfg_b = dataclasses.replace(cfg_a, node_id="B", bind="127.0.0.2")
    try:
        async with forwarder(cfg_a), forwarder(cfg_b):
            await listening("127.0.0.1", port)
            await listening("127.0.0.2", port)
            c = SefepsClient("127.0.0.1", port)
            await c.connect()
            await c.wait_image()
            await until_cursor(r, SEFEPS, "127.0.0.1", await last_entry(r))
            await asyncio.sleep(1.2)  # node B has read the master's cursor: it keeps what it has not acked
            for i in range(1, 21):
                await w.write(1, p101=float(i))
            assert await values_until(c, 20.0, 0.0, caplog) == [float(i) for i in range(1, 21)]
            await until_cursor(r, SEFEPS, "127.0.0.1", await last_entry(r))
            await c.close()
            for i in range(21, 31):  # while the master is away
                await w.write(1, p101=float(i))
            c.host = "127.0.0.2"
            welcome = await c.connect(resume=True)
            assert welcome["node"] == "B" and "seq" in welcome  # resumed from its cursor
            assert await values_until(c, 30.0, 20.0, caplog) == [float(i) for i in range(21, 31)]
            end = time.monotonic() + 5  # then the full image (the cursor is per address, docs/sefeps.md)
            while c.images < 2:
                assert time.monotonic() < end, "no image after the resumed events"
                await asyncio.sleep(0.02)
            assert c.image[1][0] == 30.0 and c.changes.empty()
            await w.write(1, p101=31.0)
            assert (await c.next_change())[2] == 31.0  # then live data
            await asyncio.sleep(0.3)
            assert c.changes.empty() and c.images == 2
            await c.close()
            # a master with no image of its own (no resume) gets the full image, never history
            fresh = SefepsClient("127.0.0.2", port)
            await fresh.connect()
            img = await fresh.wait_image()
            assert img[1][0] == 31.0 and fresh.changes.empty()
            await fresh.close()
    finally:
        await r.aclose()


async def test_a_reload_that_keeps_the_server_reads_its_history_back_from_the_stream(redis_master: RedisProc,
                                                                                 feproot: Path) -> None:
    """A new configuration that keeps the sefeps server reloads its image, which resets its history; the
    runner reads the stream back to the masters' oldest recorded position (docs/forwarder.md), so a master
    away since then is still resumed with the changes after it, as events, then the image."""
    port = free_port()
    rows = only_rtu(feproot, SEFEPS, port)
    replace_config(redis_master.client(), rows)
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)
    w = Writer(r)
    await w.write(1, p101=1.0)
    await r.hset(ks.fwd_acked(SEFEPS), "127.0.0.1", await last_entry(r))  # a master away since value 1
    try:
        async with forwarder(node_cfg(redis_master)):
            await listening("127.0.0.1", port)
            probe = SefepsClient("127.0.0.1", port)
            probe.acks = False  # moves no cursor
            before = (await probe.connect())["session"]
            await probe.wait_image()
            for i in (2, 3):
                await w.write(1, p101=float(i))
            rows["T004_RTU"] = [dict(t, NAME=t["NAME"] + " (renamed)") if t["RTUID"] == 1 else t
                                for t in rows["T004_RTU"]]
            replace_config(redis_master.client(), rows)  # RTU 12 unchanged: its server is kept
            end = time.monotonic() + 5
            while probe.images < 2:  # the kept server's connections get its new image
                assert time.monotonic() < end, "no image after the reload"
                await asyncio.sleep(0.02)
            await probe.close()
            await w.write(1, p101=4.0)
            c = SefepsClient("127.0.0.1", port)
            c.session, c.seq = "the-session-it-had", 7
            try:
                welcome = await c.connect(resume=True)
                assert "seq" in welcome and welcome["session"] == before  # resumed by the same server
                got = [(await c.next_change())[2] for _ in range(3)]
                assert got == [2.0, 3.0, 4.0]
            finally:
                await c.close()
    finally:
        await r.aclose()
