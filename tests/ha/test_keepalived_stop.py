"""keepalived stopped on the master's node (docs/ha.md "keepalived stopped"), by its own PID as an operator
or a crash would: the VIP moves to the peer, whose Redis is promoted, and start.sh (which outlives
keepalived) makes the old master a replica of the new one once the VIP leads there, so two masters never
run side by side. That node's forwarder then serves current values again (NT at most while it was a
master left behind). When keepalived returns, nothing moves back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.ha.harness import (
    FIGURES,
    Lab,
    Node,
    acquisition_rtus,
    iec104_last,
    one_holder_each,
    start_system,
    stays,
    value_flows,
)

WATCH = (1001, 1, 4, 1004, 5)   # AI and DI of RTU 1, its link point, AI of RTU 2, its link point
BUSBAR_KV, BUSBAR_IOA = 101, 1001


def keepalived_pid(node: Node) -> int:
    """keepalived's own PID (start.sh, the process the harness started, is its parent)."""
    return int((node.dir / "run" / "keepalived.pid").read_text().split()[0])


def quality(probe, node: str, ioa: int, since: float = 0.0) -> str | None:
    rec = iec104_last(probe, node, ioa, since)
    return None if rec is None else rec["quality"]


def good(q: str | None) -> bool:
    return q is not None and "is_good: True" in q


@pytest.mark.parametrize("whom", ["keepalived", "start.sh"])
def test_keepalived_stopped_on_the_master_demotes_its_redis(lab: Lab, whom: str) -> None:
    """`whom` gets SIGTERM: keepalived by its own PID, or start.sh (the container's process: `podman stop`),
    which passes it on to keepalived."""
    master, probe = start_system(lab)
    assert probe is not None
    old, new = master, master.peer
    one_holder_each(lab, acquisition_rtus(lab))
    lab.wait_for(lambda: all(good(quality(probe, n.id, i)) for n in (old, new) for i in WATCH), 40,
                 "every watched value good at both IEC 104 clients", interval=0.3)

    t0_wall, t0 = time.time(), time.monotonic()
    os.kill(keepalived_pid(old) if whom == "keepalived" else old.procs["keepalived"].pid, signal.SIGTERM)
    lab.wait_for(lambda: new.has_vip() and new.role() == "master", 15, f"VIP and master on {new.id}", 0.05)
    FIGURES[f"ka_stop_{whom}_vip_moved_s"] = round(time.monotonic() - t0, 2)

    def follows_new() -> bool:
        info = old.redis_cli("info", "replication")
        return "role:slave" in info and f"master_host:{new.ip}" in info
    lab.wait_for(follows_new, 15, f"{old.id}'s Redis a replica of {new.id}'s", 0.05)
    FIGURES[f"ka_stop_{whom}_old_master_replica_s"] = round(time.monotonic() - t0, 2)
    assert not old.has_vip() and new.role() == "master"   # never both replicas, never two VIPs
    assert "now replica of" in (old.dir / "redis-role.log").read_text()
    lab.wait_for(lambda: "master_link_status:up" in old.redis_cli("info", "replication"), 20,
                 f"{old.id}'s Redis in sync with {new.id}'s", 0.1)
    nt_seen = any("NonTopical" in r["quality"] for r in
                  [iec104_last(probe, old.id, i, t0_wall) for i in WATCH] if r is not None)
    FIGURES[f"ka_stop_{whom}_nt_on_old_node"] = str(nt_seen)

    # the old node's forwarder serves current values again: a change reaches its client, good
    value_flows(lab, probe, new, 1, BUSBAR_KV, BUSBAR_IOA, 187.5, timeout=30)
    lab.wait_for(lambda: all(good(quality(probe, old.id, i)) for i in WATCH), 20,
                 f"every watched value good at {old.id}'s client", interval=0.2)

    # keepalived returns on the old node: it stays BACKUP, VIP and master stay where they are
    old.start_keepalived()
    stays(lambda: new.has_vip() and not old.has_vip() and old.role() == "slave" and new.role() == "master",
          6, "VIP and master stay on the new node after keepalived's return")
