"""Every bench in bench/ runs here with tiny parameters, as the operator runs it (a subprocess of this
interpreter), and its last line must hold exactly the keys scripts read, each with a number: a bench that
rots (an API it uses changed, a key renamed, a crash) fails the suite instead of being found on release
day. The figures themselves are not asserted: tiny loads on a loaded CI machine prove nothing about speed.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ha.harness import can_run
from tests.prereq import require

REPO = Path(__file__).resolve().parents[2]

KEYS = {
    "sysload": ["points", "init_s", "per_key_s", "speedup", "command_s"],
    "acquire": ["e2e_changes_per_s", "rtus", "points", "poll_ms", "change_pct", "poll_to_redis_p50_ms",
                "poll_to_redis_p99_ms", "acq_cpu_pct", "redis_cpu_pct", "acq_cpu_s_per_100k",
                "redis_cpu_s_per_100k", "seed_speedup", "max_points_at_1s", "changes_per_s", "seed_speedup_bound",
                "inflight"],
    "forward": ["runs", "p50_ms", "p99_ms", "c104_p99_ms", "latency_gain", "lossless_values_per_s", "lost",
                "e2e_p50_ms", "e2e_p99_ms", "e2e_samples"],
    "giflood": ["points", "seconds", "runs", "events", "p50_ms", "p99_ms", "max_ms", "loop_max_ms", "gi_answered",
                "gi_refused", "hostile_connections"],
    "failover": ["node_loss_to_data_s", "link_cut_to_data_s", "lost_spontaneous", "dup_spontaneous",
                 "events_total", "takeover_s", "device_loss_takeover_s", "scada_switch_lost", "scada_switch_dup",
                 "scada_switch_dup_bound", "quality_only_spontaneous"],
}

TINY = {
    "sysload": ["--points", "2000", "--per-rtu", "100", "--runs", "1"],
    "acquire": ["--tiny"],
    "forward": ["--tiny"],
    "giflood": ["--tiny"],
    # failover: one run of each kind; the windows just long enough that the kill has a change of the window
    # before it (period 1.2 s) and B (leases ~3.3 s after the kill, product TTL 3 s) delivers changes made after
    # it; the device-loss takeover 3 s (the lab's channel switch); the switchover's windows 2 s / 3 s
    "failover": ["--runs", "1", "--before-s", "1.5", "--after-s", "5", "--takeover-s", "3", "--switch-before-s", "2",
                 "--switch-after-s", "3", "--extra-ai", "4", "--extra-di", "4"],
}


def last_line(name: str, args: list[str], timeout: float) -> dict[str, str]:
    env = {**os.environ, "FEP_LOG_DIR": ""}
    res = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"bench/{name}.py failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines, f"bench/{name}.py printed nothing"
    pairs = dict(kv.split("=", 1) for kv in lines[-1].split())
    return pairs


def check_keys(name: str, got: dict[str, str]) -> None:
    want = KEYS[name]
    assert list(got)[: len(want)] == want, f"bench/{name}.py last line keys {list(got)}, want {want} first"
    for k, v in got.items():
        assert math.isfinite(float(v)), f"bench/{name}.py: {k}={v} is not a finite number"


@pytest.mark.parametrize("name", ["sysload", "acquire", "forward", "giflood"])
def test_bench_runs_with_tiny_parameters(name: str) -> None:
    check_keys(name, last_line(name, TINY[name], timeout=240))


@pytest.mark.ha
def test_failover_bench_runs_once() -> None:
    """The failover bench needs the HA lab (root, network namespaces): skipped like the HA suite without it,
    a failure when CI is set."""
    reason = can_run()
    require(reason, "failover bench")
    check_keys("failover", last_line("failover", TINY["failover"], timeout=600))
