"""A control read right after the forwarder's event loop was stalled (the process SIGSTOPped, starved): it
may have waited unread in the socket for the whole stall, so it gets only what is left of its time, and is
refused (negative confirmation, never run) when nothing is left. The stall is made here by blocking the
server's loop while a real c104 master (its own thread) sends the command; the SIGSTOP of the real process
is in tests/faults/test_resources.py."""

from __future__ import annotations

import asyncio
import time

import c104

from fep_forwarder.base import STALLS
from tests.forwarder.se104s_fixtures import Sink, c104_master, se104_server


async def test_a_command_that_waited_unread_past_its_timeout_is_refused_not_run():
    sink = Sink()
    async with se104_server(sink, control_timeout_ms=800) as srv, c104_master(srv.port) as m:
        assert await m.command(6003, c104.ShortCmd(target=12.5))  # a fresh one runs
        assert len(sink.calls) == 1
        await asyncio.sleep(0.3)
        asyncio.get_running_loop().call_soon(time.sleep, 2.0)  # the loop stalls; c104 sends meanwhile
        assert not await m.command(6003, c104.ShortCmd(target=13.5))
        assert len(sink.calls) == 1, sink.calls  # not run
        assert STALLS.stall is not None and STALLS.stall[1] - STALLS.stall[0] >= 1.9
        await asyncio.sleep(STALLS.GRACE_S + 0.2)
        assert await m.command(6003, c104.ShortCmd(target=14.5))  # later ones run again
        assert len(sink.calls) == 2
