"""The forwarders of both nodes, started with compose.yml's command and environment, seen from the SCADA
host, across the loss of node A (part of scenario 4 that does not need the acquirer)."""

from __future__ import annotations

import time

from tests.ha.harness import Lab, healthcheck, probe_records, start_probe


def _gi(p, node: str) -> set[int]:
    return {r["ioa"] for r in probe_records(p) if r["src"] == "iec104" and r["node"] == node
            and r["cot"] == "INTERROGATED_BY_STATION"}


def test_forwarders_serve_both_nodes_and_survive_loss_of_node_a(lab: Lab) -> None:
    a, b = lab.nodes["A"], lab.nodes["B"]
    lab.start_pair()
    lab.sysload_init(a)
    lab.wait_for(lambda: b.redis_cli("get", "fep:cfg:gen") == "1", 10, "configuration on B")
    for n in (a, b):
        n.start_service("forwarder")
    probe = start_probe(lab)
    expected = {1001, 1002, 1003, 1004, 1, 2, 3, 4, 5}      # se104s monitoring IOAs of the sample
    lab.wait_for(lambda: _gi(probe, "A") >= expected and _gi(probe, "B") >= expected, 20,
                 "general interrogation answered by both nodes", interval=0.2)
    lab.wait_for(lambda: all(healthcheck(lab, n, "forwarder").returncode == 0 for n in (a, b)), 15,
                 "compose health check of both forwarders", interval=0.5)

    a.crash()
    lab.wait_for(lambda: b.has_vip() and b.role() == "master", 15, "B master")
    t_crash = time.time()
    # B's forwarder keeps serving and its heartbeat (written through the VIP) is fresh again.
    lab.wait_for(lambda: healthcheck(lab, b, "forwarder").returncode == 0, 15, "B's forwarder healthy", 0.5)
    assert b.procs["forwarder"].alive()
    states_b = [r["state"] for r in probe_records(probe) if r["src"] == "iec104-state" and r["node"] == "B"
                and r["t"] > t_crash]
    assert "CLOSED_AWAIT_RECONNECT" not in states_b, states_b     # the SCADA link to B never dropped
    modbus_b = [r for r in probe_records(probe) if r["src"] == "modbus" and r["node"] == "B" and r["t"] > t_crash]
    assert all(r["value"] is not None for r in modbus_b), modbus_b
