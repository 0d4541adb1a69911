"""keepalived + the Redis role scripts on two real nodes (namespaces): the Redis side of scenarios 4, 6
and 7 of issue 6. The services' side is in test_scenarios.py."""

from __future__ import annotations

import time

from tests.ha.harness import FIGURES, IP, Lab
from tests.stays import stays


def test_pair_boots_with_one_master_and_a_synced_replica(lab: Lab) -> None:
    holder = lab.start_pair()
    a, b = lab.nodes["A"], lab.nodes["B"]
    assert holder is a and a.has_vip() and not b.has_vip()
    assert a.role() == "master" and b.role() == "slave"
    lab.sysload_init(a)   # the loader service's command, on the VIP's node (seed)
    lab.wait_for(lambda: b.redis_cli("get", "fep:cfg:gen") == "1", 10, "configuration replicated to B")


def test_node_loss_moves_vip_and_master_and_return_changes_nothing(lab: Lab) -> None:
    a, b = lab.nodes["A"], lab.nodes["B"]
    lab.start_pair()
    lab.sysload_init(a)
    lab.wait_for(lambda: b.redis_cli("get", "fep:cfg:gen") == "1", 10, "B in sync")

    t0 = time.monotonic()
    a.crash()                                        # scenario 4: power cut on node A
    lab.wait_for(b.has_vip, 15, "VIP on B")
    vip_s = time.monotonic() - t0
    lab.wait_for(lambda: b.role() == "master", 10, "B's Redis master")
    FIGURES["vip_move_s"] = round(vip_s, 2)
    FIGURES["redis_master_move_s"] = round(time.monotonic() - t0, 2)
    assert b.redis_cli("get", "fep:cfg:gen") == "1"          # nothing lost with the master
    b.redis_cli("set", "fep:ha:probe", "written-on-B")        # a write while A is away

    a.reboot_network()                                # scenario 6: A returns (persistent Redis, same data dir)
    a.start_redis()
    a.start_keepalived()
    lab.wait_for(lambda: a.redis_cli("info", "replication").find("master_link_status:up") >= 0, 15,
                 "A replica of B in sync")
    assert a.role() == "slave" and a.redis_cli("get", "fep:ha:probe") == "written-on-B"
    # > 3 adverts: nothing moves back by itself (checked all along, not only at the end)
    stays(lambda: b.has_vip() and not a.has_vip() and b.role() == "master" and a.role() == "slave", 5,
          "VIP and Redis master stay on B", interval=0.5)


def test_partition_between_nodes_heals_to_one_master(lab: Lab) -> None:
    """Scenario 7 (Redis side): split brain while the nodes cannot see each other; after it heals one
    master remains and the other node resyncs from it (its writes in between are lost, docs/ha.md)."""
    a, b = lab.nodes["A"], lab.nodes["B"]
    lab.start_pair()
    a.cut(IP["B"])
    b.cut(IP["A"])
    lab.wait_for(lambda: b.has_vip() and b.role() == "master", 15, "split brain: B master too")
    assert a.has_vip() and a.role() == "master"
    a.redis_cli("set", "fep:ha:side", "A")
    b.redis_cli("set", "fep:ha:side", "B")
    a.heal(IP["B"])
    b.heal(IP["A"])

    def one_master() -> bool:
        roles = {a.role(), b.role()}
        return roles == {"master", "slave"} and a.has_vip() != b.has_vip()
    lab.wait_for(one_master, 20, "one master after healing")
    winner, loser = (a, b) if a.role() == "master" else (b, a)
    assert winner.has_vip()
    lab.wait_for(lambda: loser.redis_cli("get", "fep:ha:side") == winner.redis_cli("get", "fep:ha:side"), 15,
                 "loser resynced from the winner")
    assert winner.redis_cli("get", "fep:ha:side") == winner.id


def test_master_redis_restarted_without_its_data_never_wipes_the_replica(lab: Lab) -> None:
    """A's Redis (master, A holds the VIP) killed and started again with its data directory gone (a lost
    volume): it boots empty as a replica of B, which neither can sync from (NOMASTERLINK). The role script
    used to promote it at once (A still holds the VIP) and B resynced from it: configuration gone on both.
    Now A's Redis is not promoted, A's track script fails, the VIP moves to B, B's Redis is promoted with
    the data and A's resyncs from it; B's copy holds the configuration all along."""
    import shutil
    import signal

    a, b = lab.nodes["A"], lab.nodes["B"]
    lab.start_pair()
    lab.sysload_init(a)
    lab.wait_for(lambda: b.redis_cli("get", "fep:cfg:gen") == "1", 10, "B in sync")
    a.procs["redis"].stop(signal.SIGKILL)
    shutil.rmtree(a.dir / "redis")
    t0 = time.monotonic()
    a.start_redis()
    end = time.monotonic() + 20
    while not (b.has_vip() and b.role() == "master"):
        assert b.redis_cli("get", "fep:cfg:gen") == "1", "B's copy wiped by the empty Redis"
        assert time.monotonic() < end, f"VIP not on B: {(a.dir / 'redis-role.log').read_text()[-1500:]}"
        time.sleep(0.1)
    FIGURES["lost_data_vip_to_peer_s"] = round(time.monotonic() - t0, 2)
    lab.wait_for(lambda: a.redis_cli("get", "fep:cfg:gen") == "1", 15, "A's Redis resynced from B")
    assert b.redis_cli("get", "fep:cfg:gen") == "1" and a.role() == "slave" and not a.has_vip()
