"""What both nodes' apis (`fep-api` as compose.yml runs it, in the node's namespace) show when keepalived
stops on the VIP's node (docs/api.md "Under faults"): the VIP moves to the peer, whose Redis is promoted;
the stopped node's Redis stays a master that nobody writes to any more (its notify script stopped with
keepalived). That node's api must not show its frozen copy as current: not 'every service dead', not
'every lease lapsed', not itself as the master."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from tests.ha.harness import Lab, Node, acquisition_rtus, one_holder_each, start_system


def api(node: Node, path: str) -> tuple[int, Any]:
    """GET on the node's api from inside its namespace -> (status, JSON body)."""
    code = ("import json, sys, urllib.request, urllib.error\n"
            "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=8); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n")
    out = subprocess.run(["ip", "netns", "exec", node.ns, sys.executable, "-c", code,
                          f"http://{node.ip}:8080{path}"], capture_output=True, text=True, timeout=20, check=True)
    status, _, body = out.stdout.partition("\n")
    return int(status), json.loads(body)


def test_keepalived_stopped_on_the_vip_node(lab: Lab) -> None:
    master, _ = start_system(lab, services=("acquirer", "forwarder", "api"), probe=False)
    one_holder_each(lab, acquisition_rtus(lab))
    old, new = master, master.peer
    lab.wait_for(lambda: api(old, "/ready")[0] == 200 and api(new, "/ready")[0] == 200, 30, "both apis ready")
    old.procs["keepalived"].stop(signal.SIGTERM)
    lab.wait_for(lambda: new.has_vip() and new.role() == "master", 30, f"VIP and master on node {new.id}")
    assert old.role() == "master"  # left behind: the fault this test is about

    def left_behind() -> dict[str, Any] | None:
        status, o = api(old, "/api/v1/overview")
        return o if status == 200 and o["master_node"] == new.id else None

    o = lab.wait_for(left_behind, 20, f"node {old.id}'s api names node {new.id} master")
    assert "left behind as a master" in o["master_detail"], o
    by = {n["node"]: n for n in o["nodes"]}
    assert (by[old.id]["master"], by[new.id]["master"]) == (False, True), by
    for n in o["nodes"]:
        for hb in (n["acquirer"], n["forwarder"]):
            assert hb["alive"] is not False, hb  # they run, writing through the VIP: never shown dead here
            assert hb["alive"] is True or hb["detail"].startswith("unknown: "), hb
    status, ready = api(old, "/ready")
    assert status == 503 and any("left behind as a master" in r for r in ready["reasons"]), ready
    status, leases = api(old, "/api/v1/leases")
    for ls in leases["items"]:
        if ls["holder"]:
            assert ls["lapsed"] is None and ls["remaining_ms"] is None and ls["not_current"], ls
    status, pts = api(old, "/api/v1/points?limit=1000")
    assert all("NT" in p["quality_flags"] for p in pts["items"] if p["quality"] is not None), pts
    status, vps = api(old, "/api/v1/virtual-points")
    assert all("NT" in v["quality_flags"] and v["val"] is None for v in vps["items"]), vps
    # the new master's api: itself master, every service alive
    status, o = api(new, "/api/v1/overview")
    assert o["master_node"] == new.id, o
    assert all(n[s]["alive"] for n in o["nodes"] for s in ("acquirer", "forwarder")), o["nodes"]
