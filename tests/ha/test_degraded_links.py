"""One-way loss of VRRP adverts (docs/ha.md "Degraded links"): node B stops hearing node A's adverts while A
still hears B's. B becomes MASTER; A, hearing an advert of equal priority from a higher address, must give
the VIP up and make its Redis B's replica: one VIP and one master Redis within seconds, not two masters for
as long as the loss lasts. When the loss ends nothing moves back (nopreempt)."""

from __future__ import annotations

import time

from tests.ha import netem
from tests.ha.harness import FIGURES, Lab, stays


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
