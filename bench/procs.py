"""Process helpers of the benchmarks (run as `python bench/<name>.py`, so this directory is on sys.path):
stop what a bench started by its PID, wait for a port to listen."""

from __future__ import annotations

import signal
import socket
import subprocess
import time


def stop(p: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s: a bench leaves nothing running."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def wait_port(port: int, timeout: float = 20, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")
