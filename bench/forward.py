"""Forwarding benchmark: Redis write or simulated PLC change -> value at a real IEC 104 client (c104 2.2.1).

Two servers on the same load, in one run:
  se104s  the real `fep-forwarder` process (runner + our IEC 104 server) following the Redis change stream;
  c104    c104's own `c104.Server`, fed from the same stream by a small adapter process (XREAD BLOCK ->
          point.value / point.transmit(SPONTANEOUS)), the reference the issue asks for.

Load 1 (latency): `--rate` changes/s for `--seconds`, written as fenced `write_values` calls every 5 ms (a
poll's worth each); each value is a sequence number, so the client knows which write it came from.
Latency = arrival at the client's raw-frame callback - the moment before the write call (the poll period is
not included: it is "added latency"). Load 2 (throughput): paced loads of `--rates` values/s (a call every
10 ms), stepped up until a step loses values or the delivered rate saturates; lossless_values_per_s is the
best delivered rate (values / (last arrival - first write)) of a step that lost nothing. `lost` counts the
values of the latency load that never arrived. The c104 reference runs the latency load and the first step.

Load 3 (end to end, the issue's "simulated PLC change to the value at the client"), on its own
redis-server after the others: a PlcSim device in this process (one modbus_tcp RTU, 4 float32 points, all
forwarded by an se104s RTU), the real `fep-acquirer` (node A, polling every `--e2e-poll-ms`, lease timers
shortened by FEP_* variables) and `fep-forwarder` processes, the c104 client. Point 1 is set
`--e2e-changes` times to a new value (a sequence number); PlcSim's `on_read` hook stamps the first read
request that served each value, and the next change follows 10..90 % of a poll period after that read, so
every change is read by its own poll. Added latency = arrival at the client's raw-frame callback - that
read (what the poll period adds, waiting for the next read, is excluded: that is "beyond the poll period").
It covers the Modbus answer, decoding, change detection, the fenced write, the stream, the forwarder and
IEC 104. e2e_lost counts the changes that never arrived (a change never read counts as lost too).

Last line: p50_ms=… p99_ms=… c104_p99_ms=… latency_gain=… lossless_values_per_s=… lost=… e2e_p50_ms=…
e2e_p99_ms=… e2e_lost=…
"""



import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
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

from fep_loader.store import replace_config
from fep_tools.plcsim import PlcSim

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
            frames.append((time.perf_counter(), data))

        def on_state(connection: c104.Connection, state: c104.ConnectionState) -> None:
            if state == c104.ConnectionState.OPEN:
                self.opened.set()

        self.conn.on_receive_raw(on_raw)
        self.conn.on_state_change(on_state)

    def __enter__(self) -> Self:
        self.client.start()
        if not self.opened.wait(20):
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

    def values(self, start: int = 0) -> list[tuple[float, int]]:
        """(arrival, sequence number) of every spontaneous value in frames[start:]."""
        return [(t, int(codec.decode_element(a.type_id, e)[0])) for t, a in self.asdus(start)
                if a.cause == codec.COT_SPONT and a.type_id == codec.M_ME_NC_1 for _, e in a.objects]


class Writer:
    """Plays the acquirer of the lease holder: fenced writes of sequence numbers, round robin over points."""

    def __init__(self, r: redis.Redis, n: int) -> None:
        self.r, self.n, self.seq = r, n, 0
        _holder, self.epoch, _ = r.fcall(*redisfns.lease_tick(ACQ_RTU, "A", True, 600_000, 900_000).argv)
        self.sent: dict[int, float] = {}

    def batch(self, count: int) -> None:
        flat: list[str] = []
        now_ms = int(time.time() * 1000)
        first = self.seq
        for _ in range(count):
            self.seq += 1
            flat += (str(1 + self.seq % self.n), points.encode(float(self.seq), 0, now_ms))
        t = time.perf_counter()
        for s in range(first + 1, self.seq + 1):
            self.sent[s] = t
        res = self.r.fcall(*redisfns.write_values(ACQ_RTU, "A", int(self.epoch), flat).argv)
        if int(res[0]) != 1:
            raise RuntimeError(f"fenced write refused: {res}")


def paced_writes(w: Writer, per: int, period: float, seconds: float) -> float:
    """A batch of `per` values every `period` s for `seconds`, on a fixed schedule (a late call does not
    shift the later ones); -> when it started (perf_counter)."""
    t0 = time.perf_counter()
    k = 0
    while time.perf_counter() - t0 < seconds:
        w.batch(per)
        k += 1
        delay = t0 + k * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return t0


def latency_load(w: Writer, rx: Receiver, rate: int, seconds: float) -> tuple[list[float], int, int]:
    first_seq, start_frame = w.seq + 1, len(rx.frames)
    paced_writes(w, max(1, rate // 200), 0.005, seconds)
    last_seq = w.seq
    settle(rx, last_seq - first_seq + 1, start_frame, first_seq)
    got = {s: t for t, s in rx.values(start_frame) if first_seq <= s <= last_seq}
    lat = [(got[s] - w.sent[s]) * 1000 for s in got]
    return lat, last_seq - first_seq + 1, len(got)


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
    srv = c104.Server(ip="127.0.0.1", port=port, tick_rate_ms=50)
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
                for pid, rec in fields.items():
                    p = pts.get(int(pid)) if pid != "r" else None
                    if p is not None:
                        p.value = float(points.decode(rec).value)
                        p.transmit(cause=c104.Cot.SPONTANEOUS)


def wait_port(port: int, timeout: float = 20) -> None:
    import socket
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def stop(p: "subprocess.Popen[bytes]") -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def run_phase(name: str, port: int, w: Writer, args: argparse.Namespace, rates: list[int]) -> dict[str, float]:
    with Receiver(port) as rx:
        time.sleep(0.3)
        lat, sent, got = latency_load(w, rx, args.rate, args.seconds)
        rate, lost, log = throughput(w, rx, rates, args.step_seconds)
    res = {"p50": pct(lat, 50), "p99": pct(lat, 99), "lat_lost": sent - got, "rate": rate, "lost": lost,
           "max": max(lat) if lat else float("nan")}
    print(f"{name}: latency at {args.rate}/s: {got}/{sent} values arrived, p50 {res['p50']:.2f} ms, "
          f"p99 {res['p99']:.2f} ms, max {res['max']:.2f} ms; throughput steps: {'; '.join(log)}", flush=True)
    return res


E2E_POINTS, E2E_BASE = 4, 1000.0
E2E_TIMERS = {"FEP_TIMERS_LEASE_TICK_S": "0.1", "FEP_TIMERS_LEASE_TTL_S": "1.0", "FEP_TIMERS_TAKEOVER_S": "1.5",
              "FEP_TIMERS_CHANNEL_SWITCH_S": "0.4", "FEP_TIMERS_RECONNECT_MIN_S": "0.05",
              "FEP_TIMERS_RECONNECT_MAX_S": "0.2"}


def e2e_phase(root: Path, changes: int, poll_ms: int) -> tuple[list[float], int]:
    """PlcSim change -> real fep-acquirer -> Redis -> real fep-forwarder -> c104 client; -> (added
    latencies in ms, changes lost)."""
    fwd_port, dev_port = free_port(), free_port()
    cfg_rows = rows(E2E_POINTS, fwd_port, dev_port)
    cfg_rows["T004_RTU"][0].update(POLLMS=poll_ms, TIMEOUTMS=1000)
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
            return asyncio.run(_e2e_drive(Model.from_rows(cfg_rows), fwd_port, changes, poll_ms))
        finally:
            for proc in procs:
                stop(proc)


async def _e2e_drive(model: Model, fwd_port: int, changes: int, poll_ms: int) -> tuple[list[float], int]:
    """The device (PlcSim, on this loop) and the client; changes point 1, one per poll."""
    first_read: dict[int, float] = {}  # value of point 1 -> perf_counter of the first read that served it
    served = asyncio.Event()

    def on_read(rtu: int, ch: int, area: str, address: int, count: int) -> None:
        t = time.perf_counter()
        v = int(sim.value(1))
        if area == "hr" and address <= 0 < address + count and v not in first_read:  # point 1: hr 0..1
            first_read[v] = t
            served.set()

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it would trace every frame
    sim = PlcSim(model, on_read=on_read)
    await sim.start()
    rx = Receiver(fwd_port)
    try:
        await asyncio.to_thread(wait_port, fwd_port)
        await asyncio.to_thread(rx.__enter__)
        # warm-up: the acquirer holds the lease and a change travels the whole chain
        sim.set_value(1, E2E_BASE)
        if not await arrived(rx, {int(E2E_BASE)}, 0, 30):
            raise RuntimeError("no change reached the client through fep-acquirer and fep-forwarder")
        start_frame, sent = len(rx.frames), []
        rng = random.Random(104)
        for k in range(1, changes + 1):
            v = int(E2E_BASE) + k
            served.clear()
            sim.set_value(1, v)
            sent.append(v)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(served.wait(), 10 * poll_ms / 1000)
            # next change after a random part of a poll period: read by a later poll, at any phase
            await asyncio.sleep(rng.uniform(0.1, 0.9) * poll_ms / 1000)
        await arrived(rx, set(sent), start_frame, 3)
        got: dict[int, float] = {}
        for t, v in rx.values(start_frame):
            got.setdefault(v, t)
    finally:
        rx.__exit__()
        await sim.stop()
    lat = [(got[v] - first_read[v]) * 1000 for v in sent if v in got and v in first_read]
    unread = sum(1 for v in sent if v not in first_read)
    if unread:
        print(f"e2e: {unread} changes were never read by the acquirer (counted as lost)", flush=True)
    return lat, len(sent) - len(lat)


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=10_000, help="changes/s of the latency load")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rates", default="20000,40000,80000,160000",
                    help="paced loads (values/s) stepped up until one loses values or saturates")
    ap.add_argument("--step-seconds", type=float, default=2.0)
    ap.add_argument("--e2e-changes", type=int, default=200, help="device changes of the end-to-end load")
    ap.add_argument("--e2e-poll-ms", type=int, default=100, help="poll period of the end-to-end load")
    ap.add_argument("--c104-ref", nargs=2, type=int, metavar=("REDIS_PORT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.c104_ref:
        c104_reference(args.c104_ref[0], args.c104_ref[1], args.points)
        return 0
    rates = [int(x) for x in args.rates.split(",")]
    root = Path(tempfile.mkdtemp(prefix="fep-bench-fwd-"))
    shutil.copytree(REPO / "cfg", root / "cfg")
    port, ref_port = free_port(), free_port()
    try:
        with RedisProc() as rp:
            r = rp.client()
            replace_config(r, rows(args.points, port))
            redisfns.load_sync(r)
            w = Writer(r, args.points)
            env = {**os.environ, "FEPROOT": str(root), "FEP_REDIS_PORT": str(rp.port),
                   "FEP_REDIS_LOCAL_PORT": str(rp.port), "FEP_LOG_DIR": "", "FEP_LOG_LEVEL": "WARNING"}
            fwd = subprocess.Popen([sys.executable, "-m", "fep_forwarder.cli"], env=env)
            try:
                wait_port(port)
                ours = run_phase("se104s (fep-forwarder)", port, w, args, rates)
            finally:
                stop(fwd)
            ref = subprocess.Popen([sys.executable, __file__, "--points", str(args.points), "--c104-ref",
                                    str(rp.port), str(ref_port)])
            try:
                wait_port(ref_port)
                theirs = run_phase("c104.Server (reference)", ref_port, w, args, rates[:1])
            finally:
                stop(ref)
        e2e, e2e_lost = e2e_phase(root, args.e2e_changes, args.e2e_poll_ms)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    gain = theirs["p99"] / ours["p99"] if ours["p99"] > 0 else float("inf")
    lossless = ours["rate"] if ours["lat_lost"] == 0 else 0.0
    print(f"c104 reference lost {theirs['lat_lost']} of the latency load and {theirs['lost']} at {rates[0]:,}/s")
    print(f"end to end (PlcSim -> fep-acquirer, {args.e2e_poll_ms} ms poll -> fep-forwarder -> c104 client): "
          f"{len(e2e)}/{args.e2e_changes} changes arrived, added latency after the first read serving the "
          f"change: p50 {pct(e2e, 50):.2f} ms, p99 {pct(e2e, 99):.2f} ms, max {max(e2e, default=float('nan')):.2f} ms",
          flush=True)
    print(f"p50_ms={ours['p50']:.2f} p99_ms={ours['p99']:.2f} c104_p99_ms={theirs['p99']:.2f} "
          f"latency_gain={gain:.1f} lossless_values_per_s={lossless:.0f} lost={ours['lat_lost']} "
          f"e2e_p50_ms={pct(e2e, 50):.2f} e2e_p99_ms={pct(e2e, 99):.2f} e2e_lost={e2e_lost}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
