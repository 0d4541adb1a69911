"""The reference SCADA master (tools/scada_probe.py) stops promptly on SIGTERM, also while its IEC 104
connect toward a node that does not answer is in progress (a node down or a cut link, as in the HA suite)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fepha.semodel import db
from fepha.semodel.model import Model


def black_hole(addr: str, port: int) -> list[socket.socket]:
    """A listener that never accepts, its accept queue full: the kernel drops further SYNs, so a connect to
    it hangs as toward a host that does not answer. The sockets must stay open for the test's length."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(0)
    held = [listener]
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex((addr, port))
        held.append(c)
    try:  # the premise, checked: a connect there times out
        socket.create_connection((addr, port), timeout=0.5).close()
        raise AssertionError(f"{addr}:{port} accepted a connection: not a black hole")
    except TimeoutError:
        pass
    return held


def test_sigterm_during_a_hanging_connect_exits_at_once(feproot: Path) -> None:
    dbfile = feproot / "db" / "SEMODEL.db"
    rows, _ = db.read_rows(dbfile)
    se104s = next(r for r in Model.from_rows(rows).rtus.values() if r.protocol == "se104s")
    addr = f"127.{os.getpid() % 200 + 20}.{os.getpid() // 200 % 250 + 1}.9"  # a loopback address of our own
    held = black_hole(addr, se104s.listen_port)
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "fep_tools.scada_probe", "--db", str(dbfile), "--node", f"A={addr}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert p.stdout is not None
            seen: set[str] = set()
            for line in p.stdout:  # 'started': SIGTERM handled; CLOSED_AWAIT_OPEN: c104's first connect begun
                rec = json.loads(line)
                seen.add(rec.get("state", ""))
                if {"started", "CLOSED_AWAIT_OPEN"} <= seen:
                    break
            assert {"started", "CLOSED_AWAIT_OPEN"} <= seen, seen
            time.sleep(1.0)  # the connect hangs (c104's connect timeout, t0: 10 s)
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            rc = p.wait(15)
            took = time.monotonic() - t0
            # before: the freed client joined its connect thread, which waited out t0 (about 9 s here)
            assert rc == 0 and took < 3.0, (rc, took)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    finally:
        for s in held:
            s.close()
