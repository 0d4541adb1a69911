"""Issue 10 b in the HA lab: a broken replication link is NT at the SCADA master of that node.

Node B's (the replica's) replication link breaks. Issue 10's problem 2 used REPLICAOF to an unreachable
address; in the lab keepalived's Redis role check repairs that within a second (see redis-role.log), so
the lab drops the replication traffic between B and A's Redis port with iptables instead: the worse case,
as Redis keeps calling such a link "up" until repl-timeout (5 s in compose.yml, 60 s by default), and NT
must not wait for it. (The REPLICAOF case, without keepalived,
is tests/forwarder/test_runner_quality.py.) B's forwarder must mark every value it serves not topical (NT) within `[quality]
replica_down_s` (0: 2 x lease_ttl_s) plus one check, spontaneously; a value changed on the device
meanwhile reaches only A. When B's Redis follows the master again, every value goes out again with NT
cleared, the changed one with its fresh value. The master's node A is never affected."""

from __future__ import annotations

import time

from tests.ha.harness import FIGURES, Lab, acquisition_rtus, one_holder_each, plc, probe_records, start_system

WATCH = (1001, 1, 4, 1004, 5)   # AI and DI of RTU 1, its link point, AI of RTU 2, its link point
BUSBAR_KV, BUSBAR_IOA = 101, 1001


def last(probe, node: str, ioa: int, since: float = 0.0) -> dict | None:
    recs = [r for r in probe_records(probe) if r["src"] == "iec104" and r["node"] == node and r["ioa"] == ioa
            and r["t"] >= since]
    return recs[-1] if recs else None


def nt(rec: dict | None) -> bool | None:
    return None if rec is None else "NonTopical" in rec["quality"]


def invalid(rec: dict | None) -> bool:
    return rec is not None and "Invalid" in rec["quality"]


def good(rec: dict | None) -> bool:
    return rec is not None and "is_good: True" in rec["quality"]


def test_broken_replication_sets_nt_at_the_replicas_master_then_clears(lab: Lab) -> None:
    master, probe = start_system(lab)
    assert probe is not None
    b = master.peer
    one_holder_each(lab, acquisition_rtus(lab))
    lab.wait_for(lambda: all(good(last(probe, n.id, i)) for n in (master, b) for i in WATCH), 40,
                 "every watched value good at both IEC 104 clients", interval=0.3)
    info = dict(line.split(":", 1) for line in b.redis_cli("info", "replication").splitlines() if ":" in line)
    host, port = info["master_host"].strip(), info["master_port"].strip()
    limit = 2 * lab.timers["lease_ttl_s"]

    t0_wall, t0 = time.time(), time.monotonic()
    b.cut(host, int(port))                           # replication packets dropped both ways
    try:
        lab.wait_for(lambda: all(nt(last(probe, b.id, i, t0_wall)) for i in WATCH), limit + 10,
                     "NT on every watched value at B's client", interval=0.1)
        took = time.monotonic() - t0
        FIGURES["replica_cut_nt_s"] = round(took, 1)
        assert limit - 1.0 <= took <= limit + 2.0, took
        # every value B serves (not only the watched ones) now shows NT at B's client; counters (BCR) have no
        # NT bit. A value already NT before the cut (e.g. its RTU has no lease holder) is not sent again, so
        # the client's latest record counts, not one since the cut; a point without any value yet (here the
        # IEC 104 RTU 3, whose device the lab does not run) is answered invalid (IV) by the interrogation
        # and is not re-sent: IV already says "not current".
        seen_b = {r["ioa"] for r in probe_records(probe) if r["src"] == "iec104" and r["node"] == b.id
                  and "BinaryCounter" not in r["quality"]}
        current = {i: last(probe, b.id, i) for i in seen_b}
        assert not [i for i, r in current.items() if not (nt(r) or invalid(r))], current
        # the master's node is untouched
        assert not any(nt(last(probe, master.id, i, t0_wall)) for i in WATCH)
        new = 234.5
        t_set = time.time()
        assert plc(lab, f"set {BUSBAR_KV} {new}") == "ok"
        lab.wait_for(lambda: (last(probe, master.id, BUSBAR_IOA, t_set) or {}).get("value") == new, 10,
                     "the change at A's client", interval=0.1)
        assert (last(probe, b.id, BUSBAR_IOA, t_set) or {}).get("value") != new or nt(last(probe, b.id, BUSBAR_IOA))
    finally:
        t1_wall, t1 = time.time(), time.monotonic()
        b.heal(host, int(port))
    lab.wait_for(lambda: all(nt(last(probe, b.id, i, t1_wall)) is False for i in WATCH), 20,
                 "NT cleared on every watched value at B's client", interval=0.1)
    FIGURES["replica_back_nt_cleared_s"] = round(time.monotonic() - t1, 1)
    lab.wait_for(lambda: good(last(probe, b.id, BUSBAR_IOA, t1_wall))
                 and last(probe, b.id, BUSBAR_IOA, t1_wall)["value"] == new, 10,
                 "the fresh value, good, at B's client", interval=0.1)
