"""Forwarding benchmark: Redis write or device change -> value at a real IEC 104 client (c104 2.2.1).

Two servers on the same load, `--runs` alternating runs each (ours, c104, ours, c104, ...; min/median/max):
  se104s  the real `fep-forwarder` process (runner + our IEC 104 server) following the Redis change stream;
  c104    c104's own `c104.Server` at its best: its smallest tick (50 ms, c104 2.2.1 refuses less) and one
          `Batch` per stream record sent with `transmit_batch` (c104 packs the ASDUs, as our server packs
          the values of a record per type), fed by a small adapter process (XREAD BLOCK).

Load 1 (latency): `--rate` changes/s for `--seconds`, written as fenced `write_values` calls every 5 ms (a
poll's worth each); each value is a sequence number, so the client knows which write it came from.
Latency = arrival at the client's raw-frame callback - the moment before the write call (both
time.monotonic()); the bench's own garbage collector is off during this load (a full collection of its
records, 10 to 14 ms, inside a write call was counted as the server's latency). Load 2
(throughput, last run): paced loads of `--rates` values/s (a call every 10 ms), stepped up until a step
loses values or the delivered rate saturates; lossless_values_per_s is the best delivered rate of a step
that lost nothing. The c104 reference runs the first step only.

Load 3 (end to end, poll phase included), on its own redis-server: a PlcSim device in this process (one
modbus_tcp RTU with float32, int16 and DI points forwarded as M_ME_NC_1, M_ME_NB_1 and M_SP_NA_1), the real
`fep-acquirer` (polling every `--e2e-poll-ms`) and `fep-forwarder` processes, the c104 client. Each point
changes on its own random schedule (1.2 to 2.2 poll periods apart: every change is seen by a poll, the poll
phase is uniform); latency = arrival at the client - the change in the device, so it includes waiting for
the next poll (on average half a period). `--e2e-samples` changes in all.

`--trace DIR` (se104s runs): each latency value cut into stages (the write call; -> the forwarder's stream
read returned it; -> its frame written to the socket; -> the client's callback) from `fep_forwarder.trace`
(FEP_TRACE_FORWARDER) and the bench's times, with the slowest 1% summarised (`stage_report`), garbage
collections and slow event loop callbacks of both processes, and each process's CPU time and run-queue
wait during the load (/proc schedstat); per-value rows in DIR.

Last line: runs= p50_ms= p99_ms= c104_p99_ms= latency_gain= lossless_values_per_s= lost= e2e_p50_ms=
e2e_p99_ms= e2e_samples= (medians of the runs; latency_gain = c104's median p99 / ours; lost: values of our
latency loads and end-to-end changes that never arrived).
"""

# no `from __future__ import annotations`: c104 checks the callbacks' annotations as objects
import argparse
import asyncio
import gc
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import c104
import redis
from procs import stop, wait_port

from fep_forwarder.trace import ENV as TRACE_ENV
from fep_forwarder.trace import gc_timer
from fep_loader.store import replace_config
from fep_tools.plcsim import PlcSim
from fep_tools.scada_probe import open_with_retries

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fepha import keyspace as ks
from fepha import points, redisfns
from fepha.iec104 import codec
from fepha.semodel.model import Model
from tests.redisproc import RedisProc, free_port

REPO = Path(__file__).resolve().parent.parent
ACQ_RTU, FWD_RTU, CA, IOA0 = 1, 10, 1, 1000


def rows(n: int, port: int, dev_port: int = 15999) -> dict[str, list[dict[str, Any]]]:
    return {
        "T020_UNION": [{"ID": 1, "IP1": "127.0.0.1", "IP2": "127.0.0.2"}],
        "T004_RTU": [
            {"RTUID": ACQ_RTU, "NAME": "bench PLC", "RTUTYPE": 0, "PROTOCOL": "modbus_tcp", "POLLMS": 100,
             "TIMEOUTMS": 1000, "LISTENPORT": None, "ADDRESS": None, "ALLOW": None},
            {"RTUID": FWD_RTU, "NAME": "bench 104", "RTUTYPE": 2, "PROTOCOL": "se104s", "POLLMS": None,
             "TIMEOUTMS": None, "LISTENPORT": port, "ADDRESS": CA, "ALLOW": None},
        ],
        "T010_CHANNEL": [{"RTUID": ACQ_RTU, "CHANNO": 1, "HOST": "127.0.0.1", "PORT": dev_port, "UNITID": 1}],
        "T011_POINT": [{"PNTID": 1 + i, "RTUID": ACQ_RTU, "KIND": "AI", "NAME": f"p{i}", "AREA": "hr",
                        "ADDRESS": 2 * i, "DATATYPE": "float32", "BYTEORDER": None, "WORDORDER": None,
                        "BITINDEX": None, "SCALE": None, "OFFSET": None, "DEADBAND": None} for i in range(n)],
        "T005_ZFAI": [{"ZFID": 1 + i, "RTUID": FWD_RTU, "SRCID": 1 + i, "ADDR": IOA0 + i, "TYPE": "M_ME_NC_1",
                       "COEF": None} for i in range(n)],
    }


class Receiver:
    """A c104 client recording (arrival time, raw APDU) of every frame; decoded after the run."""

    def __init__(self, port: int) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self.client = c104.Client(tick_rate_ms=50, command_timeout_ms=5000)
        self.conn = self.client.add_connection(ip="127.0.0.1", port=port, init=c104.Init.ALL)
        self.conn.add_station(CA)
        self.opened = threading.Event()
        frames = self.frames

        def on_raw(connection: c104.Connection, data: bytes) -> None:
            frames.append((time.monotonic(), data))

        def on_state(connection: c104.Connection, state: c104.ConnectionState) -> None:
            if state == c104.ConnectionState.OPEN:
                self.opened.set()

        self.conn.on_receive_raw(on_raw)
        self.conn.on_state_change(on_state)

    def __enter__(self) -> Self:
        if not open_with_retries(self.client, self.opened, first_s=8, retry_s=8):
            self.client.stop()
            raise RuntimeError("c104 client did not open the connection")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.stop()

    def asdus(self, start: int = 0) -> Iterator[tuple[float, codec.Asdu]]:
        """(arrival, ASDU) of every I frame in frames[start:] (a capture that does not parse is skipped)."""
        for t, raw in self.frames[start:]:
            try:
                frames = codec.FrameReader().feed(bytes(raw))
            except codec.ProtocolError:
                continue
            for f in frames:
                if f.kind == "I":
                    yield t, codec.parse_asdu(f.asdu)

    def spontaneous(self, start: int = 0) -> list[tuple[float, int, int, float]]:
        """(arrival, type id, IOA, value) of every spontaneous object in frames[start:]."""
        return [(t, a.type_id, ioa, codec.decode_element(a.type_id, e)[0]) for t, a in self.asdus(start)
                if a.cause == codec.COT_SPONT for ioa, e in a.objects]

    def values(self, start: int = 0) -> list[tuple[float, int]]:
        """(arrival, sequence number) of every spontaneous M_ME_NC_1 value in frames[start:]."""
        return [(t, int(v)) for t, tid, _, v in self.spontaneous(start) if tid == codec.M_ME_NC_1]


class Writer:
    """Plays the acquirer of the lease holder: fenced writes of sequence numbers, round robin over points."""

    def __init__(self, r: redis.Redis, n: int) -> None:
        self.r, self.n, self.seq = r, n, 0
        _holder, self.epoch, _ = r.fcall(*redisfns.lease_tick(ACQ_RTU, "A", True, 600_000, 900_000).argv)
        self.sent: dict[int, float] = {}
        self.batches: list[tuple[int, int, float, float, float]] = []
        """(first sequence number, count, building started, write call started, write call returned)"""

    def batch(self, count: int) -> None:
        flat: list[str] = []
        built = time.monotonic()
        now_ms = int(time.time() * 1000)
        first = self.seq
        for _ in range(count):
            self.seq += 1
            flat += (str(1 + self.seq % self.n), points.encode(float(self.seq), 0, now_ms))
        t = time.monotonic()
        for s in range(first + 1, self.seq + 1):
            self.sent[s] = t
        res = self.r.fcall(*redisfns.write_values(ACQ_RTU, "A", int(self.epoch), flat).argv)
        self.batches.append((first + 1, count, built, t, time.monotonic()))
        if int(res[0]) != 1:
            raise RuntimeError(f"fenced write refused: {res}")


def paced_writes(w: Writer, per: int, period: float, seconds: float) -> float:
    """A batch of `per` values every `period` s for `seconds`, on a fixed schedule (a late call does not
    shift the later ones); -> when it started (monotonic)."""
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < seconds:
        w.batch(per)
        k += 1
        delay = t0 + k * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return t0


def latency_load(w: Writer, rx: Receiver, rate: int, seconds: float) -> tuple[list[float], int, dict[int, float]]:
    """-> (latencies ms, values written, sequence number -> arrival of those that arrived)."""
    first_seq, start_frame = w.seq + 1, len(rx.frames)
    # no collection of the bench's own during the load: it holds every frame and send time, and a full one
    # (10 to 14 ms) inside a write call or a callback was counted as the server's latency (--trace)
    gc.collect()
    gc.disable()
    try:
        paced_writes(w, max(1, rate // 200), 0.005, seconds)
    finally:
        gc.enable()
    last_seq = w.seq
    settle(rx, last_seq - first_seq + 1, start_frame, first_seq)
    got = {s: t for t, s in rx.values(start_frame) if first_seq <= s <= last_seq}
    lat = [(got[s] - w.sent[s]) * 1000 for s in got]
    return lat, last_seq - first_seq + 1, got


def settle(rx: Receiver, want: int, start_frame: int, first_seq: int, quiet_s: float = 2.0) -> None:
    """Wait until `want` values arrived or nothing arrived for quiet_s."""
    last_n, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < quiet_s:
        n = len(rx.frames)
        if n != last_n:
            last_n, last_change = n, time.monotonic()
            if sum(1 for _, s in rx.values(start_frame) if s >= first_seq) >= want:
                return
        time.sleep(0.1)


def paced_load(w: Writer, rx: Receiver, rate: int, seconds: float) -> tuple[float, int]:
    """`rate` values/s for `seconds` (a call every 10 ms); -> (values/s delivered, values lost)."""
    first_seq, start_frame = w.seq + 1, len(rx.frames)
    t0 = paced_writes(w, max(1, rate // 100), 0.01, seconds)
    count = w.seq - first_seq + 1
    settle(rx, count, start_frame, first_seq)
    got = {s: t for t, s in rx.values(start_frame) if s >= first_seq}
    last = max(got.values()) if got else t0
    return len(got) / max(1e-9, last - t0), count - len(got)


def throughput(w: Writer, rx: Receiver, rates: list[int], seconds: float) -> tuple[float, int, list[str]]:
    """Step the paced load up; -> (best lossless delivered rate, values lost at the first lossy step, log)."""
    best, lost, log = 0.0, 0, []
    for rate in rates:
        got, lost = paced_load(w, rx, rate, seconds)
        log.append(f"{rate:,}/s offered: {got:,.0f}/s delivered, lost {lost}")
        if lost:
            break
        best = max(best, got)
        if got < 0.9 * rate:  # saturated: a higher offer would only queue up
            break
    return best, lost, log


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def c104_reference(redis_port: int, port: int, n: int) -> None:
    """The reference: c104's own server fed from the change stream (run as a subprocess)."""
    srv = c104.Server(ip="127.0.0.1", port=port, tick_rate_ms=50)  # 50 ms: the smallest c104 2.2.1 accepts
    st = srv.add_station(CA)
    pts = {1 + i: st.add_point(io_address=IOA0 + i, type=c104.Type.M_ME_NC_1) for i in range(n)}
    srv.start()
    r = redis.Redis(port=redis_port, decode_responses=True)
    signal.signal(signal.SIGTERM, lambda *_: (srv.stop(), os._exit(0)))
    last = "$"
    while True:
        got = r.xread({ks.CHANGES: last}, count=5000, block=1000)
        for _, entries in got:
            for eid, fields in entries:
                last = eid
                # one Batch (ASDUs packed by c104) per stream record, as our server packs per record
                batch, inside = c104.Batch(cause=c104.Cot.SPONTANEOUS), set()
                for pid, rec in fields.items():
                    p = pts.get(int(pid)) if pid != "r" else None
                    if p is None:
                        continue
                    if pid in inside:  # a point once per Batch: send what is packed, start another
                        srv.transmit_batch(batch)
                        batch, inside = c104.Batch(cause=c104.Cot.SPONTANEOUS), set()
                    p.value = float(points.decode(rec).value)
                    batch.add_point(p)
                    inside.add(pid)
                if inside:
                    srv.transmit_batch(batch)






def connected(port: int) -> Receiver:
    """A c104 client with its connection open; a second client if the first did not open (c104's client
    was seen not to open a connection whose first attempt met a server still starting)."""
    try:
        return Receiver(port).__enter__()
    except RuntimeError:
        print(f"c104 client on {port} did not open: a second client", flush=True)
        return Receiver(port).__enter__()


def schedstat(pids: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """Per process (all its threads): ns on a CPU, ns waiting on a run queue (runnable, no CPU free),
    time slices (/proc/PID/task/*/schedstat; a thread gone since is not counted)."""
    out = {}
    for name, pid in pids.items():
        tot = [0, 0, 0]
        for f in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                tot = [a + int(b) for a, b in zip(tot, f.read_text().split(), strict=True)]
            except (OSError, ValueError):
                continue
        out[name] = (tot[0], tot[1], tot[2])
    return out


def run_phase(name: str, port: int, w: Writer, args: argparse.Namespace, rates: list[int],
              watch: dict[str, int] | None = None) -> dict[str, Any]:
    """`watch` (--trace): processes whose CPU time and run-queue wait during the latency load are reported."""
    with connected(port) as rx:
        time.sleep(0.3)
        before = schedstat(watch or {})
        lat, sent, arrivals = latency_load(w, rx, args.rate, args.seconds)
        after = schedstat(watch or {})
        rate, lost, log = throughput(w, rx, rates, args.step_seconds)
    got = len(arrivals)
    res = {"p50": pct(lat, 50), "p99": pct(lat, 99), "lat_lost": sent - got, "rate": rate, "lost": lost,
           "max": max(lat) if lat else float("nan"), "arrivals": arrivals,
           "runq": "; ".join(f"{k} on CPU {(after[k][0] - v[0]) / 1e6:.0f} ms, waited for one {(after[k][1] - v[1]) / 1e6:.0f}"
                             f" ms in {after[k][2] - v[2]} slices" for k, v in before.items())}
    print(f"{name}: latency at {args.rate}/s: {got}/{sent} values arrived, p50 {res['p50']:.2f} ms, "
          f"p99 {res['p99']:.2f} ms, max {res['max']:.2f} ms; throughput steps: {'; '.join(log)}", flush=True)
    return res


# --- end to end: device change -> frame at the master, poll phase included ----------------------------------
# (type, area, datatype, ASDU type, forwarding table) of the end-to-end points: floats, scaled ints, DIs
E2E_KINDS = [("AI", "hr", "float32", "M_ME_NC_1", "T005_ZFAI")] * 6 + \
            [("AI", "hr", "int16", "M_ME_NB_1", "T005_ZFAI")] * 5 + [("DI", "di", "bool", "M_SP_NA_1", "T006_ZFDI")] * 5
E2E_TIMERS = {"FEP_TIMERS_LEASE_TICK_S": "0.1", "FEP_TIMERS_LEASE_TTL_S": "1.0", "FEP_TIMERS_TAKEOVER_S": "1.5",
              "FEP_TIMERS_CHANNEL_SWITCH_S": "0.4", "FEP_TIMERS_RECONNECT_MIN_S": "0.05",
              "FEP_TIMERS_RECONNECT_MAX_S": "0.2"}


def e2e_rows(fwd_port: int, dev_port: int, poll_ms: int) -> dict[str, list[dict[str, Any]]]:
    out = rows(0, fwd_port, dev_port)
    out["T004_RTU"][0].update(POLLMS=poll_ms, TIMEOUTMS=1000)
    out["T006_ZFDI"] = []
    for i, (kind, area, dtype, asdu, table) in enumerate(E2E_KINDS):
        out["T011_POINT"].append({"PNTID": 1 + i, "RTUID": ACQ_RTU, "KIND": kind, "NAME": f"e{i}", "AREA": area,
                                  "ADDRESS": 2 * i, "DATATYPE": dtype, "BYTEORDER": None, "WORDORDER": None,
                                  "BITINDEX": None, "SCALE": None, "OFFSET": None, "DEADBAND": None})
        out[table].append({"ZFID": 1 + i, "RTUID": FWD_RTU, "SRCID": 1 + i, "ADDR": IOA0 + i, "TYPE": asdu,
                           "COEF": None})
    return out


def e2e_phase(root: Path, samples: int, poll_ms: int) -> tuple[list[float], int]:
    """PlcSim change -> real fep-acquirer -> Redis -> real fep-forwarder -> c104 client; -> (latencies in
    ms from the change in the device, changes lost)."""
    fwd_port, dev_port = free_port(), free_port()
    cfg_rows = e2e_rows(fwd_port, dev_port, poll_ms)
    with RedisProc() as rp:
        r = rp.client()
        replace_config(r, cfg_rows)
        redisfns.load_sync(r)
        env = {**os.environ, "FEPROOT": str(root), "FEP_NODE_ID": "A", "FEP_REDIS_PORT": str(rp.port),
               "FEP_REDIS_LOCAL_PORT": str(rp.port), "FEP_LOG_DIR": "", "FEP_LOG_LEVEL": "WARNING",
               "FEP_TIMERS_POLL_MS": str(poll_ms), **E2E_TIMERS}
        procs = [subprocess.Popen([sys.executable, "-m", module], env=env)
                 for module in ("fep_acquirer.cli", "fep_forwarder.cli")]
        try:
            return asyncio.run(_e2e_drive(Model.from_rows(cfg_rows), fwd_port, samples, poll_ms))
        finally:
            for proc in procs:
                stop(proc)


async def _e2e_drive(model: Model, fwd_port: int, samples: int, poll_ms: int) -> tuple[list[float], int]:
    """Every point changes on its own random schedule (1.2 .. 2.2 poll periods apart, so that each change is
    seen by a poll and the poll phase is uniform): analog values count up (the value names the change), DIs
    toggle (the n-th spontaneous event of a DI is its n-th change)."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it would trace every frame
    sim = PlcSim(model)
    await sim.start()
    rx = Receiver(fwd_port)
    n = len(E2E_KINDS)
    changed: dict[int, list[tuple[float, float]]] = {1 + i: [] for i in range(n)}  # pid -> (t, value)
    try:
        await asyncio.to_thread(wait_port, fwd_port)
        await asyncio.to_thread(rx.__enter__)
        sim.set_value(1, 1000.0)  # warm-up: the acquirer holds the lease and a change travels the chain
        if not await arrived(rx, {1000}, 0, 30):
            raise RuntimeError("no change reached the client through fep-acquirer and fep-forwarder")
        await asyncio.sleep(2 * poll_ms / 1000)
        start_frame = len(rx.frames)
        rng = random.Random(104)

        async def drive(pid: int, count: int) -> None:
            kind = E2E_KINDS[pid - 1][2]
            for k in range(1, count + 1):
                await asyncio.sleep(rng.uniform(1.2, 2.2) * poll_ms / 1000)
                v = float(k % 2) if kind == "bool" else float(2000 + k)
                sim.set_value(pid, v)
                changed[pid].append((time.monotonic(), v))

        await asyncio.gather(*(drive(1 + i, -(-samples // n)) for i in range(n)))
        await asyncio.sleep(3 * poll_ms / 1000 + 1.0)
        events = rx.spontaneous(start_frame)
    finally:
        rx.__exit__()
        await sim.stop()
    lat: list[float] = []
    lost = 0
    for pid, sent in changed.items():
        got = [(t, v) for t, _, ioa, v in events if ioa == IOA0 + pid - 1]
        if E2E_KINDS[pid - 1][2] == "bool":  # toggles: n-th event <-> n-th change, values must agree
            pairs = [(s, g) for s, g in zip(sent, got, strict=False) if s[1] == g[1]]
        else:
            first: dict[float, float] = {}
            for t, v in got:
                first.setdefault(v, t)
            pairs = [(s, (first[s[1]], s[1])) for s in sent if s[1] in first]
        lat += [(g[0] - s[0]) * 1000 for s, g in pairs]
        lost += len(sent) - len(pairs)
    return lat, lost


async def arrived(rx: Receiver, want: set[int], start_frame: int, timeout: float) -> bool:
    """Wait until every value of `want` arrived at the client (since frame `start_frame`)."""
    end, seen, pos = time.monotonic() + timeout, set(), start_frame
    while True:
        n = len(rx.frames)
        seen.update(v for _, v in rx.values(pos) if v in want)
        pos = n
        if seen >= want:
            return True
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.05)


def stage_report(w: Writer, arrivals: dict[int, float], path: Path, gcs: list[tuple[float, float, int]],
                 out: Path) -> str:
    """`--trace`: each value of a latency load cut into stages, from the forwarder's trace (`path`,
    fep_forwarder.trace) and the bench's own times (one clock: CLOCK_MONOTONIC); every value's row goes to
    `out` (CSV). Stages: write (the bench's write call), redis (write call started -> the forwarder's stream
    read returned it), fwd (-> its frame written to the socket), client (-> the c104 client's callback).
    Flags of a value: read_late (the forwarder issued that read after the write call started: it was busy),
    window (events left queued at that write: k window full), fwd_gc / bench_gc (a collection in the
    forwarder before the frame, in the bench during the value's journey), writer (the bench's writer thread was
    building or writing a batch between the frame and the callback: the callback waits for the GIL)."""
    tr = json.loads(path.read_text())
    entry_of = {int(first): (eid, called, got) for called, got, entries in tr["reads"]
                for eid, first in entries if first is not None}
    written: dict[tuple[int, int], list[tuple[float, int, int]]] = {}
    for t, runs, left in tr["writes"]:
        for sid, n in runs:
            written.setdefault((int(sid[0]), int(sid[1])), []).append((t, n, left))
    busy = [(b[2], b[4]) for b in w.batches]
    span = (min((b[3] for b in w.batches if b[0] in arrivals), default=0.0),  # this load's values' journeys
            max(arrivals.values(), default=0.0))

    def within(spans: list[Any]) -> list[Any]:
        return [tuple(x) for x in spans if x[1] > span[0] and x[0] < span[1]]
    fwd_gcs, gcs, slow_cbs = within(tr["gcs"]), within(gcs), within(tr["slow"])

    def overlaps(spans: list[Any], a: float, b: float) -> bool:
        return any(s < b and e > a for s, e, *_ in spans)

    rows = []
    for first, count, _built, t0, t1 in w.batches:
        if first not in entry_of:
            continue
        eid, called, got = entry_of[first]
        ms, _, sq = eid.partition("-")
        writes, done = written.get((int(ms), int(sq)), []), 0
        for i in range(count):
            ta = arrivals.get(first + i)
            while writes and done + writes[0][1] <= i:
                done += writes.pop(0)[1]
            if ta is None or not writes:
                continue
            tw, _, left = writes[0]
            rows.append({"seq": first + i, "total": ta - t0, "write": t1 - t0, "redis": got - t0, "fwd": tw - got,
                         "client": ta - tw, "read_late": called > t0, "window": left > 0,
                         "fwd_gc": overlaps(fwd_gcs, t0, tw), "fwd_slow": overlaps(slow_cbs, t0, tw),
                         "bench_gc": overlaps(gcs, t0, ta),
                         "writer": overlaps(busy, tw, ta)})
    if not rows:
        return "trace: no value could be followed"
    with out.open("w", encoding="utf-8") as f:
        f.write(",".join(rows[0]) + "\n")
        f.writelines(",".join(f"{v * 1000:.3f}" if isinstance(v, float) else str(int(v)) for v in r.values()) + "\n"
                     for r in rows)
    rows.sort(key=lambda r: r["total"])
    slow = rows[int(0.99 * len(rows)):]
    stages, flags = ("write", "redis", "fwd", "client"), ("read_late", "window", "fwd_gc", "fwd_slow", "bench_gc",
                                                         "writer")
    med = ", ".join(f"{k} {statistics.median(r[k] for r in rows) * 1000:.2f}" for k in stages)
    sl = ", ".join(f"{k} {statistics.median(r[k] for r in slow) * 1000:.2f}/{max(r[k] for r in slow) * 1000:.2f}"
                   for k in stages)
    top = {k: sum(1 for r in slow if max(stages[1:], key=lambda s: r[s]) == k) for k in stages[1:]}
    def gc_text(spans: list[Any]) -> str:
        return " ".join(f"gen{g} {sum(1 for x in spans if x[2] == g)} (max "
                        f"{max((x[1] - x[0] for x in spans if x[2] == g), default=0) * 1000:.2f} ms)" for g in (0, 1, 2))
    names: dict[str, list[float]] = {}
    for s, e, name in slow_cbs:
        names.setdefault(name, []).append(e - s)
    slowest = sorted(names.items(), key=lambda kv: -max(kv[1]))[:4]
    return (f"trace: {len(rows)} values followed; median ms: {med}; slowest {len(slow)} (>= "
            f"{slow[0]['total'] * 1000:.2f} ms) median/max ms: {sl}; their largest stage: "
            f"{', '.join(f'{k} {n}' for k, n in top.items())}; flags among them: "
            f"{', '.join(f'{k} {sum(1 for r in slow if r[k])}' for k in flags)} (all values: "
            f"{', '.join(f'{k} {sum(1 for r in rows if r[k])}' for k in flags)}); during the load: forwarder GCs "
            f"{gc_text(fwd_gcs)}, bench GCs {gc_text(gcs)}; forwarder loop callbacks over 0.5 ms: "
            f"{'; '.join(f'{n} {len(d)} (max {max(d) * 1000:.2f} ms)' for n, d in slowest) or 'none'}; "
            f"rows in {out}")


def mmm(xs: list[float]) -> str:
    return f"{min(xs):.2f}/{statistics.median(xs):.2f}/{max(xs):.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=10_000, help="changes/s of the latency load")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=5, help="alternating latency runs of each server")
    ap.add_argument("--rates", default="20000,40000,80000,160000",
                    help="paced loads (values/s) stepped up until one loses values or saturates")
    ap.add_argument("--step-seconds", type=float, default=2.0)
    ap.add_argument("--e2e-samples", type=int, default=2000, help="device changes of the end-to-end load")
    ap.add_argument("--e2e-poll-ms", type=int, default=100, help="poll period of the end-to-end load")
    ap.add_argument("--tiny", action="store_true", help="a few seconds on tiny parameters (the test suite)")
    ap.add_argument("--trace", type=Path, metavar="DIR",
                    help="cut each se104s latency value into stages (fep_forwarder.trace) and report its slowest 1%%; "
                         "traces and per-value rows go to DIR")
    ap.add_argument("--c104-ref", nargs=2, type=int, metavar=("REDIS_PORT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.c104_ref:
        c104_reference(args.c104_ref[0], args.c104_ref[1], args.points)
        return 0
    if args.tiny:
        args.points, args.rate, args.seconds, args.runs, args.rates = 50, 1000, 0.5, 1, "2000"
        args.step_seconds, args.e2e_samples, args.e2e_poll_ms = 0.5, 32, 50
    rates = [int(x) for x in args.rates.split(",")]
    print(f"parameters: {args.points} M_ME_NC_1 points, latency load {args.rate}/s for {args.seconds:g} s "
          f"(a write every 5 ms), {args.runs} alternating runs per server; throughput steps {rates} "
          f"({args.step_seconds:g} s each); c104 2.2.1 reference: Batch per stream record, tick 50 ms (its "
          f"smallest); end to end: {args.e2e_samples} changes of {len(E2E_KINDS)} points (float32, int16, DI), "
          f"poll {args.e2e_poll_ms} ms; cpu count {os.cpu_count()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="fep-bench-fwd-"))
    shutil.copytree(REPO / "cfg", root / "cfg")
    port, ref_port = free_port(), free_port()
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    try:
        with RedisProc() as rp:
            r = rp.client()
            replace_config(r, rows(args.points, port))
            redisfns.load_sync(r)
            w = Writer(r, args.points)
            env = {**os.environ, "FEPROOT": str(root), "FEP_REDIS_PORT": str(rp.port),
                   "FEP_REDIS_LOCAL_PORT": str(rp.port), "FEP_LOG_DIR": "", "FEP_LOG_LEVEL": "WARNING"}
            gcs: list[tuple[float, float, int]] = []
            if args.trace:
                args.trace.mkdir(parents=True, exist_ok=True)
                gc.callbacks.append(gc_timer(gcs))
            for run in range(args.runs):
                last = run == args.runs - 1
                trace = args.trace / f"fwd-{run + 1}.json" if args.trace else None
                fwd = subprocess.Popen([sys.executable, "-m", "fep_forwarder.cli"],
                                       env={**env, TRACE_ENV: str(trace)} if trace else env)
                try:
                    wait_port(port)
                    watch = {"fep-forwarder": fwd.pid, "bench": os.getpid(), "redis-server": rp.proc.pid} \
                        if trace and rp.proc else None
                    ours.append(run_phase(f"run {run + 1} se104s (fep-forwarder)", port, w, args,
                                          rates if last else [], watch))
                finally:
                    stop(fwd)
                if trace:
                    print(stage_report(w, ours[-1]["arrivals"], trace, gcs, trace.with_suffix(".csv")), flush=True)
                    print(f"during the load ({args.seconds:g} s, {os.cpu_count()} cores): {ours[-1]['runq']}", flush=True)
                ref = subprocess.Popen([sys.executable, __file__, "--points", str(args.points), "--c104-ref",
                                        str(rp.port), str(ref_port)])
                try:
                    wait_port(ref_port)
                    theirs.append(run_phase(f"run {run + 1} c104.Server (reference)", ref_port, w, args,
                                            rates[:1] if last else []))
                finally:
                    stop(ref)
        e2e, e2e_lost = e2e_phase(root, args.e2e_samples, args.e2e_poll_ms)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    p50, p99 = statistics.median(o["p50"] for o in ours), statistics.median(o["p99"] for o in ours)
    c_p99 = statistics.median(t["p99"] for t in theirs)
    gains = [t["p99"] / o["p99"] for o, t in zip(ours, theirs, strict=True) if o["p99"] > 0]
    lost = sum(o["lat_lost"] for o in ours)
    lossless = ours[-1]["rate"] if lost == 0 else 0.0
    print(f"se104s min/median/max over {args.runs} runs: p50 {mmm([o['p50'] for o in ours])} ms, p99 "
          f"{mmm([o['p99'] for o in ours])} ms; c104 (Batch) p50 {mmm([t['p50'] for t in theirs])} ms, p99 "
          f"{mmm([t['p99'] for t in theirs])} ms; latency_gain per run {mmm(gains)}")
    print(f"c104 reference lost {sum(t['lat_lost'] for t in theirs)} of its latency loads and "
          f"{theirs[-1]['lost']} at {rates[0]:,}/s")
    print(f"end to end (PlcSim change -> fep-acquirer, {args.e2e_poll_ms} ms poll -> fep-forwarder -> c104 client,"
          f" poll phase included): {len(e2e)}/{args.e2e_samples} changes arrived, p50 {pct(e2e, 50):.2f} ms, "
          f"p99 {pct(e2e, 99):.2f} ms, max {max(e2e, default=float('nan')):.2f} ms, lost {e2e_lost}", flush=True)
    out = {"runs": args.runs, "p50_ms": f"{p50:.2f}", "p99_ms": f"{p99:.2f}", "c104_p99_ms": f"{c_p99:.2f}",
           "latency_gain": f"{c_p99 / p99:.1f}" if p99 > 0 else "inf", "lossless_values_per_s": f"{lossless:.0f}",
           "lost": lost + e2e_lost, "e2e_p50_ms": f"{pct(e2e, 50):.2f}", "e2e_p99_ms": f"{pct(e2e, 99):.2f}",
           "e2e_samples": len(e2e)}
    print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
