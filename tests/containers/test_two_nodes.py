"""fep-ha in containers on two nodes, as docs/deployment.md has the operator run it, then node A lost.

Per run: the images (tests/containers/images.py), `docker-compose up -d` on node A then node B (each its own
podman service in its own namespace, compose.yml unchanged, .env from .env.example), the loader profile
on the VIP's node, every service `healthy` by compose's health checks, /ready on both nodes, a general
interrogation answered to an IEC 104 master (c104) in the SCADA namespace. Then node A is lost:

    kill  every container of node A SIGKILLed (its link stays up)
    cut   node A's link cut first, then its containers killed (B no longer hears A at all)

and B must hold the VIP, its Redis be master, hold every lease and deliver a change made on the device
after the loss to the SCADA master. Timings go to the figures printed at the end of the session.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.containers.lab import FIGURES, ContainerLab
from tests.ha.harness import (
    acquisition_rtus,
    holders,
    one_holder_each,
    plc,
    probe_records,
    start_plcsim,
    start_probe,
)
from tests.ha.test_operator_view import api

SERVICES = {"redis", "keepalived", "acquirer", "forwarder", "api"}
SIGN_AGE = ("from fepha import config, leftbehind;"
            "print(leftbehind.sign_age(config.load_node().quality_vrrp_alive_file))")
KILL_DI, KILL_IOA = 105, 1     # Breaker Q1 closed (sample SEMODEL): toggled on the device after the loss


@pytest.fixture
def clab(request: pytest.FixtureRequest, built_images: dict) -> Iterator[ContainerLab]:
    lab = ContainerLab()
    try:
        lab.start()
        yield lab
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(lab.logs())
        lab.close()


def bring_up(lab: ContainerLab) -> dict[str, float]:
    """docs/deployment.md steps 5-7 on both nodes; returns the timings."""
    a, b = lab.cnodes["A"], lab.cnodes["B"]
    t0 = time.monotonic()
    a.compose("up", "-d")
    lab.wait_for(lambda: a.node.has_vip() and a.node.role() == "master", 60, "node A: VIP and Redis master")
    b.compose("up", "-d")
    lab.wait_for(lambda: "master_link_status:up" in b.node.redis_cli("info", "replication"), 60,
                 "node B's Redis a replica of A's")
    holder = next(cn for cn in lab.cnodes.values() if cn.node.has_vip())
    holder.compose("--profile", "loader", "run", "--rm", "loader")
    for cn in (a, b):
        lab.wait_for(lambda cn=cn: cn.health().keys() >= SERVICES
                     and all(cn.health()[s] == "healthy" for s in SERVICES), 120,
                     f"every service of node {cn.id} healthy", interval=1.0)
        lab.wait_for(cn.ready, 60, f"/ready on node {cn.id}", interval=0.5)
    return {"up_to_ready_s": time.monotonic() - t0}


@pytest.mark.parametrize("how", ["kill", "cut"])
def test_compose_up_on_two_nodes_then_node_a_lost(clab: ContainerLab, how: str) -> None:
    lab = clab
    up = bring_up(lab)
    FIGURES[f"{how}_compose_up_to_ready_s"] = round(up["up_to_ready_s"], 1)
    a, b = lab.cnodes["A"], lab.cnodes["B"]
    assert a.health() == dict.fromkeys(SERVICES, "healthy"), a.health()
    assert b.health() == dict.fromkeys(SERVICES, "healthy"), b.health()
    # `docker compose logs`: a line per record with its UTC time, no traceback for what a start goes through
    for cn in (a, b):
        logs = cn.compose("logs", "--no-color", "acquirer", "forwarder", "api").stdout
        assert "Traceback" not in logs, logs[-3000:]
        assert re.search(r"\| \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO fep-acquirer: fep-acquirer node", logs), logs[-2000:]
    # keepalived's sign of life (docs/ha.md "keepalived stopped") reaches the services through the fep-run
    # volume, readable by their user, fresh: what tells a VIP left behind from a master's
    for cn in (a, b):
        for svc in ("forwarder", "api"):
            out = cn.compose("exec", "-T", svc, "python", "-c", SIGN_AGE).stdout.strip()
            assert out and float(out) < 4.0, (cn.id, svc, out)

    start_plcsim(lab)
    probe = start_probe(lab)
    rtus = acquisition_rtus(lab)
    one_holder_each(lab, rtus, timeout=60)

    def gi(node: str) -> bool:
        return any(r["src"] == "iec104" and r["node"] == node and "INTERROGATED" in str(r.get("cot"))
                   for r in probe_records(probe))
    lab.wait_for(lambda: gi("A") and gi("B"), 30, "a general interrogation answered by both nodes", 0.3)
    old = float(plc(lab, f"get {KILL_DI}").split()[-1])

    t_loss = time.time()
    if how == "cut":
        a.node.link(False)
    a.kill_containers()
    new = 0 if old else 1
    assert plc(lab, f"set {KILL_DI} {new}") == "ok"

    lab.wait_for(b.node.has_vip, 30, "VIP on B", interval=0.05)
    vip_s = time.time() - t_loss
    lab.wait_for(lambda: b.node.role() == "master", 30, "B's Redis master", interval=0.05)
    lab.wait_for(lambda: set(holders(b.node, rtus).values()) == {"B"}, 60, "B holding every lease", 0.2)
    lease_s = time.time() - t_loss

    def first_new() -> float | None:
        return next((r["t"] for r in probe_records(probe) if r["src"] == "iec104" and r["node"] == "B"
                     and r["ioa"] == KILL_IOA and r["t"] > t_loss and bool(r["value"]) == bool(new)), None)
    t_data = lab.wait_for(first_new, 60, "the change made after the loss at the SCADA master, from B", 0.1)
    FIGURES.update({f"{how}_vip_on_b_s": round(vip_s, 2), f"{how}_leases_on_b_s": round(lease_s, 2),
                    f"{how}_node_loss_to_data_s": round(t_data - t_loss, 2)})
    # B's own heartbeats reach its (now master) Redis again within a few periods: /ready follows the data
    lab.wait_for(lambda: b.health().get("api") == "healthy" and b.ready(), 30, "B's api healthy and ready", 0.5)
    FIGURES[f"{how}_node_loss_to_ready_s"] = round(time.time() - t_loss, 2)
    # restart: always: how many of A's killed containers podman started again by now (reported)
    FIGURES[f"{how}_a_containers_restarted"] = sum(c.get("State") == "running" for c in a.containers())


def test_keepalived_container_killed_whole_then_started_again(clab: ContainerLab) -> None:
    """docs/ha.md "keepalived stopped": node A's keepalived container SIGKILLed as a whole (start.sh and both
    keepalived processes) leaves the VIP on A while B takes it too; A's api says it is not current (its
    forwarder serves NT, the same rule). Started again (what `restart: always` does, same container
    and volume, stale pid files included), start.sh removes the VIP before keepalived runs: A stays BACKUP,
    its Redis follows B's, its api is ready again."""
    lab = clab
    bring_up(lab)
    a, b = lab.cnodes["A"], lab.cnodes["B"]
    ka = next(c["Id"] for c in a.containers() if c.get("Labels", {}).get("com.docker.compose.service") == "keepalived")
    t0 = time.monotonic()
    subprocess.run(["podman", "kill", ka], capture_output=True, check=True, timeout=30)
    lab.wait_for(lambda: b.node.has_vip() and b.node.role() == "master", 30, "VIP and master on B", 0.05)
    assert a.node.has_vip() and a.node.role() == "master"   # two holders of one address

    def not_ready() -> bool:
        status, body = api(a.node, "/ready")
        return status == 503 and any("holding the VIP" in r for r in body["reasons"])
    lab.wait_for(not_ready, 30, "node A's api not ready: holding the VIP without keepalived", 0.2)
    FIGURES["ka_container_killed_a_not_ready_s"] = round(time.monotonic() - t0, 2)
    a.compose("start", "keepalived")   # through node A's engine: in its network namespace, as on its host
    lab.wait_for(lambda: not a.node.has_vip(), 30, "the VIP removed from node A", 0.05)
    lab.wait_for(lambda: "role:slave" in a.node.redis_cli("info", "replication"), 30, "A's Redis a replica of B's")
    lab.wait_for(a.ready, 60, "/ready on node A again", interval=0.5)
    assert b.node.has_vip() and not a.node.has_vip() and b.node.role() == "master"
    logs = subprocess.run(["podman", "logs", ka], capture_output=True, text=True, check=False, timeout=30)
    assert "start.sh: before keepalived starts: removed the VIP" in logs.stdout + logs.stderr
