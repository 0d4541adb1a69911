"""The api's memory and CPU with live dashboards open: `fep-api` with N clients on `/api/v1/stream`.

Setup, as `tools/demo.py` runs it on one node: a real redis-server with the sample configuration
(cfg/SEMODEL.sql, device ports moved to free ones, poll periods as configured: 500 ms and 1000 ms),
a PlcSim changing every point once a second (fep-plcsim's default `--rate 1`, the demo's change rate),
the real `fep-acquirer`, `fep-forwarder` and `fep-api` processes of node A (listen ports moved too). Each client is what the dashboard opens: a
stream with `rtu=vp&rtu=1` (the virtual points and the RTU on screen), read as fast as it comes.

For each client count (`--clients`, default 0 and 20), `--runs` times: connect the clients, wait
`--warmup` s, then measure `--seconds` s: the api process's CPU (utime+stime from /proc, as % of one
core), its RSS at the end and its peak RSS (VmHWM), and the messages the clients received. The clients
run in this process; their CPU is not counted. Figures: min/median/max over the runs.
For comparison, `--pollers` dashboards of the kind before the stream (GET /node, /rtus, /virtual-points,
/controls every 2 s; msgs = requests). Last lines: clients=… (or pollers=…) api_cpu_pct=… api_rss_mb=…
api_peak_rss_mb=… msgs_per_client_s=… chg_entries_s=…
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aredis

from fep_loader.store import replace_config
from fep_tools.plcsim import PlcSim

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.redisproc
from fepha import keyspace as ks
from fepha.semodel import db
from fepha.semodel.model import Model
from tests.redisproc import RedisProc, free_port

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def mem_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    kv = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(kv["VmRSS"].split()[0]) / 1024, int(kv["VmHWM"].split()[0]) / 1024


def sample_rows(root: Path) -> dict[str, list[dict[str, Any]]]:
    rows, problems = db.read_rows(root / "db" / "SEMODEL.db")
    assert not problems, problems
    ports = {p: free_port() for p in {c["PORT"] for c in rows["T010_CHANNEL"]}}
    rows["T010_CHANNEL"] = [{**c, "PORT": ports[c["PORT"]]} for c in rows["T010_CHANNEL"]]
    rows["T004_RTU"] = [{**r, "LISTENPORT": free_port()} if r["LISTENPORT"] else r for r in rows["T004_RTU"]]
    return rows


async def client(url: str, stop: asyncio.Event, counts: list[int]) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as c, \
            c.stream("GET", url + "/api/v1/stream", params=[("rtu", "vp"), ("rtu", "1")]) as r:
        assert r.status_code == 200, r.status_code
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                counts[0] += 1
            if stop.is_set():
                return


POLLED = ("/api/v1/node", "/api/v1/rtus", "/api/v1/virtual-points", "/api/v1/controls?limit=10")


async def poller(url: str, stop: asyncio.Event, counts: list[int]) -> None:
    """The dashboard before the stream: its four GETs every 2 s."""
    async with httpx.AsyncClient(timeout=10) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            for path in POLLED:
                assert (await c.get(url + path)).status_code == 200
                counts[0] += 1
            await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))


async def measure(pid: int, url: str, n: int, warmup: float, seconds: float, r: Any,
                  poll: bool = False) -> dict[str, float]:
    stop = asyncio.Event()
    counts = [[0] for _ in range(n)]
    tasks = [asyncio.create_task((poller if poll else client)(url, stop, counts[i])) for i in range(n)]
    await asyncio.sleep(warmup)
    c0, t0, m0 = cpu_s(pid), time.monotonic(), [x[0] for x in counts]
    e0 = (await r.xinfo_stream(ks.CHANGES))["entries-added"]
    await asyncio.sleep(seconds)
    c1, t1, m1 = cpu_s(pid), time.monotonic(), [x[0] for x in counts]
    e1 = (await r.xinfo_stream(ks.CHANGES))["entries-added"]
    rss, hwm = mem_mb(pid)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    wall = t1 - t0
    msgs = [(b - a) / wall for a, b in zip(m0, m1, strict=True)]
    return {"cpu_pct": 100 * (c1 - c0) / wall, "rss_mb": rss, "hwm_mb": hwm,
            "msgs_per_client_s": statistics.median(msgs) if msgs else 0.0, "chg_entries_s": (e1 - e0) / wall}


def spawn(module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A service of node A in its own process (stopped by PID at the end)."""
    return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def fmt(xs: list[float]) -> str:
    return f"{min(xs):.1f}/{statistics.median(xs):.1f}/{max(xs):.1f}"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[0, 20])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--pollers", type=int, default=20,
                    help="also measure this many dashboards of the old kind (4 GETs every 2 s); 0: not")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    print(f"parameters: clients={args.clients} runs={args.runs} seconds={args.seconds} warmup={args.warmup} "
          f"plcsim_rate=1/s (every point) poll_ms=500,1000 (sample)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="fep-bench-api-"))
    procs: list[subprocess.Popen[bytes]] = []
    sim = None
    try:
        shutil.copytree(REPO / "cfg", tmp / "cfg")
        db.build(tmp / "cfg" / "SEMODEL.sql", tmp / "db" / "SEMODEL.db")
        with RedisProc() as red:
            rows = sample_rows(tmp)
            replace_config(red.client(), rows, source="bench")
            sim = PlcSim(Model.from_rows(rows), rate=1.0)
            await sim.start()
            port = free_port()
            env = {**os.environ, "FEPROOT": str(tmp), "FEP_LOG_DIR": "", "FEP_NODE_ID": "A",
                   "FEP_NODE_IP": "127.0.0.1", "FEP_REDIS_VIP": red.host, "FEP_REDIS_PORT": str(red.port),
                   "FEP_REDIS_LOCAL_HOST": red.host, "FEP_REDIS_LOCAL_PORT": str(red.port),
                   "FEP_API_PORT": str(port), "FEP_API_STREAM_CLIENTS": str(max(args.clients) + 5)}
            procs += [spawn(mod, env) for mod in ("fep_api.cli", "fep_acquirer.cli", "fep_forwarder.cli")]
            api = procs[0]
            url = f"http://127.0.0.1:{port}"
            end = time.monotonic() + 30
            while True:
                try:
                    async with httpx.AsyncClient(timeout=1) as c:
                        if (await c.get(url + "/ready")).status_code == 200:
                            break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > end:
                    raise RuntimeError("fep-api not ready")
                await asyncio.sleep(0.2)
            r = aredis.Redis(host=red.host, port=red.port, decode_responses=True)
            loads = [(n, False) for n in args.clients] + ([(args.pollers, True)] if args.pollers else [])
            results: dict[tuple[int, bool], list[dict[str, float]]] = {k: [] for k in loads}
            for run in range(args.runs):
                for n, poll in loads:
                    res = await measure(api.pid, url, n, args.warmup, args.seconds, r, poll)
                    results[(n, poll)].append(res)
                    print(f"run {run + 1} {'pollers' if poll else 'clients'}={n}: " +
                          " ".join(f"{k}={v:.1f}" for k, v in res.items()), flush=True)
            await r.aclose()
            for (n, poll) in loads:
                rs = results[(n, poll)]
                print(f"{'pollers' if poll else 'clients'}={n} api_cpu_pct={fmt([x['cpu_pct'] for x in rs])} "
                      f"api_rss_mb={fmt([x['rss_mb'] for x in rs])} api_peak_rss_mb={fmt([x['hwm_mb'] for x in rs])} "
                      f"msgs_per_client_s={fmt([x['msgs_per_client_s'] for x in rs])} "
                      f"chg_entries_s={fmt([x['chg_entries_s'] for x in rs])} (min/median/max)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if sim is not None:
            await sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
