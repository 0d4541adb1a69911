"""The acquirer's master client re-sends a command whose connection was dropped at once, on a new
connection (services/acquirer/app.py `master_client`; docs/ha.md "The holder at a VIP move"). With
redis-py's default policy the executor's BLPOP, dropped by the role watch at a VIP move, was re-sent only
after a random backoff of up to 2 s, and a control queued on the new master waited with it."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from fep_acquirer.app import local_client, master_client
from fepha import rolewatch
from tests.acquirer.helpers import node_cfg


async def resent_at_once(client, redis_master, drop) -> None:
    """A BLPOP of `client` waiting in Redis, its connection dropped by `drop()`, the list pushed 0.05 s
    later: the BLPOP answers within 0.5 s (re-sent at once), not after redis-py's default backoff (1.8 s with
    the random draw the tests fix at 0.9). `client` is closed."""
    other = redis_master.client()
    try:
        pop = asyncio.create_task(client.blpop(["fep:test:q"], timeout=5))
        await asyncio.sleep(0.2)                          # the BLPOP is waiting in Redis
        await drop(other)
        t0 = time.monotonic()
        await asyncio.sleep(0.05)
        other.rpush("fep:test:q", "7")
        got = await asyncio.wait_for(pop, 5)
        assert list(got) == ["fep:test:q", "7"]
        assert time.monotonic() - t0 < 0.5
    finally:
        await client.aclose()
        other.close()


async def test_a_blpop_dropped_at_a_move_is_resent_at_once(redis_master, feproot, monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.9)   # redis-py's default backoff would be 1.8 s
    master = master_client(node_cfg(feproot, redis_master, "A"))

    async def move(_other) -> None:
        await rolewatch.drop_connections(master)          # what the role watch does at a move

    await resent_at_once(master, redis_master, move)


def _forwarder_local(cfg):
    from fep_forwarder import app as fwd_app
    return fwd_app.Forwarder(cfg, asyncio.Event()).local_rw


async def _kill_normal(other) -> None:
    assert other.client_kill_filter(_type="normal", skipme=True) >= 1


@pytest.mark.parametrize("build", [local_client, _forwarder_local], ids=["acquirer", "forwarder"])
async def test_a_local_command_whose_connection_is_killed_is_resent_at_once(redis_master, feproot, monkeypatch, build):
    """`CLIENT KILL TYPE normal` while a command of the acquirer's (or the forwarder's) local client is in
    flight (a BLPOP here, a ROLE of the role watch in the field): it is re-sent at once on a new connection.
    With redis-py's default it came back after a random backoff (up to 1.9 s measured for ROLE), past the
    role_watch_s a tick waits for the role."""
    monkeypatch.setattr(random, "random", lambda: 0.9)   # redis-py's default backoff would be 1.8 s
    await resent_at_once(build(node_cfg(feproot, redis_master, "A")), redis_master, _kill_normal)
