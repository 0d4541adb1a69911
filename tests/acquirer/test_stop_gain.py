"""No lease is gained, and no gain's writes are started, on the acquirer's way out.

A gain starts the Modbus runner's writes at the gain (`RtuRunner._write_at_gain`, a task of its own) that
the runner's stop cancels. A gain reported once that stop had begun started one nobody cancelled: seen in
CI as "test left asyncio tasks pending: acquirer-gain-1 RtuRunner._write_at_gain" after a planned stop on
the unreachable-master path, whose ticks (until the exit) still bid for leases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from types import SimpleNamespace

from fep_acquirer import app
from fep_acquirer.tasks import cancel_and_wait
from fepha import redisconn, redisfns
from tests.acquirer.helpers import free_port, load, lone_runner, merge, node_cfg, rtu_rows


async def test_a_lease_gained_while_the_runner_stops_starts_no_writes(redis_master, feproot) -> None:
    """The gain comes while the runner's stop waits for its task (as from a tick that read the runners
    before a reload or the acquirer's close stopped them): nothing is started, nothing left pending."""
    model = load(redis_master, merge(rtu_rows(1, free_port())))  # no device: the runner retries its connect
    async with lone_runner(feproot, redis_master, model, "B") as (r, runner):
        runner.samples = {1000: (7, 0)}
        runner.last_ok = time.monotonic()  # a poll just now: the gain's writes would go out at once
        runner.polled_ts_ms = int(time.time() * 1000)
        runner.start()
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(runner.stop())
        await asyncio.sleep(0)  # the stop has begun: it waits for the runner's task
        assert not stopping.done()
        holder, epoch, _ = await r.fcall(*redisfns.lease_tick(1, "B", True, 60_000, 90_000).argv)
        assert runner.lease.update(holder, int(epoch)) == "gained"
        runner.lease_gained()
        await stopping
        gain = runner._gain
        try:
            assert gain is None or gain.done(), f"a gain during the stop left {gain} behind"
        finally:
            await cancel_and_wait(gain)


async def test_the_planned_stop_bids_for_no_lease_when_the_master_is_unreachable(feproot) -> None:
    """Its last tick failed longer than lease_ttl_s ago: nothing is handed over, and the ticks until the
    exit (the control in flight is finished first) renew only what is held (`Housekeeping.stopping`)."""
    nowhere = SimpleNamespace(host="127.0.0.1", port=free_port())  # nothing listens: never reached
    cfg = node_cfg(feproot, nowhere, "A")  # type: ignore[arg-type]
    cfg = dataclasses.replace(cfg, local_port=nowhere.port)
    master, local = app.master_client(cfg), redisconn.local_async(cfg)
    acq = app.Acquirer(cfg, master, local)
    running = asyncio.create_task(asyncio.sleep(10))  # stands for the acquirer's tasks (run() started them)
    acq.tasks = [running]
    acq.house.master_ok = False
    acq.house.failing_since = time.monotonic() - 2 * cfg.lease_ttl_s
    try:
        await acq.planned_stop(asyncio.Event())
        assert acq.house.stopping
    finally:
        await cancel_and_wait(running)
        await acq.house.ticker.aclose()
        await master.aclose()
        await local.aclose()
