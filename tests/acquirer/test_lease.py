"""Lease at start-up with both nodes (lease_tick in fepha/functions.lua + the acquirer's housekeeping): a free
lease goes only to a node that reaches the device, each RTU ends with exactly one holder, and nothing
flaps while both nodes reach every device."""

from __future__ import annotations

import asyncio
import time

from fepha import keyspace as ks
from tests.acquirer.helpers import Node, free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.stays import astays


async def test_start_up_lease_goes_to_the_node_that_reaches(redis_master, feproot):
    rows = merge(*(rtu_rows(rid, free_port()) for rid in (1, 2, 3)))
    model = load(redis_master, rows)
    sim = await start_sim(model)
    sim.cut(1, 1)  # RTU 1: only channel 2 answers; A never leaves channel 1, so only B reaches it
    await sim.settle()
    a = Node(node_cfg(feproot, redis_master, "A", channel_switch_s=100))
    b = Node(node_cfg(feproot, redis_master, "B"))
    try:
        r = a.master
        await until(lambda: b.acq.runners and b.acq.runners[1].lease.held, 5)
        await until(lambda: all(a.acq.runners[i].lease.held or b.acq.runners[i].lease.held for i in (2, 3)), 3)
        # 16 lease ticks, > 1 takeover time, > 2 lease TTLs (helpers.FAST): no move, checked all along
        n0 = await r.xlen(ks.LEASE_EVENTS)

        async def no_new_event() -> bool:
            return await r.xlen(ks.LEASE_EVENTS) == n0

        await astays(no_new_event, 1.6, "no lease move while both nodes reach every device", interval=0.05)
        events = [e for _, e in await r.xrange(ks.LEASE_EVENTS)]
        assert sorted(int(e["rtu"]) for e in events) == [1, 2, 3], events  # one grant per RTU, no flapping
        assert all(e["reason"] == "initial" and e["from"] == "" and e["epoch"] == "1" for e in events), events
        first = {int(e["rtu"]): e["to"] for e in events}
        assert first[1] == "B"  # not A first (it never reached RTU 1) and then B by takeover
        for rid in (1, 2, 3):
            holder = await r.hget(ks.lease(rid), "holder")
            views = [n.cfg.node_id for n in (a, b) if n.acq.runners[rid].lease.held]
            assert views == [holder] == [first[rid]], (rid, views, holder)
        assert a.acq.metrics.total["lease_changes"] + b.acq.metrics.total["lease_changes"] == 3
        assert not a.acq.runners[1].reaches() and b.acq.runners[2].reaches() and a.acq.runners[2].reaches()
        # B (holder of RTU 1) writes its values; A never wrote anything for it
        t0 = time.monotonic()
        sim.set_value(1001, 17)
        await until(lambda: _value_is(r, 1, 1001, 17), 3)
        assert time.monotonic() - t0 < 3
    finally:
        await asyncio.gather(a.stop(), b.stop())
        await sim.stop()


async def _value_is(r, rtu: int, pid: int, want: int) -> bool:
    raw = await r.hget(ks.values(rtu), str(pid))
    return raw is not None and raw.split("|")[0] == str(want)


async def test_a_holder_reaching_its_device_in_part_is_taken_over_without_flapping(redis_master, feproot):
    """Channel 1 (127.0.0.1) leaves block hr 100 unanswered at every poll, channel 2 (127.0.0.2) answers
    every block. A holds the lease and stays on channel 1 (switch time 100 s): it reaches the device in
    part only. B switches to channel 2 and reaches it fully, so it takes over after takeover_s; A, still
    partial, never takes it back. Before: A counted as reaching, kept the lease for good."""
    from tests.acquirer.test_block_faults import Device
    from tests.acquirer.test_mbtcp import serve

    bad, good = Device(), Device()
    bad.script[100] = "silent"
    port = free_port()
    servers = [await serve(bad, host="127.0.0.1", port=port), await serve(good, host="127.0.0.2", port=port)]
    rows = rtu_rows(1, port, points=0)
    rows["T011_POINT"] = [{**rows["T011_POINT"][0], "PNTID": 1000 + i, "NAME": f"p{i}", "KIND": "AI",
                           "AREA": "hr", "ADDRESS": 100 * i, "DATATYPE": "uint16"} for i in range(3)]
    load(redis_master, merge(rows))
    a = Node(node_cfg(feproot, redis_master, "A", channel_switch_s=100))
    b: Node | None = None
    try:
        r = a.master
        await until(lambda: a.acq.runners[1].lease.held, 5)
        b = Node(node_cfg(feproot, redis_master, "B"))
        await until(lambda: b.acq.runners and b.acq.runners[1].lease.held, 4)
        events = [e for _, e in await r.xrange(ks.LEASE_EVENTS)]
        assert [(e["to"], e["reason"]) for e in events] == [("A", "initial"), ("B", "takeover")], events
        assert a.acq.runners[1].reaches() and not a.acq.runners[1].reaches_fully()

        async def no_new_event() -> bool:
            return await r.xlen(ks.LEASE_EVENTS) == 2

        await astays(no_new_event, 1.5, "no move back to the partial node", interval=0.05)
    finally:
        await asyncio.gather(a.stop(), *([b.stop()] if b else []))
        for server, _ in servers:
            server.close()
            await server.wait_closed()
