"""Redis restarted from an older copy of its data set (an RDB saved before the last writes: `SHUTDOWN NOSAVE` or
a crash, then a start from that file), and Redis wiped (FLUSHALL) under running services: one node of
tests/faults/test_single_node.py (real redis-server, fep-plcsim PLCs, real fep-acquirer and fep-forwarder, the api
in the test, a sefeps master)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import redis.asyncio as aredis

from fep_loader.store import replace_config
from fep_tools.sefeps_client import SefepsClient
from fepha import keyspace as ks
from tests.faults.test_audit import AI_RTU1, of, recorded, until
from tests.faults.test_single_node import Node, valid

V1, V2 = 111.0, 222.0


def images_of(c: SefepsClient, addr: int) -> list[tuple[float, int]]:
    """From now on, (value, quality) of `addr` in every full image `c` receives (a reconnected forwarder's)."""
    got: list[tuple[float, int]] = []
    handle = c._handle

    def on_message(msg: dict[str, Any]) -> None:
        n = c.images
        handle(msg)
        if c.images != n and addr in c.image:
            got.append((round(c.image[addr][0], 3), c.image[addr][1]))

    c._handle = on_message  # type: ignore[method-assign]
    return got


async def served(node: Node, pid: int) -> tuple[float | None, bool, str | None]:
    """(value, stale, the NT reason) of `pid` as the api shows it."""
    j = (await node.api.get(f"/api/v1/points/{pid}")).json()
    return j.get("value"), bool(j.get("stale")), j.get("nt_reason")


async def saved_then_changed(node: Node, r: aredis.Redis, seen: list[tuple[float, int, float, int]]) -> None:
    """Point 101 at V1, reached the master, saved (SAVE: the copy), held past the lease's TTL (the copy's lease
    lapses: lease_ttl_s 1 + one tick), then at V2, reached the master."""
    node.sim.set_value(101, V1)
    await until(lambda: (V1, 0) in of(seen, AI_RTU1), 5, "V1 at the master")
    await r.save()
    await asyncio.sleep(1.3)
    node.sim.set_value(101, V2)
    await until(lambda: (V2, 0) in of(seen, AI_RTU1), 5, "V2 at the master")
    await asyncio.sleep(0.3)


def killed(node: Node) -> None:
    """SIGKILL of the node's Redis (as SHUTDOWN NOSAVE: nothing saved)."""
    node.redis.proc.kill()  # type: ignore[union-attr]
    node.redis.proc.wait(5)  # type: ignore[union-attr]
    node.redis.proc = None


async def test_a_value_rolled_back_by_a_restart_from_an_older_copy_is_never_shown_current(node: Node) -> None:
    """Point 101 at V1 is saved (SAVE), then changes to V2; Redis is killed and started again from that file, so
    it holds V1, written before V2, with the lease record of then. Neither the api (polled every few ms) nor the
    sefeps master ever shows V1 current after the restart: not before the holder's first tick (the copy's lease
    lapsed), and not between that tick, which renews the lease, and the holder's write of V2 (the record is
    older than the holder's last write: `rolled_back_ms`). V2 is current again within 2 s. Before: the api showed
    V1 valid and topical from the holder's first tick until its write, 50 ms (procfaults audit)."""
    await valid(node, 101)
    r = aredis.Redis(host=node.redis.host, port=node.redis.port, decode_responses=True)
    try:
        async with recorded(node) as (c, seen):
            images = images_of(c, AI_RTU1)
            await saved_then_changed(node, r, seen)
            killed(node)
            mark = len(seen)
            node.redis.start()  # from the file SAVE wrote
            t0 = time.monotonic()
            shown: list[tuple[float, float | None, bool, str | None]] = []
            while time.monotonic() - t0 < 2.0:
                shown.append((time.monotonic() - t0, *(await served(node, 101))))
                await asyncio.sleep(0.003)
            after = of(seen[mark:], AI_RTU1)
        current_v1 = [s for s in shown if s[1] == V1 and not s[2]]
        assert not current_v1, current_v1[:5]
        assert (V1, 0) not in after + images, (after, images)
        assert shown[-1][1:3] == (V2, False), shown[-5:]
        assert (round(c.image[AI_RTU1][0], 3), c.image[AI_RTU1][1]) == (V2, 0), (c.image[AI_RTU1], after, images)
        reasons = {s[3] for s in shown if s[1] == V1}
        print(f"V1 shown {len([s for s in shown if s[1] == V1])} times, always NT: {reasons}; at the master: {after}, "
              f"images {images}")
        assert "rolled back" in node.log("acquirer"), node.log("acquirer")[-2000:]
    finally:
        await r.aclose()


async def test_values_come_back_after_flushall_and_sysload_init(node: Node) -> None:
    """FLUSHALL under the running services, then `sysload init`: the holder is granted the lease again at
    epoch 1, the epoch it held (the lease and its high-water are gone), and writes its full image: every value
    of RTUs 1 and 2 is in Redis again within 2 s, though none changed. Before: the grant at the same epoch was
    no gain to the holder, no image was written, and the value hashes stayed empty until each point changed."""
    await valid(node, 101, 202)
    r = aredis.Redis(host=node.redis.host, port=node.redis.port, decode_responses=True)
    try:
        want = {rid: await r.hlen(ks.values(rid)) for rid in (1, 2)}
        assert all(want.values()), want
        await r.flushall()
        await asyncio.sleep(0.5)
        replace_config(node.redis.client(), node.rows, source="sample")
        t0 = time.monotonic()
        while {rid: await r.hlen(ks.values(rid)) for rid in (1, 2)} != want:
            assert time.monotonic() - t0 < 2.0, ({rid: await r.hlen(ks.values(rid)) for rid in (1, 2)}, want,
                                                 await r.hgetall(ks.lease(1)))
            await asyncio.sleep(0.05)
        print(f"every value back {time.monotonic() - t0:.2f} s after sysload init; lease {await r.hgetall(ks.lease(1))}")
        await valid(node, 101, 202, timeout=3)
    finally:
        await r.aclose()


async def test_the_image_after_a_reconnect_goes_out_under_the_new_data_sets_verdict(node: Node) -> None:
    """As above, with the acquirer frozen (SIGSTOP) as Redis is killed, so nothing renews the copy's lapsed
    lease: the forwarder reconnects to the restarted Redis and sends V1 to the sefeps master with NT (lease of
    A lapsed), never topical; after SIGCONT the holder writes V2, topical. Before: the image went out under the
    verdict of before the outage (topical) until the next check."""
    await valid(node, 101)
    acq = node.procs["acquirer"]
    r = aredis.Redis(host=node.redis.host, port=node.redis.port, decode_responses=True)
    try:
        async with recorded(node) as (c, seen):
            images = images_of(c, AI_RTU1)
            await saved_then_changed(node, r, seen)
            acq.send_signal(signal.SIGSTOP)
            try:
                killed(node)
                mark = len(seen)
                node.redis.start()
                await until(lambda: images, 3, "the new image")
                await asyncio.sleep(0.5)
            finally:
                acq.send_signal(signal.SIGCONT)
            await until(lambda: (round(c.image[AI_RTU1][0], 3), c.image[AI_RTU1][1]) == (V2, 0), 3, "V2 topical again")
            after = of(seen[mark:], AI_RTU1)
        assert images and images[0][0] == V1 and (V1, 0) not in images + after, (images, after)
        print(f"at the master after the restart: images {images}, changes {after}")
    finally:
        await r.aclose()


async def test_a_young_copy_is_not_current_before_the_holders_first_tick(node: Node) -> None:
    """The copy saved a moment before V2 (0.3 s: its lease not lapsed, its last poll within stale_polls), so
    nothing but its age tells it: the api and the sefeps master never show V1 current after the restart (the
    lease was renewed under the Redis's former replication id, `replid`). Before: in 1 of 3 runs the api showed
    V1 valid 0-54 ms after the restart and the master got it topical in the reconnected forwarder's image."""
    await valid(node, 101)
    r = aredis.Redis(host=node.redis.host, port=node.redis.port, decode_responses=True)
    try:
        async with recorded(node) as (c, seen):
            images = images_of(c, AI_RTU1)
            node.sim.set_value(101, V1)
            await until(lambda: (V1, 0) in of(seen, AI_RTU1), 5, "V1 at the master")
            node.sim.set_value(101, V2)
            await r.save()
            await until(lambda: (V2, 0) in of(seen, AI_RTU1), 5, "V2 at the master")
            await asyncio.sleep(0.2)
            killed(node)
            mark = len(seen)
            node.redis.start()
            t0 = time.monotonic()
            shown = []
            while time.monotonic() - t0 < 1.5:
                shown.append((time.monotonic() - t0, *(await served(node, 101))))
                await asyncio.sleep(0.003)
            after = of(seen[mark:], AI_RTU1)
        assert not [s for s in shown if s[1] == V1 and not s[2]], shown[:5]
        assert (V1, 0) not in after + images, (after, images)
        assert shown[-1][1:3] == (V2, False), shown[-5:]
        print(f"V1 shown {len([s for s in shown if s[1] == V1])} times, NT: {({s[3] for s in shown if s[1] == V1})}")
    finally:
        await r.aclose()
