"""The rows of docs/ha.md "Degraded links", measured on the HA suite's lab (tests/ha/harness.py, plant.py,
netem.py): two namespaced nodes with real Redis and keepalived, the PLC simulator, both nodes' acquirer and
forwarder (compose.yml's command and environment), the SCADA probe (a c104 client per node) and a control
client sending IEC 104 set-points.

    sudo flock /tmp/fepha-heavy.lock python -m tests.ha.degraded_run --fault delay --delay-ms 400 --jitter-ms 200

A measurement of behaviour, not a benchmark (no performance figure: what an operator sees under each fault,
for the table's rows), so it lives with the lab it drives; tests/ha/test_degraded_links.py runs the same lab
code (netem, plant, harness) on every CI run.

Faults (one per run; tests/ha/netem.py builds them without sch_netem):
  delay       B's TCP to A's Redis (its address and the VIP: replication, B's services) delayed by
              --delay-ms ± --jitter-ms each way, B holding the leases (its acquirer started first, after
              the relay is in place; A's Redis drops B's replication link so that it reconnects through it)
  loss        --loss-pct % random loss both ways between B and A (A's address, the VIP, VRRP), B holding
  repl-drop   every packet of A's Redis (port 6379) to B dropped at B, A holding
  channel     --loss-pct % loss on RTU 1's channel 1 between its holder A and the device, both ways
  scada-loss  --loss-pct % loss both ways on the SCADA host's TCP to A's se104s (port 2404), A holding
  scada-delay the SCADA host's TCP to A's se104s delayed (--delay-ms ± --jitter-ms), from its first connect
With --rate, the simulator also changes every point that often (per second) during the fault, and the
spontaneous events of every forwarded point are counted per client (plant.count_spontaneous: lost,
duplicated, out of order, time tags, quality-only).
During the fault (--seconds): the device's AI 101 (IEC 104 IOA 1001, float) takes a new value every
--change-s (with --rate: the ticks' changes only, one per 1/rate s; a set besides would be overwritten by
the next tick, milliseconds later, before any poll could read it), and the control client sends a
set-point (IOA 6001 -> point 110, holding register 100 of RTU 1) every --control-s to node
--control-node, with the forwarders' control deadline --deadline-s. The control client is a second
master on the SCADA host's address, beside the probe.

Printed, one JSON object: the lease events of the window (from A's Redis, or B's when A's is not the
master), the probe's IEC 104 link state changes, per client the delay of each change (device change ->
first record of that value; `lost`: never), the records with NT or IV on IOA 1001, each client's last
value of a point that differs from the device's (`final_mismatches`: src, key, expected, got), what
reached neither of the probe's links (se104s keeps one position per master address: a link resumed after
a close is sent only what the other link did not acknowledge), and per set-point its answer (`no_answer`:
the client's own timeout, deadline + 5 s), how many times the device wrote it, its control in
`fep:ctl:audit` (when the forwarder read it, relative to the send) and whether a write came after the
client's deadline (send + --deadline-s) or after the forwarder's (`deadline_ms`: from when it read the
command; IEC 104's untagged commands carry no send time). --keep keeps the lab's directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fepha import keyspace as ks  # noqa: E402
from tests.ha import netem, plant  # noqa: E402
from tests.ha.harness import (  # noqa: E402
    IP,
    PLC_IPS,
    VIP,
    Lab,
    Node,
    channel_state,
    device_port,
    lab_model,
    plc,
    probe_records,
)

AI, AI_IOA = 101, 1001
SP_IOA, SP_RTU, SP_AREA, SP_ADDR = 6001, 1, "hr", 100
RTUS = [1, 2]
BASE = Path("/tmp/fepha-degraded")


def lease_events(node: Node) -> list[dict[str, str]]:
    out = node.redis_cli("--json", "xrange", ks.LEASE_EVENTS, "-", "+")
    rows = json.loads(out) if out.startswith("[") else []
    return [dict(zip(f[::2], f[1::2], strict=False)) if isinstance(f, list) else f for _, f in rows]


def rate_changes(dev: dict[int, list[tuple[float, float]]], t0: float, t_end: float) -> list[tuple[float, float]]:
    """AI's changes in [t0, t_end] when the simulator's ticks make them (--rate): each held a tick's period.
    Setting AI besides would be no change a client can see: a tick a few ms after a set (both on a fixed
    period) overwrote the set value before any poll read it, and such changes were tallied as lost."""
    return [(t, v) for t, v in dev.get(AI, []) if t0 <= t <= t_end]


def either_link(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The probe's IEC 104 records of both links as those of one master ("AB"): se104s keeps one position
    per master address (docs/se104s.md), so a link resumed after a close gets only the events after what
    the other link acknowledged; what the master as a whole missed is what reached neither link."""
    return [{**r, "node": "AB"} for r in recs if r.get("src") == "iec104"]


def setpoint_figures(
    answers: list[dict[str, Any]], writes: list[dict[str, Any]], audit: list[dict[str, str]], deadline_s: float,
    client_timeout_s: float,
) -> list[dict[str, Any]]:
    """Per set-point of the control client: its answer, the device's writes of its value, and its control
    in the audit (`fep:ctl:audit`, by value: each set-point has its own). Two deadlines: the client's (its
    send time + deadline_s: what the master means) and the forwarder's (`deadline_ms`, counted from when it
    read the command, which TCP retransmission can delay: what the product can keep). `no_answer`: the
    client's own timeout, no ACT_CON at all."""
    out = []
    for ans in answers:
        w = [e["t"] for e in writes if e["values"] == [ans["value"]]]
        ctl = [c for c in audit if float(c.get("value", "nan")) == ans["value"]]
        row: dict[str, Any] = {
            "value": ans["value"],
            "ok": ans["ok"],
            "answer_s": round(ans["answered"] - ans["sent"], 2),
            "no_answer": not ans["ok"] and ans["answered"] - ans["sent"] >= client_timeout_s - 0.2,
            "writes": len(w),
            "write_after_client_deadline": any(t > ans["sent"] + deadline_s for t in w),
            "controls": len(ctl),
        }
        if ctl:
            c = ctl[0]
            row["state"] = c.get("state")
            row["fep_received_s"] = round(int(c["created_ms"]) / 1000 - ans["sent"], 2)
            row["write_after_fep_deadline"] = any(t > int(c["deadline_ms"]) / 1000 for t in w)
            row["finished_s"] = round(int(c.get("finished_ms") or 0) / 1000 - ans["sent"], 2)
        out.append(row)
    return out


def setup(
    lab: Lab, holder: str, fault: contextlib.AbstractContextManager[None] | None, deadline_s: float
) -> tuple[Node, Node]:
    """Redis pair and configuration, the simulator, `holder`'s acquirer first (holding every lease), then
    the other's, both forwarders. `fault`, when given, is entered before B's services start."""
    a, b = lab.nodes["A"], lab.nodes["B"]
    lab.start_pair()
    lab.sysload_init(a)
    lab.wait_for(lambda: b.redis_cli("get", ks.CFG_GEN) == "1", 15, "configuration on B")
    plant.start_plcsim(lab, rate=0)
    first = lab.nodes[holder]
    if fault is not None:
        fault.__enter__()
        a.redis_cli("client", "kill", "type", "replica")  # B's replication link reconnects through the fault
        lab.wait_for(
            lambda: "master_link_status:up" in b.redis_cli("info", "replication"),
            30,
            "B in sync again",
            interval=0.3,
        )
    plant.start_services(first, "acquirer")
    lab.wait_for(lambda: all(plant.holder(a, r) == holder for r in RTUS), 40, f"{holder} holding", 0.3)
    plant.start_services(first.peer, "acquirer")
    for n in (a, b):
        plant.start_services(n, "forwarder", control_timeout_s=deadline_s)
    return a, b


@contextlib.contextmanager
def both_ways_loss(b: Node, pct: float) -> Iterator[None]:
    with contextlib.ExitStack() as st:
        st.enter_context(netem.loss(b.ns, pct, "both", peer=IP["A"]))
        st.enter_context(netem.loss(b.ns, pct, "both", peer=VIP))
        st.enter_context(netem.loss(b.ns, pct, "out", proto="vrrp"))
        yield


def run(args: argparse.Namespace) -> dict[str, Any]:
    BASE.mkdir(exist_ok=True)
    if args.keep:  # Lab.close keeps its directory (logs, Redis data, the probe's records) only then
        os.environ["FEP_HA_KEEP"] = "1"
    lab = Lab(None, base=BASE)
    lab.start()
    try:
        return measure(lab, args)
    finally:
        if args.keep:
            print(f"lab dir {lab.dir}", file=sys.stderr)
        lab.close()


def measure(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    a, b = lab.nodes["A"], lab.nodes["B"]
    pre: contextlib.AbstractContextManager[None] | None = None
    during: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    holder = "A"
    if args.fault == "delay":
        holder = "B"
        pre = netem.delay(
            b.ns,
            [(IP["A"], 6379), (VIP, 6379)],
            args.delay_ms,
            args.jitter_ms,
            log=str(lab.dir / "relay.log"),
        )
    elif args.fault == "loss":
        holder = "B"
        during = both_ways_loss(b, args.loss_pct)
    elif args.fault == "repl-drop":
        during = netem.loss(b.ns, 100, "in", proto="tcp", peer=IP["A"], port=6379)
    elif args.fault == "scada-loss":
        during = netem.loss(lab.ns["scada"], args.loss_pct, "both", proto="tcp", peer=IP["A"], port=2404)
    elif args.fault == "scada-delay":  # the SCADA host's connections to A's se104s, opened through the relay
        pre = netem.delay(
            lab.ns["scada"], [(IP["A"], 2404)], args.delay_ms, args.jitter_ms, log=str(lab.dir / "relay.log")
        )
    elif args.fault == "channel":
        during = netem.loss(
            a.ns, args.loss_pct, "both", proto="tcp", peer=PLC_IPS[0], port=device_port(lab, 1)
        )
    try:
        a, b = setup(lab, holder, pre, args.deadline_s)
        vs = plant.views(lab_model(lab))
        probe = plant.start_scada(lab, vs)
        n_events0 = len(lease_events(a))
        go = lab.dir / "controls.go"
        values = [2001 + i for i in range(int(args.seconds / args.control_s))]
        control = plant.start_control_client(
            lab, args.control_node, SP_IOA, values, str(go), args.control_s, args.deadline_s + 5
        )
        time.sleep(2.0)  # the client connected and data transfer started (it waits for `go` anyway)
        t0 = time.time()
        changes: list[tuple[float, float]] = []
        with during:
            go.touch()
            if args.rate:
                assert plc(lab, f"rate {args.rate}") == "ok"
                time.sleep(args.seconds)  # AI's changes are the ticks' (rate_changes), none set besides
            k = 0
            while not args.rate and time.time() - t0 < args.seconds:
                k += 1
                v = 500.0 + k
                assert plc(lab, f"set {AI} {v}") == "ok"
                changes.append((time.time(), v))
                time.sleep(max(0.0, min(t0 + k * args.change_s, t0 + args.seconds) - time.time()))
            t_end = time.time()
            if args.rate:
                assert plc(lab, "rate 0") == "ok"
        if args.rate:
            # a tick already waiting still comes (up to 1/rate s after the fault): inside the window, else
            # the count takes it for the window's next change and ignores every arrival after it
            time.sleep(1.0 / args.rate + 0.2)
            t_end = time.time()
            changes = rate_changes(plant.device_timelines(plant.journal(lab)), t0, t_end)
        time.sleep(args.after_s)
        return figures(lab, a, b, probe, control, changes, t0, t_end, n_events0, args)
    finally:
        if pre is not None:
            pre.__exit__(None, None, None)


def figures(
    lab: Lab,
    a: Node,
    b: Node,
    probe: Any,
    control: Any,
    changes: list[tuple[float, float]],
    t0: float,
    t_end: float,
    n_events0: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    recs = probe_records(probe)
    dev = plant.device_timelines(plant.journal(lab))
    vs = plant.views(lab_model(lab))
    master = a if a.role() == "master" else b
    out: dict[str, Any] = {"fault": vars(args), "t0": t0, "window_s": round(t_end - t0, 1)}
    out["lease_events"] = [
        {**e, "at_s": round(int(e.get("ts_ms", 0)) / 1000 - t0, 2)} for e in lease_events(master)[n_events0:]
    ]
    out["holders_end"] = {r: plant.holder(master, r) for r in RTUS}
    out["link_states"] = {
        node: [
            (round(r["t"] - t0, 1), r["state"])
            for r in recs
            if r["src"] == "iec104-state" and r["node"] == node and r["t"] >= t0
        ]
        for node in ("A", "B")
    }
    both = plant.count_spontaneous(dev, either_link(recs), vs, "AB", t0, t_end)
    out["spontaneous_either_link"] = {"events": both.events, "lost": both.lost, "per_point_lost": both.per_point_lost}
    out["final_mismatches"] = {node: plant.final_mismatches(dev, recs, vs, node) for node in ("A", "B")}
    for node in ("A", "B"):
        mine = [r for r in recs if r["src"] == "iec104" and r["node"] == node and r["ioa"] == AI_IOA]
        delays: list[float | None] = []
        for t, v in changes:
            got = next((r["t"] for r in mine if r["t"] >= t and abs(float(r["value"]) - v) < 1e-3), None)
            delays.append(None if got is None else round(got - t, 2))
        seen = [d for d in delays if d is not None]
        win = [r for r in mine if t0 <= r["t"] <= t_end + args.after_s]
        tally = plant.count_spontaneous(dev, recs, vs, node, t0, t_end)
        out[f"spontaneous_{node}"] = {
            k: getattr(tally, k)
            for k in ("events", "lost", "dup", "order", "tag", "quality", "per_point_lost")
        }
        out[f"client_{node}"] = {
            "changes": len(changes),
            "lost": delays.count(None),
            "delay_min_max_s": [min(seen), max(seen)] if seen else None,
            "first_delay_s": delays[0] if delays else None,
            "delays": delays,
            "records": len(win),
            "nt_records": sum("NonTopical" in r["quality"] for r in win),
            "iv_records": sum("Invalid" in r["quality"] for r in win),
            "bad_records_at_s": [
                round(r["t"] - t0, 1)
                for r in win
                if "NonTopical" in r["quality"] or "Invalid" in r["quality"]
            ][:40],
        }
    answers = [json.loads(x) for x in control.log.read_text().splitlines() if x.startswith('{"value"')]
    writes = [
        e
        for e in plant.journal(lab)
        if e.get("ev") == "write" and e["rtu"] == SP_RTU and e["area"] == SP_AREA and e["address"] == SP_ADDR
    ]
    sp = setpoint_figures(answers, writes, plant.audit(master), args.deadline_s, args.deadline_s + 5)
    out["setpoints"] = sp
    out["setpoint_summary"] = {
        "sent": len(sp),
        "confirmed": sum(s["ok"] for s in sp),
        "negative": sum(not s["ok"] for s in sp),
        "no_answer": sum(s["no_answer"] for s in sp),
        "written": sum(s["writes"] > 0 for s in sp),
        "written_twice": sum(s["writes"] > 1 for s in sp),
        "negative_but_written": sum((not s["ok"]) and s["writes"] > 0 for s in sp),
        "written_after_client_deadline": sum(s["write_after_client_deadline"] for s in sp),
        "written_after_fep_deadline": sum(s.get("write_after_fep_deadline", False) for s in sp),
        "not_audited": sum(s["controls"] == 0 for s in sp),
        "confirm_s": [min(ok), max(ok)] if (ok := [s["answer_s"] for s in sp if s["ok"]]) else None,
    }
    out["slow_tick_warnings"] = {
        n.id: sum("lease tick waiting" in x for x in n.procs["acquirer"].log.read_text().splitlines())
        for n in (a, b)
    }
    out["channel_state_A"] = channel_state(a, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--fault",
        choices=("delay", "loss", "repl-drop", "channel", "scada-loss", "scada-delay"),
        required=True,
    )
    ap.add_argument("--delay-ms", type=float, default=400)
    ap.add_argument("--jitter-ms", type=float, default=200)
    ap.add_argument("--loss-pct", type=float, default=30)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--after-s", type=float, default=8)
    ap.add_argument("--change-s", type=float, default=2.0)
    ap.add_argument("--control-s", type=float, default=2.0)
    ap.add_argument("--control-node", default="A")
    ap.add_argument("--deadline-s", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=0.0, help="device changes of every point per second")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
