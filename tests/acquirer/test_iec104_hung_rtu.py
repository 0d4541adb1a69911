"""An IEC 104 RTU whose application hangs while its host still accepts TCP connections (found with OpenMUC
j60870 1.7.2's server stopped by SIGSTOP, 2026-12-03: the kernel's listen backlog accepts, nothing answers).
Our t1 closes the connection whose TESTFR (or STARTDT) goes unanswered; the next connection is accepted at once.
Its opening used to count as a frame of the RTU, so the RTU was reached again for t3 + t1 after every reconnect:
the link virtual point went back to 1 half a second after falling to 0 and stayed 1 for as long as the RTU hung.
A connection closed by t1 now hands its last frame to the next one (as a reload's restart does): that one is
reached only once the RTU sends a frame on it."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import redis.asyncio as aredis

from fep_acquirer.app import Acquirer
from fep_acquirer.iec104rtu import Iec104Runner
from fep_tools.rtu104sim import device
from fepha.config import NodeConfig
from fepha.semodel.model import Model
from tests.acquirer.helpers import free_port, until

CA = 7
POINTS = [(100, "M_SP_NA_1")]


async def test_a_reconnect_to_an_rtu_that_answers_nothing_does_not_reach_it() -> None:
    writers: list[asyncio.StreamWriter] = []
    answering = False

    async def hung(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accepts and reads, answers nothing (until `answering`: then TESTFR act gets its con)."""
        writers.append(writer)
        while data := await reader.read(1024):
            if answering and b"\x68\x04\x43\x00\x00\x00" in data:
                writer.write(b"\x68\x04\x83\x00\x00\x00")

    server = await asyncio.start_server(hung, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dev = dataclasses.replace(device(1, CA, [("127.0.0.1", port)], POINTS), timeout_ms=300)  # t1
    nobody = aredis.Redis(host="127.0.0.1", port=free_port())  # no lease: a standby connection, TESTFR only
    cfg = NodeConfig(iec104_t3_s=0.3, lease_tick_s=0.1, reconnect_min_s=0.05, reconnect_max_s=0.1)
    acq = Acquirer(cfg, nobody, nobody)
    try:
        await acq.apply(Model({dev.id: dev}, "", "", gen=1))
        r = acq.runners[1]
        assert isinstance(r, Iec104Runner) and r.window_s == 0.6
        await until(lambda: r.link is not None, 3)
        assert r.reaches()  # an opening counts as a frame: the standby learns the same as the holder
        await until(lambda: len(writers) >= 2, 5)  # closed at t3 + t1 (no TESTFR con), connected again at once
        end = time.monotonic() + 1.5  # five windows (t3 + t1 = 0.6 s): several connections, each closed by t1
        while time.monotonic() < end:
            assert not r.reaches(), f"reached on connection {len(writers)}, though the RTU never sent a frame"
            await asyncio.sleep(0.005)
        assert len(writers) >= 3
        answering = True  # the RTU's application runs again: its TESTFR con makes it reached
        await until(lambda: r.reaches(), 3)
    finally:
        for runner in acq.runners.values():
            await runner.stop()
        server.close()
        for w in writers:
            w.close()
