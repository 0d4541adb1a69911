"""Fault audit: faults injected into the running processes of one node (tests/faults/test_single_node.py's
`node`: real redis-server, fep-plcsim PLCs, real fep-acquirer and fep-forwarder) that the other fault tests
do not inject."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fep_acquirer.tasks import cancel_and_wait
from fep_loader.store import replace_config
from fep_tools.sefeps_client import SefepsClient
from fepha import keyspace as ks
from fepha import points
from fepha.iec104 import codec as c
from fepha.iec104.link import Link, LinkParams, LinkTimeout, Role
from tests.faults.test_planned_stop import SUITE, Scada, a_holds_b_ready, plant, until
from tests.faults.test_single_node import (
    AI_RTU1,
    AI_RTU2,
    NT,
    Node,
    running_node,
    sefeps,
    topical,
    until_quality,
    valid,
)
from tests.iec104.rawmaster import RawMaster
from tests.redisproc import RedisProc
from tests.stays import astays

SE104_RTU = 10
DO_IOA = 5001  # se104s C_SC_NA_1 on point 109 (RTU 1's coil)


def se104_port(node: Node) -> int:
    return next(r["LISTENPORT"] for r in node.rows["T004_RTU"] if r["RTUID"] == SE104_RTU)


async def connect(port: int, params: LinkParams) -> RawMaster:
    """A started master (STARTDT con) on se104s, once it listens (within 10 s)."""
    end = time.monotonic() + 10
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            assert time.monotonic() < end, "se104s not listening"
            await asyncio.sleep(0.1)
    m = RawMaster(reader, writer, link=Link(Role.CLIENT, params, time.monotonic()))
    m.tasks = [asyncio.create_task(m._read()), asyncio.create_task(m._timers())]
    await m.start()
    return m


async def close(m: RawMaster | None) -> None:
    if m is None:
        return
    m.closed = True
    m.writer.close()
    for t in m.tasks:
        t.cancel()
    await asyncio.gather(*m.tasks, return_exceptions=True)


def answers(m: RawMaster, ioa: int) -> list[tuple[int, bool]]:
    """(cause, negative) of every answer to a command on `ioa`."""
    return [
        (a.cause, a.negative)
        for a in list(m.asdus)
        if a.type_id >= 45 and a.objects and a.objects[0][0] == ioa
    ]


def coil_writes(node: Node) -> list:
    """The device writes of point 109 (RTU 1's coil): every control run."""
    return [w for w in node.sim.writes if w[0] == 1]


def command(m: RawMaster, value: int) -> None:
    m.send(c.build_asdu(c.C_SC_NA_1, c.COT_ACT, 1, [(DO_IOA, c.encode_command(c.C_SC_NA_1, value))]))


async def test_iec104_control_across_forwarder_stops_shorter_and_longer_than_the_masters_t1(
    node: Node,
) -> None:
    """An IEC 104 master (t1 1 s) sends C_SC_NA_1 while the forwarder is SIGSTOPped. For 0.5 s (less than
    t1): the command runs once when the forwarder resumes and the master gets ACT_CON and ACT_TERM. For 2 s
    (more than t1, less than the control timeout, 10 s): the master gives up at t1 and closes the
    connection with its command unanswered; on SIGCONT the forwarder finds the command in the socket of a
    connection its master has closed. Nobody can be told the outcome and the operator retries on a new
    connection: it must not run (at most once)."""
    params = LinkParams(k=12, w=8, t1=1, t2=0.05, t3=0.5)
    await valid(node, 101)
    fwd = node.procs["forwarder"]
    first = await connect(se104_port(node), params)
    try:
        before = len(coil_writes(node))
        fwd.send_signal(signal.SIGSTOP)
        try:
            command(first, 1)
            await asyncio.sleep(0.5)
        finally:
            fwd.send_signal(signal.SIGCONT)
        end = time.monotonic() + 5
        while len(answers(first, DO_IOA)) < 2:
            assert time.monotonic() < end, answers(first, DO_IOA)
            await asyncio.sleep(0.02)
        assert answers(first, DO_IOA) == [(c.COT_ACTCON, False), (c.COT_ACTTERM, False)]
        assert not first.tasks[1].done(), "the master gave up before t1"
        assert len(coil_writes(node)) == before + 1, coil_writes(node)
        fwd.send_signal(signal.SIGSTOP)
        try:
            command(first, 0)
            end = time.monotonic() + 3
            while not first.tasks[1].done():
                assert time.monotonic() < end, "the master did not give up at t1"
                await asyncio.sleep(0.02)
            assert isinstance(first.tasks[1].exception(), LinkTimeout)
            first.writer.close()
            await asyncio.sleep(2.0 - params.t1)
        finally:
            fwd.send_signal(signal.SIGCONT)
        await astays(
            lambda: len(coil_writes(node)) == before + 1,
            2.0,
            "the command of a master that had given up (closed its connection) ran",
        )
    finally:
        await close(first)


async def record(c: SefepsClient, seen: list[tuple[float, int, float, int]]) -> None:
    """Every change the master is sent: (monotonic, addr, value, quality)."""
    while True:
        _, addr, value, q, _ = await c.next_change(3600)
        seen.append((time.monotonic(), addr, value, q))


async def steps(node: Node, pid: int, values: list[float], hold_s: float, during: Any = None) -> None:
    """Set `pid` to each of `values` in turn, holding each `hold_s` (several polls: each one acquired);
    `during()` is awaited after the first third of them."""
    for i, v in enumerate(values):
        node.sim.set_value(pid, v)
        if during is not None and i == len(values) // 3:
            await during()
        await asyncio.sleep(hold_s)


def of(seen: list[tuple[float, int, float, int]], addr: int) -> list[tuple[float, int]]:
    return [(round(v, 3), q) for _, a, v, q in seen if a == addr]


@contextlib.asynccontextmanager
async def recorded(node: Node) -> AsyncIterator[tuple[SefepsClient, list[tuple[float, int, float, int]]]]:
    """A sefeps master whose first image holds point 101 topical, then every change it is sent, in `seen`
    (`record`); closed at the end."""
    c = await sefeps(node)
    seen: list[tuple[float, int, float, int]] = []
    rec: asyncio.Task[None] | None = None
    try:
        img = await c.wait_image(10)
        await topical(c, img, AI_RTU1)
        rec = asyncio.create_task(record(c, seen))
        yield c, seen
    finally:
        # a change arriving with the cancel: Python 3.11's wait_for (in next_change) may swallow it, and the
        # recorder waits on for the next change (CI: a task left pending after the test)
        await cancel_and_wait(rec)
        await c.close()


async def test_sysload_init_while_running_changes_nothing_a_master_sees(node: Node) -> None:
    """`sysload init` of the same configuration three times while point 101 steps through 12 values (each
    held for several polls) and a sefeps master is connected: the master keeps its connection and gets
    no new image, each value once and in order, none with NT (a reload is not an outage)."""
    await valid(node, 101)
    async with recorded(node) as (c, seen):
        images = c.images
        values = [500.0 + i for i in range(12)]

        async def reload() -> None:
            for _ in range(3):
                with node.redis.client() as r:
                    replace_config(r, node.rows, source="sample")
                await asyncio.sleep(0.3)

        await steps(node, 101, values, 0.4, reload)
        end = time.monotonic() + 5
        while not of(seen, AI_RTU1) or of(seen, AI_RTU1)[-1][0] != values[-1]:
            assert time.monotonic() < end, of(seen, AI_RTU1)
            await asyncio.sleep(0.05)
        got = of(seen, AI_RTU1)
        assert [v for v, _ in got] == values, got
        assert not [q for _, q in got if q & NT], got
        assert not c.closed.is_set() and c.images == images, "a new image was sent"
        assert "configuration generation 4:" in node.log("forwarder")  # each reload was taken


async def test_master_pausing_writes_past_the_socket_timeout(node: Node) -> None:
    """`CLIENT PAUSE 3000 WRITE` on the master (every write waits; reads go on; the acquirer's writes time
    out after 2 s and Redis drops what a closed client had sent) while point 101 changes: the master
    gets NT (the leases' stamps grow old on the master's clock) and no value that was not current; after
    the pause, the values are topical again, the last value is the device's, and no value is sent twice.
    Every value reaches the change stream once and in order: the write that timed out is re-sent as it
    was, before the newer ones (with the seed's rule, the point's current value instead: 703 was lost)."""
    await valid(node, 101)
    r = node.redis.client()
    try:
        async with recorded(node) as (_, seen):
            values = [700.0 + i for i in range(9)]
            since = r.xrevrange(ks.CHANGES, count=1)[0][0]

            t_pause = [0.0]

            async def pause() -> None:
                r.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
                t_pause[0] = time.monotonic()

            await steps(node, 101, values, 0.4, pause)
            end = time.monotonic() + 8
            while not of(seen, AI_RTU1) or of(seen, AI_RTU1)[-1] != (values[-1], of(seen, AI_RTU1)[-1][1] & ~NT):
                assert time.monotonic() < end, of(seen, AI_RTU1)
                await asyncio.sleep(0.05)
            got = of(seen, AI_RTU1)
            print(
                "CLIENT PAUSE WRITE 3 s, at SCADA (s from the pause, value, quality):",
                [(round(t - t_pause[0], 2), v, q) for t, a, v, q in seen if a == AI_RTU1],
            )
            assert any(q & NT for _, q in got), got
            # a value sent again with its NT flipped is not a duplicate; the same value twice in a row is
            vals = [v for i, (v, q) in enumerate(got) if i == 0 or got[i - 1][0] != v]
            assert vals == values, got
            assert all(not (a == b) for a, b in itertools.pairwise(got)), f"a change sent twice: {got}"
            stream = [round(points.decode(f["101"]).value, 3)
                      for eid, f in r.xrange(ks.CHANGES, min=since) if eid != since and "101" in f]
            assert stream == values, f"point 101 in the change stream: {stream}"
            for service in ("acquirer", "forwarder"):
                assert "Traceback" not in node.log(service), node.log(service)[-3000:]
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
        r.close()


@pytest.mark.parametrize("stop_s", [1.0, 3.5])
async def test_holder_frozen_while_values_change(feproot: Path, stop_s: float) -> None:
    """SIGSTOP of the acquirer holding every lease (node A) while point 101 steps up every 0.15 s, node B's
    acquirer ready and a sefeps master on B's forwarder: for less than the lease TTL (2 s), A keeps its leases;
    for more, B takes them over once they lapse, and A, resumed with the poll it had read before the stop,
    is fenced out. Either way the master never sees the value go back (no stale write after the resume),
    gets the device's last value topical, and is never shown a value as good later than one TTL plus a
    tick, a check and two polls after the device moved past it."""
    ttl = float(SUITE["FEP_TIMERS_LEASE_TTL_S"])
    async with plant(feproot, SUITE) as p:
        await a_holds_b_ready(p, 10)
        p.start("forwarder", "B")
        scada = Scada(await p.sefeps_port())
        await scada.start()
        sets: list[tuple[float, float]] = []  # (monotonic, value) of each step at the device
        done = asyncio.Event()

        async def step() -> None:
            k = 0
            while not done.is_set():
                k += 1
                p.sim.set_value(101, 1000 + k)
                sets.append((time.monotonic(), 1000 + k))
                await asyncio.sleep(0.15)

        changer = asyncio.create_task(step())
        a = p.procs[("acquirer", "A")]
        try:
            await until(
                lambda: sum(1 for s in scada.seen if s[1] == 1 and not s[3] & NT) >= 3,
                10,
                "SCADA sees point 101 change, topical",
            )
            a.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(stop_s)
            finally:
                a.send_signal(signal.SIGCONT)
            await asyncio.sleep(1.5)
            done.set()
            await changer
            last = sets[-1][1]
            await until(
                lambda: any(s[1] == 1 and s[2] == last and not s[3] & NT for s in scada.seen),
                5,
                f"SCADA gets the last value {last} topical",
            )
        finally:
            done.set()
            await asyncio.wait_for(scada.close(), 10)
        seen = [(t, v, q) for t, addr, v, q in scada.seen if addr == 1]
        values = [v for _, v, _ in seen]
        assert all(b >= a for a, b in itertools.pairwise(values)), f"a value went back: {values}"
        bound = ttl + 0.1 + 1.0 + 0.2
        late = [
            (round(t - moved, 2), v)
            for t, v, q in seen
            if not q & NT and (moved := next((ts for ts, sv in sets if sv > v), None)) is not None
        ]
        print(
            f"frozen {stop_s} s: {len(values)} values at SCADA, {sum(1 for *_, q in seen if q & NT)} with NT, "
            f"latest good one {max(late)[0]:.2f} s after the device moved past it"
        )
        assert max(late)[0] <= bound, f"shown good after the device moved past it: {max(late)}"
        holders = await p.holders()
        want = "A" if stop_s < ttl else "B"
        assert set(holders.values()) == {want}, holders
        if want == "B":
            assert "fenced out" in p.log("acquirer", "A") or "lease lost" in p.log("acquirer", "A")
        for who in (("acquirer", "A"), ("acquirer", "B"), ("forwarder", "B")):
            assert "Traceback" not in p.log(*who), p.log(*who)[-3000:]


async def test_master_with_its_aof_disk_full(feproot: Path, make_api: Any, tmp_path: Path) -> None:
    """The node's Redis persists as in compose.yml (appendonly, everysec) on a 4 MiB tmpfs, which is then
    filled: Redis refuses every write (MISCONF, the AOF cannot be written), so no lease is renewed and SCADA
    gets NT once the leases lapse; neither service exits or loops on a traceback. Room again: Redis writes its
    AOF again by itself, the values are topical again and a change goes through."""
    import subprocess as sp

    from tests.foundation.test_logfile_full import fill
    from tests.prereq import require

    require(None if os.geteuid() == 0 else "mounting a tmpfs needs root", "the full AOF disk test")
    disk = tmp_path / "disk"
    disk.mkdir()
    sp.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        rp = RedisProc(appendonly=True, dir=disk, extra=["--appendfsync", "everysec"])
        with rp, rp.client() as r:
            async with running_node(feproot, make_api, rp) as node:
                await valid(node, 101, 202)
                c = await sefeps(node)
                limit_s = 2 * float(node.env["FEP_TIMERS_LEASE_TTL_S"]) + 1.5
                try:
                    img = await c.wait_image(10)
                    await topical(c, img, AI_RTU1, AI_RTU2)
                    fill(disk / "fill")
                    t0 = time.monotonic()
                    await until_quality(c, {AI_RTU1: True, AI_RTU2: True}, 15)
                    took = time.monotonic() - t0
                    with contextlib.suppress(redis.ResponseError):
                        r.set("probe", 1)
                        raise AssertionError("the master accepted a write with its AOF disk full")
                    print(f"AOF disk full: NT {took:.2f} s after the disk filled")
                    assert took <= limit_s, took
                    await asyncio.sleep(2)
                    assert all(p.poll() is None for p in node.procs.values())
                    (disk / "fill").unlink()
                    t1 = time.monotonic()
                    await until_quality(c, {AI_RTU1: False, AI_RTU2: False}, 15)
                    print(f"AOF disk full: topical {time.monotonic() - t1:.2f} s after room was made")
                    node.sim.set_value(101, 4321.0)
                    end = time.monotonic() + 5
                    while c.image.get(AI_RTU1, (None,))[0] != 4321.0:
                        assert time.monotonic() < end, c.image.get(AI_RTU1)
                        await asyncio.sleep(0.05)
                    # each problem said once, and its end said too (the acquirer's heartbeat never was)
                    end = time.monotonic() + 3
                    while "heartbeat: recovered" not in node.log("acquirer"):
                        assert time.monotonic() < end, node.log("acquirer")[-3000:]
                        await asyncio.sleep(0.1)
                    for service in ("acquirer", "forwarder"):
                        log = node.log(service)
                        assert "Traceback" not in log, log[-3000:]
                        said = [line.split(" ", 1)[1] for line in log.splitlines() if "MISCONF" in line]
                        assert len(said) == len(set(said)), said  # once per problem, not per attempt
                finally:
                    await c.close()
    finally:
        sp.run(["umount", "-l", str(disk)], check=True)


def gi_answers(m: RawMaster, since: int) -> tuple[list[int], set[int], bool]:
    """Of the ASDUs received from index `since`: the causes of the C_IC_NA_1 answers, the IOAs sent as
    interrogated (cause 20) and whether the interrogation ended (ACT_TERM)."""
    asdus = list(m.asdus)[since:]
    causes = [a.cause for a in asdus if a.type_id == c.C_IC_NA_1]
    ioas = {ioa for a in asdus if a.type_id < 45 and a.cause == c.COT_INROGEN for ioa, _ in a.objects}
    return causes, ioas, c.COT_ACTTERM in causes


async def test_forwarder_sigkilled_in_the_middle_of_a_general_interrogation(node: Node) -> None:
    """se104s with k = 1 and a master that stops acknowledging after its interrogation's ACT_CON: the
    forwarder holds the rest of the answer, and is SIGKILLed there (half an interrogation sent). Restarted,
    the master connects again and interrogates: ACT_CON, every point the first interrogation gave (none
    missing, each once), with point 101's value as the device has it now, then ACT_TERM."""
    from tests.faults.test_resources import restart

    await restart(node, ("forwarder",), FEP_SE104S_K="1", FEP_SE104S_W="1")
    await valid(node, 101)
    params = LinkParams(k=12, w=8, t1=5, t2=0.05, t3=10)
    port = se104_port(node)
    m = await connect(port, params)
    try:
        n0 = len(m.asdus)
        m.send(c.interrogation(1))
        end = time.monotonic() + 10
        while not gi_answers(m, n0)[2]:
            assert time.monotonic() < end, gi_answers(m, n0)
            await asyncio.sleep(0.02)
        _, all_ioas, _ = gi_answers(m, n0)
        assert len(all_ioas) >= 3, all_ioas
        await asyncio.sleep(0.2)  # everything acknowledged
        n1 = len(m.asdus)
        # from the ACT_CON on, the master writes nothing (no S frame); until then it acknowledges, since a
        # spontaneous value sent just before the C_IC would otherwise hold the ACT_CON itself (k = 1)
        m.mute_after = lambda a: a.type_id == c.C_IC_NA_1 and a.cause == c.COT_ACTCON
        m.send(c.interrogation(1))
        end = time.monotonic() + 5
        while c.COT_ACTCON not in gi_answers(m, n1)[0]:
            assert time.monotonic() < end, gi_answers(m, n1)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        causes, got, ended = gi_answers(m, n1)
        assert not ended and len(got) < len(all_ioas), (causes, got)  # held by k = 1: half an interrogation
        node.procs["forwarder"].kill()
        node.procs["forwarder"].wait(5)
    finally:
        await close(m)
    node.sim.set_value(101, 2468.0)
    node.start("forwarder")
    m2 = await connect(port, params)
    try:
        end = time.monotonic() + 10
        while True:
            n2 = len(m2.asdus)
            m2.send(c.interrogation(1))
            while not gi_answers(m2, n2)[2] and time.monotonic() < end:
                await asyncio.sleep(0.02)
            causes, got, ended = gi_answers(m2, n2)
            assert ended, (causes, got)
            ai = [v for _, ioa, v, _, _ in m2.values(c.COT_INROGEN)[-len(got) :] if ioa == 1001]
            if ai and round(ai[-1], 3) == 2468.0:
                break
            assert time.monotonic() < end, f"point 101 not the device's value in the interrogation: {ai}"
            await asyncio.sleep(0.3)  # the acquirer's next poll
        assert causes == [c.COT_ACTCON, c.COT_ACTTERM] and got == all_ioas, (causes, got, all_ioas)
        per_ioa = [
            ioa
            for a in list(m2.asdus)[n2:]
            if a.type_id < 45 and a.cause == c.COT_INROGEN
            for ioa, _ in a.objects
        ]
        assert len(per_ioa) == len(set(per_ioa)), f"a point sent twice in one interrogation: {per_ioa}"
    finally:
        await close(m2)


async def test_master_asleep_shorter_than_the_socket_timeout_during_writes_and_a_control(
    feproot: Path, make_api: Any
) -> None:
    """`DEBUG SLEEP 1.5` on the master (the whole server blocked, less than the 2 s socket timeout) while point
    101 steps every 0.3 s and a sefeps command is sent in the middle: nothing times out, so nothing is lost or
    sent twice: the master gets every value once and in order, the command is written to the PLC once and
    answered ok, and the last value is topical."""
    rp = RedisProc(extra=["--enable-debug-command", "yes"])
    with rp, rp.client() as r:
        async with running_node(feproot, make_api, rp) as node:
            await valid(node, 101, 207)
            async with recorded(node) as (c, seen):
                before = node.sim.value(207)
                writes = len(node.sim.writes)
                values = [900.0 + i for i in range(9)]
                cmd: list[asyncio.Task[dict[str, Any]]] = []

                slept: list[float] = []

                def debug_sleep() -> None:
                    t0 = time.monotonic()
                    r.execute_command("DEBUG", "SLEEP", 1.5)
                    slept.append(time.monotonic() - t0)

                async def sleep() -> None:
                    r.execute_command(
                        "DEBUG", "SLEEP", 0
                    )  # refused unless enabled: fails here, not in the thread
                    threading.Thread(target=debug_sleep, daemon=True).start()
                    await asyncio.sleep(0.2)
                    cmd.append(asyncio.create_task(c.command(40, before + 1, timeout=10)))

                await steps(node, 101, values, 0.3, sleep)
                res = await cmd[0]
                assert res["ok"], res
                assert slept and slept[0] >= 1.4, slept
                end = time.monotonic() + 5
                while not of(seen, AI_RTU1) or of(seen, AI_RTU1)[-1] != (values[-1], 0):
                    assert time.monotonic() < end, of(seen, AI_RTU1)
                    await asyncio.sleep(0.05)
                got = of(seen, AI_RTU1)
                print("DEBUG SLEEP 1.5 s, at SCADA (value, quality):", got)
                vals = [v for i, (v, _) in enumerate(got) if i == 0 or got[i - 1][0] != v]
                assert vals == values, got
                assert not [g for g in itertools.pairwise(got) if g[0] == g[1]], f"a change sent twice: {got}"
                assert node.sim.value(207) == before + 1 and len(node.sim.writes) == writes + 1, (
                    node.sim.writes
                )


async def test_sysload_init_of_a_changed_configuration_sends_no_unchanged_value_again(node: Node) -> None:
    """A new configuration loaded while running (RTUs 1, 2 polled every 150 ms instead of 100: the acquirer
    reloads it, the forwarder loads its full image) with the devices' values unchanged: an IEC 104 master
    connected to se104s keeps its connection and gets no spontaneous event (nothing changed), and a change
    made after the reload reaches it once."""
    await valid(node, 101, 202)
    m = await connect(se104_port(node), LinkParams(k=12, w=8, t1=5, t2=0.05, t3=10))
    try:
        m.send(c.interrogation(1))
        end = time.monotonic() + 5
        while c.COT_ACTTERM not in gi_answers(m, 0)[0]:
            assert time.monotonic() < end, gi_answers(m, 0)
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # the values are steady (the simulated PLCs do not change them)
        n0 = len(m.values(c.COT_SPONT))
        rows = {
            **node.rows,
            "T004_RTU": [{**r, "POLLMS": 150} if r["RTUID"] in (1, 2) else r for r in node.rows["T004_RTU"]],
        }
        with node.redis.client() as r:
            replace_config(r, rows, source="changed")
        end = time.monotonic() + 5
        while "configuration generation 2:" not in node.log("forwarder"):
            assert time.monotonic() < end, node.log("forwarder")[-2000:]
            await asyncio.sleep(0.05)
        await astays(
            lambda: len(m.values(c.COT_SPONT)) == n0 and not m.closed,
            1.5,
            "an unchanged value sent again after the reload",
        )
        node.sim.set_value(101, 1357.0)
        end = time.monotonic() + 5
        while not [v for v in m.values(c.COT_SPONT)[n0:] if v[1] == 1001 and round(v[2], 3) == 1357.0]:
            assert time.monotonic() < end, m.values(c.COT_SPONT)[n0:]
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert [round(v[2], 3) for v in m.values(c.COT_SPONT)[n0:]] == [1357.0], m.values(c.COT_SPONT)[n0:]
    finally:
        await close(m)


async def test_control_sent_while_the_holder_is_frozen_runs_at_most_once_and_is_answered(
    feproot: Path,
) -> None:
    """Node A's acquirer holds every lease and is SIGSTOPped; a sefeps master on B's forwarder sends a
    set-point right away. A's executor was blocked in BLPOP on the control queue, so Redis hands the control
    to the frozen process; B takes the leases over (about 1.5 s); A is resumed after 4 s, and its read of
    that BLPOP's answer times out (the connection dropped with the answer unread). The control runs once,
    by B, well before its deadline (6 s), and is answered ok; A never runs it. Before ctl_requeue it was
    popped and lost: never run, answered `expired` at the deadline while B held the lease for 5 s."""
    timeout_s = 6.0
    async with plant(feproot, {**SUITE, "FEP_CONTROL_TIMEOUT_S": str(timeout_s)}) as p:
        await a_holds_b_ready(p, 10)
        p.start("forwarder", "B")
        scada = Scada(await p.sefeps_port())
        await scada.start()
        a = p.procs[("acquirer", "A")]
        try:
            before = p.sim.value(207)
            writes = len(p.sim.writes)
            a.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                cmd = asyncio.create_task(scada.c.command(40, before + 1, timeout=timeout_s + 5))
                answered: list[float] = []
                cmd.add_done_callback(lambda _: answered.append(time.monotonic()))
                await until(lambda: _holder_is(p, "B"), 8, "B holds every lease")
                t_b = time.monotonic() - t0
                await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - t0)))
            finally:
                a.send_signal(signal.SIGCONT)
            res = await cmd
            took = answered[0] - t0
            await asyncio.sleep(1.0)  # A resumed: whatever it still holds of the control is done by now
            ran = len(p.sim.writes) - writes
            print(
                f"holder frozen 4 s, control sent at once: B held the leases {t_b:.2f} s after the stop; answer "
                f"{res} after {took:.2f} s; written to the PLC {ran} time(s)"
            )
            print(p.log("acquirer", "A")[-2500:])
            assert ran == 1 and res["ok"], (res, p.sim.writes)
            assert took < 4.0, took  # by B, while A was still frozen
            for who in (("acquirer", "A"), ("acquirer", "B"), ("forwarder", "B")):
                assert "Traceback" not in p.log(*who), p.log(*who)[-3000:]
        finally:
            await asyncio.wait_for(scada.close(), 10)


async def _holder_is(p: Any, node: str) -> bool:
    return set((await p.holders()).values()) == {node}


async def test_connections_killed_by_redis_delay_no_change(node: Node) -> None:
    """`CLIENT KILL TYPE normal` (every service's connections dropped at once, as a Redis restart or a proxy
    does), then point 101 changes, five times: each change reaches the master as fast as without the kill
    (within 0.6 s), good, in the same session (no new image). The forwarder's stream read sat out
    redis-py's random retry backoff (0.2-1.5 s, up to 7.6 s with `maxclients` refusing the first tries),
    while its freshness checks, on their own connection, kept the value it held shown topical."""
    await valid(node, 101)
    with node.redis.client() as r:
        async with recorded(node) as (c, seen):
            images = c.images
            for i in range(5):
                assert r.client_kill_filter(_type="normal", skipme=True) > 0
                want = 600.0 + i
                t0 = time.monotonic()
                node.sim.set_value(101, want)
                await until(lambda w=want: (w, 0) in of(seen, AI_RTU1), 3, f"{want} at the master")
                took = next(t for t, a, v, _ in seen if a == AI_RTU1 and round(v, 3) == want) - t0
                print(f"kill {i + 1}: the change at the master {took:.3f} s after it")
                assert took <= 0.6, took
                await asyncio.sleep(0.3)
            assert c.images == images and len(of(seen, AI_RTU1)) == 5, of(seen, AI_RTU1)
    assert "reloading the full image" not in node.log("forwarder"), node.log("forwarder")[-2000:]
