"""Redis hosts whose clocks disagree, on real redis-server processes (docs/ha.md "Clocks").

A replica whose clock is 30 s behind its master is promoted after the master's node dies (the holder of
the lease with it), and a running master's clock steps back 10 min. The servers run under a shim
(tests/faults/clockshift.c, built here with gcc: libfaketime cannot start redis-server) that moves their
wall clock by the offset in a file, which the test rewrites to step it. The acquirer's and forwarder's
calls are the ones they make (fepha.redisfns, fepha.controls, fepha.freshness, the api's heartbeat view).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fep_acquirer.app import Acquirer
from fep_api import views
from fepha import controls, heartbeat, redisconn, redisfns
from fepha import keyspace as ks
from fepha.freshness import Limits, rtu_reason
from tests.acquirer.helpers import Node, free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.foundation import test_clocks as clocks
from tests.foundation.test_clocks import now_ms
from tests.prereq import require
from tests.redisproc import RedisProc
from tests.vip import Vip

TTL_MS, TAKEOVER_MS, TICK_MS = 600, 90_000, 100
LIM = Limits(replica_down_ms=1200, stale_polls=3, tick_ms=TICK_MS, poll_ms=1000)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    require(None if gcc else "gcc is not installed (.ci/install installs it)", "the clock shim")
    out = tmp_path_factory.mktemp("clockshift") / "clockshift.so"
    subprocess.run([str(gcc), "-shared", "-fPIC", "-O2", "-o", str(out), str(Path(__file__).with_name("clockshift.c"))],
                   check=True)
    return out


@pytest.fixture
def shifted(shim: Path, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    offset = tmp_path / "offset_ms"
    offset.write_text("0")
    yield offset, {"LD_PRELOAD": str(shim), "CLOCKSHIFT_FILE": str(offset)}


def tick(r, node: str) -> list:
    return clocks.tick(r, node, ttl_ms=TTL_MS, takeover_ms=TAKEOVER_MS)


def first_tick_as_holder(r, node: str, limit_s: float) -> float | None:
    return clocks.until_holder(r, node, limit_s, TTL_MS, TAKEOVER_MS, TICK_MS / 1000)


def test_replica_30_s_behind_promoted_after_the_holders_node_died(shifted) -> None:
    offset, env = shifted
    offset.write_text("-30000")
    with RedisProc() as master, RedisProc(env=env) as replica:
        m, rc = master.client(), replica.client()
        assert abs(now_ms(rc) - now_ms(m) + 30_000) < 1000, "the shim did not move the replica's clock"
        rc.replicaof(master.host, master.port)
        replica.wait_synced()
        redisfns.load_sync(m)
        # node A: holds RTU 7, reaches the device, its link is up; its forwarder queued a control; its
        # services' heartbeats (3 periods of 1 s)
        assert tick(m, "A")[0] == "A"
        m.fcall(*redisfns.link_set(7, "A", True, [900], live_ms=TTL_MS).argv)
        m.fcall(*controls.submit_call(1, 7, 3, 1.0, "test", 10_000).argv)
        m.set(ks.heartbeat("acquirer", "A"), heartbeat.payload("acquirer", "A", 1, 1.0), px=3000)
        replica.caught_up(master)
        master.stop()  # node A is gone
        rc.replicaof("no", "one")

        # the forwarder on B, before B's acquirer ticks: A's stamps lie 30 s ahead of this clock
        why = rtu_reason(rc.hgetall(ks.lease(7)), now_ms(rc), 100, LIM)
        assert why is not None and "ahead of this Redis's clock" in why
        # the api: A's acquirer heartbeat would live 33 s here
        pttl = rc.pttl(ks.heartbeat("acquirer", "A"))
        assert views.heartbeat("acquirer", "A", rc.get(ks.heartbeat("acquirer", "A")), 3, pttl).alive is None
        # B's acquirer: the lease lapses one TTL after its first tick, not 30 s later
        took = first_tick_as_holder(rc, "B", 3.0)
        assert took is not None and (TTL_MS - 100) / 1000 <= took < (TTL_MS + 500) / 1000, took
        assert rc.hget(ks.CLOCK, "gen") == "1"
        assert rtu_reason(rc.hgetall(ks.lease(7)), now_ms(rc), 100, LIM) is None  # B's stamps: current
        # the control queued on A's master: its deadline came from another clock, it is never run
        rc.lpop(ks.control_queue(7))
        assert rc.fcall(*controls.claim_call(7, "B", 2, 1).argv) == [0, "expired"]
        # A's link state (seen 30 s "ahead") decays as any forwarder's refresh sees it
        t0 = time.monotonic()
        while rc.fcall(*redisfns.link_refresh(7, [900], TTL_MS).argv)[0] == "1":
            assert time.monotonic() - t0 < 2.0, "A's link still counted"
            time.sleep(0.05)
        # a control queued now runs: nothing refused for ever
        rc.fcall(*controls.submit_call(2, 7, 3, 2.0, "test", 10_000).argv)
        rc.lpop(ks.control_queue(7))
        assert rc.fcall(*controls.claim_call(7, "B", 2, 2).argv)[0] == 1


def test_master_clock_stepped_back_10_min_while_running(shifted) -> None:
    offset, env = shifted
    with RedisProc(env=env) as proc:
        r = proc.client()
        redisfns.load_sync(r)
        assert tick(r, "A")[0] == "A"
        r.fcall(*controls.submit_call(1, 7, 3, 1.0, "test", 10_000).argv)
        time.sleep(0.1)
        offset.write_text("-600000")  # NTP steps the master's clock back 10 min; A dies at the same time
        time.sleep(0.05)
        took = first_tick_as_holder(r, "B", 3.0)
        assert took is not None and took < (TTL_MS + 500) / 1000, took
        assert r.hget(ks.CLOCK, "gen") == "1"
        state = r.fcall(*controls.abandon_call(1).argv)  # the forwarder's own timer: deadline passed
        assert state == "expired"
        assert "cannot be judged" in r.hget(ks.control(1), "result")


async def test_running_acquirer_takes_the_lease_within_ttl_on_a_promoted_replica_30_s_behind(
        shifted, redis_master: RedisProc, feproot: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Real acquirers on both nodes, a real PLC: A holds RTU 1 on master R; B writes through a "VIP" to R,
    its local Redis L (a replica of R) runs 30 s behind. A's node vanishes (R SIGSTOPped), the VIP moves to
    L and L is promoted. B's acquirer takes the lapsed lease within a second or so and its values are
    current on L's clock; before the fix it waited until L's clock reached A's stamps, 30 s."""
    offset, env = shifted
    offset.write_text("-30000")
    r = redis_master
    model = load(r, merge(rtu_rows(1, free_port())))
    redisfns.load_sync(r.client())
    sim = await start_sim(model)
    with RedisProc(replicaof=(r.host, r.port), env=env) as local:
        local.wait_synced()
        vip = Vip((r.host, r.port))
        vip_port = await vip.start()
        a = Node(node_cfg(feproot, r, "A"))
        cfg_b = dataclasses.replace(node_cfg(feproot, r, "B", role_watch_s=0.2), port=vip_port,
                                    local_port=local.port)
        master_b, local_b = redisconn.master_async(cfg_b), redisconn.local_async(cfg_b)
        acq_b, stop_b = Acquirer(cfg_b, master_b, local_b), asyncio.Event()
        task: asyncio.Task[None] | None = None
        try:
            await until(lambda: a.acq.runners and a.acq.runners[1].lease.held, 5)
            task = asyncio.create_task(acq_b.run(stop_b, config_check_s=0.1))
            await until(lambda: acq_b.runners and acq_b.runners[1].reaches(), 5)
            await until(lambda: acq_b.house.clock_gen == "0", 5)  # B has ticked on R: the step is news to it
            lc = local.client()
            local.caught_up(r)  # A's lease and stamps are on L
            assert lc.hget(ks.lease(1), "holder") == "A"
            r.pause()  # A's node vanishes
            vip.target = (local.host, local.port)  # keepalived on B: the VIP, then the promotion
            lc.execute_command("REPLICAOF", "NO", "ONE")
            t0 = time.monotonic()
            await until(lambda: acq_b.runners[1].lease.held, 5)
            took = time.monotonic() - t0
            assert lc.hget(ks.CLOCK, "gen") == "1", (lc.hgetall(ks.CLOCK), lc.xrange(ks.LEASE_EVENTS), now_ms(lc), took)
            lease = lc.hgetall(ks.lease(1))
            assert lease["holder"] == "B" and rtu_reason(lease, now_ms(lc), 100, LIM) is None, lease
        finally:
            r.resume()
            stop_b.set()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            await a.stop()
            await master_b.aclose()
            await local_b.aclose()
            await sim.stop()
            await vip.close()
    assert took < 2.0, f"B took the lease {took:.2f} s after the promotion"
    went_back = [x for x in caplog.records if "the master's clock went back (clock gen 0 -> 1" in x.getMessage()]
    assert len(went_back) == 1, "B's acquirer logs the step once"
