"""`[forwarder] opening_max`: the connections one address holds in their opening (TLS handshake, then the first
se104s frame / sefeps hello / Modbus request) are bounded per server (docs/forwarder.md, "Connections in their
opening"). Real sockets: the silent peers on 127.0.0.1, the good master of another address on 127.0.0.2.

Before (main up to 2026-12-03): every silent connection was held until its handshake's bound (t0, handshake_s)
or the protocol's own timers, one descriptor each: 1,000 silent connections held 1,000 descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fep_forwarder.base import ForwardServer
from fep_forwarder.modbus_trains import ModbusTrainsServer
from fep_forwarder.se104s import Se104Server
from fep_forwarder.sefeps import SefepsServer
from fep_tools.sefeps_client import SefepsClient
from fepha.iec104 import codec as c
from fepha.semodel.model import Model

from . import mbt_fixtures as mbt
from . import se104s_fixtures as s104
from . import test_sefeps_server as sef
from .test_tls_faults import Good104, GoodFeps, client_ctx, fds, server_ctx
from .tls_cert import make_cert_now

LIMIT = 4
SILENT = 40
HANDSHAKE_S = 5.0
"""Longer than each test: a silent connection held is held for its whole run."""
OTHER = ("127.0.0.2", 0)
"""Where the good master connects from: another address than the silent peers'."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's certificate (the masters verify it; no client certificates)."""
    d = tmp_path_factory.mktemp("tls")
    make_cert_now(d, "server")
    return d


@pytest.fixture(params=["se104s", "sefeps"])
def proto(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(proto: str, ctx: ssl.SSLContext | None) -> ForwardServer:
    """A server of `proto` bounding openings at LIMIT (the runner passes `[forwarder] opening_max` so), its
    handshake bound HANDSHAKE_S."""
    if proto == "se104s":
        return Se104Server(s104.rtu(0), Model({}, "", ""), "127.0.0.1", s104.Sink(), "A", tls=ctx, t0=HANDSHAKE_S,
                           opening_max=LIMIT)
    return SefepsServer(sef.RTU, None, "127.0.0.1", sef.Sink(), "A", tls=ctx, handshake_s=HANDSHAKE_S,
                        opening_max=LIMIT)


async def good_master(proto: str, port: int, ctx: ssl.SSLContext | None, local: tuple[str, int] | None) -> Any:
    """The protocol's good master, its opening completed (STARTDT and its answers / hello and its image)."""
    if proto == "se104s":
        g = Good104(*await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, local_addr=local), 5))
        g.writer.write(c.u_frame(c.STARTDT_ACT))
        await g.i_frame()
        return g
    g = GoodFeps(SefepsClient("127.0.0.1", port, tls=ctx, local_addr=local))
    await g.client.connect()
    await g.client.wait_image()
    return g


async def closed_at_once(r: asyncio.StreamReader, w: asyncio.StreamWriter, within: float = 0.5) -> bool:
    """True when the server closes this connection within `within` s (this end then let go)."""
    try:
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(r.read(1), within)
        w.transport.abort()
        return True
    except TimeoutError:
        return False


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Served:
    """A server of `proto` started, its image loaded, and the connections a test opens to it."""

    srv: ForwardServer
    ctx: ssl.SSLContext | None
    """What the good master connects with (None: plain TCP)."""
    silent: list[Conn] = field(default_factory=list)
    good: Any = None

    @property
    def port(self) -> int:
        return self.srv.port  # type: ignore[attr-defined,no-any-return]

    async def connect_silent(self, n: int) -> list[Conn]:
        """`n` connections from 127.0.0.1 that send nothing."""
        new = [await asyncio.open_connection("127.0.0.1", self.port) for _ in range(n)]
        self.silent += new
        return new


@contextlib.asynccontextmanager
async def served(srv: ForwardServer, ctx: ssl.SSLContext | None = None,
                 updates: list[Any] | None = None) -> AsyncIterator[Served]:
    await srv.start()
    sv = Served(srv, ctx)
    try:
        srv.load_image(updates or [])
        yield sv
    finally:
        if sv.good is not None:
            await sv.good.close()
        for _, w in sv.silent:
            w.transport.abort()
        await srv.stop()


def serve_proto(proto: str, tls: bool, certs: Path) -> contextlib.AbstractAsyncContextManager[Served]:
    return served(make(proto, server_ctx(certs) if tls else None), client_ctx(certs, None) if tls else None,
                  [s104.upd(1001, 0.0)] if proto == "se104s" else [sef.upd(1, 0.0)])


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_silent_connections_of_one_address_are_bounded(proto: str, tls: bool, caplog, certs) -> None:
    """40 silent connections from one address: LIMIT are held, the others closed at once (counted, one
    WARNING for the address); the process holds LIMIT server-side descriptors for them, not 40; a master from
    another address connecting meanwhile is served."""
    caplog.set_level(logging.INFO)
    async with serve_proto(proto, tls, certs) as sv:
        before = fds()
        silent = await sv.connect_silent(SILENT)
        closed = await asyncio.gather(*(closed_at_once(r, w) for r, w in silent))
        assert sum(closed) == SILENT - LIMIT, f"{sum(closed)} of {SILENT} closed at once"
        assert not any(closed[:LIMIT])  # the first ones are held
        # this end's LIMIT sockets and the server's LIMIT: the refused ones hold nothing (before: 40 + 40)
        assert fds() - before == 2 * LIMIT
        assert sv.srv.counts.connections_opening_refused == SILENT - LIMIT
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1 and refused[0].levelno == logging.WARNING, [r.getMessage() for r in refused]
        line = refused[0].getMessage()
        assert line.startswith(f"{proto} RTU ") and "master 127.0.0.1:" in line and "opening_max" in line, line
        t = time.monotonic()
        sv.good = await good_master(proto, sv.port, sv.ctx, OTHER)
        assert time.monotonic() - t < 1.0
        await sv.good.event_s(sv.srv, 7.0)
        assert any(p.startswith("127.0.0.2:") for p in sv.srv.clients())


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_a_connection_whose_opening_is_over_frees_its_place(proto: str, tls: bool, caplog, certs) -> None:
    """LIMIT - 1 silent connections and a master of the same address that completes its opening (its TLS
    handshake and STARTDT / hello): the master is served, and its place is free again, so one more silent
    connection is held, and only the next one refused. A silent connection that closes frees its place too."""
    caplog.set_level(logging.INFO)
    async with serve_proto(proto, tls, certs) as sv:
        first = await sv.connect_silent(LIMIT - 1)
        sv.good = await good_master(proto, sv.port, sv.ctx, None)
        await sv.good.event_s(sv.srv, 3.0)
        more = await sv.connect_silent(2)
        assert not await closed_at_once(*more[0], within=0.3), "held: the master's place was freed"
        assert await closed_at_once(*more[1]), "refused: LIMIT silent connections are held"
        assert sv.srv.counts.connections_opening_refused == 1
        first[0][1].transport.abort()  # one silent peer goes away: its place is free
        await asyncio.sleep(0.1)
        again = await sv.connect_silent(1)
        assert not await closed_at_once(*again[0], within=0.3)
        assert sv.srv.counts.connections_opening_refused == 1
        await sv.good.event_s(sv.srv, 4.0)


async def test_modbus_trains_bounds_silent_connections_until_their_first_request(caplog) -> None:
    """modbus_trains (plain Modbus TCP): a connection's opening ends with its first complete request. LIMIT
    silent connections are held, the next one refused; one that sends a request is served and frees its
    place."""
    caplog.set_level(logging.INFO)
    async with served(ModbusTrainsServer(mbt.rtu(), None, "127.0.0.1", mbt.ScriptedSink(), "A", opening_max=LIMIT),
                      updates=mbt.IMAGE) as sv:
        silent = await sv.connect_silent(LIMIT + 1)
        assert [await closed_at_once(r, w, within=0.3) for r, w in silent] == [False] * LIMIT + [True]
        r, w = silent[0]
        w.write(bytes.fromhex("000100000006" "01" "04" "0000" "0002"))  # read input registers 0..1
        answer = await asyncio.wait_for(r.read(256), 2)
        assert answer[:2] == b"\x00\x01" and answer[7] & 0x7F == 0x04, answer.hex()  # answered
        late = await sv.connect_silent(1)
        assert not await closed_at_once(*late[0], within=0.3), "the place of the served master is free"
        assert sv.srv.counts.connections_opening_refused == 1
        assert len([m for m in caplog.messages if "refused" in m and "opening_max" in m]) == 1
