"""What both nodes' apis (`fep-api` as compose.yml runs it, in the node's namespace) show when keepalived
is killed on the VIP's node with the script that would demote its Redis (docs/api.md "Under faults"): the
VIP moves to the peer, whose Redis is promoted; the killed node's Redis stays a master that nobody writes to
any more. Its forwarder serves every value NT at its SCADA master (docs/forwarder.md "Quality"); its api
must not show its frozen copy as current: not 'every service dead', not 'every lease lapsed', not itself
as the master."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from tests.ha.harness import FIGURES, Lab, Node, acquisition_rtus, iec104_last, one_holder_each, start_system
from tests.ha.test_keepalived_stop import WATCH, good, keepalived_pid, quality


def api(node: Node, path: str) -> tuple[int, Any]:
    """GET on the node's api from inside its namespace -> (status, JSON body); (0, the reason) when no HTTP
    answer came (an api not listening yet: the waits for /ready retry; it raised, and a loaded CI's api,
    still starting when its node's leases were taken, failed the wait at once)."""
    code = ("import json, sys, urllib.request, urllib.error\n"
            "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=8); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n"
            "except OSError as e:\n    print(0); print(json.dumps(repr(e)))\n")
    out = subprocess.run(["ip", "netns", "exec", node.ns, sys.executable, "-c", code,
                          f"http://{node.ip}:8080{path}"], capture_output=True, text=True, timeout=20, check=True)
    status, _, body = out.stdout.partition("\n")
    return int(status), json.loads(body)


def test_keepalived_stopped_on_the_vip_node(lab: Lab) -> None:
    master, probe = start_system(lab, services=("acquirer", "forwarder", "api"))
    assert probe is not None
    one_holder_each(lab, acquisition_rtus(lab))
    old, new = master, master.peer
    lab.wait_for(lambda: api(old, "/ready")[0] == 200 and api(new, "/ready")[0] == 200, 30, "both apis ready")
    lab.wait_for(lambda: all(good(quality(probe, n.id, i)) for n in (old, new) for i in WATCH), 40,
                 "every watched value good at both IEC 104 clients", interval=0.3)
    # keepalived killed so that no script runs after it: start.sh (which would demote the local Redis,
    # tests/ha/test_keepalived_stop.py) SIGKILLed first, then keepalived itself; its VRRP process, left
    # without its parent, gives the VIP away
    t0_wall, t0 = time.time(), time.monotonic()
    os.kill(old.procs["keepalived"].pid, signal.SIGKILL)
    os.kill(keepalived_pid(old), signal.SIGKILL)
    lab.wait_for(lambda: new.has_vip() and new.role() == "master", 30, f"VIP and master on node {new.id}")
    assert old.role() == "master"  # left behind: the fault this test is about
    # that node's forwarder serves every value NT at its SCADA master, link points included
    lab.wait_for(lambda: all((iec104_last(probe, old.id, i, t0_wall) or {}).get("quality", "").find("NonTopical")
                             >= 0 for i in WATCH), 20, f"NT on every watched value at {old.id}'s client", 0.1)
    FIGURES["left_behind_nt_at_scada_s"] = round(time.monotonic() - t0, 2)
    # the new master's client: current. Its values may have gone NT for a moment during the move (rule 3,
    # honestly: the holder's writes reach the new master only once its acquirer has left the old one, and
    # a move right after the leases were gained can outlast stale_polls), but they are good again at once
    lab.wait_for(lambda: all(good(quality(probe, new.id, i)) for i in WATCH), 10,
                 f"every watched value good at {new.id}'s client", interval=0.1)

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
