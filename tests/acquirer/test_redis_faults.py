"""The acquirer when its Redis fails in ways the other tests do not cover: restarted empty (data lost),
then the configuration loaded again; hung (SIGSTOP) past the timeouts, then resumed (a write that timed out
but was applied)."""

from __future__ import annotations

import time

from fepha import keyspace as ks
from fepha import points, redisfns
from fepha.semodel.model import Model
from tests.acquirer.helpers import (
    Node,
    free_port,
    load,
    lone_runner,
    merge,
    node_cfg,
    rtu_rows,
    start_sim,
    until,
)
from tests.acquirer.test_acquirer import value_of
from tests.redisproc import RedisProc


async def test_redis_restarted_empty_then_loaded_again_gets_every_value(feproot, caplog):
    """After a restart without persistence the master holds nothing; once `sysload init` ran again, the
    holder writes every point again, unchanged ones included (the lease comes back at the same epoch)."""
    with RedisProc() as rp:
        rows = merge(rtu_rows(1, free_port()))
        model = load(rp, rows)
        sim = await start_sim(model)
        a = Node(node_cfg(feproot, rp, "A"))
        try:
            await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
            for i in range(4):
                sim.set_value(1000 + i, 10 + i)
            for i in range(4):
                await until(lambda i=i: value_of(a.master, 1, 1000 + i), 3)
            rp.restart()  # same port, empty
            time.sleep(0.5)
            sim.set_value(1001, 77)
            await until(lambda: a.acq.metrics.total["write_errors"] > 0, 5)
            load(rp, rows)  # sysload init again: generation 1 again
            for i, want in enumerate((10, 77, 12, 13)):
                v = await until(lambda i=i: value_of(a.master, 1, 1000 + i), 5)
                assert v.value == want and v.quality == 0, (i, v)
            assert await a.master.hget(ks.lease(1), "holder") == "A"
        finally:
            await a.stop()
            await sim.stop()


async def test_other_configuration_loaded_after_an_empty_restart_is_applied(feproot):
    """The generation counter restarts at 1 in an emptied Redis: a different configuration loaded then has
    the generation the acquirer already runs, and must still be applied (here RTU 1 gains a point)."""
    with RedisProc() as rp:
        port = free_port()
        load(rp, merge(rtu_rows(1, port)))
        sim = await start_sim(Model.from_rows(merge(rtu_rows(1, port, points=5))))  # the device has 5
        a = Node(node_cfg(feproot, rp, "A"))
        try:
            await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
            rp.restart()
            load(rp, merge(rtu_rows(1, port, points=5)))  # generation 1 again, other content
            sim.set_value(1004, 44)
            v = await until(lambda: value_of(a.master, 1, 1004), 5)
            assert v.value == 44
        finally:
            await a.stop()
            await sim.stop()


async def test_hung_master_is_logged_while_it_lasts(feproot, caplog):
    """SIGSTOP of the master: the lease tick waits on it (socket timeout, redis-py's retries); the acquirer
    says so once the wait passes lease_ttl_s, not only when the tick ends, and once when it is over."""
    with RedisProc() as rp:
        model = load(rp, merge(rtu_rows(1, free_port())))
        sim = await start_sim(model)
        a = Node(node_cfg(feproot, rp, "A"))
        try:
            await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
            caplog.set_level("INFO", logger="acquirer")
            rp.pause()
            try:
                await until(lambda: "lease tick waiting on the master Redis" in caplog.text, 3 * 0.6 + 1)
            finally:
                rp.resume()
            await until(lambda: "tick: recovered" in caplog.text, 15)
            assert caplog.text.count("lease tick waiting") == 1
        finally:
            await a.stop()
            await sim.stop()


async def test_a_write_that_timed_out_but_was_applied_is_not_written_twice(feproot):
    """The master hung (SIGSTOP) past the writer's socket timeout with a write in its socket: the write
    fails here, but the master applies it when it resumes. The next poll (the value unchanged) re-sends
    it as it was, with its write sequence: the master recognises it, so the value is one stream record,
    not two (the seed's rule re-sent the point's current value: a second record), then the next change."""
    with RedisProc() as rp:
        model = load(rp, merge(rtu_rows(1, free_port())))
        async with lone_runner(feproot, rp, model, "A", socket_timeout=0.3) as (r, runner):
            holder, epoch, _ = await r.fcall(*redisfns.lease_tick(1, "A", True, 60_000, 90_000).argv)
            runner.lease.update(holder, int(epoch))
            t0 = int(time.time() * 1000)
            await runner.publish({1000: (1, 0)}, t0)
            rp.pause()
            try:
                await runner.publish({1000: (2, 0)}, t0 + 100)  # times out
            finally:
                rp.resume()
            assert runner.metrics.total["write_errors"] == 1
            await until(lambda: rp.client().hget(ks.values(1), "1000") == points.encode(2, 0, t0 + 100), 3)
            await runner.publish({1000: (2, 0)}, t0 + 200)  # the next poll: the timed-out write re-sent
            await runner.publish({1000: (3, 0)}, t0 + 300)
            stream = [(f["1000"]) for _, f in rp.client().xrange(ks.CHANGES) if f.get("r") == "1"]
            assert stream == [points.encode(v, 0, t0 + ms) for v, ms in ((1, 0), (2, 100), (3, 300))]
            assert runner.metrics.total["writes_duplicate"] == 1
