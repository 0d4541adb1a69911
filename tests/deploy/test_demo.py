"""`./demo` end to end: both nodes' services come up ready on loopback and everything is stopped after."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.redisproc import free_port

REPO = Path(__file__).resolve().parents[2]


def test_demo_starts_both_nodes_and_stops_everything(tmp_path: Path) -> None:
    redis_port = free_port()
    r = subprocess.run([str(REPO / "demo"), "--no-install", "--seconds", "3", "--redis-port", str(redis_port),
                        "--api-port", str(free_port()), "--root", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "node A ready, node B ready" in r.stdout
    assert "IEC 104" in r.stdout and "mbpoll" in r.stdout
    left = subprocess.run(["pgrep", "-f", f"redis-server .*:{redis_port}"], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == "", "demo left Redis running"
