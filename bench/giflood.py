"""Interrogation flood benchmark: one se104s server (one forwarding RTU of `--points` points, half measured
values M_ME_NC_1, half single points M_SP_NA_1, plus one M_ME_TF_1 probe point) and two masters, each in a
process of its own:

  hostile  STARTDT, then station interrogations (C_IC_NA_1, QOI 20) written as fast as the socket takes them,
           20 a write, each write acknowledging everything received, for `--seconds`;
  steady   STARTDT, then receives; it acknowledges as a master does.

The server's process changes the probe point every `--period-ms` on a fixed schedule (time tag = when the
change was due: a change that waits for a held event loop counts as late); latency = arrival at the steady
master - the time tag. Also measured in the server's process: how late a
1 ms sleep of the event loop wakes (the longest hold of the loop).

`--runs` runs (min/median/max printed). Last line (medians of the runs): points= seconds= runs= events=
p50_ms= p99_ms= max_ms= loop_max_ms= gi_answered= gi_refused= hostile_connections= (the hostile master
connects again whenever the server closes it). What it does not cover: the runner and Redis (the server is fed
in its process, as the runner feeds it), several forwarding RTUs, TLS, CPU time, and a reference server
(c104's answers every interrogation in full behind its 50 ms tick: a comparison would measure the tick).
"""

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fep_forwarder.base import Update
from fep_forwarder.se104s import Se104Server
from fepha import heap
from fepha.iec104 import codec as c
from fepha.points import Value
from fepha.semodel.model import FWD_KIND, FwdPoint, Model, Rtu

CA = 7
PROBE = 999_999


def master(port: int, seconds: float, flood: bool, result: "mp.Queue[dict[str, object]]") -> None:
    """One master for `seconds`; the flooding one connects again whenever it is closed."""
    lat: list[float] = []
    got = {"answered": 0, "refused": 0, "connections": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got["connections"] += 1
        try:
            session(port, end, flood, lat, got)
        except OSError:  # reset while connecting or starting: the server closed it (answers_max)
            if not flood:  # the steady master is never closed: its failure is the bench's
                raise
        if not flood:
            break
    result.put({"flood": flood, "lat": lat, **got})


def session(port: int, end: float, flood: bool, lat: list[float], got: dict[str, int]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(c.u_frame(c.STARTDT_ACT))
    sock.setblocking(False)
    reader, vr, unacked, ns = c.FrameReader(), 0, 0, 0
    closed = False
    gi = c.interrogation(CA)
    while time.monotonic() < end and not closed:
        try:
            data = sock.recv(65536)
            if not data:
                closed = True
        except BlockingIOError:
            data = b""
        except ConnectionError:
            data, closed = b"", True
        now_ms = time.time() * 1000
        for f in reader.feed(data):
            if f.kind != "I":
                continue
            vr, unacked = (vr + 1) & 0x7FFF, unacked + 1
            a = c.parse_asdu(f.asdu)
            if a.type_id == c.C_IC_NA_1:
                got["answered"] += a.cause == c.COT_ACTTERM
                got["refused"] += a.negative
            elif a.type_id == c.M_ME_TF_1 and a.cause == c.COT_SPONT:
                for _, e in a.objects:
                    lat.append(now_ms - (c.decode_element(a.type_id, e)[2] or 0))
        out = b""
        if flood:
            out = b"".join(c.i_frame((ns + i) & 0x7FFF, vr, gi) for i in range(20))
            ns += 20
            unacked = 0
        elif unacked >= 8:
            out, unacked = c.s_frame(vr), 0
        try:
            if out:
                sock.settimeout(0.5)  # not forever: a server that stopped reading has it closed (below)
                sock.sendall(out)
                sock.setblocking(False)
            elif not data:
                time.sleep(0.0005)
        except (ConnectionError, TimeoutError):  # a write cut short breaks the framing: connect again
            closed = True
    sock.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    n = args.points
    fwds = [FwdPoint(i + 1, "T005_ZFAI" if i % 2 else "T006_ZFDI", FWD_KIND["T005_ZFAI" if i % 2 else "T006_ZFDI"],
                     10, i + 1, 1000 + i, "M_ME_NC_1" if i % 2 else "M_SP_NA_1", 1.0) for i in range(n)]
    probe = FwdPoint(PROBE, "T005_ZFAI", "AI", 10, PROBE, 900_000, "M_ME_TF_1", 1.0)
    rtu = Rtu(id=10, name="flood", rtutype=2, protocol="se104s", listen_port=0, address=CA, forwards=(*fwds, probe))

    class Sink:
        async def execute(self, *a: object, **k: object) -> None:
            raise AssertionError("no controls here")

    srv = Se104Server(rtu, Model({}, "", ""), "127.0.0.1", Sink(), "A")
    await srv.start()
    now = int(time.time() * 1000)
    srv.load_image([Update(f, Value(1.0, 0, now)) for f in fwds] + [Update(probe, Value(0, 0, now))])
    heap.settle()  # as the runner does after a full image (fepha.heap)
    result: mp.Queue[dict[str, object]] = mp.Queue()
    ctx = [mp.Process(target=master, args=(srv.port, args.seconds + 1.0, False, result))]
    ctx[0].start()
    await asyncio.sleep(0.5)
    if not args.alone:
        ctx.append(mp.Process(target=master, args=(srv.port, args.seconds, True, result)))
        ctx[1].start()
    loop_max = 0.0
    t0, w0 = time.monotonic(), time.time() * 1000
    k = 0
    while time.monotonic() < t0 + args.seconds:
        # the changes are due on a schedule (as they come from the change stream, written by others): each
        # is stamped with the time it was due, applied when the loop gets to it
        k += 1
        due = t0 + k * args.period_ms / 1000
        t = time.monotonic()
        await asyncio.sleep(max(0.0, due - t))
        loop_max = max(loop_max, time.monotonic() - max(due, t))
        srv.apply([Update(probe, Value(k, 0, int(w0 + k * args.period_ms)))])
    got = [await asyncio.get_running_loop().run_in_executor(None, result.get, True, 60) for _ in ctx]
    for p in ctx:
        await asyncio.get_running_loop().run_in_executor(None, p.join)
    await srv.stop()
    steady = next(g for g in got if not g["flood"])
    hostile = next((g for g in got if g["flood"]), {"answered": 0, "refused": 0, "connections": 0})
    lat = sorted(steady["lat"])  # type: ignore[arg-type]
    return {"points": n, "seconds": args.seconds, "events": len(lat),
            "p50_ms": round(statistics.median(lat), 1) if lat else None,
            "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1) if lat else None,
            "max_ms": round(lat[-1], 1) if lat else None, "loop_max_ms": round(loop_max * 1000, 1),
            "gi_answered": hostile["answered"], "gi_refused": hostile["refused"],
            "hostile_connections": hostile["connections"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--period-ms", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--alone", action="store_true", help="no hostile master (the baseline)")
    ap.add_argument("--tiny", action="store_true", help="a few seconds on tiny parameters (the test suite)")
    args = ap.parse_args()
    if args.tiny:
        args.points, args.seconds, args.runs = 500, 1.0, 1
    print(f"parameters: {args.points} points (half M_ME_NC_1, half M_SP_NA_1) + 1 probe changing every "
          f"{args.period_ms} ms, flood {args.seconds} s {'absent (--alone)' if args.alone else 'by one master'}, "
          f"{args.runs} runs", flush=True)
    runs = []
    for i in range(args.runs):
        r = asyncio.run(run(args))
        print(f"run {i + 1}: " + " ".join(f"{k}={v}" for k, v in r.items()), flush=True)
        runs.append(r)
    figures = ("p50_ms", "p99_ms", "max_ms", "loop_max_ms")
    for k in figures:
        vs = sorted(float(r[k]) for r in runs if r[k] is not None)  # type: ignore[arg-type]
        if vs:
            print(f"{k} min/median/max: {vs[0]} / {statistics.median(vs)} / {vs[-1]}")
    last = {"points": args.points, "seconds": args.seconds, "runs": args.runs}
    for k in ("events", *figures, "gi_answered", "gi_refused", "hostile_connections"):
        vs = [float(r[k]) for r in runs if r[k] is not None]  # type: ignore[arg-type]
        last[k] = round(statistics.median(vs), 1) if vs else float("nan")
    print(" ".join(f"{k}={v}" for k, v in last.items()))


if __name__ == "__main__":
    main()
