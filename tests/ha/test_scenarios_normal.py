"""HA scenarios 1, 2 and 6 of issue 6 on two real nodes (network namespaces, tests/ha/harness.py):
the PLC simulator on its two addresses, both nodes' acquirer and forwarder started with compose.yml's
command and environment, the SCADA probe (an IEC 104 and a Modbus client per node).

Timers are the lab's short ones (channel switch 3 s, takeover 6 s or as given, lease TTL 4 s)."""

from __future__ import annotations

import time

import pytest

from tests.ha.harness import (
    FIGURES,
    PLC_IPS,
    Lab,
    acquisition_rtus,
    channel_state,
    holders,
    iec104_last,
    lease,
    link_state,
    modbus_last,
    one_holder_each,
    plc,
    point_value,
    start_system,
    stays,
    value_flows,
)

# Points of the sample SEMODEL (cfg/SEMODEL.sql) and where the forwarders publish them.
BREAKER_Q1 = (1, 105)          # RTU 1 DI -> IEC 104 IOA 1 (M_SP_TB_1)
BUSBAR_KV = (1, 101)           # RTU 1 AI float32 -> IEC 104 IOA 1001 (M_ME_NC_1)
PUMP1_RUNNING = (2, 203)       # RTU 2 DI (coil 0) -> Modbus trains discrete input 0
NODES = ("A", "B")


def _truthy(rec: dict | None) -> bool:
    return rec is not None and rec["value"] in (True, 1)


def _is(node, point: tuple[int, int], value: float) -> bool:
    v = point_value(node, *point)
    return v is not None and v.quality == 0 and v.value == value


def test_scenario1_normal_one_holder_and_values_reach_both_nodes(lab: Lab) -> None:
    master, probe = start_system(lab)
    assert probe is not None
    rtus = acquisition_rtus(lab)
    held = one_holder_each(lab, rtus)
    for rtu in rtus:                                 # exactly one holder, taken once (no flapping)
        assert lease(master, rtu)["epoch"] == "1", lease(master, rtu)
    lab.wait_for(lambda: all(point_value(master, *p) is not None for p in (BREAKER_Q1, PUMP1_RUNNING)), 20,
                 "the holders' first images in Redis", interval=0.3)

    t0 = time.time()
    assert plc(lab, f"set {BREAKER_Q1[1]} 1") == "ok"
    assert plc(lab, f"set {BUSBAR_KV[1]} 231.5") == "ok"
    assert plc(lab, f"set {PUMP1_RUNNING[1]} 1") == "ok"
    lab.wait_for(lambda: all(_is(n, BREAKER_Q1, 1) and _is(n, PUMP1_RUNNING, 1) for n in lab.nodes.values()), 15,
                 "changes in both Redis", interval=0.2)
    for node in NODES:
        lab.wait_for(lambda node=node: _truthy(iec104_last(probe, node, 1, t0)), 15,
                     f"IEC 104 client on {node}: breaker Q1 closed", interval=0.2)
        lab.wait_for(lambda node=node: (iec104_last(probe, node, 1001, t0) or {}).get("value") == pytest.approx(231.5),
                     15, f"IEC 104 client on {node}: busbar voltage", interval=0.2)
        lab.wait_for(lambda node=node: _truthy(modbus_last(probe, node, "di", 0, t0)), 15,
                     f"Modbus client on {node}: pump 1 running", interval=0.2)
    assert holders(master, rtus) == held                  # nothing moved


@pytest.mark.parametrize("lab", [{"channel_switch_s": 3, "takeover_s": 15}], indirect=True)
def test_scenario2_first_address_cut_switches_to_channel_2_and_lease_stays(lab: Lab) -> None:
    master, probe = start_system(lab)
    rtus = acquisition_rtus(lab)
    held = one_holder_each(lab, rtus)
    epochs = {r: lease(master, r)["epoch"] for r in rtus}
    holder = lab.nodes[held[1]]
    other = holder.peer
    lab.wait_for(lambda: channel_state(master, 1, holder.id).get("ch1_connected") == "1", 15,
                 "holder connected on channel 1", interval=0.2)

    t0 = time.monotonic()
    holder.cut(PLC_IPS[0])                  # the holder loses the devices' first address, the other not
    def switched() -> dict | None:
        st = channel_state(master, 1, holder.id)
        return st if st.get("active") == "2" and st.get("ch2_connected") == "1" else None
    st = lab.wait_for(switched, 30, "holder on channel 2", interval=0.1)
    switch_s = time.monotonic() - t0
    FIGURES["channel_switch_s"] = round(switch_s, 1)
    assert switch_s >= lab.timers["channel_switch_s"]      # not before the switch time
    assert st["ch2_switches"] == "1" and st["ch1_connected"] == "0", st

    value_flows(lab, probe, master, *BUSBAR_KV, 1001, 232.25)         # values flow again, over channel 2
    assert holders(master, rtus) == held            # the lease did not move
    assert {r: lease(master, r)["epoch"] for r in rtus} == epochs
    assert channel_state(master, 1, other.id).get("active") == "1"      # the other node kept channel 1
    assert link_state(master, 1)["val"] == "1"


def redis_time_ms(node) -> int:
    sec, usec = node.redis_cli("time").splitlines()
    return int(sec) * 1000 + int(usec) // 1000


def test_scenario6_node_a_returns_as_replica_and_standby(lab: Lab) -> None:
    master, probe = start_system(lab)
    a, b = lab.nodes["A"], lab.nodes["B"]
    assert master is a
    rtus = acquisition_rtus(lab)
    one_holder_each(lab, rtus)

    a.crash()                                          # power cut on A: B gets the VIP, master, leases
    lab.wait_for(lambda: b.has_vip() and b.role() == "master", 20, "B master")
    promoted_ms = redis_time_ms(b)
    ttl_ms = lab.timers["lease_ttl_s"] * 1000

    def b_renewed() -> bool:     # B holds every lease and renewed it on its own master since the promotion
        ls = [lease(b, r) for r in rtus]
        return all(x.get("holder") == "B" and int(x.get("expires_ms", 0)) > promoted_ms + ttl_ms - 100 for x in ls)
    # Waiting for the renewal matters: the leases B already held lapse during the VIP move when it comes
    # close to the TTL (lab: 3.5 s vs 4 s) and a lapsed lease goes to whichever acquirer ticks first, even
    # one that does not reach the device yet (fepha/functions.lua) -- a node returning within that
    # moment would take it and lose it again at once (see the report on the lapse rule).
    lab.wait_for(b_renewed, 30, "B holds every lease, renewed on its master", interval=0.3)
    epochs = {r: lease(b, r)["epoch"] for r in rtus}

    a.reboot_network()                                 # A returns: Redis, keepalived, services
    a.start_redis()
    a.start_keepalived()
    a.start_service("acquirer")
    a.start_service("forwarder")
    lab.wait_for(lambda: "master_link_status:up" in a.redis_cli("info", "replication"), 20,
                 "A's Redis a replica of B, in sync", interval=0.3)
    lab.wait_for(lambda: all(link_state(b, r).get("vala") == "1" for r in rtus), 30,
                 "A's acquirer reaches its devices again (standby)", interval=0.3)
    value_flows(lab, probe, b, *BUSBAR_KV, 1001, 233.5)                  # A's forwarder serves from its replica again

    def unchanged() -> bool:
        return (b.has_vip() and not a.has_vip() and b.role() == "master" and a.role() == "slave"
                and {r: (lease(b, r).get("holder"), lease(b, r).get("epoch")) for r in rtus}
                == {r: ("B", epochs[r]) for r in rtus})
    # longer than a takeover and a lease TTL, and than 3 VRRP adverts: nothing moves back by itself
    stays(unchanged, lab.timers["takeover_s"] + lab.timers["lease_ttl_s"], "VIP, roles and leases stay")
    assert holders(a, rtus) == {r: "B" for r in rtus}          # A's replica shows the same
