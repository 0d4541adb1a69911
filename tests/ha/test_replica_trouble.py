"""Controls on a healthy master while the standby's Redis is hung or cut off (docs/forwarder.md "The
replication barrier, and a standby whose Redis is hung, slow or cut off").

Node A holds the VIP, the master Redis and every lease; a SCADA master (c104) sends a setpoint to A's
se104s every 0.5 s; then B's Redis is SIGSTOPped, or the replication link is cut (iptables DROP of TCP to
and from A's Redis port in B's namespace: no FIN, keepalived's adverts untouched, so no failover). Each
setpoint is answered and written at most once; positive answers only for written ones; the setpoints are
refused for no longer than REFUSED_AT_MOST_S (+ one setpoint's interval and round trip; with Redis's
default repl-timeout of 60 s they were refused for a minute), and every one sent after that is confirmed.
"""

from __future__ import annotations

import os
import shlex
import signal
import time

import pytest

from tests.ha import plant
from tests.ha.harness import FIGURES, REDIS_PORT, Lab
from tests.ha.test_node_loss import (
    CONTROL_TIMEOUT_S,
    SETPOINT_ADDR,
    SETPOINT_AREA,
    SETPOINT_IOA,
    SETPOINT_RTU,
    check_controls,
    lab,  # noqa: F401 - the plant's lab fixture
)

RTUS = (1, 2)
INTERVAL_S = 0.5
REFUSED_AT_MOST_S = 10.0
"""compose.yml's repl-timeout (5 s) + up to 2 s of Redis's whole-second rounding + margin."""


@pytest.mark.parametrize("how", ["sigstop", "cut"])
def test_controls_on_a_healthy_master_while_the_standby_redis_is_hung_or_cut_off(lab: Lab, how: str) -> None:  # noqa: F811
    a, b = plant.start_a_holding(lab, RTUS)
    plant.start_services(a, "forwarder", control_timeout_s=CONTROL_TIMEOUT_S)
    log = a.procs["forwarder"].log
    lab.wait_for(lambda: "listening" in log.read_text(), 30, "se104s listening on A", interval=0.2)
    cmd = lab.compose(a)["redis"]["command"]
    argv = shlex.split(cmd) if isinstance(cmd, str) else [str(x) for x in cmd]
    repl_timeout = int(argv[argv.index("--repl-timeout") + 1]) if "--repl-timeout" in argv else 60
    go = lab.dir / "controls.go"
    values = list(range(2001, 2001 + int((repl_timeout + 12) / INTERVAL_S)))
    control = plant.start_control_client(lab, "A", SETPOINT_IOA, values, str(go), INTERVAL_S,
                                         CONTROL_TIMEOUT_S + 5)
    go.touch()
    answers = lambda: [r for r in plant.parse_json_lines(control.log.read_text()) if "value" in r]
    lab.wait_for(lambda: len(answers()) >= 2, 20, "two setpoints answered before the fault", 0.1)
    assert all(r["ok"] for r in answers()), answers()
    redis_pid = b.procs["redis"].pid
    t_fault = time.time()
    if how == "sigstop":
        os.kill(redis_pid, signal.SIGSTOP)
    else:
        b.cut(a.ip, REDIS_PORT)
    try:
        lab.wait_for(lambda: len(answers()) >= len(values), len(values) * (CONTROL_TIMEOUT_S + 6),
                     "every setpoint answered", 0.3)
    finally:
        if how == "sigstop":
            os.kill(redis_pid, signal.SIGCONT)
        else:
            b.heal(a.ip, REDIS_PORT)
    assert a.has_vip() and a.role() == "master", "the fault moved the master: the test proves nothing"
    got = answers()
    after = [r for r in got if r["sent"] > t_fault]
    refused = [r for r in after if not r["ok"]]
    first_ok = next((r["sent"] - t_fault for r in after if r["ok"]), None)
    assert first_ok is not None, after
    print(how, [(round(r["sent"] - t_fault, 2), r["ok"]) for r in after])
    limit = REFUSED_AT_MOST_S + INTERVAL_S + 1.0
    assert first_ok < limit, f"setpoints refused for {first_ok:.1f} s (limit {limit} s)"
    assert all(r["ok"] for r in after if r["sent"] - t_fault > first_ok), after
    events = plant.journal(lab)
    writes = [e for e in events if e["ev"] == "write" and e["rtu"] == SETPOINT_RTU
              and e["area"] == SETPOINT_AREA and e["address"] == SETPOINT_ADDR]
    outcome = check_controls({"answers": got, "writes": writes, "audit": plant.audit(a)})
    assert all(not [w for w in writes if w["values"] == [r["value"]]] for r in refused), "a refused one ran"
    lab.wait_for(lambda: "master_link_status:up" in b.redis_cli("info", "replication"), 30, "B in sync again")
    FIGURES.update({f"replica_{how}_controls_refused_s": round(first_ok, 2),
                    f"replica_{how}_controls_refused": len(refused), f"replica_{how}_controls_ok": outcome["ok"]})
