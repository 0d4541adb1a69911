"""IEC 104 acquisition benchmark: device events through one fep-acquirer into Redis and on to an IEC 104 master.

Setup, once per device count of `--devices` (default 1 and 20): a real redis-server; that many IEC 104
acquisition RTUs of `--points` M_ME_NC_1 points each, served by `fep-rtu104sim` in its own process (events
are sent time-tagged, M_ME_TF_1, with the device clock); the real `fep-acquirer` (node A, the RTUs'
controlling station) and `fep-forwarder` (an se104s RTU forwarding every point as M_ME_TF_1) processes,
lease timers shortened; a c104 client (lib60870) on se104s as the SCADA master, recording raw frames.

Throughput: spontaneous events at paced total rates of `--rates` (the simulator's rate, spread evenly over
the devices), stepped up for `--step-seconds` each until a step loses events or delivery saturates. Every
point counts up by one per event, so a reader in this process following the change stream (fep:chg) sees
any event that did not reach Redis as a skipped value; at the end of a step the simulator's last value of
every point is compared with the last one in the stream. A step is lossless when every event the simulator
made arrived in Redis; its delivered rate is events / (last arrival - step start). events_per_s is the best
delivered rate of a lossless step. The simulator's rate task can fall behind its offer on 2 cores: the
events it really made are counted and printed ("made").
Latency: `--latency-events` single events (control port `set`, one every 2..8 ms, on one point of RTU 1,
no background load). Latency = arrival at the c104 client's raw-frame callback - the moment before the
`set` command (upper bound: it includes the control-port hop). soe_time_kept=1 when every one of them
reached the master with exactly the time tag the device gave it (the `set` answer). `lost` counts latency
events that never reached the master.
CPU: user+system seconds of the simulator, acquirer and forwarder processes (from /proc) per step.
Each device count is measured `--runs` times; min/median/max are printed. The last line gives the largest
device count: events_per_s= devices= lost= p50_ms= p99_ms= soe_time_kept=
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from forward import CA, E2E_TIMERS, Receiver, pct, stop, wait_port

from fep_loader.store import replace_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.redisproc
from fepha import keyspace as ks
from fepha import points, redisfns
from fepha.iec104 import codec
from fepha.semodel import db
from tests.redisproc import RedisProc, free_port

REPO = Path(__file__).resolve().parent.parent
FWD_RTU = 1000
LAT_BASE = 10_000_000.0  # latency-load values: far above the counting values of the throughput load


def pid_of(rid: int, i: int) -> int:
    return rid * 1000 + i


def rows(n_dev: int, n_points: int, dev_ports: list[int], fwd_port: int) -> dict[str, list[dict[str, Any]]]:
    """RTUs 1..n_dev (iec104, CA = RTU id) with n_points M_ME_NC_1 points (IOA 1..n), all forwarded by one
    se104s RTU as M_ME_TF_1 (IOA = point id)."""
    out: dict[str, list[dict[str, Any]]] = {
        "T020_UNION": [{"ID": 1, "IP1": "127.0.0.1", "IP2": "127.0.0.2"}],
        "T004_RTU": [{"RTUID": FWD_RTU, "NAME": "bench 104 out", "RTUTYPE": 2, "PROTOCOL": "se104s",
                      "POLLMS": None, "TIMEOUTMS": None, "LISTENPORT": fwd_port, "ADDRESS": CA, "ALLOW": None}],
        "T010_CHANNEL": [], "T011_POINT": [], "T005_ZFAI": []}
    for rid in range(1, n_dev + 1):
        out["T004_RTU"].append({"RTUID": rid, "NAME": f"rtu104 {rid}", "RTUTYPE": 0, "PROTOCOL": "iec104",
                                "POLLMS": None, "TIMEOUTMS": None, "LISTENPORT": None, "ADDRESS": None,
                                "ALLOW": None})
        out["T010_CHANNEL"].append({"RTUID": rid, "CHANNO": 1, "HOST": "127.0.0.1", "PORT": dev_ports[rid - 1],
                                    "UNITID": rid})
        for i in range(n_points):
            pid = pid_of(rid, i)
            out["T011_POINT"].append({"PNTID": pid, "RTUID": rid, "KIND": "AI", "NAME": f"p{i}", "AREA": None,
                                      "ADDRESS": 1 + i, "DATATYPE": "M_ME_NC_1", "BYTEORDER": None,
                                      "WORDORDER": None, "BITINDEX": None, "SCALE": None, "OFFSET": None,
                                      "DEADBAND": None, "CTLMODE": None})
            out["T005_ZFAI"].append({"ZFID": pid, "RTUID": FWD_RTU, "SRCID": pid, "ADDR": pid,
                                     "TYPE": "M_ME_TF_1", "COEF": None})
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Control:
    """The simulator's line control port (docs/rtu104sim.md)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.lines = self.sock.makefile("rb")

    def __call__(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        answer = self.lines.readline().decode().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"rtu104sim: {line!r} -> {answer!r}")
        return answer[3:]

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


@dataclass
class StreamReader:
    """Follows the change stream in a thread: per point, the last value seen, the values skipped and the
    arrival time (monotonic) of the last new value. Reads raw replies: a record may hold a point twice."""

    port: int
    last: dict[int, int] = field(default_factory=dict)
    skipped: int = 0
    new: int = 0
    last_arrival: float = 0.0
    records: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False

    def start(self) -> None:
        self.r = redis.Redis(port=self.port)
        self.r.set_response_callback("XREAD", lambda resp, **_: resp)
        self.last_id = self.r.xinfo_stream(ks.CHANGES)["last-generated-id"] if self.r.exists(ks.CHANGES) else "0"
        self.thread = threading.Thread(target=self._run, name="chg-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            resp = self.r.execute_command("XREAD", "COUNT", 5000, "BLOCK", 200, "STREAMS", ks.CHANGES, self.last_id)
            if not resp:
                continue
            t = time.monotonic()
            with self.lock:
                for _stream, entries in resp:
                    for eid, flat in entries:
                        self.last_id = eid
                        self.records += 1
                        for k in range(0, len(flat), 2):
                            if flat[k] == b"r":
                                continue
                            self._value(int(flat[k]), points.decode(flat[k + 1]).value, t)

    def _value(self, pid: int, value: float, t: float) -> None:
        v = int(value)
        last = self.last.get(pid)
        if last is None or v <= last:
            return  # a point outside the step, or a value seen before (an interrogation's answer)
        self.skipped += v - last - 1
        self.new += 1
        self.last[pid] = v
        self.last_arrival = t

    def begin(self, start: dict[int, int]) -> None:
        with self.lock:
            self.last = dict(start)
            self.skipped = self.new = 0
            self.last_arrival = 0.0

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)


@dataclass
class Lab:
    ctl: Control
    reader: StreamReader
    rx: Receiver
    procs: dict[str, subprocess.Popen[bytes]]
    pids: list[int]  # the counting points

    def values(self) -> dict[int, int]:
        return {pid: int(float(self.ctl(f"get {pid}").split()[0])) for pid in self.pids}

    def cpu(self) -> dict[str, float]:
        return {name: cpu_s(p.pid) for name, p in self.procs.items()}


def settle(reader: StreamReader, final: dict[int, int], quiet_s: float = 1.5, limit_s: float = 30) -> None:
    """Wait until every point reached its final value in the stream, or nothing new came for quiet_s."""
    end, seen, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < end:
        with reader.lock:
            done = all(reader.last.get(p, -1) >= v for p, v in final.items())
            n = reader.new
        if done:
            return
        if n != seen:
            seen, since = n, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return
        time.sleep(0.05)


def step(lab: Lab, n_dev: int, rate: int, seconds: float) -> dict[str, float]:
    start = lab.values()
    lab.reader.begin(start)
    cpu0 = lab.cpu()
    t0 = time.monotonic()
    lab.ctl(f"rate {rate / n_dev}")
    time.sleep(seconds)
    lab.ctl("rate 0")
    made_s = time.monotonic() - t0
    final = lab.values()
    settle(lab.reader, final)
    cpu1 = lab.cpu()
    made = sum(final[p] - start[p] for p in start)
    with lab.reader.lock:
        tail = sum(max(0, final[p] - lab.reader.last.get(p, start[p])) for p in start)
        lost = lab.reader.skipped + tail
        delivered = made - lost
        span = (lab.reader.last_arrival or time.monotonic()) - t0
    return {"offered": rate, "made": made / made_s, "lost": lost, "rate": delivered / max(span, 1e-9),
            **{f"cpu_{k}": (cpu1[k] - cpu0[k]) / span for k in cpu0}}


def throughput(lab: Lab, n_dev: int, rates: list[int], seconds: float) -> tuple[float, list[str]]:
    best, log = 0.0, []
    for rate in rates:
        s = step(lab, n_dev, rate, seconds)
        cpu = ", ".join(f"{k[4:]} {v:.2f}" for k, v in s.items() if k.startswith("cpu_"))
        log.append(f"{rate:,}/s offered ({s['made']:,.0f}/s made): {s['rate']:,.0f}/s into Redis, lost "
                   f"{s['lost']:.0f} (CPU s/s: {cpu})")
        if s["lost"]:
            break
        best = max(best, s["rate"])
        if s["rate"] < 0.9 * s["made"]:  # saturated: a higher offer would only queue up
            break
    return best, log


def master_values(rx: Receiver, start_frame: int) -> list[tuple[float, int, float, int | None]]:
    """(arrival, IOA, value, time tag ms) of every spontaneous M_ME_TF_1 object at the master."""
    return [(t, ioa, *codec.decode_element(a.type_id, e)[::2]) for t, a in rx.asdus(start_frame)
            if a.cause == codec.COT_SPONT and a.type_id == codec.M_ME_TF_1 for ioa, e in a.objects]


def latency(lab: Lab, n: int, run: int) -> tuple[list[float], int, bool]:
    """-> (latencies ms, events lost, every time tag kept)."""
    pid, rng = lab.pids[0], random.Random(run)
    start_frame = len(lab.rx.frames)
    sent: dict[float, tuple[float, int]] = {}
    for k in range(n):
        v = LAT_BASE + run * 100_000 + k
        t = time.monotonic()
        sent[v] = (t, int(lab.ctl(f"set {pid} {v}")))
        time.sleep(rng.uniform(0.002, 0.008))
    end = time.monotonic() + 5
    got: dict[float, tuple[float, int | None]] = {}
    while time.monotonic() < end and len(got) < n:
        time.sleep(0.1)
        got = {v: (t, tag) for t, ioa, v, tag in master_values(lab.rx, start_frame) if ioa == pid and v in sent}
    lat = [(got[v][0] - sent[v][0]) * 1000 for v in got]
    kept = len(got) == n and all(got[v][1] == sent[v][1] for v in got)
    return lat, n - len(got), kept


def setup(root: Path, rp: RedisProc, n_dev: int, n_points: int) -> Lab:
    dev_ports, fwd_port, ctl_port = [free_port() for _ in range(n_dev)], free_port(), free_port()
    data = rows(n_dev, n_points, dev_ports, fwd_port)
    db_path = root / "db" / "SEMODEL.db"
    db_path.unlink(missing_ok=True)
    db.write_rows(db_path, data)
    r = rp.client()
    r.flushall()
    replace_config(r, data, source="bench")
    redisfns.load_sync(r)
    env = {**os.environ, "FEPROOT": str(root), "FEP_NODE_ID": "A", "FEP_REDIS_PORT": str(rp.port),
           "FEP_REDIS_LOCAL_PORT": str(rp.port), "FEP_LOG_DIR": "", "FEP_LOG_LEVEL": "WARNING",
           "FEP_IEC104_T1_S": "5", "FEP_IEC104_T2_S": "0.05", "FEP_IEC104_T3_S": "10", **E2E_TIMERS}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    procs["sim"] = subprocess.Popen([sys.executable, "-m", "fep_tools.rtu104sim", "--db", str(db_path), "--rate",
                                     "0", "--control", f"127.0.0.1:{ctl_port}", "--t2", "0.05"], env=env,
                                    stderr=subprocess.DEVNULL)
    procs["acquirer"] = subprocess.Popen([sys.executable, "-m", "fep_acquirer.cli"], env=env)
    procs["forwarder"] = subprocess.Popen([sys.executable, "-m", "fep_forwarder.cli"], env=env)
    try:
        wait_port(ctl_port)
        ctl = Control(ctl_port)
        wait_port(fwd_port)
        end = time.monotonic() + 60
        while (words := ctl("status").split()) and not all(w.endswith("*") for w in words):
            if time.monotonic() > end:
                raise RuntimeError(f"the acquirer did not start data transfer with every RTU: {words}")
            time.sleep(0.1)
        rx = Receiver(fwd_port)
        try:
            rx.__enter__()
        except RuntimeError:  # not open after open_with_retries' STARTDT resends and reconnects: one more try
            rx.client.reconnect_all()
            if not rx.opened.wait(20):
                rx.__exit__()
                raise
        reader = StreamReader(rp.port)
        reader.start()
        return Lab(ctl, reader, rx, procs, [pid_of(rid, i) for rid in range(1, n_dev + 1) for i in range(n_points)])
    except BaseException:
        for p in procs.values():
            stop(p)
        raise


def teardown(lab: Lab) -> None:
    lab.reader.stop()
    lab.rx.__exit__()
    lab.ctl.close()
    for name in ("acquirer", "forwarder", "sim"):  # the device last: the acquirer would log it gone
        stop(lab.procs[name])


def spread(xs: list[float], fmt: str = ",.0f") -> str:
    return f"min {min(xs):{fmt}} / median {statistics.median(xs):{fmt}} / max {max(xs):{fmt}}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default="1,20", help="device counts, each its own setup")
    ap.add_argument("--points", type=int, default=50, help="M_ME_NC_1 points per device")
    ap.add_argument("--rates", default="10000,25000,50000,75000,100000",
                    help="total offered events/s, stepped up until a step loses events or saturates")
    ap.add_argument("--step-seconds", type=float, default=3.0)
    ap.add_argument("--latency-events", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    rates = [int(x) for x in args.rates.split(",")]
    counts = [int(x) for x in args.devices.split(",")]
    print(f"devices {counts} x {args.points} points (M_ME_NC_1 sent as M_ME_TF_1); offered rates {rates}/s, "
          f"{args.step_seconds} s each; {args.latency_events} latency events; {args.runs} runs; cpu count "
          f"{os.cpu_count()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="fep-bench-acq104-"))
    shutil.copytree(REPO / "cfg", root / "cfg")
    (root / "db").mkdir()
    results: dict[int, dict[str, Any]] = {}
    try:
        with RedisProc() as rp:
            for n_dev in counts:
                lab = setup(root, rp, n_dev, args.points)
                res: dict[str, Any] = {"rate": [], "p50": [], "p99": [], "lost": 0, "kept": True}
                try:
                    for run in range(args.runs):
                        best, log = throughput(lab, n_dev, rates, args.step_seconds)
                        lat, lost, kept = latency(lab, args.latency_events, run)
                        res["rate"].append(best)
                        res["p50"].append(pct(lat, 50))
                        res["p99"].append(pct(lat, 99))
                        res["lost"] += lost
                        res["kept"] &= kept
                        print(f"{n_dev} device(s), run {run + 1}: {'; '.join(log)}; latency {len(lat)}/"
                              f"{args.latency_events} arrived, p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms"
                              f", max {max(lat, default=float('nan')):.2f} ms, time tags kept: {kept}", flush=True)
                finally:
                    teardown(lab)
                results[n_dev] = res
                print(f"{n_dev} device(s): lossless events/s {spread(res['rate'])}; p50 ms "
                      f"{spread(res['p50'], '.2f')}; p99 ms {spread(res['p99'], '.2f')}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n_dev = max(results)
    res = results[n_dev]
    print(f"events_per_s={statistics.median(res['rate']):.0f} devices={n_dev} lost={res['lost']} "
          f"p50_ms={statistics.median(res['p50']):.2f} p99_ms={statistics.median(res['p99']):.2f} "
          f"soe_time_kept={int(res['kept'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
