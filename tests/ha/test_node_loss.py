"""Scenarios 4 and 5 of issue 6 with the services: node A (VIP, master Redis, every lease) loses power
while the simulated devices change and a SCADA master sends setpoints to node B.

How changes are counted (tests/ha/plant.py): the PLC simulator journals every change it makes; every
point changes every `HOLD_S` s (longer than the failover gap plus a poll, so each state is visible to
polling) and one DI is toggled right after the kill, so the first new data B must deliver is known.
The SCADA client on B must receive every change made from one hold before the kill to the end (none
lost, DI transitions included) and end with every device's value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.ha import plant
from tests.ha.harness import FIGURES, Lab, lab_model, plc, probe_records

RTUS = (1, 2)
SETPOINT_IOA = 6001          # se104s C_SE_NB_1 -> point 110, RTU 1, holding register 100 (no COEF)
SETPOINT_RTU, SETPOINT_AREA, SETPOINT_ADDR = 1, "hr", 100
KILL_DI = 105                # Breaker Q1 closed, IOA 1: toggled on the device right after the kill
KILL_IOA = 1
CONTROL_TIMEOUT_S = 5.0
GAP_DI, GAP_IOA = 106, 2     # Breaker Q2 closed: flipped twice inside the failover gap
GAP_FLIP_S = 1.5             # > B's poll period (1 s), < the gap (VIP move ~3 s + lease TTL)
KILL_AFTER_TICK_S = 2.0
"""Node A dies 2 s after a change of every point (A has polled and written it), the DI is toggled right
after the kill and holds `HOLD_S` - 2 s: B must deliver it from its first poll as the new holder."""


def node_loss_run(lab: Lab, hold_s: float = plant.HOLD_S, how: str = "crash") -> dict:
    """Scenario 4 (+5): returns the measurements; asserts nothing (the test and bench/failover.py do)."""
    a, b = plant.start_a_holding(lab, RTUS)
    plant.start_services(b, "acquirer")
    for n in (a, b):
        plant.start_services(n, "forwarder", control_timeout_s=CONTROL_TIMEOUT_S)
    vs = plant.views(lab_model(lab))
    probe = plant.start_scada(lab, vs)

    assert plc(lab, f"rate {1 / hold_s}") == "ok"
    ticks = lambda: [e["t"] for e in plant.journal(lab) if e["ev"] == "tick"]
    lab.wait_for(ticks, hold_s + 10, "first change of the devices", interval=0.1)
    go = lab.dir / "controls.go"
    values = list(range(1001, 1009))
    control = plant.start_control_client(lab, "B", SETPOINT_IOA, values, str(go), 1.5,
                                         CONTROL_TIMEOUT_S + 5)
    t_tick = ticks()[-1]
    time.sleep(max(0.0, t_tick + KILL_AFTER_TICK_S - 1.0 - time.time()))
    go.touch()                                   # first setpoint ~1 s before the kill, then every 1.5 s
    time.sleep(max(0.0, t_tick + KILL_AFTER_TICK_S - time.time()))

    t_kill = time.time()
    if how == "crash":
        a.crash()                                # power cut: every process SIGKILLed, link down
    else:
        a.link(False)                            # cable pulled: A's processes keep running, cut off
    old = plc(lab, f"get {KILL_DI}").split()[-1]
    new = 0 if float(old) else 1
    assert plc(lab, f"set {KILL_DI} {new}") == "ok"
    # a DI that flips and flips back inside the failover gap (A dead, B not yet holding): B's standby
    # polls see both states and B replays them when it takes the lease
    gap_old = float(plc(lab, f"get {GAP_DI}").split()[-1])
    assert plc(lab, f"set {GAP_DI} {0 if gap_old else 1}") == "ok"
    time.sleep(GAP_FLIP_S)
    assert plc(lab, f"set {GAP_DI} {int(gap_old)}") == "ok"
    assert plant.holder(b, RTUS[0]) != "B", "the gap ended before the second flip: the test proves nothing"

    lab.wait_for(b.has_vip, 20, "VIP on B", interval=0.02)
    vip_s = time.time() - t_kill
    lab.wait_for(lambda: b.role() == "master", 20, "B's Redis master", interval=0.05)
    master_s = time.time() - t_kill
    lab.wait_for(lambda: all(plant.holder(b, r) == "B" for r in RTUS), 30, "B holding every lease", 0.1)
    lease_s = time.time() - t_kill

    def first_new() -> float | None:
        return next((r["t"] for r in probe_records(probe) if r["src"] == "iec104" and r["node"] == "B"
                     and r["ioa"] == KILL_IOA and r["t"] > t_kill and bool(r["value"]) == bool(new)), None)
    t_data = lab.wait_for(first_new, 30, "the change made after the kill at the client on B", 0.1)
    # one more change of every point after the kill, then the devices stop changing
    lab.wait_for(lambda: any(t > t_kill for t in ticks()), 2 * hold_s + 10, "a change after the kill", 0.2)
    t_last = ticks()[-1]
    assert plc(lab, "rate 0") == "ok"
    plant.wait_final(lab, probe, vs, ("B",), 30)
    lab.wait_for(lambda: len(plant.parse_json_lines(control.log.read_text())) >= len(values) + 1,
                 len(values) * (CONTROL_TIMEOUT_S + 7), "every setpoint answered", 0.3)

    events = plant.journal(lab)
    count = plant.count_changes(plant.device_timelines(events), probe_records(probe), vs, "B",
                                since=t_kill - hold_s, until=t_last, catch_up=t_kill + lease_s)
    # B marks the old state NT (A's lease or polls lapse) and clears NT on taking over: quality-only
    # re-sends of the state before the gap, which are no flips
    gap = plant.spontaneous_flips(probe_records(probe), "B", GAP_IOA, t_kill)
    recs = plant.parse_json_lines(control.log.read_text())
    answers = [r for r in recs if "value" in r]
    writes = [e for e in events if e["ev"] == "write" and e["rtu"] == SETPOINT_RTU
              and e["area"] == SETPOINT_AREA and e["address"] == SETPOINT_ADDR]
    return {"vip_move_s": vip_s, "redis_master_s": master_s, "lease_move_s": lease_s,
            "node_loss_to_data_s": t_data - t_kill, "count": count, "answers": answers, "writes": writes,
            "audit": plant.audit(b), "t_kill": t_kill, "control_connected": recs[0].get("connected"),
            "gap_flips": gap, "gap_expected": [not gap_old, bool(gap_old)]}


def check_controls(res: dict, timeout_s: float = CONTROL_TIMEOUT_S) -> dict[str, int]:
    """Scenario 5: each setpoint executed at most once, never after its deadline (`timeout_s`, the
    forwarders' [control] timeout_s); positive answers only for executed ones; the audit on the surviving
    master agrees. Returns counts per outcome."""
    writes_of = lambda v: [w for w in res["writes"] if w["values"] == [v]]
    audit = {int(float(e["value"])): e for e in res["audit"] if e.get("point") == "110"}
    outcome = {"ok": 0, "rejected": 0}
    for ans in res["answers"]:
        v, w = ans["value"], writes_of(ans["value"])
        assert len(w) <= 1, f"setpoint {v} written {len(w)} times to the device"
        # the deadline is set when B's forwarder queues it, after the client sent it: never later than this
        assert all(x["t"] <= ans["sent"] + timeout_s + 0.05 for x in w), f"setpoint {v} written late"
        a = audit.get(v)
        if a is not None:
            assert w == [] or w[0]["t"] * 1000 <= int(a["deadline_ms"]) + 50, f"setpoint {v} written late {a}"
            assert (a["state"] == "done") == (len(w) == 1) or a["state"] == "unknown", (v, a, w)
        if ans["ok"]:
            outcome["ok"] += 1
            assert len(w) == 1, f"positive confirmation of {v} without a device write"
            assert a is None or a["state"] == "done", (v, a)
        else:   # negative or no answer: not executed, or its outcome unknown to the master (still once)
            outcome["rejected"] += 1
    return outcome


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with plant.plant_lab(request) as lab:
        yield lab


@pytest.mark.parametrize("how", ["crash", "link_down"])
def test_node_a_lost_b_takes_over_without_losing_changes_and_controls_at_most_once(lab: Lab, how: str) -> None:
    res = node_loss_run(lab, how=how)
    c = res["count"]
    pre = "node_loss" if how == "crash" else "link_loss"
    FIGURES.update({f"{pre}_vip_s": round(res["vip_move_s"], 2), f"{pre}_lease_s": round(res["lease_move_s"], 2),
                    f"{pre}_to_data_s": round(res["node_loss_to_data_s"], 2), f"{pre}_changes_made": c.made,
                    f"{pre}_lost_changes": c.made - c.received})
    assert c.made >= 2 * 12 and c.di_made >= 2 * 4, c           # two changes of every forwarded point
    assert c.di_lost == 0 and c.lost == [], f"changes lost at the client on B: {c.lost}"
    assert res["gap_flips"][:2] == res["gap_expected"], f"DI flipped inside the gap: {res['gap_flips']}"
    assert res["control_connected"], "the control client was not connected to B when A was killed"
    outcome = check_controls(res)
    after = [x for x in res["answers"] if x["ok"] and x["sent"] > res["t_kill"]]
    assert after, (outcome, res["answers"], res["audit"])        # B executes controls once it holds
    # B's forwarder reads its Redis's role before each control: none sent once B's Redis was master (seen
    # by polling its role every 50 ms, so after the promotion) goes to the vanished A and is refused
    t_master = res["t_kill"] + res["redis_master_s"]
    refused = [x for x in res["answers"] if not x["ok"] and x["sent"] >= t_master]
    print("setpoints (sent, answered) s after B's Redis was seen master:",
          [(round(x["sent"] - t_master, 2), round(x["answered"] - t_master, 2), x["ok"]) for x in res["answers"]])
    assert not refused, (refused, t_master, res["answers"], res["audit"])
    FIGURES.update({f"{pre}_controls_ok": outcome["ok"], f"{pre}_controls_rejected": outcome["rejected"]})
