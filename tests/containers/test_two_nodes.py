"""fep-ha in containers on two nodes, as docs/deployment.md has the operator run it, then node A lost.

Per run: the images (tests/containers/images.py), `docker-compose up -d` on node A then node B (each its own
podman service in its own namespace, compose.yml unchanged, .env from .env.example), the loader profile
on the VIP's node, every service `healthy` by compose's health checks, /ready on both nodes, a general
interrogation answered to an IEC 104 master (c104) in the SCADA namespace. Then node A is lost:

    kill  every container of node A SIGKILLed (its link stays up)
    cut   node A's link cut first, then its containers killed (B no longer hears A at all)

and B must hold the VIP, its Redis be master, hold every lease and deliver a change made on the device
after the loss to the SCADA master. Timings go to the figures printed at the end of the session.

Two tests leave both nodes running and share one brought-up lab (`up_lab`), in this order: node A's
keepalived container killed and started again, then the rolling upgrade of docs/deployment.md "Upgrade"
(each node's containers replaced by `up -d` with a new image, while devices change and a SCADA master
sends controls), counted per step.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from fepha import keyspace as ks
from fepha.config import load_node
from tests.containers import images
from tests.containers.lab import FIGURES, ComposeNode, ContainerLab
from tests.ha import plant
from tests.ha.harness import (
    IP,
    REPO,
    acquisition_rtus,
    holders,
    lab_model,
    one_holder_each,
    plc,
    probe_records,
    start_plcsim,
    start_probe,
)
from tests.ha.switchover import count_switch
from tests.ha.test_node_loss import SETPOINT_ADDR, SETPOINT_AREA, SETPOINT_IOA, SETPOINT_RTU, check_controls
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


@pytest.fixture(scope="module")
def up_lab(request: pytest.FixtureRequest, built_images: dict) -> Iterator[ContainerLab]:
    """One lab brought up (`bring_up`) for the tests that leave both nodes running and ready: they run on
    it in turn (the keepalived test, then the upgrade), each from whatever state the other left (the VIP
    on either node), saving a bring-up (~40 s) and a lab (~15 s) of the suite's time."""
    failed = request.session.testsfailed
    lab = ContainerLab()
    try:
        lab.start()
        FIGURES["shared_compose_up_to_ready_s"] = round(bring_up(lab)["up_to_ready_s"], 1)
        yield lab
    finally:
        if request.session.testsfailed > failed:
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


def test_keepalived_container_killed_whole_then_started_again(up_lab: ContainerLab) -> None:
    """docs/ha.md "keepalived stopped": node A's keepalived container SIGKILLed as a whole (start.sh and both
    keepalived processes) leaves the VIP on A while B takes it too; A's api says it is not current (its
    forwarder serves NT, the same rule). Started again (what `restart: always` does, same container
    and volume, stale pid files included), start.sh removes the VIP before keepalived runs: A stays BACKUP,
    its Redis follows B's, its api is ready again."""
    lab = up_lab
    a, b = lab.cnodes["A"], lab.cnodes["B"]
    assert a.node.has_vip() and not b.node.has_vip()   # as bring_up leaves it: this test runs first on up_lab
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


NEW_FEP_IMAGE = "localhost/fep-ha:next"
"""The "new release": the suite's image under another tag (same code); compose sees another image and
replaces the containers, which is what an upgrade does to the running system."""
UPGRADE_TICK_S = 1.2     # every device point changes this often (> the slowest poll, 1 s: every change seen)
ANSWER_S = 4.0
"""The master's wait for a set-point's answer (they come in milliseconds, 1.5 s at most at the VIP's move):
c104 blocks while it waits, so a control left unanswered by a stopping forwarder would otherwise hold
the master on that node (c104 reconnects to its new forwarder meanwhile) for the product's whole 10 s."""


class VipWatch(threading.Thread):
    """Which nodes hold the VIP, sampled every 0.1 s: [(time, 'A' / 'B' / 'AB' / '')] at each change."""

    def __init__(self, lab: ContainerLab) -> None:
        super().__init__(daemon=True, name="vip-watch")
        self.lab, self.stop = lab, threading.Event()
        self.changes: list[tuple[float, str]] = []

    def run(self) -> None:
        while not self.stop.wait(0.1):
            now = "".join(k for k, n in sorted(self.lab.nodes.items()) if n.has_vip())
            if not self.changes or self.changes[-1][1] != now:
                self.changes.append((time.time(), now))

    def moves(self, since: float, until: float) -> int:
        """Changes of the one holder in [since, until) (a passage through none in between is one move)."""
        held = [next((h for t, h in reversed(self.changes) if t <= since and len(h) == 1), "")]
        held += [h for t, h in self.changes if since < t < until and len(h) == 1]
        return sum(1 for x, y in itertools.pairwise(held) if x != y)


def upgrade_node(cn: ComposeNode, image: str) -> dict[str, str]:
    """docs/deployment.md "Upgrade" on one node, the way of a new image under a new tag: FEP_IMAGE in .env,
    then `docker compose up -d` in the same directory (compose replaces the containers in place). Returns
    the replaced containers' logs (service -> text), for a failure's diagnosis."""
    env = cn.project / ".env"
    env.write_text(re.sub(r"(?m)^FEP_IMAGE=.*$", f"FEP_IMAGE={image}", env.read_text()))
    return cn.replace("up", "-d")


def upgrade_diagnosis(lab: ContainerLab, master: ComposeNode, replaced: dict[str, dict[str, str]], t0: float,
                      missed: list[tuple[str, int, float, float]]) -> str:
    """What a lost event is traced with: the changes never received (step, ioa, s after the upgrade's start,
    device value), each acquirer's log (the replaced containers' and the new ones'), their counters, the
    lease changes and the change stream's entries of the acquisition RTUs (Redis time, s after t0); the
    forwarders' logs."""
    out = ["lost: " + str([(step, ioa, round(t - t0, 2), v) for step, ioa, t, v in missed])]
    for node, logs in replaced.items():
        for svc in ("acquirer", "keepalived", "forwarder"):
            text = logs.get(svc, "")
            out.append(f"--- node {node}: replaced {svc}\n{text if svc == 'acquirer' else text[-3000:]}")
    for cn in lab.cnodes.values():
        for svc in ("acquirer", "forwarder"):
            out.append(f"--- node {cn.id}: {svc} now\n" + cn.compose("logs", "--no-color", svc, check=False).stdout)
        out.append(f"metrics {cn.id}: " + master.node.redis_cli("hgetall", ks.metrics("acquirer", cn.id)).replace("\n", " "))
    out.append("lease events: " + master.node.redis_cli("--json", "xrevrange", ks.LEASE_EVENTS, "+", "-", "count", "12"))
    chg = master.node.redis_cli("--json", "xrange", ks.CHANGES, str(int(t0 * 1000) - 2000), "+")
    for eid, fields in (json.loads(chg) if chg.startswith("[") else []):
        out.append(f"chg {int(eid.split('-')[0]) / 1000 - t0:7.2f} {eid} {fields[:12]}")
    return "\n".join(out)


def test_rolling_upgrade_as_the_operator_runs_it(up_lab: ContainerLab) -> None:
    """docs/deployment.md "Upgrade", literally (the node without the VIP, /ready on it, then the other),
    while every device point changes every 1.2 s and a SCADA master (one IEC 104 connection at a time,
    moving to the other node when it loses its own, as a redundancy group does) sends a set-point every
    second. It starts on the node upgraded first, so each step takes its node away from it. Per step:
    no spontaneous event lost, duplicates only at a lost connection and within the k I frames the master
    had not acknowledged (docs/se104s.md), no control run twice or after its deadline, none unanswered
    but one in flight at a lost connection (docs/deployment.md "Upgrade"); the VIP moves once in all, in
    the second step, never held by both."""
    t_test = time.monotonic()
    lab = up_lab
    for cn in lab.cnodes.values():
        lab.wait_for(cn.ready, 60, f"/ready on node {cn.id}", interval=0.5)
    first = next(cn for cn in lab.cnodes.values() if not cn.node.has_vip())
    second = lab.cnodes["A" if first.id == "B" else "B"]
    cfg = load_node(lab.feproot, env={})
    vs = [v for v in plant.views(lab_model(lab)) if v.proto == "iec104"]
    subprocess.run(["podman", "tag", images.FEP_IMAGE, NEW_FEP_IMAGE], check=True, timeout=30)
    start_plcsim(lab)
    stop = lab.dir / "scada.stop"
    master = lab.spawn("scada", "scada-master", [
        sys.executable, "-m", "tests.ha.scada_switch", "--db", str(lab.feproot / "db" / "SEMODEL.db"),
        "--first", f"{first.id}={IP[first.id]}", "--second", f"{second.id}={IP[second.id]}", "--stop", str(stop),
        "--follow", "--control-ioa", str(SETPOINT_IOA), "--control-every", "1",
        "--control-timeout", str(ANSWER_S)], {"PYTHONPATH": str(REPO)})
    ioas = {v.key for v in vs if not v.type.startswith("M_IT")}
    lab.wait_for(lambda: {r["ioa"] for r in probe_records(master) if r.get("src") == "iec104"
                          and r.get("cot") == "INTERROGATED_BY_STATION"} >= ioas, 40,
                 f"the master's interrogation answered by {first.id}", interval=0.2)
    vip = VipWatch(lab)
    vip.start()
    assert plc(lab, f"rate {1 / UPGRADE_TICK_S}") == "ok"
    time.sleep(3 * UPGRADE_TICK_S)
    marks = [time.time()]
    replaced = {}
    for cn in (first, second):      # the operator goes on as soon as /ready answers
        replaced[cn.id] = upgrade_node(cn, NEW_FEP_IMAGE)
        FIGURES[f"upgrade_{cn.id}_up_s"] = round(time.time() - marks[-1], 1)
        lab.wait_for(cn.ready, 90, f"/ready on node {cn.id} after its upgrade", interval=0.2)
        FIGURES[f"upgrade_{cn.id}_to_ready_s"] = round(time.time() - marks[-1], 1)
        marks.append(time.time())
    time.sleep(4 * UPGRADE_TICK_S)   # the second step's changes go on after its /ready
    assert plc(lab, "rate 0") == "ok"
    marks[-1] = [e["t"] for e in plant.journal(lab) if e["ev"] == "tick"][-1]
    plant.wait_final(lab, master, vs, (first.id,), 30)   # the master is back on the node upgraded first
    time.sleep(1.0)      # the last control is answered
    stop.touch()
    vip.stop.set()
    recs = probe_records(master)
    dev = plant.device_timelines(plant.journal(lab))
    answers = [r for r in recs if r.get("src") == "control"]
    writes = [e for e in plant.journal(lab) if e["ev"] == "write" and e["rtu"] == SETPOINT_RTU
              and e["area"] == SETPOINT_AREA and e["address"] == SETPOINT_ADDR]
    audit = plant.audit(first.node)   # the master Redis at the end: the VIP moved to the node upgraded first
    spont = sorted(r["t"] for r in recs if r.get("src") == "iec104" and r.get("cot") == "SPONTANEOUS")
    print("VIP:", [(round(t - marks[0], 2), h) for t, h in vip.changes])
    print("master:", [(round(r["t"] - marks[0], 2), r["node"], r.get("state")) for r in recs
                      if r.get("src") in ("switch", "iec104-init")])
    steps = {}
    for step, (since, until) in zip(("first", "second"), itertools.pairwise(marks), strict=True):
        c = count_switch(dev, recs, vs, since, until, cfg.se104s_k)
        ts = [since, *(t for t in spont if since < t < until), until]
        ans = [x for x in answers if since <= x["sent"] < until]
        lost_answer = [x for x in ans if not x["connected"] or x["answered"] - x["sent"] >= ANSWER_S - 0.1]
        drops = sum(1 for r in recs if r.get("src") == "iec104-state" and since <= r["t"] < until
                    and r["state"] == "CLOSED_AWAIT_RECONNECT")
        steps[step] = c, ans
        figures = {"events": c.made, "lost": c.lost, "dup": c.dup, "dup_bound": c.bound,
                   "no_data_s": round(max(b - a for a, b in itertools.pairwise(ts)), 2),
                   "controls": len(ans), "controls_refused": sum(not x["ok"] for x in ans) - len(lost_answer),
                   "controls_unanswered": len(lost_answer), "vip_moves": vip.moves(since, until),
                   "master_moves": sum(1 for r in recs if r.get("src") == "switch" and since <= r["t"] < until),
                   "connections_lost": drops}
        print(f"upgrade step {step}:", figures, {k: v for k, v in c.per_point.items() if v[1] or v[2]})
        print("  controls (s after the step's start, s to the answer, node, ok):",
              [(round(x["sent"] - since, 2), round(x["answered"] - x["sent"], 2), x["node"], x["ok"]) for x in ans])
        refused = {x["value"] for x in ans if not x["ok"]}
        print("  refused: audited", [e for e in audit if e.get("point") == "110" and int(float(e["value"])) in refused],
              "written", [w for w in writes if w["values"][0] in refused])
        FIGURES.update({f"upgrade_{step}_{k}": v for k, v in figures.items()})
    FIGURES["upgrade_test_s"] = round(time.monotonic() - t_test, 1)
    missed = [(step, *m) for step, (c, _) in steps.items() for m in c.missed]
    if missed:
        print(upgrade_diagnosis(lab, first, replaced, marks[0], missed))
    assert "AB" not in [h for _, h in vip.changes], vip.changes
    for step, (c, ans) in steps.items():
        assert FIGURES[f"upgrade_{step}_master_moves"] == 1, f"{step} step: the master did not move"
        assert c.points >= 3 and c.made >= 2 * c.points, (step, c)    # every counted point changed in the step
        assert c.lost == 0, (step, c.per_point)
        # at a lost connection only (the master's move, or c104's reconnect to the new forwarder while it
        # waited for an answer), k unacknowledged I frames each
        drops = FIGURES[f"upgrade_{step}_connections_lost"]
        assert c.dup <= c.bound * drops, (step, drops, c.per_point)
        # a control in flight when the forwarder the master uses stops is not answered (its connection
        # closes first; docs/deployment.md "Upgrade"): at most one per lost connection
        assert FIGURES[f"upgrade_{step}_controls_unanswered"] <= drops, (step, ans)
        assert len(ans) >= 2, (step, ans)
        check_controls({"answers": ans, "writes": writes, "audit": audit}, cfg.control_timeout_s)
    assert (FIGURES["upgrade_first_vip_moves"], FIGURES["upgrade_second_vip_moves"]) == (0, 1), vip.changes
