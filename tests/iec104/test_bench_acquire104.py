"""bench/acquire104.py at tiny parameters, so that it cannot rot: the whole chain (fep-rtu104sim ->
fep-acquirer -> Redis -> fep-forwarder -> c104 client) runs and the last line holds its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "acquire104.py"


def test_bench_acquire104_tiny_run() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--devices", "1,2", "--points", "3", "--rates", "200,400",
                          "--step-seconds", "0.5", "--latency-events", "10", "--runs", "1"],
                         check=False, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"events_per_s=(\d+) devices=(\d+) lost=(\d+) p50_ms=([\d.]+) p99_ms=([\d.]+) "
                     r"soe_time_kept=([01])", last)
    assert m, last
    events_per_s, devices, lost, p50, p99, kept = m.groups()
    assert devices == "2" and lost == "0" and kept == "1", out.stdout
    assert int(events_per_s) > 100 and 0 < float(p50) <= float(p99), out.stdout
    assert "1 device(s), run 1:" in out.stdout and "2 device(s), run 1:" in out.stdout
