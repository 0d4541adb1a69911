"""A planned stop of the lease holder (SIGTERM, what `docker compose stop` / `restart` sends): the real
`fep-acquirer` processes of nodes A and B against one real redis-server, fep-plcsim's PLCs as devices whose
values change all along, node B's real `fep-forwarder` and a sefeps master (SCADA) on it. A holds every
lease; SIGTERM to A. B must hold the leases and have written a good value well within `lease_ttl_s`,
nothing A writes may land after B's first write (every value write is seen with redis-cli MONITOR and
matched to the change-stream entry it made), SCADA must see no NT/IV meanwhile, A exits 0. The figures
are printed before the asserts, so the same test run on the former code (exit without handover) measures
the gap it leaves."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import c104
import pytest
import redis.asyncio as aredis

from fep_loader.store import replace_config
from fep_tools.plcsim import PlcSim
from fep_tools.sefeps_client import SefepsClient
from fepha import controls
from fepha import keyspace as ks
from fepha.iec104 import codec as iec
from fepha.points import Quality
from fepha.semodel.model import Model
from tests.api.test_with_services import COMMANDS, TIMERS, exited, kill_leftovers, node_env, system_rows
from tests.c104wire import command, command_frames
from tests.forwarder.se104s_fixtures import c104_master, in_thread
from tests.redisproc import RedisProc, free_port

NT, IV = int(Quality.NT), int(Quality.IV)
ACQ = (1, 2)
WATCHED = {1: 101, 2: 202}  # per acquisition RTU, an AI point changed all along
SEFEPS = {101: 1, 202: 2}  # their sefeps addresses (cfg/SEMODEL.sql, RTU 12)
VP = (11, 12)  # sefeps addresses of the link virtual points 901, 902
# suite timers, with a lease TTL long enough that "well within it" is measurable on a loaded machine
SUITE = {**TIMERS, "FEP_TIMERS_LEASE_TTL_S": "2.0", "FEP_TIMERS_STOP_HANDOVER_S": "3.0"}
PRODUCT: dict[str, str] = {}  # fep-ha.cfg's defaults: tick 1 s, TTL 3 s, stop_handover_s 5 s; sample's polls


class SlowWrites(PlcSim):
    """A device that takes `write_delay_s` to apply a write (reads unchanged): a control stays in flight."""

    write_delay_s = 0.0

    async def _action(self, rtu: int, ch: int, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: list | None) -> Any:
        if values is not None and self.write_delay_s:
            await asyncio.sleep(self.write_delay_s)
        return await super()._action(rtu, ch, fc, start, address, count, registers, values)


@dataclass
class Plant:
    feproot: Path
    redis: RedisProc
    rows: dict[str, list[dict[str, Any]]]
    sim: SlowWrites
    timers: dict[str, str]
    r: aredis.Redis
    procs: dict[tuple[str, str], subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # per node, settings of its own

    def start(self, service: str, node: str) -> None:
        env = {**os.environ, "FEPROOT": str(self.feproot), "FEP_LOG_DIR": "",
               **node_env(node, self.redis, self.redis), **self.timers, **self.env.get(node, {})}
        if not self.timers:  # product timers: node_env's shortened ones removed
            env = {k: v for k, v in env.items() if not k.startswith("FEP_TIMERS_")}
        with open(self.feproot / f"{service}-{node}.log", "ab") as log:
            self.procs[(service, node)] = subprocess.Popen([sys.executable, "-m", COMMANDS[service]], env=env,
                                                           stdout=log, stderr=log)

    def log(self, service: str, node: str) -> str:
        return (self.feproot / f"{service}-{node}.log").read_text(errors="replace")

    async def holders(self) -> dict[int, str | None]:
        return {rid: await self.r.hget(ks.lease(rid), "holder") for rid in ACQ}

    async def sefeps_port(self) -> int:
        return next(r["LISTENPORT"] for r in self.rows["T004_RTU"] if r["RTUID"] == 12)


async def until(pred: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        assert time.monotonic() < end, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)


def rows_for(feproot: Path, product: bool, timeout_ms: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The suite's rows; `product`: the sample's own poll periods; `timeout_ms`: the devices' request timeout
    (a slow write stays within it)."""
    rows = system_rows(feproot)
    if product:  # the sample's own poll periods (RTU 1 500 ms, RTU 2 1000 ms) and request timeouts
        rows["T004_RTU"] = [{**r, "POLLMS": {1: 500, 2: 1000}[r["RTUID"]], "TIMEOUTMS": 1000}
                            if r["RTUID"] in ACQ else r for r in rows["T004_RTU"]]
    if timeout_ms is not None:
        rows["T004_RTU"] = [{**r, "TIMEOUTMS": timeout_ms} if r["RTUID"] in ACQ else r for r in rows["T004_RTU"]]
    return rows


@contextlib.asynccontextmanager
async def plant(feproot: Path, timers: dict[str, str], product: bool = False,
                timeout_ms: int | None = None) -> AsyncIterator[Plant]:
    with RedisProc() as rp:
        rows = rows_for(feproot, product, timeout_ms)
        replace_config(rp.client(), rows, source="sample")
        sim = SlowWrites(Model.from_rows(rows))
        await sim.start()
        r = aredis.Redis(host=rp.host, port=rp.port, decode_responses=True)
        p = Plant(feproot, rp, rows, sim, timers, r)
        try:
            yield p
        finally:
            kill_leftovers(p.procs.values())
            await r.aclose()
            await asyncio.wait_for(sim.stop(), 10)


async def a_holds_b_ready(p: Plant, timeout: float) -> None:
    """A started first holds every lease; B runs, reaches every device and is alive."""
    p.start("acquirer", "A")
    await until(lambda: _all(p, "A"), timeout, "A holds every lease")
    p.start("acquirer", "B")

    async def b_reaches() -> bool:
        links = [await p.r.hgetall(ks.link(rid)) for rid in ACQ]
        return all(lk.get("valb") == "1" for lk in links) and bool(await p.r.exists(ks.heartbeat("acquirer", "B")))

    await until(b_reaches, timeout, "B reaches every device")


async def _all(p: Plant, node: str) -> bool:
    return set((await p.holders()).values()) == {node}


class Monitor:
    """redis-cli MONITOR into a file: every command the server ran, in its order."""

    def __init__(self, rp: RedisProc, path: Path) -> None:
        self.path = path
        self.out = open(path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(["redis-cli", "-h", rp.host, "-p", str(rp.port), "monitor"],
                                     stdout=self.out, stderr=subprocess.DEVNULL)

    def stop(self) -> list[tuple[float, list[str]]]:
        self.proc.terminate()
        self.proc.wait(5)
        self.out.close()
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            ts, _, rest = line.partition(" ")
            if "]" not in rest:
                continue
            with contextlib.suppress(ValueError):
                out.append((float(ts), shlex.split(rest.split("] ", 1)[1])))
        return out


def writes_by_node(cmds: list[tuple[float, list[str]]]) -> list[tuple[str, int, dict[str, str]]]:
    """(node, rtu, pairs) of every write_values call seen."""
    out = []
    for _, c in cmds:
        if len(c) > 11 and c[0].upper() == "FCALL" and c[1] == "write_values":
            node, rtu, pairs = c[6], int(c[9]), c[12:]
            out.append((node, rtu, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return out


async def landed(r: aredis.Redis, since_ms: int, until_ms: int, calls: list[tuple[str, int, dict[str, str]]]
                 ) -> dict[int, list[tuple[int, set[str]]]]:
    """Per RTU, the change-stream entries from `since_ms` to `until_ms` in order: (entry ms, nodes whose
    write_values call carried exactly that entry's pairs)."""
    out: dict[int, list[tuple[int, set[str]]]] = {rid: [] for rid in ACQ}
    for eid, f in await r.xrange(ks.CHANGES, min=str(since_ms), max=str(until_ms)):
        rtu = f.pop("r")
        if not rtu.isdigit() or int(rtu) not in out:
            continue
        who = {node for node, rid, pairs in calls if rid == int(rtu) and pairs == f}
        out[int(rtu)].append((int(eid.split("-")[0]), who))
    return out


class Scada:
    """A sefeps master on B's forwarder recording every change it is sent: (monotonic, addr, value, q)."""

    def __init__(self, port: int) -> None:
        self.c = SefepsClient("127.0.0.2", port)  # node B's address (FEP_NODE_BIND)
        self.seen: list[tuple[float, int, Any, int]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        end = time.monotonic() + 15
        while True:
            try:
                await self.c.connect()
                break
            except OSError:
                assert time.monotonic() < end, "sefeps server not listening"
                await asyncio.sleep(0.1)
        await self.c.wait_image(10)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            _, addr, value, q, _ = await self.c.next_change(3600)
            self.seen.append((time.monotonic(), addr, value, q))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.c.close()


async def change_all_along(sim: PlcSim, stop: asyncio.Event, period_s: float = 0.05) -> None:
    k = 0
    while not stop.is_set():
        k += 1
        for pid in WATCHED.values():
            sim.set_value(pid, 100 + k % 500)
        await asyncio.sleep(period_s)


async def exit_after(proc: subprocess.Popen[bytes], t0: float, timeout: float) -> float | None:
    """Seconds from t0 to the process's end (seen within 50 ms), None if it runs on past `timeout`."""
    return time.monotonic() - t0 if await exited(proc, timeout) else None


def longest_gap(times: list[float], start: float, end: float) -> float:
    pts = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(pts))


@pytest.mark.parametrize("product", [False, True], ids=["suite_timers", "product_timers"])
async def test_sigterm_of_the_holder_hands_the_leases_over_without_a_gap(feproot: Path, product: bool) -> None:
    timers = PRODUCT if product else SUITE
    ttl = float(timers.get("FEP_TIMERS_LEASE_TTL_S", 3.0))
    tick = float(timers.get("FEP_TIMERS_LEASE_TICK_S", 1.0))
    poll = 1.0 if product else 0.1  # the longest poll period of the two RTUs
    async with plant(feproot, timers, product) as p:
        await a_holds_b_ready(p, 30 if product else 10)
        p.start("forwarder", "B")
        scada = Scada(await p.sefeps_port())
        await scada.start()
        stop_changing = asyncio.Event()
        changer = asyncio.create_task(change_all_along(p.sim, stop_changing))
        mon = Monitor(p.redis, p.feproot / "monitor.log")
        await asyncio.sleep(0.5)  # attached: every write from here on is in its output
        mon_ms = int(time.time() * 1000)
        try:
            # SCADA sees the values change, topical, before the stop
            await until(lambda: sum(1 for s in scada.seen if s[1] == 1 and not s[3] & (NT | IV)) >= 3,
                        10, "SCADA sees point 101 change, topical")
            await asyncio.sleep(2 * poll)
            a = p.procs[("acquirer", "A")]
            t0, t0_ms = time.monotonic(), int(time.time() * 1000)
            a.send_signal(signal.SIGTERM)
            a_exit = asyncio.create_task(exit_after(a, t0, 10))
            await until(lambda: _all(p, "B"), 3 * ttl + 2, "B holds every lease")
            t_held = time.monotonic() - t0
            t_exit = await a_exit
            assert t_exit is not None, "A did not exit within 10 s of SIGTERM"
            await asyncio.sleep(3 * poll + tick)  # B's polls after the takeover reach SCADA
            stop_changing.set()
            end = time.monotonic()
        finally:
            mon_end_ms = int(time.time() * 1000) - 200  # entries up to here: their calls are in MONITOR's file
            cmds = mon.stop()
            stop_changing.set()
            await asyncio.wait_for(changer, 5)
            await asyncio.wait_for(scada.close(), 10)
        entries = await landed(p.r, mon_ms, mon_end_ms, writes_by_node(cmds))
        events = [e for _, e in await p.r.xrange(ks.LEASE_EVENTS) if int(e["ts_ms"]) >= t0_ms]
        # figures first (on the former code the asserts below fail; these say by how much)
        figures = []
        for rid in ACQ:
            es = entries[rid]
            last_a = max((ms for ms, who in es if who == {"A"}), default=None)
            first_b = min((ms for ms, who in es if who == {"B"}), default=None)
            gap = (first_b - last_a) / 1000 if first_b and last_a else float("nan")
            b_first = (first_b - t0_ms) / 1000 if first_b else float("nan")
            fresh = [t for t, addr, _, q in scada.seen if addr == SEFEPS[WATCHED[rid]] and not q & (NT | IV)]
            scada_gap = longest_gap(fresh, t0, end)
            figures.append(f"RTU {rid}: B's first write {b_first:.2f} s after SIGTERM, writes stopped "
                           f"{gap:.2f} s, longest time without a fresh value at SCADA {scada_gap:.2f} s")
        bad = [(round(t - t0, 2), addr, q) for t, addr, _, q in scada.seen
               if t >= t0 and addr in (*SEFEPS.values(), *VP) and q & (NT | IV)]
        print(f"planned stop ({'product' if product else 'suite'} timers, lease_ttl_s {ttl:g}, tick {tick:g}): "
              f"every lease on B {t_held:.2f} s after SIGTERM, A exited {t_exit:.2f} s (status {a.returncode}); "
              + "; ".join(figures) + f"; NT/IV at SCADA: {len(bad)} {bad[:3]}; lease events "
              + str([(e["rtu"], e["from"], e["to"], e["reason"]) for e in events]))
        assert a.returncode == 0, p.log("acquirer", "A")[-3000:]
        assert sorted((int(e["rtu"]), e["from"], e["to"], e["reason"]) for e in events) == \
            [(rid, "A", "B", "handover") for rid in ACQ], events  # one move each, no stealing back
        assert t_held < min(ttl / 2, tick + 1.0), t_held
        for rid in ACQ:
            es = entries[rid]
            assert all(who for _, who in es), f"a change-stream entry no write_values call made: {es}"
            first_b = next(i for i, (_, who) in enumerate(es) if who == {"B"})
            assert all(who != {"A"} for _, who in es[first_b:]), f"A wrote after B's first write: {es}"
            assert (es[first_b][0] - t0_ms) / 1000 < tick + poll + 0.5, figures  # B wrote promptly
            fresh = [t for t, addr, _, q in scada.seen if addr == SEFEPS[WATCHED[rid]] and not q & (NT | IV)]
            assert longest_gap(fresh, t0, end) < 2 * poll + 0.5, figures  # about one poll period, as always
        assert not bad, f"NT/IV at SCADA during the planned stop: {bad}"
        log_a = p.log("acquirer", "A")
        assert "stopping: node B took the leases of RTU 1, 2" in log_a and "Traceback" not in log_a, log_a[-3000:]


async def test_control_in_flight_at_the_stop_runs_once(feproot: Path) -> None:
    """SIGTERM while A's executor is writing a control to the device: that control finishes (done, once, by
    A); one submitted just after the signal is left to B (A takes no new control once stopping) and runs
    once, by B, before its deadline."""
    async with plant(feproot, SUITE) as p:
        await a_holds_b_ready(p, 10)
        p.sim.write_delay_s = 0.25  # the device applies a write after 0.25 s (request timeout 0.3 s)
        first = await controls.submit(p.r, 1, 109, 1, "test", 5000)
        await until(lambda: _state(p.r, first, "executing"), 5, "A executes the first control")
        a = p.procs[("acquirer", "A")]
        a.send_signal(signal.SIGTERM)
        second = await controls.submit(p.r, 1, 110, 42, "test", 5000)
        res1, res2 = await asyncio.gather(controls.wait(p.r, first, 5000), controls.wait(p.r, second, 5000))
        assert await exited(a, 10) and a.returncode == 0, p.log("acquirer", "A")[-3000:]
        assert (res1.state, res2.state) == ("done", "done"), (res1, res2)
        assert await p.r.hget(ks.control(first), "executor") == "A"
        assert await p.r.hget(ks.control(second), "executor") == "B"
        coil = [w for w in p.sim.writes if w[:3] == (1, "co", 100)]
        reg = [w for w in p.sim.writes if w[:3] == (1, "hr", 100)]
        assert (coil, reg) == ([(1, "co", 100, [True])], [(1, "hr", 100, [42])]), p.sim.writes  # once each
        assert await p.holders() == {1: "B", 2: "B"}


async def _state(r: aredis.Redis, ctl: int, want: str) -> bool:
    return await r.hget(ks.control(ctl), "state") == want


async def sigterm_a_exits(p: Plant, within_s: float) -> str:
    """SIGTERM to A, which must exit 0 within `within_s`; returns its log."""
    a = p.procs[("acquirer", "A")]
    t0 = time.monotonic()
    a.send_signal(signal.SIGTERM)
    assert await exited(a, within_s + 2), f"A did not exit within {within_s + 2} s"
    took, log = time.monotonic() - t0, p.log("acquirer", "A")
    assert a.returncode == 0 and took < within_s, (took, a.returncode, log[-2000:])
    return log


async def test_without_the_other_node_the_holder_exits_at_once_and_keeps_its_leases(feproot: Path) -> None:
    """No node B: nothing to hand over to; A says so once and exits at once, its leases lapse as before."""
    async with plant(feproot, SUITE) as p:
        p.start("acquirer", "A")
        await until(lambda: _all(p, "A"), 10, "A holds every lease")
        log = await sigterm_a_exits(p, 1.5)
        assert log.count("stopping: keeping the leases of RTU 1, 2 until they lapse") == 1, log[-2000:]
        assert "node B's acquirer is not running or is stopping" in log
        assert await p.holders() == {1: "A", 2: "A"}  # kept: they lapse after lease_ttl_s


async def test_second_sigterm_exits_at_once(feproot: Path) -> None:
    """A handover the peer cannot complete (B frozen with SIGSTOP: alive by its heartbeat, which lives 15 s
    here, but never ticking): a second SIGTERM ends the wait at once, exit 0."""
    async with plant(feproot, {**SUITE, "FEP_TIMERS_STOP_HANDOVER_S": "30", "FEP_TIMERS_HEARTBEAT_S": "5"}) as p:
        await a_holds_b_ready(p, 10)
        b = p.procs[("acquirer", "B")]
        a = p.procs[("acquirer", "A")]
        os.kill(b.pid, signal.SIGSTOP)
        try:
            a.send_signal(signal.SIGTERM)
            await until(lambda: "stopping: handing the leases of RTU 1, 2 over to node B" in p.log("acquirer", "A"),
                        5, "A hands over")
            await asyncio.sleep(0.3)
            assert a.poll() is None  # still waiting for B (30 s timer)
            t0 = time.monotonic()
            a.send_signal(signal.SIGTERM)
            assert await exited(a, 3.0), "A did not exit after a second SIGTERM"
            assert a.returncode == 0 and time.monotonic() - t0 < 1.5
            assert "second signal" in p.log("acquirer", "A")
        finally:
            os.kill(b.pid, signal.SIGCONT)


async def test_master_unreachable_at_the_stop_exits_once_the_leases_may_have_lapsed(feproot: Path) -> None:
    """The master Redis killed and not coming back: nothing can be handed over (the leases lapse there, or are
    gone with it); A waits for it only while its leases may still be alive (lease_ttl_s from the first
    failed tick: a master that moves comes back within it), says why and exits 0, without waiting out
    stop_handover_s."""
    async with plant(feproot, {**SUITE, "FEP_TIMERS_STOP_HANDOVER_S": "30"}) as p:
        await a_holds_b_ready(p, 10)
        os.kill(p.redis.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        p.redis.proc.wait(5)  # type: ignore[union-attr]
        p.redis.proc = None
        await asyncio.sleep(0.5)  # a few lease ticks fail
        log = await sigterm_a_exits(p, 3.0)
        assert log.count("stopping: master Redis unreachable, leases not handed over") == 1, log[-2000:]


class Path2Master:
    """Node A's way to the master Redis (a TCP relay): `cut()` resets every connection and every new one,
    as the VIP's move does to the old holder's connections until the VIP's new holder answers; `mend()`
    lets them through again."""

    def __init__(self, target: RedisProc) -> None:
        self.target, self.up = target, True
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if not self.up:
            w.transport.abort()
            return
        tr, tw = await asyncio.open_connection(self.target.host, self.target.port)
        self.pipes.update((w, tw))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()
        await asyncio.gather(pipe(r, tw), pipe(tr, w))
        self.pipes.difference_update((w, tw))

    def cut(self) -> None:
        self.up = False
        for w in list(self.pipes):
            w.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_master_moving_at_the_stop_is_waited_for_then_handed_over(feproot: Path) -> None:
    """The rolling upgrade's second step: the holder's master Redis moves (its path cut, every lease tick
    fails) as the holder is stopped, and comes back within lease_ttl_s. A waits for it and hands the leases
    over (reason `handover`, B holding them within a TTL of the signal); it used to exit at once ("master
    Redis unreachable") and leave the RTUs without a writer until the leases lapsed."""
    async with plant(feproot, SUITE) as p:
        relay = Path2Master(p.redis)
        p.env["A"] = {"FEP_REDIS_PORT": str(await relay.start())}
        try:
            await a_holds_b_ready(p, 10)
            relay.cut()
            await until(lambda: "lease: ConnectionError" in p.log("acquirer", "A"), 3, "A's lease ticks fail")
            a = p.procs[("acquirer", "A")]
            t0, t0_ms = time.monotonic(), int(time.time() * 1000)
            a.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            relay.up = True  # the master reached again (the VIP's new holder answers)
            await until(lambda: _all(p, "B"), 3, "B holds every lease")
            t_held = time.monotonic() - t0
            assert await exited(a, 3) and a.returncode == 0, p.log("acquirer", "A")[-3000:]
        finally:
            await relay.close()
        events = [e for _, e in await p.r.xrange(ks.LEASE_EVENTS) if int(e["ts_ms"]) >= t0_ms]
        assert sorted((int(e["rtu"]), e["from"], e["to"], e["reason"]) for e in events) == \
            [(rid, "A", "B", "handover") for rid in ACQ], (events, p.log("acquirer", "A")[-3000:])
        assert t_held < float(SUITE["FEP_TIMERS_LEASE_TTL_S"]), t_held


SE104 = 10  # the forwarding RTU served by se104s (cfg/SEMODEL.sql)
SETPOINT_WAIT_S = 6.0
"""The in-flight set-point's wait for its answer (after the device's write delay, 2 s): it ends a second after
c104's transmit gave up (its command timeout, 3 s), which the unanswered one waits for (a longer one, the
second test that much longer)."""
SETPOINT_IOA, SWITCH_IOA = 6001, 5001  # C_SE_NB_1 on point 110 (RTU 1's register 100), C_SC_NA_1 on 109 (coil 100)


@dataclass
class SetpointInFlight:
    """The forwarder's planned-stop lab (`setpoint_in_flight`)."""

    p: Plant
    fwd: subprocess.Popen[bytes]
    m1: Any  # the c104 master whose set-point is in flight
    m2: Any  # a second c104 master on the same server
    ctl: int  # the set-point's control id
    sent: asyncio.Future[Any]  # its c104wire.command (in a thread): its Outcome, read from the wire


@contextlib.asynccontextmanager
async def setpoint_in_flight(feproot: Path, write_delay_s: float) -> AsyncIterator[SetpointInFlight]:
    """The real acquirer and forwarder of one node, a device that takes `write_delay_s` to apply a write, two
    c104 masters on se104s; the first has sent a set-point (IOA 6001 = 42) and A's executor is writing it."""
    async with plant(feproot, SUITE, timeout_ms=4000) as p:
        p.start("acquirer", "A")
        await until(lambda: _all(p, "A"), 10, "A holds every lease")
        p.start("forwarder", "A")
        # its servers listen (its heartbeat comes before them: c104 then retries after 4 s)
        await until(lambda: "forwarding servers" in p.log("forwarder", "A"), 10, "the forwarder serves")
        port = next(r["LISTENPORT"] for r in p.rows["T004_RTU"] if r["RTUID"] == SE104)
        sent: asyncio.Future[Any] | None = None
        try:
            async with (c104_master(port, points={SETPOINT_IOA: c104.Type.C_SE_NB_1}, ca=1) as m1,
                        c104_master(port, points={SWITCH_IOA: c104.Type.C_SC_NA_1}, ca=1) as m2):
                p.sim.write_delay_s = write_delay_s
                ctl = int(await p.r.get(ks.CTL_SEQ) or 0) + 1
                sp = m1.point(SETPOINT_IOA)
                sp.info = c104.ScaledCmd(target=c104.Int16(42))
                sent = asyncio.ensure_future(in_thread(command, sp, m1.trace, SETPOINT_WAIT_S))
                await until(lambda: _state(p.r, ctl, "executing"), 5, "A writes the set-point")
                yield SetpointInFlight(p, p.procs[("forwarder", "A")], m1, m2, ctl, sent)
        finally:  # a transmit left unanswered ends with its client (not at c104's command timeout), the
            # command's wait a second after it
            if sent is not None:
                await asyncio.gather(sent, return_exceptions=True)


async def test_forwarder_sigterm_answers_the_control_in_flight_before_closing(feproot: Path) -> None:
    """The forwarder's planned stop (docs/forwarder.md "A planned stop"): `setpoint_in_flight` with a device
    that takes 2 s to apply a write; once A's executor is writing the first master's set-point, SIGTERM to
    the forwarder; 0.2 s later the second master sends a switch command. The first master must get ACT_CON
    and ACT_TERM (positive) before its connection closes, the set-point be written once; the switch must get
    a negative ACT_CON, never be queued nor written; the forwarder exits 0. On the code before (closing at
    once) the set-point was never answered."""
    async with setpoint_in_flight(feproot, 2.0) as lab:
        p, fwd, m1, m2 = lab.p, lab.fwd, lab.m1, lab.m2
        fwd.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        await asyncio.sleep(0.2)
        sw = m2.point(SWITCH_IOA)
        sw.info = c104.SingleCmd(on=True)
        refused = asyncio.ensure_future(in_thread(command, sw, m2.trace, 3.0))
        await until(lambda: m1.conn.state != c104.ConnectionState.OPEN, 10, "the forwarder closes")
        closed_s = time.monotonic() - t_term
        assert await exited(fwd, 5) and fwd.returncode == 0, p.log("forwarder", "A")[-3000:]
        # the outcomes read from the frames (c104's transmit may lose an answer it received)
        sent, switched = await lab.sent, await refused
        print(f"SIGTERM to the connection's close with a set-point in flight: {closed_s:.2f} s")
        assert sent.answer is True and switched.answer is False, (sent, switched, p.log("forwarder", "A")[-3000:])
        received = lambda: [f for f in command_frames(m1.trace, SETPOINT_IOA) if f[0] == "<<"]
        with contextlib.suppress(AssertionError):  # its ACT_TERM may be recorded a moment after the ACT_CON
            await until(lambda: len(received()) >= 2, 2, "the set-point's ACT_TERM")
        got = received()
        assert got == [("<<", iec.COT_ACTCON, False, False), ("<<", iec.COT_ACTTERM, False, False)], \
            (got, p.log("forwarder", "A")[-3000:])
        opened = m1.trace.index(c104.ConnectionState.OPEN)
        term = next(i for i, e in enumerate(m1.trace) if isinstance(e, str)
                    and ("<<", iec.COT_ACTTERM, False, False) in command_frames([e], SETPOINT_IOA))
        states = [e for e in m1.trace[opened:term] if not isinstance(e, str)]
        assert all(st in (c104.ConnectionState.OPEN, c104.ConnectionState.OPEN_MUTED) for st in states), \
            f"closed before ACT_TERM: {states}"
        assert [f for f in command_frames(m2.trace, SWITCH_IOA) if f[0] == "<<"] == \
            [("<<", iec.COT_ACTCON, True, False)], m2.trace[-20:]
        assert [w for w in p.sim.writes if w[:3] == (1, "hr", 100)] == [(1, "hr", 100, [42])], p.sim.writes
        assert not [w for w in p.sim.writes if w[:3] == (1, "co", 100)], p.sim.writes
        assert int(await p.r.get(ks.CTL_SEQ)) == lab.ctl, "the switch command was queued"
        assert await p.r.hget(ks.control(lab.ctl), "state") == "done"


async def test_forwarder_second_sigterm_closes_at_once_and_a_reload_meanwhile_changes_nothing(feproot: Path) -> None:
    """`setpoint_in_flight` with a device that takes 2 s to apply a write: SIGTERM to the forwarder, then a
    configuration reload that changes the se104s server's RTU (its port: a restart, were it applied), then a
    second SIGTERM. The reload must change nothing (the master's connection stays open, the set-point still
    in flight: on the code before, the server was stopped there and not started again); the second signal
    must close the connection and end the forwarder at once, exit 0, the set-point unanswered (its outcome
    unknown to the master), which the forwarder logs; the set-point still runs, once, and the audit says so
    (done by A, after the forwarder exited)."""
    async with setpoint_in_flight(feproot, 2.0) as lab:
        p, fwd, m1 = lab.p, lab.fwd, lab.m1
        fwd.send_signal(signal.SIGTERM)
        await until(lambda: "planned stop: " in p.log("forwarder", "A"), 5, "the drain begins")
        rows = {**p.rows, "T004_RTU": [{**r, "LISTENPORT": free_port()} if r["RTUID"] == SE104 else r
                                       for r in p.rows["T004_RTU"]]}
        await in_thread(replace_config, p.redis.client(), rows, "changed during the drain")
        await until(lambda: "not applied: the forwarder is stopping" in p.log("forwarder", "A"), 5,
                    "the forwarder sees the reload")
        await asyncio.sleep(0.1)  # a stop or restart it would have made is done by now
        assert m1.conn.state == c104.ConnectionState.OPEN, m1.trace[-10:]
        assert fwd.poll() is None and await _state(p.r, lab.ctl, "executing")
        t0 = time.monotonic()
        fwd.send_signal(signal.SIGTERM)
        await until(lambda: m1.conn.state != c104.ConnectionState.OPEN, 5, "the forwarder closes")
        closed_s = time.monotonic() - t0
        assert await exited(fwd, 5), "the forwarder did not exit after a second SIGTERM"
        exit_s, exit_ms = time.monotonic() - t0, int(time.time() * 1000)
        print(f"second SIGTERM to the connection's close: {closed_s:.3f} s, to the forwarder's exit: {exit_s:.3f} s")
        log = p.log("forwarder", "A")
        # the runner's read of the change stream (up to 1 s) is cancelled: without that the exit took 0.93-0.98 s
        assert fwd.returncode == 0 and closed_s < 0.5 and exit_s < 0.5, (closed_s, exit_s, log[-3000:])
        assert not [f for f in command_frames(m1.trace, SETPOINT_IOA) if f[0] == "<<"], m1.trace[-20:]
        assert "se104s RTU 10: planned stop cut short by a second signal" in log and \
            "1 control(s) in flight and 0 answer(s) unsent, their outcome unknown to their masters" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]

        async def audited() -> dict[str, str] | None:
            return next((e for _, e in await p.r.xrange(ks.CTL_AUDIT) if e.get("id") == str(lab.ctl)), None)

        entry = await until(audited, 5, "the set-point's audit entry")
        assert (entry["state"], entry["result"], entry["executor"], entry["value"]) == ("done", "written", "A", "42.0") \
            and entry["origin"].startswith("se104s:10:A:127.0.0.1:"), entry  # the master it came from, through A
        assert int(entry["finished_ms"]) > exit_ms, entry  # the forwarder did not wait for it
        assert [w for w in p.sim.writes if w[:3] == (1, "hr", 100)] == [(1, "hr", 100, [42])], p.sim.writes
