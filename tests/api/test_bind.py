"""`fep-api --bind NAME` serves every address NAME resolves to (fepha.listen.listeners): the real process,
its resolver made to answer ::1 and 127.0.0.1 for one test name (this machine's "localhost" is IPv4
only); before, only the first address was served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.foundation.test_listen import DUAL, pytestmark  # noqa: F401  # skipped without an IPv6 loopback
from tests.redisproc import free_port

# fep-api's own main, in a process whose getaddrinfo answers ::1 and 127.0.0.1 for DUAL
RUN = f"""
import socket, sys
real = socket.getaddrinfo
def fake(host, port, *a, **k):
    if host != {DUAL!r}:
        return real(host, port, *a, **k)
    return [*real("::1", port, *a, **k), *real("127.0.0.1", port, *a, **k)]
socket.getaddrinfo = fake
from fep_api.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_api_serves_both_addresses_of_its_bind_name(loaded, feproot: Path) -> None:
    port = free_port()
    env = dict(os.environ, FEPROOT=str(feproot), FEP_LOG_DIR="", FEP_REDIS_PORT=str(loaded.port),
               FEP_REDIS_LOCAL_PORT=str(loaded.port))
    proc = subprocess.Popen([sys.executable, "-c", RUN, "--bind", DUAL, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        got: dict[str, int] = {}
        while len(got) < 2:
            for host in ("127.0.0.1", "[::1]"):
                try:
                    got[host] = httpx.get(f"http://{host}:{port}/health", timeout=1).status_code
                except httpx.HTTPError:
                    pass
            assert proc.poll() is None and time.monotonic() < deadline, got
            time.sleep(0.05)
        assert set(got) == {"127.0.0.1", "[::1]"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0
