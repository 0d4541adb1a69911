"""One-way loss of VRRP adverts (docs/ha.md "Degraded links"): node B stops hearing node A's adverts while A
still hears B's. B becomes MASTER; A, hearing an advert of equal priority from a higher address, must give
the VIP up and make its Redis B's replica: one VIP and one master Redis within seconds, not two masters for
as long as the loss lasts. When the loss ends nothing moves back (nopreempt)."""

from __future__ import annotations

import json
import time
from typing import Any

from fepha import keyspace as ks
from tests.ha import netem, plant
from tests.ha.harness import (
    FIGURES,
    PLC_IPS,
    Lab,
    Node,
    channel_state,
    last_lease_event,
    lease,
    link_state,
    plc,
    point_value,
    stays,
)


def one_master(lab: Lab) -> str | None:
    """The node holding the VIP when exactly one does, its Redis the master and the other's its replica."""
    a, b = lab.nodes["A"], lab.nodes["B"]
    holders = [n for n in (a, b) if n.has_vip()]
    if len(holders) != 1:
        return None
    m = holders[0]
    ok = m.role() == "master" and m.peer.role() == "slave" and \
        "master_link_status:up" in m.peer.redis_cli("info", "replication")
    return m.id if ok else None


def test_one_way_loss_of_adverts_leaves_one_vip_and_one_master(lab: Lab) -> None:
    a = lab.start_pair()
    b = a.peer
    assert a.id == "A" and one_master(lab) == "A"
    t0 = time.monotonic()
    with netem.loss(b.ns, 100, "in", proto="vrrp", peer=a.ip):
        lab.wait_for(lambda: one_master(lab) == "B", 15, "VIP and master on B only, A's Redis its replica",
                     interval=0.1)
        FIGURES["one_way_advert_loss_single_master_s"] = round(time.monotonic() - t0, 1)
        stays(lambda: one_master(lab) == "B", 5, "B stays the one master while the loss lasts", interval=0.2)
    stays(lambda: one_master(lab) == "B", 5, "nothing moves back when the loss ends", interval=0.2)


PART_RTU, MUTED = 1, ("ir", 20)
"""RTU 1's last read block (input register 20: the energy counter, point 108) left unanswered by the device
on both channels (fep-plcsim `mute`): every poll of either node answers its first blocks and not that one."""


def test_a_device_both_nodes_reach_only_in_part_keeps_its_lease(lab: Lab) -> None:
    """docs/acquirer.md "Timers": a standby takes over from a holder that reaches its device only in part only
    when it reaches it fully itself, so a device that answers both nodes in part moves nothing: over three
    takeover times the lease stays A's at its epoch, no lease event, while A's lease shows it answered
    (`answered_ms` renewed) and not fully (`reached_ms` stopped), both nodes' channel switching counts the
    incomplete polls as failures (switches on A and on B: B does not read the device fully either), the
    unanswered block's point is invalid and the answered ones good. Device 2 is the control group."""
    a, b = plant.start_a_holding(lab, [1, 2])
    plant.start_services(b, "acquirer")
    lab.wait_for(lambda: link_state(a, PART_RTU).get("valb") == "1", 20, "B polling device 1", interval=0.3)
    epoch, epoch2 = lease(a, PART_RTU)["epoch"], lease(a, 2)["epoch"]
    events = len(lease_events(a))
    switches0 = {n.id: channel_switches(n) for n in (a, b)}
    assert plc(lab, f"mute {PART_RTU} {MUTED[0]} {MUTED[1]}") == "ok"
    t_mute_ms = master_ms(a)
    takeover_s = lab.timers["takeover_s"]
    lab.wait_for(lambda: (v := point_value(a, PART_RTU, 108)) is not None and v.quality & 0x80, 10,
                 "the unanswered block's point invalid", interval=0.2)
    stays(lambda: lease(a, PART_RTU)["holder"] == "A" and lease(a, PART_RTU)["epoch"] == epoch,
          3 * takeover_s, "the lease stays A's at its epoch", interval=0.5)
    now = master_ms(a)
    held = lease(a, PART_RTU)
    assert int(held["reached_ms"]) < t_mute_ms + 3000, ("A still reaching the device fully", held)
    assert now - int(held["answered_ms"]) < 2500, ("A's answers not renewing the lease", held)
    assert len(lease_events(a)) == events, lease_events(a)[events:]
    moved = {n.id: channel_switches(n) - switches0[n.id] for n in (a, b)}
    assert moved["A"] >= 2 and moved["B"] >= 2, ("both nodes' polls counted as incomplete", moved)
    assert point_value(a, PART_RTU, 101).quality == 0 and point_value(a, PART_RTU, 108).quality & 0x80
    assert lease(a, 2)["holder"] == "A" and lease(a, 2)["epoch"] == epoch2
    FIGURES["partial_both_lease_events"] = len(lease_events(a)) - events
    FIGURES["partial_both_switches"] = f"A{moved['A']}/B{moved['B']}"


def master_ms(node: Node) -> int:
    sec, usec = node.redis_cli("time").split()
    return int(sec) * 1000 + int(usec) // 1000


def lease_events(node: Node) -> list[str]:
    return node.redis_cli("xrange", ks.LEASE_EVENTS, "-", "+").splitlines()


def channel_switches(node: Node) -> int:
    st = channel_state(node, PART_RTU)
    return sum(int(st.get(f"ch{c}_switches", "0")) for c in (1, 2))


def test_a_holder_reading_in_part_is_taken_over_once_and_what_it_missed_reaches_redis(lab: Lab) -> None:
    """Node A reaches device 1 only on channel 1, node B only on channel 2 (iptables); channel 1 leaves the
    block of point 101 (holding registers 0-3) unanswered (fep-plcsim `silence ... 1`: no answer, so A's
    poll and its IV record of 101 come a timeout, 1 s, later): A reads the device in part (its other
    channel dead, it stays on the partial one), B fully. B takes the lease over after the takeover time,
    once, and A does not take it back. Point 101 takes a new value every 0.7 s from the fault on (the
    first with it): A writes it IV (its last value, 699, kept), B's standby polls see every value, and each
    must be in the master's change stream, good, once, in order, after the takeover: B's replay of what A
    never read. The first one or two used to be dropped as older than A's IV record (docs/ha.md
    "Degraded links"; in the lossy channel run, three values in a row)."""
    a, b = plant.start_a_holding(lab, [1, 2])
    a.cut(PLC_IPS[1])
    b.cut(PLC_IPS[0])
    plant.start_services(b, "acquirer")
    lab.wait_for(lambda: channel_state(a, PART_RTU, "B").get("active") == "2"
                 and link_state(a, PART_RTU).get("valb") == "1", 30, "B reading device 1 on channel 2", 0.3)
    epoch = int(lease(a, PART_RTU)["epoch"])
    events = len(lease_events(a))
    assert plc(lab, "set 101 699") == "ok"   # read and written by A, seen by B: the value A keeps
    lab.wait_for(lambda: (v := point_value(a, PART_RTU, 101)) is not None and v.value == 699, 10, "699 written")
    time.sleep(1.0)
    stream_from = a.redis_cli("xrevrange", ks.CHANGES, "+", "-", "count", "1").splitlines()[0]
    values: list[float] = []
    took = None
    t_mute = time.monotonic()
    while took is None or time.monotonic() < took + 3:
        values.append(700.0 + len(values))
        assert plc(lab, f"set 101 {values[-1]}") == "ok"
        if len(values) == 1:
            assert plc(lab, f"silence {PART_RTU} hr 0 1") == "ok"
        if took is None and lease(a, PART_RTU).get("holder") == "B":
            took = time.monotonic()
        assert time.monotonic() - t_mute < 4 * lab.timers["takeover_s"], "no takeover"
        time.sleep(0.7)
    FIGURES["partial_holder_takeover_s"] = round(took - t_mute, 1)
    stays(lambda: lease(a, PART_RTU)["holder"] == "B", 2 * lab.timers["takeover_s"], "no move back", 0.5)
    moves = lease_events(a)[events:]
    assert lease(a, PART_RTU)["epoch"] == str(epoch + 1), moves
    ev = last_lease_event(a)
    assert (ev["rtu"], ev["from"], ev["to"], ev["reason"]) == (str(PART_RTU), "A", "B", "takeover"), ev
    seen = [(p.value, p.quality) for p in stream_values(a, stream_from, "1", "101")]
    good = [v for v, q in seen if q == 0 and v >= 700]
    assert good == values, (values, seen)
    assert any(q & 0x80 for _, q in seen), ("A never wrote 101 invalid: the test proves nothing", seen)


def stream_values(node: Node, after: str, rtu: str, pid: str) -> list[Any]:
    """The records of point `pid` of `rtu` in the master's change stream after entry id `after`, in order."""
    from fepha import points
    out = node.redis_cli("--json", "xrange", ks.CHANGES, f"({after}", "+")
    recs = []
    for _, fields in json.loads(out) if out.startswith("[") else []:
        f = dict(zip(fields[::2], fields[1::2], strict=False)) if isinstance(fields, list) else fields
        if f.get("r") == rtu and pid in f:
            recs.append(points.decode(f[pid]))
    return recs
