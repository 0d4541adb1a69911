"""The plant side of the HA scenarios with services (4, 5, 7 and bench/failover.py): the PLC simulator in
the PLC namespace, its journal of the changes it made, the services of both nodes, a control client on
the SCADA host, and the rules that compare what the devices did with what a SCADA client received.

Counting rules (plain functions, no network):
- The simulator (`fep-plcsim --journal`) logs every change it makes: each tick changes every point
  (bools toggle, numbers step by one), so a point's device timeline is the list of (time, value).
- A SCADA client's timeline of a forwarded point is the list of values it received (IEC 104 objects of
  any cause, or Modbus values that differ from the previous read), converted to the protocol's view.
- A device change at t is *received* when the client got that value (in the protocol's view) after t
  and before the next change plus `late_s` (delivery time). A DI transition that lasts less than the
  poll period cannot be seen by polling. Changes made while no node holds the lease (the failover gap:
  VIP move + lease lapse, ~5 s with the suite's timers) are seen by the standby's polls and replayed,
  with their timestamps, when it takes the lease: they arrive late (counted until the takeover +
  `late_s`). The scenarios change values every `HOLD_S` s and flip one DI twice inside the gap.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fepha import keyspace as ks
from fepha.semodel.model import Model
from tests.ha.harness import (
    IP,
    REPO,
    Lab,
    Node,
    Proc,
    holders,
    parse_json_lines,
    probe_records,
    running_lab,
    start_plcsim,
    start_probe,
)

HOLD_S = 10.0
"""Seconds between two changes of the simulated devices in scenario 4: longer than the failover gap
(no holder writes for ~4-5 s after node A dies) plus a poll period and a margin, so every state is seen."""


# --- processes ---------------------------------------------------------------------------------------
def journal(lab: Lab) -> list[dict[str, Any]]:
    path = lab.dir / "plcsim.jsonl"
    return parse_json_lines(path.read_text()) if path.exists() else []


def start_services(node: Node, *services: str, control_timeout_s: float | None = None) -> None:
    extra = {"FEP_CONTROL_TIMEOUT_S": str(control_timeout_s)} if control_timeout_s else {}
    for s in services:
        node.start_service(s, extra)


def start_scada(lab: Lab, vs: list[View], timeout: float = 40) -> Proc:
    """The SCADA probe, once both nodes' se104s listen (c104's client, whose first connect was refused,
    was seen to reconnect without sending STARTDT: data never came), then wait for both nodes'
    general interrogation and every device's value at both clients."""
    for n in lab.nodes.values():
        log = n.procs["forwarder"].log
        lab.wait_for(lambda log=log: "se104s RTU" in log.read_text() and "listening" in log.read_text(), timeout,
                     f"se104s listening on {n.id}", interval=0.2)
    probe = start_probe(lab)
    ioas = {v.key for v in vs if v.proto == "iec104" and not v.type.startswith("M_IT")}  # GI has no counters

    def gi(node: str) -> set[int]:
        return {r["ioa"] for r in probe_records(probe) if r["src"] == "iec104" and r["node"] == node
                and r["cot"] == "INTERROGATED_BY_STATION"}
    lab.wait_for(lambda: all(gi(n) >= ioas for n in lab.nodes), timeout,
                 "general interrogation answered on both nodes", interval=0.3)
    wait_final(lab, probe, vs, tuple(lab.nodes), timeout)
    return probe


def start_a_holding(lab: Lab, rtus: list[int]) -> tuple[Node, Node]:
    """Redis pair, the configuration on both nodes, the PLC simulator (static values, journal), and node
    A's acquirer holding every lease of `rtus` (so the scenarios know who holds what). Returns (A, B)."""
    a, b = lab.nodes["A"], lab.nodes["B"]
    lab.start_pair()
    lab.sysload_init(a)
    lab.wait_for(lambda: b.redis_cli("get", ks.CFG_GEN) == "1", 15, "configuration on B")
    start_plcsim(lab, rate=0)
    start_services(a, "acquirer")
    lab.wait_for(lambda: all(holder(a, r) == "A" for r in rtus), 30, "A holding every lease", 0.3)
    return a, b


def holder(node: Node, rtu: int) -> str:
    """The lease holder of `rtu` as the node's own Redis shows it ('' when none or Redis down)."""
    return holders(node, [rtu])[rtu]


def rtu_values(node: Node, rtu: int) -> dict[int, float]:
    """The node's Redis value hash of an acquisition RTU: point id -> value (quality and time dropped)."""
    out = node.redis_cli("--json", "hgetall", ks.values(rtu))
    got = json.loads(out) if out.startswith("{") else {}
    return {int(k): float(v.split("|")[0]) for k, v in got.items()}


def audit(node: Node) -> list[dict[str, str]]:
    """The control audit stream of the node's Redis (fields of each finished control)."""
    out = node.redis_cli("--json", "xrange", ks.CTL_AUDIT, "-", "+")
    if not out.startswith("["):
        return []
    entries = []
    for _, fields in json.loads(out):
        entries.append(dict(zip(fields[::2], fields[1::2], strict=False)) if isinstance(fields, list) else fields)
    return entries


def start_control_client(lab: Lab, node: str, ioa: int, values: list[int], go: str,
                         interval_s: float, timeout_s: float) -> Proc:
    """tests/ha/scada_control.py on the SCADA host: IEC 104 setpoints to `node` once `go` exists."""
    return lab.spawn("scada", f"control-{node}", [
        sys.executable, "-m", "tests.ha.scada_control", "--ip", IP[node], "--ioa", str(ioa),
        "--values", ",".join(map(str, values)), "--go", go, "--interval", str(interval_s),
        "--timeout", str(timeout_s)], {"PYTHONPATH": str(REPO)})


# --- counting ---------------------------------------------------------------------------------------
def device_timelines(events: list[dict[str, Any]]) -> dict[int, list[tuple[float, float]]]:
    """Point id -> [(time, value)] of every value the device took (start, ticks, sets; writes by clients
    are controls, not counted here)."""
    tl: dict[int, list[tuple[float, float]]] = {}
    for ev in events:
        if ev.get("ev") not in ("start", "tick", "set"):
            continue
        for pid, v in ev["values"].items():
            seq = tl.setdefault(int(pid), [])
            if not seq or seq[-1][1] != v:
                seq.append((ev["t"], v))
    return tl


@dataclass(frozen=True)
class View:
    """How one forwarded point shows a source point's value to a SCADA client."""

    src: int
    proto: str   # iec104 / modbus
    key: Any     # ioa, or (kind, addr)
    type: str
    coef: float

    def expected(self, v: float) -> float:
        """The value the client should show for engineering value v."""
        t = self.type
        if t.startswith(("M_SP", "M_DP")) or t == "bool":
            return float(bool(v))
        x = v * self.coef
        if t.startswith(("M_ME_NA", "M_ME_TD")):
            return min(max(x, -1.0), 1 - 2**-15)
        if t.startswith(("M_ME_NB", "M_ME_TE")):
            return float(min(max(round(x), -32768), 32767))
        if t.startswith(("M_ME_NC", "M_ME_TF")) or t == "float32":
            return struct.unpack(">f", struct.pack(">f", x))[0]
        return float(round(x))

    def same(self, got: float, v: float) -> bool:
        exp = self.expected(v)
        return math.isclose(got, exp, rel_tol=1e-6, abs_tol=1e-4)


def views(m: Model) -> list[View]:
    """Every monitoring point of the se104s and modbus_trains RTUs whose source is a device point."""
    out = []
    points = {p.id for r in m.modbus_rtus() for p in r.points}  # the devices fep-plcsim serves
    for r in m.rtus.values():
        for f in getattr(r, "forwards", ()):
            if f.src not in points or f.kind not in ("AI", "DI", "ACC"):
                continue
            if r.protocol == "se104s":
                out.append(View(f.src, "iec104", f.addr, f.type or "", f.coef))
            elif r.protocol == "modbus_trains":
                out.append(View(f.src, "modbus", ("di" if f.kind == "DI" else "ir", f.addr), f.type or "", f.coef))
    return out


def proto_value(rec: dict[str, Any], view: View) -> float | None:
    """A probe record's value as a number in the protocol's view (None: not a value)."""
    v = rec.get("value")
    if v is None:
        return None
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        if v.startswith("Double."):
            return {"Double.ON": 1.0, "Double.OFF": 0.0}.get(v)
        try:
            return float(v)
        except ValueError:
            return None
    if isinstance(v, list):       # two Modbus registers, high word first
        raw = struct.pack(">HH", *v)
        if view.type == "float32":
            return struct.unpack(">f", raw)[0]
        return float(struct.unpack(">i" if view.type == "int32" else ">I", raw)[0])
    return float(v)


@dataclass
class Tally:
    events: int = 0          # device changes in the window (of forwarded points)
    lost: int = 0
    dup: int = 0
    order: int = 0           # analog values received out of order
    tag: int = 0             # time tags going backwards or outside [change, arrival]
    quality: int = 0         # quality-only events: the same value again with NT/IV set or cleared
    per_point_lost: dict[int, int] = field(default_factory=dict)


def quality_only(vals: list[tuple[dict[str, Any], float | None]]) -> tuple[list[tuple[dict[str, Any], float | None]], int]:
    """Split a point's received (record, value) sequence into value events and quality-only events: a
    record with the previous record's value and another quality (NT set when the lease has no live
    holder, cleared when the new holder polls: docs/forwarder.md) tells SCADA the value's status, not a
    new value, so it is neither a duplicate nor a device change. Returns (value events, quality-only count)."""
    kept: list[tuple[dict[str, Any], float | None]] = []
    n = 0
    prev: tuple[float | None, Any] | None = None
    for r, x in vals:
        q = r.get("quality")
        if prev is not None and prev[0] == x and prev[1] != q:
            n += 1
        else:
            kept.append((r, x))
        prev = (x, q)
    return kept, n


def count_spontaneous(dev: dict[int, list[tuple[float, float]]], records: list[dict[str, Any]], vs: list[View],
          node: str, since: float, until: float) -> Tally:
    """Device changes in [since, until] vs spontaneous events received on `node` (bench/failover.py): answers
    to GI are not events, and neither are quality-only events (`quality_only`: counted apart). Analog: a
    change is lost when its value never arrives, duplicated when it arrives more than once (m changes that
    the protocol shows as one value, e.g. a normalized value clipped at its maximum with OV, need m
    arrivals of it), out of order when a smaller value follows a larger one. DI: the n-th event is the n-th
    change; the same state twice in a row is a duplicate, changes beyond the distinct events are lost.
    Time tags must not go backwards and must lie between the first change of the window (- 1.5 s) and the
    arrival (+ 0.5 s: clocks of one machine)."""
    out = Tally()
    for v in vs:
        if v.proto != "iec104" or v.src not in dev:
            continue
        made = [(t, x) for t, x in dev[v.src] if since <= t <= until]
        if not made:
            continue
        got = [r for r in records if r.get("src") == "iec104" and r.get("node") == node and r["ioa"] == v.key
               and r.get("cot") == "SPONTANEOUS" and r["t"] >= made[0][0]]
        vals, nq = quality_only([(r, proto_value(r, v)) for r in got])
        out.quality += nq
        out.events += len(made)
        is_di = v.type.startswith(("M_SP", "M_DP"))
        if is_di:  # states in order: the n-th event is the n-th change
            seq = [x for _, x in vals]
            dup = sum(1 for a, b in itertools.pairwise(seq) if a == b)
            lost = max(0, len(made) - (len(seq) - dup))
        else:
            lost = dup = 0
            # device values the protocol shows alike (a normalized value clipped with OV) are grouped:
            # m changes showing one protocol value need m arrivals of it, not one each
            groups: dict[float, int] = {}
            for _, x in made:
                e = v.expected(x)
                key = next((k for k in groups if math.isclose(k, e, rel_tol=1e-6, abs_tol=1e-4)), e)
                groups[key] = groups.get(key, 0) + 1
            # arrivals from the point's first change after the window on may be that change (a clipped value
            # cannot tell): not counted
            t_next = next((t for t, _ in dev[v.src] if t > until), math.inf)
            inside = [(r, g) for r, g in vals if r["t"] < t_next]
            for e, m in groups.items():
                n = sum(1 for _, g in inside if g is not None and math.isclose(g, e, rel_tol=1e-6, abs_tol=1e-4))
                lost += max(0, m - n)
                dup += max(0, n - m)
            nums = [g for _, g in vals if g is not None]
            out.order += sum(1 for a, b in itertools.pairwise(nums) if b < a)
        out.lost += lost
        out.dup += dup
        if lost:
            out.per_point_lost[v.src] = lost
        tags = [(r["tt"], r["t"]) for r, _ in vals if "tt" in r]
        out.tag += sum(1 for (a, _), (b, _) in itertools.pairwise(tags) if b < a)
        first_change = made[0][0]
        out.tag += sum(1 for tt, arrival in tags if not first_change - 1.5 <= tt <= arrival + 0.5)
    return out


def client_timeline(records: list[dict[str, Any]], view: View, node: str) -> list[tuple[float, float]]:
    out = []
    for r in records:
        if r.get("node") != node or r.get("src") != view.proto:
            continue
        key = r.get("ioa") if view.proto == "iec104" else (r.get("kind"), r.get("addr"))
        if key != view.key:
            continue
        v = proto_value(r, view)
        if v is not None:
            out.append((r["t"], v))
    return out


def spontaneous_flips(records: list[dict[str, Any]], node: str, ioa: int, since: float) -> list[bool]:
    """The states an IEC 104 DI changed to at the client on `node` after `since`, in order, by spontaneous
    records. A record that repeats the state the client already had (an NT set or cleared re-send of the
    same value, an interrogation answer, or an event sent twice) is no flip: duplicates are
    count_spontaneous's business, this says whether the transitions arrived, in order."""
    out: list[bool] = []
    prev: bool | None = None
    for r in records:
        if r.get("src") != "iec104" or r.get("node") != node or r.get("ioa") != ioa:
            continue
        v = bool(r["value"])
        if r["t"] > since and r.get("cot") == "SPONTANEOUS" and v != prev:
            out.append(v)
        prev = v
    return out


@dataclass
class Count:
    made: int = 0           # device changes in the window
    received: int = 0       # of them, seen by the client in time
    di_made: int = 0
    di_lost: int = 0
    lost: list[tuple[int, Any, float, float]] | None = None   # (src, key, time, value)


def count_changes(dev: dict[int, list[tuple[float, float]]], records: list[dict[str, Any]], vs: list[View],
                  node: str, since: float, until: float, late_s: float = 2.5, catch_up: float = 0.0) -> Count:
    """Device changes made in [since, until] for every view, and how many the client on `node` received
    (the value in the protocol's view, at a time in [change, next change + late_s]; a change made before
    `catch_up` — the takeover, when the new holder replays what it saw in the failover gap — may arrive
    until `catch_up` + late_s)."""
    c = Count(lost=[])
    for view in vs:
        seq = dev.get(view.src, [])
        got = client_timeline(records, view, node)
        for i, (t, v) in enumerate(seq):
            if not since <= t <= until:
                continue
            end = (seq[i + 1][0] if i + 1 < len(seq) else math.inf) + late_s
            if t <= catch_up:
                end = max(end, catch_up + late_s)
            ok = any(t <= tr <= end and view.same(gv, v) for tr, gv in got)
            c.made += 1
            c.received += ok
            is_di = view.type.startswith(("M_SP", "M_DP")) or view.type == "bool"
            c.di_made += is_di
            if not ok:
                c.di_lost += is_di
                c.lost.append((view.src, view.key, t, v))
    return c


def final_mismatches(dev: dict[int, list[tuple[float, float]]], records: list[dict[str, Any]],
                     vs: list[View], node: str) -> list[tuple[int, Any, float, float | None]]:
    """Views whose last value received on `node` differs from the device's last value."""
    bad = []
    for view in vs:
        seq = dev.get(view.src)
        got = client_timeline(records, view, node)
        last = got[-1][1] if got else None
        if last is None and len(seq) == 1:
            continue    # never changed and never sent (IEC 104 counters are not in a general interrogation)
        if seq and (last is None or not view.same(last, seq[-1][1])):
            bad.append((view.src, view.key, view.expected(seq[-1][1]), last))
    return bad


def wait_final(lab: Lab, probe: Proc, vs: list[View], nodes: tuple[str, ...], timeout: float) -> None:
    """Wait until every client on `nodes` shows every device's last value."""
    def done() -> bool:
        dev = device_timelines(journal(lab))
        recs = probe_records(probe)
        return not any(final_mismatches(dev, recs, vs, n) for n in nodes)
    try:
        lab.wait_for(done, timeout, "SCADA clients showing the devices' values", interval=0.5)
    except TimeoutError:
        dev = device_timelines(journal(lab))
        recs = probe_records(probe)
        raise AssertionError({n: final_mismatches(dev, recs, vs, n) for n in nodes}) from None


BASE = Path(tempfile.gettempdir()) / "fepha-plant"
"""Where these scenarios' labs live (not /tmp/fh*: kept apart from other labs and their clean-ups)."""


def plant_lab(request: Any, timers: dict[str, float] | None = None) -> contextlib.AbstractContextManager[Lab]:
    """conftest's `lab`, under BASE."""
    return running_lab(request, timers, base=BASE)
