"""A holder whose link to the master Redis is slow, not cut (docs/ha.md "Degraded links").

Seen in the HA lab with 400 ± 200 ms added each way between the nodes: the holder on B, writing through
the VIP to A's master, lost its leases at every tick ("lease tick waiting on the master Redis ... for more
than lease_ttl_s"): a tick made its round trips one after the other (INFO, the lease calls, the heartbeat,
the metrics), so with 0.8 s per round trip the renewals came more than lease_ttl_s (3 s) apart. A link
that answers within a second is working: the lease must stay with its holder, renewed every tick. The
other node bids for the leases all along (it reaches the devices, on the master's side of the link), so a
lapse shows as a lease taken by it."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import redis.asyncio as aredis

from fep_acquirer.app import Acquirer
from fepha import keyspace as ks
from fepha import redisconn, redisfns
from tests.acquirer.helpers import free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.redisproc import RedisProc
from tests.vip import Vip

ONE_WAY_S = 0.4  # a round trip of 0.8 s
WATCH_S = 12.0
PASSWORD = "slow-link"


async def test_a_lease_renewed_through_a_slow_link_stays_with_its_holder(feproot) -> None:
    """With a password, as compose.yml runs Redis: a new connection costs AUTH and CLIENT SETINFO, two
    round trips before its first command."""
    with RedisProc(password=PASSWORD) as redis_master:
        await slow_holder(redis_master, feproot)


async def slow_holder(redis_master: RedisProc, feproot) -> None:
    rows = merge(rtu_rows(1, free_port()), rtu_rows(2, free_port()))
    model = load(redis_master, rows)
    sim = await start_sim(model)
    vip = Vip((redis_master.host, redis_master.port), delay_s=ONE_WAY_S)
    vip_port = await vip.start()
    # the product's timers (cfg/fep-ha.cfg): tick 1 s, TTL 3 s, heartbeat 2 s
    cfg = dataclasses.replace(node_cfg(feproot, redis_master, "B", lease_tick_s=1.0, lease_ttl_s=3.0,
                                       heartbeat_s=2.0, takeover_s=90.0, socket_timeout_s=2.0,
                                       password=PASSWORD),
                              port=vip_port)
    master = redisconn.master_async(cfg)
    local = redisconn.local_async(cfg)
    acq = Acquirer(cfg, master, local)
    stop = asyncio.Event()
    task = asyncio.create_task(acq.run(stop, config_check_s=1.0))
    a_conn = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True,
                          password=PASSWORD)
    bidding = asyncio.Event()

    async def node_a() -> None:  # bids for every lease every 0.2 s, straight on the master
        while not stop.is_set():
            if bidding.is_set():
                for rtu in (1, 2):
                    await a_conn.fcall(*redisfns.lease_tick(rtu, "A", True, 3000, 90_000, 0).argv)
            await asyncio.sleep(0.2)

    a_task = asyncio.create_task(node_a())
    try:
        await until(lambda: acq.runners and all(r.lease.held for r in acq.runners.values()), 20)
        bidding.set()
        epochs = {i: r.lease.epoch for i, r in acq.runners.items()}
        end = time.monotonic() + WATCH_S
        while time.monotonic() < end:
            lost = [i for i, r in acq.runners.items() if not r.lease.held or r.lease.epoch != epochs[i]]
            assert not lost, f"leases {lost} lapsed through a link of {2 * ONE_WAY_S} s round trip"
            await asyncio.sleep(0.05)
        changes = redis_master.client().xlen(ks.LEASE_EVENTS)
        assert changes == len(epochs), f"{changes} lease events for {len(epochs)} RTUs taken once"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await a_task
        await a_conn.aclose()
        await master.aclose()
        await local.aclose()
        await vip.close()
        await sim.stop()


async def test_polls_keep_their_schedule_and_short_changes_reach_redis_through_a_slow_link(feproot) -> None:
    """The holder's poll used to wait for its own write: with a 0.8 s round trip to the master it polled
    once per write, and the three round trips of a lease gain (the master's values, the replay, the image)
    held the polls for more than 2 s, so a value that lasted less than that was never read (HA lab, 400 ms
    row). Polled every 0.2 s right after the gain, a point takes 8 values of 0.45 s each: every one reaches
    the master once, in order, with the time of the poll that read it, the polls keep their schedule, and
    the writes keep up (those waiting go out together, one round trip for all)."""
    with RedisProc() as redis_master:
        rows = rtu_rows(1, free_port(), points=1, poll_ms=200)
        sim = await start_sim(load(redis_master, rows))
        vip = Vip((redis_master.host, redis_master.port), delay_s=ONE_WAY_S)
        vip_port = await vip.start()
        cfg = dataclasses.replace(node_cfg(feproot, redis_master, "B", lease_tick_s=1.0, lease_ttl_s=3.0,
                                           heartbeat_s=2.0, takeover_s=90.0, socket_timeout_s=2.0),
                                  port=vip_port)
        master, local = redisconn.master_async(cfg), redisconn.local_async(cfg)
        acq = Acquirer(cfg, master, local)
        stop = asyncio.Event()
        task = asyncio.create_task(acq.run(stop, config_check_s=1.0))
        r = redis_master.client()
        try:
            await until(lambda: acq.runners and acq.runners[1].lease.held, 20)
            polls0, t0 = acq.metrics.total["polls"], time.monotonic()
            set_at: list[int] = []
            for v in range(1, 9):
                sim.set_value(1000, v)
                set_at.append(int(time.time() * 1000))
                await asyncio.sleep(0.45)
            polled = (acq.metrics.total["polls"] - polls0) / (time.monotonic() - t0)
            t_last = time.monotonic() - 0.45
            await until(lambda: r.hget(ks.values(1), "1000").split("|")[0] == "8", 10, step=0.01)
            lag = time.monotonic() - t_last
            seen = [(int(f["1000"].split("|")[0]), int(f["1000"].split("|")[2]))
                    for _, f in r.xrange(ks.CHANGES) if "1000" in f]
            values = [v for v, _ in seen if v > 0]
            assert values == list(range(1, 9)), f"{seen}: values lost or written twice (polls {polled:.1f}/s)"
            for (v, ts), t in zip((x for x in seen if x[0] > 0), set_at, strict=True):
                assert t - 50 <= ts <= t + 450, (v, ts - t)  # the time of the poll that read it
            assert polled > 3.5, f"{polled:.1f} polls/s at a 0.2 s period"
            # the waiting writes go out together: the last value within a poll, the round trip in flight
            # and its own (1.8 s), not behind one round trip per value written before it
            assert lag < 2.5, f"the last value reached Redis {lag:.2f} s after it was set"
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
            await master.aclose()
            await local.aclose()
            await vip.close()
            await sim.stop()
