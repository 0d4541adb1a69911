"""The acquirer's master client re-sends a command whose connection was dropped at once, on a new
connection (services/acquirer/app.py `master_client`; docs/ha.md "The holder at a VIP move"). With
redis-py's default policy the executor's BLPOP, dropped by the role watch at a VIP move, was re-sent only
after a random backoff of up to 2 s, and a control queued on the new master waited with it."""

from __future__ import annotations

import asyncio
import random
import time

from fep_acquirer.app import master_client
from fepha import rolewatch
from tests.acquirer.helpers import node_cfg


async def test_a_blpop_dropped_at_a_move_is_resent_at_once(redis_master, feproot, monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.9)   # redis-py's default backoff would be 1.8 s
    master = master_client(node_cfg(feproot, redis_master, "A"))
    other = redis_master.client()
    try:
        pop = asyncio.create_task(master.blpop(["fep:test:q"], timeout=5))
        await asyncio.sleep(0.2)                          # the BLPOP is waiting in Redis
        await rolewatch.drop_connections(master)          # what the role watch does at a move
        t0 = time.monotonic()
        await asyncio.sleep(0.05)
        other.rpush("fep:test:q", "7")
        got = await asyncio.wait_for(pop, 5)
        assert list(got) == ["fep:test:q", "7"]
        assert time.monotonic() - t0 < 0.5
    finally:
        await master.aclose()
