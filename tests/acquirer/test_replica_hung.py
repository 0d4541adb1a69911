"""Controls on a healthy master while the standby's Redis (the replica) is hung (SIGSTOP).

Real redis-server master and replica, started with the replication timers compose.yml gives the product
(`--repl-timeout`, `--repl-ping-replica-period`), the real acquirer holding the lease on the master, a
PlcSim device, controls sent with `fepha.controls.execute` one after the other, each value unique.

The claim's replication barrier (docs/forwarder.md "Controls path") refuses a control whose claim the
replica has not acknowledged. A hung replica stays attached to the master until `repl-timeout` after its
last acknowledgement; before the product set it, that was Redis's default of 60 s, and every control
waited the barrier's 1.5 s and was refused for that minute. Checked here: the controls are refused for
less than REFUSED_AT_MOST_S (and repl-timeout + 3 s), the one taken up at the drop as queued before it; a
control sent once the replica has been silent for REPLICA_SILENT_S is refused at once (not after 1.5 s);
every confirmed control is written once, no refused one is written, and once resumed the replica holds
every control's final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import pytest
import redis.asyncio as aredis
import yaml

from fepha import controls
from fepha import keyspace as ks
from tests.acquirer.helpers import Node, free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.redisproc import RedisProc

REPO = Path(__file__).resolve().parents[2]
REFUSED_AT_MOST_S = 10.0
"""What an operator may expect: a standby's trouble refuses controls on a healthy master for seconds, not
Redis's default repl-timeout of a minute."""


def compose_repl_args() -> list[str]:
    """The `--repl-*` options of compose.yml's redis command (what the product's Redis runs with)."""
    cmd = yaml.safe_load((REPO / "compose.yml").read_text())["services"]["redis"]["command"]
    cmd = cmd if isinstance(cmd, str) else " ".join(cmd)
    return [x for pair in re.findall(r"(--repl-[a-z-]+) (\S+)", cmd) for x in pair]


def repl_timeout_s(args: list[str]) -> int:
    return int(args[args.index("--repl-timeout") + 1]) if "--repl-timeout" in args else 60  # Redis's default


def _online(lag: int) -> dict[str, object]:
    return {"ip": "198.18.0.2", "port": 6379, "state": "online", "offset": 10, "lag": lag}


BARRIER = {  # INFO replication of the master -> (action, lag)
    "no replica attached: run": ({"connected_slaves": 0}, (controls.RUN, 0)),
    "a live replica: wait for it": ({"connected_slaves": 1, "slave0": _online(0)}, (controls.WAIT, 0)),
    "acks are once a second, lag 2 is still live": ({"connected_slaves": 1, "slave0": _online(2)},
                                                    (controls.WAIT, 2)),
    "silent for 3 s: refuse at once": ({"connected_slaves": 1, "slave0": _online(3)}, (controls.REFUSE, 3)),
    "a replica in its initial sync: wait": (
        {"connected_slaves": 1, "slave0": {**_online(0), "state": "wait_bgsave"}}, (controls.WAIT, 0)),
    "one of two replicas live: wait": (
        {"connected_slaves": 2, "slave0": _online(9), "slave1": _online(0)}, (controls.WAIT, 0)),
    "both silent: refuse": ({"connected_slaves": 2, "slave0": _online(9), "slave1": _online(4)},
                            (controls.REFUSE, 4)),
}


@pytest.mark.parametrize("case", list(BARRIER))
def test_barrier_rules(case: str) -> None:
    info, expected = BARRIER[case]
    assert controls.barrier(info) == expected


def _info(replid: str, attached: bool) -> dict[str, object]:
    return {"master_replid": replid, "connected_slaves": int(attached)}


# (INFO, master now_ms) steps -> the guard's dropped_ms after them, then created_ms -> at risk?
GUARD = {
    "never saw a replica: no drop known": ([(_info("r1", False), 1000)], None, {500: False}),
    "replica dropped: created before its sight at risk, after not": (
        [(_info("r1", True), 1000), (_info("r1", False), 2000), (_info("r1", False), 3000)], 2000,
        {1500: True, 2000: True, 2001: False}),
    "the replica attached again: nothing at risk (the barrier waits for it)": (
        [(_info("r1", True), 1000), (_info("r1", False), 2000), (_info("r1", True), 3000)], None, {1500: False}),
    "another master (a promotion: new replid) with none attached: no drop": (
        [(_info("r1", True), 1000), (_info("r2", False), 2000)], None, {1500: False}),
}


@pytest.mark.parametrize("case", list(GUARD))
def test_replica_guard_rules(case: str) -> None:
    steps, dropped, risks = GUARD[case]
    g = controls.ReplicaGuard()
    for info, now in steps:
        g.observe(info, now)
    assert g.dropped_ms == dropped
    assert {c: g.at_risk(c) for c in risks} == risks


@contextlib.asynccontextmanager
async def plant(feproot, args: list[str], socket_timeout: float | None = None):
    """Master + replica (`args`), the acquirer A holding RTU 1 on the master with the product's socket
    timeout (or `socket_timeout`), a PlcSim device, and a forwarder-like client -> (master, replica, sim,
    client)."""
    with RedisProc(extra=args) as master, RedisProc(replicaof=(master.host, master.port), extra=args) as replica:
        replica.wait_synced()
        sim = await start_sim(load(master, merge(rtu_rows(1, free_port()))))
        cfg = node_cfg(feproot, master, "A")
        a = Node(cfg, socket_timeout=socket_timeout or cfg.socket_timeout_s)  # product: 2 s, WAIT's 1.5 s fits
        fwd = aredis.Redis(host=master.host, port=master.port, decode_responses=True)  # as a forwarder's sink
        try:
            await until(lambda: a.acq.runners and a.acq.runners[1].lease.held and a.acq.runners[1].link)
            assert (await controls.execute(fwd, 1, 1003, 1, "test", 2000)).ok
            yield master, replica, sim, fwd
        finally:
            replica.resume()
            await fwd.aclose()
            await a.stop()
            await sim.stop()


def hr_writes(sim) -> list[int]:
    return [w[3][0] for w in sim.writes if w[1] == "hr"]


async def test_a_hung_replica_blocks_controls_only_until_the_master_drops_it(feproot):
    args = compose_repl_args()
    # dropped when Redis's whole-second clock shows more than repl-timeout since the last acknowledgement
    # (sent up to 1 s before the pause), at its once-a-second check: at most repl-timeout + 3 s
    limit_s = min(REFUSED_AT_MOST_S, repl_timeout_s(args) + 3.0)
    async with plant(feproot, args) as (master, replica, sim, fwd):
        sent: list[tuple[int, float, float, controls.Result]] = []  # value, sent (s after pause), took, result
        replica.pause()
        t0 = time.monotonic()
        value = 100
        while True:  # a control every 0.1 s until one is confirmed again
            value += 1
            t = time.monotonic()
            res = await controls.execute(fwd, 1, 1003, value, "test", 2000)
            sent.append((value, t - t0, time.monotonic() - t, res))
            if res.ok or time.monotonic() - t0 > limit_s + 3:
                break
            await asyncio.sleep(0.1)
        refused_s = sent[-1][1]
        assert sent[-1][3].ok, f"controls still refused {refused_s:.1f} s after the replica hung: {sent[-3:]}"
        assert refused_s < limit_s, f"controls refused for {refused_s:.1f} s (limit {limit_s} s)"
        assert all(r.state == controls.FAILED and r.reason.startswith("refused") for *_, r in sent[:-1])
        # the one the executor took up when it first saw the replica dropped had been created before the drop
        assert sent[-2][3].reason == controls.REPLICA_DROPPED, sent[-3:]
        for _ in range(5):  # controls run on the healthy master while the replica stays hung
            value += 1
            assert (await controls.execute(fwd, 1, 1003, value, "test", 2000)).ok
        replica.resume()
        replica.wait_synced()
        replica.caught_up(master)
        ok = [v for v, *_, r in sent if r.ok] + list(range(value - 4, value + 1))
        assert hr_writes(sim) == [1, *ok], sent  # once each, none refused written
        rc, last = replica.client(), int(master.client().get(ks.CTL_SEQ))
        states = {rc.hget(ks.control(i), "state") for i in range(2, last + 1)}
        assert states <= {controls.DONE, controls.FAILED}, states  # the replica holds none queued
        print(f"refused for {refused_s:.2f} s, {len(sent) - 1} controls refused, "
              f"answered in {min(s[2] for s in sent[:-1]):.3f}-{max(s[2] for s in sent[:-1]):.3f} s")


async def test_a_silent_replica_is_not_waited_for_at_each_control(feproot):
    """Redis's default repl-timeout (60 s): the hung replica stays attached for the whole test. Once it has
    been silent for REPLICA_SILENT_S, each control is refused at once instead of after the barrier's 1.5 s
    (the controls queued behind it are not delayed either); none is written."""
    async with plant(feproot, ["--repl-timeout", "60"]) as (master, replica, sim, fwd):
        replica.pause()
        t0 = time.monotonic()
        took: list[tuple[float, float, str]] = []
        value = 100
        while time.monotonic() - t0 < controls.REPLICA_SILENT_S + 3:
            value += 1
            t = time.monotonic()
            res = await controls.execute(fwd, 1, 1003, value, "test", 2000)
            took.append((round(t - t0, 2), round(time.monotonic() - t, 3), res.reason))
            assert res.state == controls.FAILED and res.reason.startswith("refused"), res
            await asyncio.sleep(0.1)
        late = [(d, why) for at, d, why in took if at > controls.REPLICA_SILENT_S + 0.2]
        assert len(late) >= 5 and max(d for d, _ in late) < 0.3, took
        assert all("has not acknowledged for" in why for _, why in late), late  # the reason says why
        assert hr_writes(sim) == [1]
        assert int(master.client().info("replication")["connected_slaves"]) == 1
        print(f"refused in {min(late)[0]:.3f}-{max(late)[0]:.3f} s once silent")


async def test_the_executor_outlives_a_claim_that_fails(feproot):
    """A claim that raises (here a control key a foreign client made a string: the Function fails on it)
    leaves that key as it was and the executor takes up the next controls: it used to end there, the
    acquirer holding its leases while every later control expired in its queue. A control whose deadline
    a foreign client garbled is ended as expired, never run (controls.lua `whole`)."""
    async with plant(feproot, ["--repl-timeout", "60"]) as (_, _, sim, fwd):
        await fwd.set(ks.control(998), "not a control")
        await fwd.hset(ks.control(999), mapping={"state": "queued", "deadline_ms": "soon", "point": 1003})
        await fwd.rpush(ks.control_queue(1), 998, 999)

        async def popped() -> bool:
            return not await fwd.llen(ks.control_queue(1))

        await until(popped)
        res = await controls.execute(fwd, 1, 1003, 8, "test", 2000)
        assert res.ok, res
        assert hr_writes(sim) == [1, 8]
        assert await fwd.get(ks.control(998)) == "not a control"
        assert await fwd.hget(ks.control(999), "state") == "expired"
        assert "unreadable" in (await fwd.hget(ks.control(999), "result") or "")
