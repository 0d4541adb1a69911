"""A Modbus master that vanishes without closing (host off, cable cut): with `keepalive_s` the server's TCP
keep-alive drops its connection about twice that after its last packet (MODBUS Messaging on TCP/IP
Implementation Guide V1.0b 4.3.2); without, the connection stays open on the server for good.

The vanishing is real: server and master run in a network namespace of their own, where an iptables rule
drops every packet to the master's port once it has had an answer (no ACK, no RST comes back)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prereq import require

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio, subprocess, sys, time
from fep_forwarder.modbus_trains import ModbusTrainsServer
from tests.forwarder.mbt_fixtures import IMAGE, ScriptedSink, rtu

async def main(keepalive_s, wait_s):
    srv = ModbusTrainsServer(rtu(), None, "127.0.0.1", ScriptedSink(), "A", keepalive_s=keepalive_s)
    await srv.start()
    srv.load_image(IMAGE)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(bytes.fromhex("0001 0000 0006 01 04 0003 0001"))
    await reader.readexactly(11)
    assert len(srv.clients()) == 1
    port = writer.get_extra_info("sockname")[1]
    subprocess.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"], check=True)
    t0 = time.monotonic()
    while srv.clients() and time.monotonic() - t0 < wait_s:
        await asyncio.sleep(0.05)
    print(len(srv.clients()), round(time.monotonic() - t0, 2))
    await srv.stop()

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    require(None if os.geteuid() == 0 else "not root", "network namespaces")
    require(None if shutil.which("ip") and shutil.which("iptables") else "ip or iptables missing",
            "network namespaces")
    name = f"mbtka{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run(ns: str, keepalive_s: int, wait_s: float) -> tuple[int, float]:
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, str(keepalive_s), str(wait_s)],
                       cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stderr[-2000:]
    clients, took = p.stdout.split()
    return int(clients), float(took)


def test_a_vanished_master_is_dropped_by_keepalive(netns: str) -> None:
    clients, took = run(netns, 1, 10)
    assert clients == 0 and 1.0 <= took < 4.0, (clients, took)  # about twice keepalive_s


def test_without_keepalive_it_stays(netns: str) -> None:
    clients, took = run(netns, 0, 4)
    assert clients == 1 and took >= 4
