"""SCADA-side switchover, measured on the HA lab: a master receives continuous spontaneous events from node
A, node A dies, the master connects to node B. Used by tests/ha/test_scada_switchover.py and
bench/failover.py.

The sequence is carried in the values: the PLC simulator steps every numeric point by one on each tick
(`rate`), so each value of a numeric IEC 104 point is one device change, and a value received twice is a
duplicate. Only spontaneous objects count (cause SPONTANEOUS); general interrogation answers do not.
A tick period longer than the poll periods makes every change visible to polling (the failover gap is
covered by B's standby replay, tests/ha/test_node_loss.py), so what is lost or doubled here is the SCADA
side: node B resuming the master after the position it acknowledged on A (docs/se104s.md).

Counting rules (plain functions, table-tested in tests/ha/test_plant_rules.py style):
- a point is counted when its expected values over the whole run are all distinct (a clamped normalised
  value is not a sequence; receptions are matched whatever their time, so a value the point takes again
  after the window would be a false duplicate);
- lost: device changes in the window never received spontaneously (from either node);
- dup: receptions beyond the first of one change (quality-only events, the same value with NT set or
  cleared, do not count: `plant.quality_only`);
- bound: the events k unacknowledged I frames can hold, k x the most counted points one ASDU can carry
  (one event per point per ASDU: each stream entry carries every changed point of its RTU once).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from fepha.config import load_node
from fepha.iec104 import codec as iec
from tests.ha import plant
from tests.ha.harness import IP, REPO, Lab, Proc, lab_model, plc, probe_records

RTUS = (1, 2)
NUMERIC = ("M_ME", "M_IT")


@dataclass
class SwitchCount:
    made: int = 0
    lost: int = 0
    dup: int = 0
    bound: int = 0
    points: int = 0
    per_point: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # ioa -> (made, lost, dup)
    missed: list[tuple[int, float, float]] = field(default_factory=list)  # (ioa, device time, value) lost


def counted_views(vs: list[plant.View]) -> list[plant.View]:
    return [v for v in vs if v.proto == "iec104" and v.type.startswith(NUMERIC)]


def dup_bound(vs: list[plant.View], k: int) -> int:
    """Events in at most k I frames: k x the most counted points that share one type (one ASDU)."""
    per_type: dict[str, int] = {}
    for v in vs:
        per_type[v.type] = per_type.get(v.type, 0) + 1
    most = max((min(n, iec.per_asdu(iec.TYPE_IDS[t])) for t, n in per_type.items()), default=0)
    return k * most


def count_switch(dev: dict[int, list[tuple[float, float]]], records: list[dict[str, Any]],
                 vs: list[plant.View], since: float, until: float, k: int) -> SwitchCount:
    """Per counted point: device changes made in [since, until], received spontaneously 0 (lost) or n > 1
    (n - 1 duplicates) times from either node."""
    out = SwitchCount()
    used: list[plant.View] = []
    for view in counted_views(vs):
        changes = [(t, v) for t, v in dev.get(view.src, []) if since <= t <= until]
        expected = [view.expected(v) for _, v in dev.get(view.src, [])]   # receptions of any time are matched
        if not changes or len(set(expected)) != len(expected):
            continue
        recs = [r for r in records if r.get("src") == "iec104" and r.get("ioa") == view.key
                and r.get("cot") == "SPONTANEOUS"]
        # quality-only events (the same value with NT set or cleared: B's verdict on A's lease during the
        # gap, docs/forwarder.md) are neither duplicates nor changes, as in plant.count_spontaneous
        kept, _ = plant.quality_only([(r, plant.proto_value(r, view)) for r in recs])
        got = [gv for _, gv in kept if gv is not None]
        lost = dup = 0
        for t, v in changes:
            n = sum(1 for gv in got if view.same(gv, v))
            lost += n == 0
            if not n:
                out.missed.append((view.key, t, v))
            dup += max(0, n - 1)
        out.per_point[view.key] = (len(changes), lost, dup)
        out.made += len(changes)
        out.lost += lost
        out.dup += dup
        used.append(view)
    out.points = len(used)
    out.bound = dup_bound(used, k)
    return out


def start_master(lab: Lab) -> tuple[Proc, Any, Any]:
    """tests/ha/scada_switch.py on the SCADA host: to node A, then to node B when `switch` exists."""
    switch, stop = lab.dir / "scada.switch", lab.dir / "scada.stop"
    p = lab.spawn("scada", "scada-switch", [
        sys.executable, "-m", "tests.ha.scada_switch", "--db", str(lab.feproot / "db" / "SEMODEL.db"),
        "--first", f"A={IP['A']}", "--second", f"B={IP['B']}", "--switch", str(switch), "--stop", str(stop)],
        {"PYTHONPATH": str(REPO)})
    return p, switch, stop


def scada_switch_run(lab: Lab, tick_s: float = 1.5, before_s: float = 6.0, after_s: float = 8.0) -> dict:
    """The scenario on a started lab; returns the measurements (asserts nothing: the test and
    bench/failover.py do). Every point changes every `tick_s` (longer than the poll periods, 0.5 / 1 s);
    node A dies `before_s` after the changes start; the changes go on `after_s` after B holds every lease."""
    a, b = plant.start_a_holding(lab, list(RTUS))
    plant.start_services(b, "acquirer")
    for n in (a, b):
        plant.start_services(n, "forwarder")
    for n in lab.nodes.values():
        log = n.procs["forwarder"].log
        lab.wait_for(lambda log=log: "se104s RTU" in log.read_text() and "listening" in log.read_text(), 40,
                     f"se104s listening on {n.id}", interval=0.2)
    vs = [v for v in plant.views(lab_model(lab)) if v.proto == "iec104"]  # the master speaks IEC 104 only
    k = load_node(lab.feproot, env={}).se104s_k
    master, switch, stop = start_master(lab)
    ioas = {v.key for v in vs if v.proto == "iec104" and not v.type.startswith("M_IT")}

    def gi(node: str) -> set[int]:
        return {r["ioa"] for r in probe_records(master) if r.get("src") == "iec104" and r.get("node") == node
                and r.get("cot") == "INTERROGATED_BY_STATION"}
    lab.wait_for(lambda: gi("A") >= ioas, 40, "the master's interrogation answered by A", interval=0.2)
    t_start = time.time()
    assert plc(lab, f"rate {1 / tick_s}") == "ok"
    time.sleep(before_s)
    t_kill = time.time()
    a.crash()
    switch.touch()                                 # the master's redundancy logic: to the other node
    lab.wait_for(lambda: all(plant.holder(b, r) == "B" for r in RTUS), 40, "B holding every lease", 0.1)
    lease_s = time.time() - t_kill
    time.sleep(after_s)
    assert plc(lab, "rate 0") == "ok"
    ticks = [e["t"] for e in plant.journal(lab) if e["ev"] == "tick"]
    t_last = ticks[-1] if ticks else time.time()
    plant.wait_final(lab, master, vs, ("B",), 30)
    time.sleep(1.0)
    stop.touch()
    recs = probe_records(master)
    count = count_switch(plant.device_timelines(plant.journal(lab)), recs, vs, since=t_start, until=t_last, k=k)
    inits = [r["node"] for r in recs if r.get("src") == "iec104-init"]
    return {"count": count, "k": k, "lease_move_s": lease_s, "t_kill": t_kill, "inits": inits,
            "ticks_after_kill": sum(1 for t in ticks if t > t_kill)}


def scada_switch_figures(base: Any, runs: int, timers: dict[str, float] | None = None, before_s: float = 6.0,
                         after_s: float = 8.0) -> str:
    """bench/failover.py's measurement: `runs` fresh labs under `base`, one switchover each (`before_s`,
    `after_s`: scada_switch_run's); prints one line per run and returns the keys for the bench's last line:
    lost = total over the runs, dup = the worst run, bound = the per-run bound (the same every run)."""
    lost, dups, bound = 0, [], 0
    for i in range(runs):
        lab = Lab(timers, base=base)
        try:
            lab.start()
            res = scada_switch_run(lab, before_s=before_s, after_s=after_s)
        finally:
            lab.close()
        c = res["count"]
        lost, bound = lost + c.lost, c.bound
        dups.append(c.dup)
        print(f"scada switch run {i + 1}: made={c.made} points={c.points} lost={c.lost} dup={c.dup} "
              f"bound={c.bound} (k={res['k']}) lease_move_s={res['lease_move_s']:.2f} "
              f"end_of_init_on_B={res['inits'].count('B')}", flush=True)
    return f"scada_switch_lost={lost} scada_switch_dup={max(dups, default=0)} scada_switch_dup_bound={bound}"
