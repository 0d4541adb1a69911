"""A control read right after the forwarder's event loop was stalled (the process SIGSTOPped, starved): it
may have waited unread in the socket for the whole stall, so it gets only what is left of its time, and is
refused (negative confirmation, never run) when nothing is left. The stall is made here by blocking the
server's loop while a real c104 master (its own thread) sends the command; the SIGSTOP of the real process
is in tests/faults/test_resources.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import c104

from fep_forwarder.base import STALLS, ControlOutcome
from fepha.iec104 import codec as c
from fepha.iec104.link import Link, LinkParams, Role
from tests.forwarder.se104s_fixtures import CA, Sink, c104_master, se104_server
from tests.stays import astays


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



class Submitting(Sink):
    """Hands the control over before its first await, as the forwarder's Redis sink sends its FCALL when
    its role reading is fresh: cancelling the task after that (the connection found closed) would not
    withdraw it."""

    async def execute(self, fwd: Any, value: float, origin: str, timeout_ms: int | None = None) -> ControlOutcome:
        self.calls.append((fwd.src, value))
        await asyncio.sleep(0.05)
        return ControlOutcome(True, "done")


async def exchange(s: socket.socket, link: Link, seconds: float) -> None:
    """A raw master's side for `seconds`: read what the server sends and acknowledge it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            await asyncio.sleep(0.02)
            continue
        assert data, "closed by the server"
        link.receive(data, time.monotonic())
        link.tick(time.monotonic())
        s.send(link.data_to_send())


async def test_a_command_read_after_a_stall_from_a_connection_its_master_closed_is_not_run(caplog):
    """The master sends a command and closes the connection (it gave up at its t1) while the server's loop
    is stalled for less than the control timeout: read after the stall, the command would still have time
    left, but nobody can be told its outcome and the operator retries on a new connection. It is not run
    (at most once); the stall alone (the master still connected) does not stop a command."""
    sink = Submitting()
    async with se104_server(sink) as srv:  # control timeout 10 s: the 1.5 s stall leaves time
        for closes in (False, True):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.setblocking(False)
            link = Link(Role.CLIENT, LinkParams(k=12, w=8, t1=5, t2=0.05, t3=10), time.monotonic())
            try:
                link.start(time.monotonic())
                s.send(link.data_to_send())
                await exchange(s, link, 0.5)  # STARTDT con, end of initialisation, each acknowledged
                assert link.started
                asyncio.get_running_loop().call_soon(time.sleep, 1.5)  # the server's loop stalls next
                cmd = c.build_asdu(c.C_SE_NC_1, c.COT_ACT, CA, [(6003, c.encode_command(c.C_SE_NC_1, 12.5))])
                link.send(cmd, time.monotonic())
                s.send(link.data_to_send())  # sent during the stall: read after it
                if closes:
                    s.close()  # nothing unread: a FIN, not a reset (a reset would drop the command itself)
                    await asyncio.sleep(0)  # the stall
                    await astays(lambda: len(sink.calls) == 1, 1.0, "the closed connection's command ran")
                    assert "1 command(s) not run: read after this forwarder was stalled" in caplog.text
                else:
                    await asyncio.sleep(0)
                    end = time.monotonic() + 3
                    while not sink.calls:
                        assert time.monotonic() < end, "a command read after a stall did not run"
                        await asyncio.sleep(0.02)
            finally:
                s.close()
        assert sink.calls == [(127, 12.5)], sink.calls


async def test_sefeps_the_same_for_a_command_whose_master_closed_during_the_stall():
    """The sefeps server: the same command, sent during a 1.5 s stall, runs when its master is still
    connected and not when the master closed the connection behind it (the Sink records at submission)."""
    from fep_forwarder.sefeps import codec as sc
    from tests.forwarder.test_sefeps_server import sefeps_server

    async with sefeps_server() as srv:
        for closes in (False, True):
            s = socket.create_connection(("127.0.0.1", srv.port))
            try:
                s.sendall(sc.encode(sc.hello()))
                s.setblocking(False)
                got = b""
                end = time.monotonic() + 3
                while b'"image"' not in got:  # welcome, then the image
                    assert time.monotonic() < end, got
                    try:
                        got += s.recv(65536)
                    except BlockingIOError:
                        await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)
                with contextlib.suppress(BlockingIOError):
                    s.recv(65536)  # nothing left unread: a close is a FIN, not a reset
                asyncio.get_running_loop().call_soon(time.sleep, 1.5)
                s.send(sc.encode({"t": "cmd", "id": 1, "addr": 40, "value": 10.0}))
                if closes:
                    s.close()
                    await asyncio.sleep(0)
                    await astays(lambda: len(srv.controls.calls) == 1, 1.0, "the closed connection's command ran")
                else:
                    await asyncio.sleep(0)
                    end = time.monotonic() + 3
                    while not srv.controls.calls:
                        assert time.monotonic() < end, "a command read after a stall did not run"
                        await asyncio.sleep(0.02)
            finally:
                s.close()
        assert srv.controls.calls == [(40, 20.0)], srv.controls.calls
