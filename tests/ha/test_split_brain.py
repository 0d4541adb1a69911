"""Scenario 7 of issue 6 with the services: nodes A and B cut from each other (iptables between them only;
both still reach the PLC and the SCADA host) while the devices change, then joined again.

During the cut both nodes are VRRP MASTER, both Redis are masters, and each node's acquirer holds every
lease in its own Redis (B takes them when A's lapse there) and writes the devices' values: SCADA clients
on both nodes keep receiving changes. After the join one master remains, the other Redis resyncs from it
(its writes of the split are discarded, docs/ha.md "Split brain"), and the values in both Redis and at
both SCADA clients converge to the devices' values, with one lease holder per RTU. A setpoint sent to each
node during the split runs there; the loser's audit entry of it is copied to the winner's before the
loser's demotion (fepha.splitaudit), once, marked `from_split`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.ha import plant
from tests.ha.harness import FIGURES, IP, Lab, lab_model, one_holder_each, plc, probe_records

RTUS = [1, 2]
SETPOINT_IOA = 6001   # se104s C_SE_NB_1 -> point 110 of RTU 1 (tests/ha/test_node_loss.py)
SPLIT_SETPOINT = {"A": 2101, "B": 2102}   # one setpoint sent to each node during the split
HOLD_S = 2.0   # a change of every point every 2 s: values move all the time during the split


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with plant.plant_lab(request) as lab:
        yield lab


def redis_matches_devices(lab: Lab, node_id: str) -> bool:
    """Every point of every acquisition RTU in the node's Redis equals the device's current value."""
    dev = plant.device_timelines(plant.journal(lab))
    node = lab.nodes[node_id]
    for rtu in RTUS:
        got = plant.rtu_values(node, rtu)
        pts = [p for p in lab_model(lab).rtus[rtu].points]
        for p in pts:
            if p.id not in got or abs(got[p.id] - dev[p.id][-1][1]) > 1e-3:
                return False
    return True


def test_split_brain_then_join_converges_to_the_devices_values(lab: Lab) -> None:
    a, b = plant.start_a_holding(lab, RTUS)
    for s, n in (("acquirer", b), ("forwarder", a), ("forwarder", b)):
        plant.start_services(n, s)
    vs = plant.views(lab_model(lab))
    probe = plant.start_scada(lab, vs)
    assert plc(lab, f"rate {1 / HOLD_S}") == "ok"

    t_cut = time.time()
    a.cut(IP["B"])
    b.cut(IP["A"])
    lab.wait_for(lambda: b.has_vip() and b.role() == "master", 20, "split brain: B master too", 0.1)
    assert a.has_vip() and a.role() == "master"
    # each side holds every lease in its own Redis and writes; both clients keep receiving changes
    lab.wait_for(lambda: all(plant.holder(b, r) == "B" for r in RTUS), 30, "B holding the leases in B's Redis", 0.2)
    assert all(plant.holder(a, r) == "A" for r in RTUS)
    t_split = time.time()
    go = lab.dir / "split-controls.go"
    controls = {n: plant.start_control_client(lab, n, SETPOINT_IOA, [v], str(go), 0, 10)
                for n, v in SPLIT_SETPOINT.items()}
    # A's controls are refused until its Redis drops the cut-off replica (repl-timeout, 5-6 s after the cut)
    # and its executor sees that (docs/forwarder.md "Controls path"): then both sides run them
    lab.wait_for(lambda: "connected_slaves:0" in a.redis_cli("info", "replication"), 20,
                 "A's Redis dropping the cut-off replica", 0.1)
    time.sleep(1.0)
    go.touch()
    for n in ("A", "B"):
        lab.wait_for(lambda n=n: plant.count_changes(plant.device_timelines(plant.journal(lab)),
                                                     probe_records(probe), vs, n, t_split, time.time() - 1,
                                                     late_s=HOLD_S).received >= 2 * len(vs), 30,
                     f"changes reaching the client on {n} during the split", 0.5)

    for n, ctl in controls.items():
        lab.wait_for(lambda ctl=ctl: any("ok" in r for r in plant.parse_json_lines(ctl.log.read_text())), 30,
                     f"the setpoint sent to {n} during the split answered", 0.2)
        assert [r["ok"] for r in plant.parse_json_lines(ctl.log.read_text()) if "ok" in r] == [True], n

    t_join = time.time()
    a.heal(IP["B"])
    b.heal(IP["A"])

    def one_master() -> bool:
        return {a.role(), b.role()} == {"master", "slave"} and a.has_vip() != b.has_vip()
    lab.wait_for(one_master, 30, "one master after the join", 0.1)
    winner, loser = (a, b) if a.role() == "master" else (b, a)
    assert winner.has_vip()
    lab.wait_for(lambda: "master_link_status:up" in loser.redis_cli("info", "replication"), 30,
                 "the loser's Redis resynced from the winner", 0.2)
    # each node ran its setpoint in its own Redis; the loser's audit entry was copied to the winner's
    # before the loser's resync, marked, once (docs/ha.md "Split brain")
    ran = [(float(f["value"]), f.get("executor"), f.get("from_split")) for f in plant.audit(winner)
           if f.get("value") and float(f["value"]) in map(float, SPLIT_SETPOINT.values())]
    assert sorted(ran) == sorted([(float(SPLIT_SETPOINT[winner.id]), winner.id, None),
                                  (float(SPLIT_SETPOINT[loser.id]), loser.id, loser.id)]), ran
    holders = one_holder_each(lab, RTUS, 30)
    lab.wait_for(lambda: redis_matches_devices(lab, "A") and redis_matches_devices(lab, "B"), 30,
                 "both Redis holding the devices' values (while they change)", 0.3)
    t_conv = time.time()
    assert plc(lab, "rate 0") == "ok"
    plant.wait_final(lab, probe, vs, ("A", "B"), 30)
    lab.wait_for(lambda: redis_matches_devices(lab, "A") and redis_matches_devices(lab, "B"), 30,
                 "both Redis holding the devices' final values", 0.3)
    assert all(h == winner.id for h in holders.values()), (holders, winner.id)   # the winner's leases stand
    assert a.procs["acquirer"].alive() and b.procs["acquirer"].alive()
    FIGURES.update(split_detect_s=round(t_split - t_cut, 2), split_join_converge_s=round(t_conv - t_join, 2),
                   split_winner=winner.id)
