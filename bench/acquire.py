"""Acquisition benchmark: point changes written to Redis per second by the acquirer, against the seed's way.

Setup: a real redis-server (RedisProc), a generated configuration of `--rtus` RTUs with `--points` uint16
holding registers each (loaded with the loader's replace_config), served by a real PlcSim (`fep-plcsim`
in its own process, `--change-on-read`: every point changes with every poll).

Three loads, each `--seconds` long, repeated `--runs` times (medians printed):
  write path  the acquirer's own RtuRunner objects, lease taken by the real `lease_tick`, each RTU's task
              publishing poll responses in a loop (`RtuRunner.publish`: change detection, record encoding,
              one fenced `write_values` Function call per poll response through the real Writer, direct
              mode). The responses were read from the PlcSim once over Modbus and alternate between two
              value sets, so every point changes at every poll; Modbus time is not in this figure.
  per point   the same changes written the seed's way: one awaited round trip (HSET value + XADD change
              record, pipelined together) per point, the same concurrency (one task per RTU).
  end to end  the whole acquirer (`fep_acquirer.app.Acquirer`: housekeeping, lease, Modbus polls every
              `--poll-ms` against the PlcSim, decode, change detection, write). The offered load is
              rtus x points / poll period (400,000/s by default); what comes through is limited by the
              Modbus side (pymodbus client here, pymodbus server in the simulator's process) on 2 cores.

CPU is this process's CPU time (time.process_time: the acquirer's, not Redis's or the simulator's).
Last line: changes_per_s=… per_point_changes_per_s=… speedup=… cpu_s_per_100k=… e2e_changes_per_s=…
e2e_cpu_s_per_100k=…
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

from fep_acquirer.app import Acquirer
from fep_acquirer.device import DeviceLink
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner
from fep_acquirer.writer import Writer
from fep_loader.store import replace_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fepha import config, redisfns
from fepha import keyspace as ks
from fepha import points as pt
from fepha.logsetup import OnceLogger
from fepha.semodel import db
from fepha.semodel.model import Model
from tests.redisproc import RedisProc, free_port

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench")


def rows(n_rtus: int, n_points: int, ports: list[int], poll_ms: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"T020_UNION": [{"ID": 1, "IP1": "127.0.0.1", "IP2": "127.0.0.2"}],
                                            "T004_RTU": [], "T010_CHANNEL": [], "T011_POINT": []}
    for i in range(n_rtus):
        rid = i + 1
        out["T004_RTU"].append({"RTUID": rid, "NAME": f"bench{rid}", "RTUTYPE": 0, "PROTOCOL": "modbus_tcp",
                                "POLLMS": poll_ms, "TIMEOUTMS": 1000, "LISTENPORT": None, "ADDRESS": None,
                                "ALLOW": None})
        for ch in (1, 2):
            out["T010_CHANNEL"].append({"RTUID": rid, "CHANNO": ch, "HOST": f"127.0.0.{ch}", "PORT": ports[i],
                                        "UNITID": 1})
        out["T011_POINT"] += [{"PNTID": rid * 100_000 + a, "RTUID": rid, "KIND": "AI", "NAME": f"p{a}",
                               "AREA": "hr", "ADDRESS": a, "DATATYPE": "uint16", "BYTEORDER": None,
                               "WORDORDER": None, "BITINDEX": None, "SCALE": None, "OFFSET": None,
                               "DEADBAND": None} for a in range(n_points)]
    return out


class Sim:
    """fep-plcsim in its own process (so its CPU is not counted as the acquirer's), stopped by PID."""

    def __init__(self, db_path: Path, endpoints: list[tuple[str, int]]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fep_tools.plcsim", "--db", str(db_path),
                                      "--rate", "0", "--change-on-read"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoints = endpoints

    async def ready(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        for host, port in self.endpoints:
            while True:
                try:
                    _, w = await asyncio.open_connection(host, port)
                    w.close()
                    await w.wait_closed()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > end:
                        raise RuntimeError(f"fep-plcsim did not serve {host}:{port}") from None
                    await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def reset(r: Any, n_rtus: int) -> None:
    """Drop values, change stream and leases between runs (memory stays bounded, every run alike)."""
    await r.delete(ks.CHANGES, ks.LEASE_EVENTS, *(ks.values(i + 1) for i in range(n_rtus)),
                   *(ks.lease(i + 1) for i in range(n_rtus)))


async def make_runners(model: Model, cfg: config.NodeConfig, writer: Writer, metrics: Metrics,
                       ) -> list[tuple[RtuRunner, list[dict[int, tuple[int | float, int]]]]]:
    """The acquirer's runners, each with two poll responses read over Modbus (the second 'next poll')."""
    once = OnceLogger(log)
    out = []
    for rtu in model.acquisition_rtus():
        runner = RtuRunner(rtu, cfg, writer, metrics, once)
        link = DeviceLink(rtu.channels[0], 2.0)
        await link.connect()
        try:
            await runner.poll(link)  # lease not held yet: reads and decodes only
            first = runner.samples
            await runner.poll(link)
            second = runner.samples
        finally:
            link.close()
        assert all(first[p] != second[p] for p in first), "the simulator did not change every point"
        out.append((runner, [first, second]))
    return out


async def take_leases(r: Any, runners: list[RtuRunner], node: str) -> None:
    for runner in runners:
        holder, epoch, _ = await r.fcall(*redisfns.lease_tick(runner.rtu.id, node, True, 600_000,
                                                              600_000).argv)
        runner.lease.update(str(holder), int(epoch))
        runner.full_image()
        assert runner.lease.held, f"lease of rtu {runner.rtu.id} is held by {holder}"


async def write_path_run(r: Any, prepared, metrics: Metrics, seconds: float) -> tuple[int, float, float]:
    """(changes, wall s, cpu s) of RtuRunner.publish loops, one task per RTU, all points changing."""
    await reset(r, len(prepared))
    await take_leases(r, [runner for runner, _ in prepared], "A")
    before = metrics.total["changes_written"]

    async def loop(runner: RtuRunner, responses) -> None:
        i = 0
        while time.monotonic() < end:
            await runner.publish(responses[i & 1], int(time.time() * 1000))
            i += 1

    c0, t0 = time.process_time(), time.monotonic()
    end = t0 + seconds
    await asyncio.gather(*(loop(runner, resp) for runner, resp in prepared))
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    errors = metrics.total["write_errors"]
    if errors:
        raise RuntimeError(f"{errors} write errors in the write-path load")
    n = metrics.total["changes_written"] - before
    await verify(r, prepared, n)
    return n, wall, cpu


async def verify(r: Any, prepared, n: int) -> None:
    """The changes counted are in Redis: every point's record holds one of its two values, and the change
    stream has at least one record per poll response written."""
    for runner, responses in prepared:
        got = await r.hgetall(ks.values(runner.rtu.id))
        assert len(got) == len(responses[0]), f"rtu {runner.rtu.id}: {len(got)} values in Redis"
        for pid, rec in got.items():
            v = pt.decode(rec).value
            assert v in (responses[0][int(pid)][0], responses[1][int(pid)][0]), (pid, rec)
    per_call = max(len(resp[0]) for _, resp in prepared)
    assert await r.xlen(ks.CHANGES) >= n // per_call, "fewer change records than poll responses written"


async def per_point_run(r: Any, prepared, seconds: float) -> tuple[int, float, float]:
    """The seed's way: for each changed point, one awaited round trip (HSET + XADD)."""
    await reset(r, len(prepared))
    total = 0

    async def loop(runner: RtuRunner, responses) -> None:
        nonlocal total
        vkey, rid = ks.values(runner.rtu.id), runner.rtu.id
        last: dict[int, tuple[int | float, int]] = {}
        i = 0
        while time.monotonic() < end:
            ts = int(time.time() * 1000)
            for pid, s in responses[i & 1].items():
                if time.monotonic() >= end:
                    return
                if last.get(pid) == s:
                    continue
                rec = pt.encode(s[0], s[1], ts)
                pipe = r.pipeline(transaction=False)
                pipe.hset(vkey, str(pid), rec)
                pipe.xadd(ks.CHANGES, {"r": rid, str(pid): rec}, maxlen=ks.CHANGES_MAXLEN, approximate=True)
                await pipe.execute()
                last[pid] = s
                total += 1
            i += 1

    c0, t0 = time.process_time(), time.monotonic()
    end = t0 + seconds
    await asyncio.gather(*(loop(runner, resp) for runner, resp in prepared))
    return total, time.monotonic() - t0, time.process_time() - c0


async def end_to_end_run(r: Any, cfg: config.NodeConfig, n_rtus: int, seconds: float,
                         ) -> tuple[int, float, float]:
    """The whole acquirer for `seconds` once every RTU's lease is held: changes written, wall, cpu."""
    await reset(r, n_rtus)
    acq = Acquirer(cfg, r, r)
    stop = asyncio.Event()
    task = asyncio.create_task(acq.run(stop, config_check_s=0.2))
    try:
        end = time.monotonic() + 10
        while not (len(acq.runners) == n_rtus and all(x.lease.held for x in acq.runners.values())):
            if time.monotonic() > end or task.done():
                raise RuntimeError("the acquirer did not take its leases within 10 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # full images written, polls in their rhythm
        m0, c0, t0 = acq.metrics.total["changes_written"], time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        n, wall, cpu = (acq.metrics.total["changes_written"] - m0, time.monotonic() - t0,
                        time.process_time() - c0)
    finally:
        stop.set()
        await task
    return n, wall, cpu


async def bench(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    ports = [free_port() for _ in range(args.rtus)]
    data = rows(args.rtus, args.points, ports, args.poll_ms)
    db.write_rows(tmp / "SEMODEL.db", data)
    model = Model.from_rows(data)
    sim = Sim(tmp / "SEMODEL.db", [("127.0.0.1", p) for p in ports])
    with RedisProc() as rp:
        try:
            replace_config(rp.client(), data, source="bench")
            await sim.ready()
            cfg = config.load_node(REPO, env={}, node_id="A", vip=rp.host, port=rp.port, local_host=rp.host,
                                   local_port=rp.port, write_mode="direct", lease_tick_s=0.2, lease_ttl_s=5,
                                   takeover_s=30, heartbeat_s=1)
            r = aredis.Redis(host=rp.host, port=rp.port, decode_responses=True)
            try:
                return await _measure(args, r, model, cfg)
            finally:
                await r.aclose()
        finally:
            sim.stop()


async def _measure(args: argparse.Namespace, r: Any, model: Model, cfg: config.NodeConfig) -> dict[str, float]:
    metrics = Metrics("A")
    writer = Writer(r, "A", 0, cfg.batch_size)
    writer.start()
    try:
        prepared = await make_runners(model, cfg, writer, metrics)
        res: dict[str, list[float]] = {k: [] for k in ("wp", "wp_cpu", "pp", "e2e", "e2e_cpu")}
        for run in range(args.runs):
            n, wall, cpu = await write_path_run(r, prepared, metrics, args.seconds)
            res["wp"].append(n / wall)
            res["wp_cpu"].append(cpu / n * 100_000)
            mem = (await r.info("memory"))["used_memory"] / 2**20
            entries = await r.xlen(ks.CHANGES)
            pn, pwall, _ = await per_point_run(r, prepared, args.per_point_seconds)
            res["pp"].append(pn / pwall)
            print(f"run {run + 1}: write path {n / wall:,.0f} changes/s ({cpu / n * 1e5:.2f} cpu s/100k, "
                  f"{n} changes in {wall:.1f} s; Redis then {mem:.0f} MB, change stream {entries} records); "
                  f"per point {pn / pwall:,.0f} changes/s", flush=True)
            if args.e2e_seconds > 0:
                en, ewall, ecpu = await end_to_end_run(r, cfg, args.rtus, args.e2e_seconds)
                res["e2e"].append(en / ewall)
                res["e2e_cpu"].append(ecpu / max(en, 1) * 100_000)
                print(f"run {run + 1}: end to end (Modbus polls every {args.poll_ms} ms) {en / ewall:,.0f} "
                      f"changes/s ({ecpu / max(en, 1) * 1e5:.2f} cpu s/100k)", flush=True)
    finally:
        await writer.stop()
    return {k: statistics.median(v) if v else 0.0 for k, v in res.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rtus", type=int, default=4)
    ap.add_argument("--points", type=int, default=1000, help="points per RTU (uint16 holding registers)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each write-path run")
    ap.add_argument("--per-point-seconds", type=float, default=2.0)
    ap.add_argument("--e2e-seconds", type=float, default=3.0, help="0 skips the end-to-end load")
    ap.add_argument("--poll-ms", type=int, default=10, help="poll period of the end-to-end load")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup (Redis, simulator) runs on SIGTERM
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    print(f"{args.rtus} RTUs x {args.points} points, all changing every poll; {args.runs} runs; "
          f"cpu count {os.cpu_count()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fep-bench-acq-") as tmp:
        m = asyncio.run(bench(args, Path(tmp)))
    speedup = m["wp"] / m["pp"] if m["pp"] else 0.0
    print(f"medians: write path {m['wp']:,.0f} changes/s, per point {m['pp']:,.0f} changes/s, "
          f"speedup {speedup:.1f}x, {m['wp_cpu']:.2f} cpu s per 100k changes; end to end {m['e2e']:,.0f} "
          f"changes/s ({m['e2e_cpu']:.2f} cpu s per 100k)")
    print(f"changes_per_s={m['wp']:.0f} per_point_changes_per_s={m['pp']:.0f} speedup={speedup:.1f} "
          f"cpu_s_per_100k={m['wp_cpu']:.3f} e2e_changes_per_s={m['e2e']:.0f} "
          f"e2e_cpu_s_per_100k={m['e2e_cpu']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
