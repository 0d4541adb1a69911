"""TLS faults: what a broken or hostile peer does to a TLS-enabled se104s or sefeps server (docs/forwarder.md,
"TLS"). Real sockets on 127.0.0.1, the server's context made by the forwarder's own `tls_context` from
certificates the real openssl makes; the good master speaks through Python's ssl, the bad peers through an
`ssl.SSLObject` driven by hand (so they can stop half-way, or write garbage under the TLS layer), and
`openssl s_client` for a renegotiation.

The rule: each bad peer has its one connection closed (a handshake that stalls: at t0), logged with a clear
reason naming its address (a failed handshake: at most one line per address, reason and minute), no
traceback; the good master connected meanwhile gets its events on time; the process's file descriptors and
tasks are back where they were once the bad connection is gone."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fep_forwarder import app, base
from fep_forwarder.base import ForwardServer, tls_failure
from fep_forwarder.se104s import Se104Server
from fep_forwarder.sefeps import SefepsServer, codec
from fep_forwarder.tlspolicy import TlsPolicy, load_cert, tls_context
from fep_tools.sefeps_client import SefepsClient
from fepha.config import ConfigError, NodeConfig
from fepha.iec104 import codec as c
from fepha.semodel.model import Model

from . import se104s_fixtures as s104
from . import test_sefeps_server as sef
from .tls_cert import make_cert_dated, make_cert_now, make_signed_now, renew_cert_now, write_crl

T0 = 0.6
"""The handshake bound these servers get (se104s `t0`, sefeps `handshake_s`)."""
OPENING_MAX = 64
"""`[forwarder] opening_max` of these servers: above the fifty stalled handshakes of one address below (the
default, 16, would refuse 34 of them at accept; test_opening.py checks the bound)."""
REPO = Path(__file__).resolve().parents[2]
ON_TIME_S = 0.5
"""How late an event may reach the good master on this shared machine (it takes a few ms)."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server, master (also the CA of mutual TLS) and intruder (another CA) certificates; a CA `ca` and two
    masters it signed, `member` (serial 1) and `revoked` (serial 2, which the CRLs of the tests revoke). The
    server and the CAs valid until 2100 or so: the CRL tests look at the policy in 2099 (the server certificate
    and the CA certificates are checked too)."""
    d = tmp_path_factory.mktemp("tls")
    for name in ("server", "master", "intruder", "ca"):
        make_cert_now(d, name, days=27_000)
    make_signed_now(d, "member", "ca", 1)
    make_signed_now(d, "revoked", "ca", 2)
    return d


def server_cfg(mutual: bool = False, **tls: str) -> NodeConfig:
    """The [tls] settings of the servers here (`tls`: more of them, e.g. crl="crl.pem")."""
    settings = {"cert": "server-cert.pem", "key": "server-key.pem", "ca": "master-cert.pem" if mutual else "", **tls}
    return NodeConfig(**{f"tls_{k}": v for k, v in settings.items()})


def server_ctx(certs: Path, mutual: bool = False, **tls: str) -> ssl.SSLContext:
    ctx = tls_context(server_cfg(mutual, **tls), root=certs)
    assert ctx is not None
    return ctx


def client_ctx(certs: Path, who: str | None = "master") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "server-cert.pem"))
    if who:
        ctx.load_cert_chain(certs / f"{who}-cert.pem", certs / f"{who}-key.pem")
    return ctx


# --- the good master of each protocol -----------------------------------------------------------------


class Good104:
    """An IEC 104 master over TLS that started data transfer and acknowledges what it gets."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.fr, self.nr = reader, writer, c.FrameReader(), 0

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext | None) -> Good104:
        self = cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 5))
        self.writer.write(c.u_frame(c.STARTDT_ACT))
        await self.i_frame()  # STARTDT_CON, then end of initialisation
        return self

    async def i_frame(self) -> None:
        while True:
            frames = self.fr.feed(await asyncio.wait_for(self.reader.read(4096), 5))
            got = sum(f.kind == "I" for f in frames)
            if got:
                self.nr += got
                self.writer.write(c.s_frame(self.nr))
                return

    async def event_s(self, srv: Any, value: float) -> float:
        t = time.monotonic()
        srv.apply([s104.upd(1001, value)])
        await self.i_frame()
        return time.monotonic() - t

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class GoodFeps:
    """The reference sefeps client over TLS, its image received."""

    def __init__(self, client: SefepsClient) -> None:
        self.client = client

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext | None) -> GoodFeps:
        self = cls(SefepsClient("127.0.0.1", port, tls=ctx))
        await self.client.connect()
        await self.client.wait_image()
        return self

    async def event_s(self, srv: Any, value: float) -> float:
        t = time.monotonic()
        srv.apply([sef.upd(1, value)])
        while (await self.client.next_change())[2] != value:  # those of other masters' checks before it
            pass
        return time.monotonic() - t

    async def close(self) -> None:
        await self.client.close()


@dataclass(frozen=True)
class Proto:
    name: str
    make: Callable[..., ForwardServer]
    """(server context or None, ALLOW=()) -> the server."""
    good: Callable[[int, ssl.SSLContext | None], Any]
    plain_start: bytes
    """What a plaintext master sends first."""
    partial: bytes
    """The first octets of a frame."""
    error_level: int
    """The level of the line that says why a master's protocol error closed its connection."""
    bound: str
    """The setting that bounds the handshake."""


PROTOS = {
    "se104s": Proto("se104s", lambda ctx, allow=(): Se104Server(
                        dataclasses.replace(s104.rtu(0), allow=allow), Model({}, "", ""), "127.0.0.1", s104.Sink(),
                        "A", tls=ctx, t0=T0, opening_max=OPENING_MAX),
                    Good104.open, c.u_frame(c.STARTDT_ACT), c.u_frame(c.STARTDT_ACT)[:3], logging.WARNING,
                    "t0"),
    "sefeps": Proto("sefeps", lambda ctx, allow=(): SefepsServer(
                        dataclasses.replace(sef.RTU, allow=allow), None, "127.0.0.1", sef.Sink(), "A", tls=ctx,
                        handshake_s=T0, opening_max=OPENING_MAX),
                    GoodFeps.open, codec.encode(codec.hello()), codec.encode(codec.hello())[:7], logging.INFO,
                    "handshake_s"),
}


@pytest.fixture(params=sorted(PROTOS))
def proto(request: pytest.FixtureRequest) -> Proto:
    return PROTOS[request.param]


# --- the bad peers --------------------------------------------------------------------------------------


class RawPeer:
    """One TCP connection driven by hand: plain octets, or TLS through an `ssl.SSLObject` over memory BIOs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.peer = f"127.0.0.1:{writer.get_extra_info('sockname')[1]}"  # as the server names it
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls: ssl.SSLObject | None = None

    @classmethod
    async def open(cls, port: int) -> RawPeer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def client_hello(self, ctx: ssl.SSLContext) -> bytes:
        """Start a TLS handshake: -> the ClientHello to send."""
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.out.read()

    async def handshake(self, ctx: ssl.SSLContext) -> None:
        self.writer.write(self.client_hello(ctx))
        assert self.tls is not None
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                raise ConnectionResetError("closed during the handshake")
            self.inc.write(data)
            try:
                self.tls.do_handshake()
                self.writer.write(self.out.read())
                return
            except ssl.SSLWantReadError:
                self.writer.write(self.out.read())

    def send(self, data: bytes) -> None:
        """`data` inside TLS records."""
        assert self.tls is not None
        self.tls.write(data)
        self.writer.write(self.out.read())

    async def closed_after(self, limit: float) -> float:
        """Read (and drop) until the server closes the connection: -> how long that took; fails after `limit`."""
        t = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(self.reader.read(65536), limit - (time.monotonic() - t)):
                pass
        took = time.monotonic() - t
        self.writer.transport.abort()  # this end's socket (the test counts the process's descriptors)
        return took

    def abort(self) -> None:
        self.writer.transport.abort()


# --- the scene: a server, its good master, and what must hold after a bad peer -----------------------------


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Scene:
    srv: ForwardServer
    good: Any
    caplog: pytest.LogCaptureFixture
    fds: int
    tasks: int

    @property
    def port(self) -> int:
        return self.srv.port  # type: ignore[attr-defined,no-any-return]

    async def on_time(self) -> None:
        """The good master gets a change within ON_TIME_S."""
        self.value = getattr(self, "value", 0) + 1
        took = await self.good.event_s(self.srv, float(self.value))
        assert took < ON_TIME_S, f"an event took {took:.3f} s to reach the good master"

    def lines(self, peer: str, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.levelno >= level and peer in r.getMessage()]

    async def check(self, peer: str, key: str, *words: str, level: int = logging.WARNING) -> str:
        """After a bad peer's connection closed: exactly one line at `level` or above names `peer` and holds
        `key` (and `words`), no other warning names it; no traceback, no error; the good master still on
        time; the process's descriptors and tasks back where they were. -> that line."""
        end = time.monotonic() + 2
        while (fds() > self.fds or len(asyncio.all_tasks()) > self.tasks) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        bad = [f"{r.name}: {r.getMessage()}" for r in self.caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not bad
        await self.on_time()
        assert (fds(), len(asyncio.all_tasks())) == (self.fds, self.tasks), "descriptors or tasks leaked"
        everything = [r.getMessage() for r in self.caplog.records]
        lines = [m for m in self.lines(peer, level) if key.lower() in m.lower()]
        assert len(lines) == 1, everything
        assert all(key.lower() in m.lower() for m in self.lines(peer)), everything
        for w in words:
            assert w.lower() in lines[0].lower(), lines[0]
        return lines[0]


@contextlib.asynccontextmanager
async def scene(proto: Proto, caplog: pytest.LogCaptureFixture, certs: Path, mutual: bool = False,
                tls: bool = True, ctx: ssl.SSLContext | None = None, who: str = "master",
                client: ssl.SSLContext | None = None) -> AsyncIterator[Scene]:
    """A started server (its context `ctx`, else `server_ctx`) and its good master (certificate `who`, or the
    client context `client`)."""
    caplog.set_level(logging.INFO)
    srv = proto.make((ctx or server_ctx(certs, mutual)) if tls else None)
    await srv.start()
    good = None
    try:
        srv.load_image([s104.upd(1001, 0.0)] if proto.name == "se104s" else [sef.upd(1, 0.0)])
        good = await proto.good(srv.port, (client or client_ctx(certs, who)) if tls else None)  # type: ignore[attr-defined]
        sc = Scene(srv, good, caplog, fds(), len(asyncio.all_tasks()))
        await sc.on_time()
        yield sc
        await good.close()  # and the good master leaves as a master does: no traceback either
        good = None
        end = time.monotonic() + 2
        while srv.clients() and time.monotonic() < end:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not srv.clients()
        assert not [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    finally:
        if good is not None:
            await good.close()
        await srv.stop()


# --- the cases ------------------------------------------------------------------------------------------


async def test_a_tls_master_that_leaves(proto: Proto, caplog, certs) -> None:
    """A master over TLS connects, gets an event, closes its connection: one line says it left, no
    traceback (main: Python 3.11's TLS transport, closed a second time by the server, forgot its connection,
    and the server's cleanup raised AttributeError, logged by asyncio as an unhandled exception)."""
    async with scene(proto, caplog, certs) as sc:
        pass  # its good master connects and gets an event; it leaves as the scene ends (checked below)
    assert len(sc.lines("left (closed by the master)", logging.INFO)) == 1


@pytest.mark.parametrize("first", ["protocol", "garbage"])
async def test_plaintext_on_the_tls_port(proto: Proto, first: str, caplog, certs) -> None:
    """A master without TLS (its STARTDT / hello in the clear), or garbage: closed at once, one line."""
    async with scene(proto, caplog, certs) as sc:
        bad = await RawPeer.open(sc.port)
        bad.writer.write(proto.plain_start if first == "protocol" else b"\x00\xff" * 40)
        assert await bad.closed_after(T0) < T0 / 2
        await sc.check(bad.peer, "TLS handshake failed", "is not TLS")
        assert sc.srv.counts.tls_handshakes_failed == 1


async def test_a_clienthello_on_the_plain_port(proto: Proto, caplog, certs) -> None:
    """A TLS master at a server without [tls]: closed at once, the line says it looks like TLS."""
    async with scene(proto, caplog, certs, tls=False) as sc:
        bad = await RawPeer.open(sc.port)
        bad.writer.write(bad.client_hello(client_ctx(certs)))
        assert await bad.closed_after(T0) < T0 / 2
        await sc.check(bad.peer, "TLS ClientHello", "no [tls] cert", level=proto.error_level)


@pytest.mark.parametrize("garbage", [bytes(range(256)) * 4, b"\x17\x03\x03\x01\x00" + bytes(range(256))],
                         ids=["no record", "a forged record"])
async def test_garbage_under_tls_after_the_handshake(proto: Proto, garbage: bytes, caplog, certs) -> None:
    """After a good handshake (and a good first frame), octets that are no TLS record, or an application
    data record that is not ours (its MAC fails): that connection is closed with one warning."""
    async with scene(proto, caplog, certs) as sc:
        bad = await RawPeer.open(sc.port)
        await bad.handshake(client_ctx(certs))
        bad.send(proto.plain_start)
        bad.writer.write(garbage)
        assert await bad.closed_after(T0) < T0 / 2
        await sc.check(bad.peer, "TLS record not valid")


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01"], ids=["nothing", "a record header"])
async def test_a_peer_that_goes_away_during_the_handshake(proto: Proto, sent: bytes, caplog, certs) -> None:
    """A TCP port probe (connect, close without a word) or a master closing inside its ClientHello: one
    INFO line says it closed during the handshake, no warning (a monitoring probe every few seconds must
    not raise one a minute)."""
    async with scene(proto, caplog, certs) as sc:
        bad = await RawPeer.open(sc.port)
        bad.writer.write(sent)
        await asyncio.sleep(0.05)
        bad.writer.close()
        await sc.check(bad.peer, "TLS handshake failed", "closed the connection during the handshake",
                       level=logging.INFO)
        assert not sc.lines(bad.peer)


async def test_a_stalled_handshake_ends_at_t0(proto: Proto, caplog, certs) -> None:
    """Half a ClientHello, then silence: closed at t0, one line; the good master is served on time
    meanwhile. (Silence from the start: the fifty below.)"""
    async with scene(proto, caplog, certs) as sc:
        bad = await RawPeer.open(sc.port)
        hello = bad.client_hello(client_ctx(certs))
        bad.writer.write(hello[: len(hello) // 2])
        closing = asyncio.ensure_future(bad.closed_after(T0 + 1))
        await asyncio.sleep(T0 / 4)
        await sc.on_time()
        assert T0 - 0.1 < await closing < T0 + 0.5
        await sc.check(bad.peer, "TLS handshake failed", f"not completed within {T0:g} s ({proto.bound})")
        assert sc.srv.counts.tls_handshakes_failed == 1  # /metrics: fep_forwarder_tls_handshakes_failed_total


async def test_fifty_stalled_handshakes_hold_nothing_up(proto: Proto, caplog, certs) -> None:
    """50 connections stall their handshakes at once (half of them silent from the start, half inside their
    ClientHello): a master connecting meanwhile gets in and gets its events on time; all 50 are closed at
    t0; one line for their address (not 50)."""
    async with scene(proto, caplog, certs) as sc:
        bad = [await RawPeer.open(sc.port) for _ in range(50)]
        half = bad[0].client_hello(client_ctx(certs))[:40]
        for i, b in enumerate(bad):
            if i % 2:
                b.writer.write(half)
        t = time.monotonic()
        late = await proto.good(sc.port, client_ctx(certs))
        try:
            assert time.monotonic() - t < ON_TIME_S, "the handshake of a master waited behind stalled ones"
            for i in range(3):
                took = await late.event_s(sc.srv, 5.0 + i)
                assert took < ON_TIME_S
                await sc.on_time()
            closed = await asyncio.gather(*(b.closed_after(T0 + 1) for b in bad))
            assert max(closed) < T0 + 0.5
        finally:
            await late.close()
        lines = [m for m in sc.lines("127.0.0.1:") if "TLS handshake" in m]
        assert len(lines) == 1, lines
        logged = re.search(r"master (127\.0\.0\.1:\d+)", lines[0])
        assert logged is not None and logged[1] in {b.peer for b in bad}
        await sc.check(logged[1], "TLS handshake failed", f"not completed within {T0:g} s")


@pytest.mark.parametrize("who", [None, "intruder"])
async def test_mutual_tls_refuses_a_master_without_a_certificate_of_the_ca(proto: Proto, who: str | None,
                                                                           caplog, certs) -> None:
    """[tls] ca set: no client certificate, or one of another CA: closed, one line saying so; the master
    whose certificate the CA signed is served on."""
    async with scene(proto, caplog, certs, mutual=True) as sc:
        bad = await RawPeer.open(sc.port)
        with contextlib.suppress(ConnectionError, ssl.SSLError):  # TLS 1.3: the client finishes first
            await bad.handshake(client_ctx(certs, who))
            bad.send(proto.plain_start)
        assert await bad.closed_after(T0) < T0 / 2
        await sc.check(bad.peer, "TLS handshake failed", "certificate")


async def test_an_abrupt_close_mid_frame(proto: Proto, caplog, certs) -> None:
    """After the handshake, half a frame, then the TCP connection dropped without close_notify: that
    connection ends, one line says it left (a master gone, not a warning), the half frame is dropped."""
    async with scene(proto, caplog, certs) as sc:
        bad = await RawPeer.open(sc.port)
        await bad.handshake(client_ctx(certs))
        bad.send(proto.partial)
        await asyncio.sleep(0.05)
        bad.abort()
        await sc.check(bad.peer, "left (closed by the master)", level=logging.INFO)
        assert len(sc.srv.clients()) == 1  # the good master only


async def test_a_master_that_never_answers_close_notify_is_let_go(proto: Proto, caplog, certs) -> None:
    """A master that sends a malformed frame after the handshake, then neither answers the server's
    close_notify nor closes: the server lets its socket go within about a second, as with plain TCP (not
    after asyncio's 30 s TLS shutdown timeout), its handler and descriptor gone."""
    async with scene(proto, caplog, certs) as sc:
        bad = await RawPeer.open(sc.port)
        await bad.handshake(client_ctx(certs))
        bad.send(b"\x68\x01\x00\x00" if proto.name == "se104s" else b"\x00\x00\x00\x00")
        assert await bad.closed_after(5) < 1.5
        await sc.check(bad.peer, "length", level=proto.error_level)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls_below_1_2_is_refused(proto: Proto, version: ssl.TLSVersion, caplog, certs) -> None:
    """IEC 62351-3: TLS 1.2 at least. A master offering only 1.0 or 1.1 is refused with one line."""
    async with scene(proto, caplog, certs) as sc:
        ctx = client_ctx(certs)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # this OpenSSL would not even offer them otherwise
        ctx.minimum_version = ctx.maximum_version = version
        bad = await RawPeer.open(sc.port)
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await bad.handshake(ctx)
        await bad.closed_after(T0)
        await sc.check(bad.peer, "TLS handshake failed", "TLS version below 1.2")


async def test_an_address_not_allowed_costs_no_handshake(proto: Proto, caplog, certs) -> None:
    """T004_RTU.ALLOW is checked before the handshake: a refused address gets its connection closed without
    a ServerHello (the server spends no handshake on it), logged once as refused."""
    caplog.set_level(logging.INFO)
    srv = proto.make(server_ctx(certs), ("10.9.9.9",))
    await srv.start()
    try:
        bad = await RawPeer.open(srv.port)  # type: ignore[attr-defined]
        bad.writer.write(bad.client_hello(client_ctx(certs)))
        got = b""
        with contextlib.suppress(ConnectionError):
            got = await asyncio.wait_for(bad.reader.read(65536), T0)
        bad.abort()
        assert got == b"", "the server answered the ClientHello of an address ALLOW refuses"
        assert srv.counters()["connections_refused"] == 1
        assert not [r for r in caplog.records if "handshake" in r.getMessage()]
    finally:
        await srv.stop()


async def test_stop_closes_the_connections_in_their_handshake(proto: Proto, certs) -> None:
    """A server stopped while a handshake is stalled closes that connection at once, no task left behind
    (the handshake runs in the connection's handler, which `stop` ends)."""
    srv = proto.make(server_ctx(certs))
    await srv.start()
    try:
        bad = await RawPeer.open(srv.port)  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
    finally:
        await srv.stop()
    assert await bad.closed_after(T0 / 2) < T0 / 2


async def s_client(port: int, certs: Path, *args: str) -> asyncio.subprocess.Process:
    """`openssl s_client` connected to 127.0.0.1:`port` as the master (its certificate), handshake done."""
    p = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(certs / "server-cert.pem"),
        "-cert", str(certs / "master-cert.pem"), "-key", str(certs / "master-key.pem"), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert p.stdout is not None
    await asyncio.wait_for(p.stdout.readuntil(b"Verify return code"), 5)
    await asyncio.wait_for(p.stdout.readuntil(b"---\n"), 5)
    return p


async def output_until(p: asyncio.subprocess.Process, *marks: bytes, within: float = 3) -> bytes:
    """What `p` writes until one of `marks` (or its end)."""
    assert p.stdout is not None
    out, end = b"", time.monotonic() + within
    while not any(m in out for m in marks):
        chunk = await asyncio.wait_for(p.stdout.read(4096), end - time.monotonic())
        if not chunk:
            break
        out += chunk
    return out


ANSWERS = (c.u_frame(c.STARTDT_CON), b'"t":"welcome"')


async def test_a_key_update_keeps_the_connection(proto: Proto, caplog, certs) -> None:
    """TLS 1.3 KeyUpdate (how a master renews its session keys under TLS 1.3; `openssl s_client`'s `K`:
    the server must update its keys too): the connection goes on, its first frame is answered; no line
    above INFO. (se104s did so on main; sefeps logged a traceback as the master left, see
    `test_a_tls_master_that_leaves`.)"""
    async with scene(proto, caplog, certs) as sc:
        p = await s_client(sc.port, certs, "-tls1_3")
        assert p.stdin is not None
        try:
            p.stdin.write(b"K\n")
            assert b"KEYUPDATE" in await output_until(p, b"KEYUPDATE")
            p.stdin.write(proto.plain_start)
            out = await output_until(p, *ANSWERS)
            assert any(a in out for a in ANSWERS), out[-300:]
        finally:
            p.kill()
            await p.wait()
        await sc.on_time()
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_renegotiation_is_refused(proto: Proto, caplog, certs) -> None:
    """TLS 1.2 renegotiation started by the master (`openssl s_client`'s `R`) is refused with a
    no_renegotiation alert (OpenSSL 3's default for a server; a renegotiation costs the server a
    handshake's CPU at the peer's will): that master gives up with a fatal alert, closing its connection;
    one warning says so; nothing else is affected. (The refusal is what main did; the line is new.)"""
    async with scene(proto, caplog, certs) as sc:
        p = await s_client(sc.port, certs, "-tls1_2")
        assert p.stdin is not None
        try:
            p.stdin.write(b"R\n")
            out = await output_until(p, b"no renegotiation")
            assert b"RENEGOTIATING" in out and b"no renegotiation" in out, out[-300:]
            await asyncio.wait_for(p.wait(), 3)
        finally:
            if p.returncode is None:
                p.kill()
                await p.wait()
        end = time.monotonic() + 2
        while len(sc.srv.clients()) > 1 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        alerts = [m for m in sc.lines("127.0.0.1:") if "ended TLS with a fatal alert" in m]
        assert len(alerts) == 1, alerts
        logged = re.search(r"master (127\.0\.0\.1:\d+)", alerts[0])
        assert logged is not None
        await sc.check(logged[1], "ended TLS with a fatal alert")


def test_failed_handshakes_are_logged_once_a_minute_per_address_and_reason(caplog) -> None:
    """The limiter of those lines: the first failure of an address for a reason is logged, the next ones
    within a minute only counted, and said with the next line logged for that address and reason; another
    address, or another reason, has lines of its own."""
    log = base.PeerFailureLog(logging.getLogger("t"), "se104s RTU 1", "TLS handshake failed")
    caplog.set_level(logging.INFO)
    log.failed("10.0.0.1:1000", "not TLS", now=0.0)
    log.failed("10.0.0.1:1001", "not TLS", now=10.0)
    log.failed("10.0.0.1:1002", "not TLS", now=20.0)
    log.failed("10.0.0.2:1000", "not TLS", now=20.0)
    log.failed("10.0.0.1:1003", "went away", now=30.0, quiet=True)
    log.failed("10.0.0.1:1004", "went away", now=40.0, quiet=True)
    log.failed("10.0.0.1:1005", "not TLS", now=70.0)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "se104s RTU 1: master 10.0.0.1:1000: TLS handshake failed (not TLS): connection closed"),
        ("WARNING", "se104s RTU 1: master 10.0.0.2:1000: TLS handshake failed (not TLS): connection closed"),
        ("INFO", "se104s RTU 1: master 10.0.0.1:1003: TLS handshake failed (went away): connection closed"),
        ("WARNING", "se104s RTU 1: master 10.0.0.1:1005: TLS handshake failed (not TLS): connection closed "
         "(2 more from 10.0.0.1 since its last such line)")]


# --- the TLS policy: [tls] crl, ciphers, min_version ---------------------------------------------------------


def crl_ctx(certs: Path, crl: Path) -> ssl.SSLContext:
    """Mutual TLS with `ca` (which signed `member` and `revoked`) and the CRL file `crl`."""
    return server_ctx(certs, ca="ca-cert.pem", crl=crl.name)


async def refused(sc: Scene, ctx: ssl.SSLContext, *words: str) -> None:
    """A master with the client context `ctx` is refused at its handshake: one line with `words`, counted."""
    before = sc.srv.counts.tls_handshakes_failed
    bad = await RawPeer.open(sc.port)
    with contextlib.suppress(ConnectionError, ssl.SSLError):  # TLS 1.3: the client finishes first
        await bad.handshake(ctx)
        bad.send(b"\x68\x04\x07\x00\x00\x00")
    assert await bad.closed_after(T0) < T0 / 2
    await sc.check(bad.peer, "TLS handshake failed", *words)
    assert sc.srv.counts.tls_handshakes_failed == before + 1  # /metrics: fep_forwarder_tls_handshakes_failed_total


async def test_a_revoked_master_is_refused_at_its_handshake(proto: Proto, caplog, certs) -> None:
    """[tls] crl: the master whose certificate the CRL revokes is refused at its handshake, the line saying
    so and naming it, counted in tls_handshakes_failed; the master of the same CA not revoked is served."""
    crl = write_crl(certs, "ca", (2,), out="crl-revoking.pem")
    async with scene(proto, caplog, certs, ctx=crl_ctx(certs, crl), who="member") as sc:
        await refused(sc, client_ctx(certs, "revoked"), "certificate revoked")


async def test_a_master_of_a_ca_without_crl_is_refused(proto: Proto, caplog, certs) -> None:
    """[tls] crl checks the master's own certificate against its issuer's CRL (VERIFY_CRL_CHECK_LEAF): a CA of
    [tls] ca that has no CRL in the file has its masters refused, the line saying why."""
    crl = write_crl(certs, "ca", (), out="crl-of-ca-only.pem")
    (certs / "two-cas.pem").write_bytes((certs / "ca-cert.pem").read_bytes() + (certs / "master-cert.pem").read_bytes())
    ctx = server_ctx(certs, ca="two-cas.pem", crl=crl.name)
    async with scene(proto, caplog, certs, ctx=ctx, who="member") as sc:
        await refused(sc, client_ctx(certs, "master"), "no CRL of its certificate's issuer")


async def one_closed(sc: Scene, policy: TlsPolicy, doomed: Any, why: str, left: str) -> None:
    """The [tls] files changed: `policy` takes them and gives the server the new context, which closes the
    session of `doomed` (a good master) and no other: one WARNING naming it with `why` (`... : connection
    closed`), then one line that it left, with `left`."""
    assert policy.refresh()
    assert policy.apply([sc.srv]) == 1
    assert sc.srv.tls is policy.context
    end = time.monotonic() + 2
    while len(sc.srv.clients()) > 1 and time.monotonic() < end:
        await asyncio.sleep(0.01)
    assert len(sc.srv.clients()) == 1
    await doomed.close()
    await asyncio.sleep(0.05)
    lines = [m for m in sc.lines("127.0.0.1:") if why in m]
    assert len(lines) == 1 and lines[0].endswith(f"{why}: connection closed"), lines
    peer = re.search(r"master (127\.0\.0\.1:\d+)", lines[0])
    assert peer is not None
    gone = [m for m in sc.lines(peer[1], logging.INFO) if "left" in m]
    assert len(gone) == 1 and left in gone[0], gone


async def test_a_new_crl_is_taken_while_running(proto: Proto, caplog, certs) -> None:
    """The CRL file replaced while the servers run: `TlsPolicy.refresh` takes it, `apply` gives the servers
    its context and closes the open session of the master it revokes (one line); the other master is kept
    and served on time; the revoked one is refused at its next handshake. A file replaced by garbage is not
    taken (one warning, however often it is looked at): the CRLs before still apply."""
    write_crl(certs, "ca", (), out="crl-live.pem")
    policy = TlsPolicy(server_cfg(ca="ca-cert.pem", crl="crl-live.pem"), certs)
    assert policy.context is not None
    async with scene(proto, caplog, certs, ctx=policy.context, who="member") as sc:
        assert not policy.refresh()  # unchanged
        doomed = await proto.good(sc.port, client_ctx(certs, "revoked"))  # not revoked yet: served
        await doomed.event_s(sc.srv, 0.5)
        write_crl(certs, "ca", (2,), out="crl-live.pem")
        await one_closed(sc, policy, doomed, "certificate revoked: the new [tls] crl lists it",
                         "left (certificate revoked by the new [tls] crl)")
        await sc.on_time()
        await refused(sc, client_ctx(certs, "revoked"), "certificate revoked")
        taken = policy.context
        (certs / "crl-live.pem").write_text("-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n")
        assert not policy.refresh() and not policy.refresh()
        kept = [m for m in sc.lines("crl-live.pem") if "not taken" in m]
        assert len(kept) == 1 and "not valid DER" in kept[0], kept
        assert policy.context is taken


def test_a_crl_that_expires_while_running_is_said_once(caplog, certs) -> None:
    """Its nextUpdate a day ahead: one WARNING (not one per look) to put the next one there; passed and no
    newer CRL in the file: one WARNING that every new handshake is refused until a newer one is there."""
    write_crl(certs, "ca", (), out="crl-ending.pem", next_update="20990101000000Z")
    policy = TlsPolicy(server_cfg(ca="ca-cert.pem", crl="crl-ending.pem"), certs)
    caplog.set_level(logging.INFO)
    for at in ((2098, 12, 30), (2098, 12, 31, 1), (2098, 12, 31, 2), (2099, 1, 2), (2099, 1, 3)):
        assert not policy.refresh(datetime.datetime(*at, tzinfo=datetime.UTC))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "expires at 2099-01-01 00:00:00 UTC" in lines[0] and "put a newer one" in lines[0], lines
    assert "expired at 2099-01-01 00:00:00 UTC" in lines[1] and "refused" in lines[1], lines


def test_a_crl_not_yet_valid_is_taken_when_its_time_comes(caplog, certs) -> None:
    """A replacement whose thisUpdate is still ahead (this host's clock behind the CA's) would make OpenSSL
    refuse every master: not taken (one WARNING), looked at again, taken once its thisUpdate has passed."""
    write_crl(certs, "ca", (), out="crl-next.pem")
    policy = TlsPolicy(server_cfg(ca="ca-cert.pem", crl="crl-next.pem"), certs)
    taken = policy.context
    caplog.set_level(logging.INFO)
    write_crl(certs, "ca", (7,), out="crl-next.pem", last="20990101000000Z")
    for at in ((2098, 12, 31), (2098, 12, 31, 12)):
        assert not policy.refresh(datetime.datetime(*at, tzinfo=datetime.UTC))
    assert policy.context is taken
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "not valid before 2099-01-01 00:00:00 UTC" in lines[0], lines
    assert "not taken" in lines[0], lines
    assert policy.refresh(datetime.datetime(2099, 1, 1, 0, 0, 10, tzinfo=datetime.UTC))
    assert policy.context is not taken and any(7 in c.revoked for c in policy.crls)


@pytest.mark.parametrize("case", ["missing", "a certificate", "expired", "not yet valid", "not a CRL"])
def test_a_crl_file_that_cannot_be_used_is_one_line(certs, case: str) -> None:
    """At start (`tls_context`): one line naming the setting, the file and why (fep-forwarder: exit 2)."""
    name = {"missing": "no-such-crl.pem", "a certificate": "master-cert.pem"}.get(case, f"crl-{case}.pem")
    if case == "expired":
        write_crl(certs, "ca", (), out=name, next_update="20200102000000Z")
    elif case == "not yet valid":
        write_crl(certs, "ca", (), out=name, last="20990101000000Z")
    elif case == "not a CRL":
        (certs / name).write_text("nothing of PEM\n")
    with pytest.raises(ConfigError) as exc:
        server_ctx(certs, ca="ca-cert.pem", crl=name)
    assert str(exc.value).startswith(f"[tls] crl = '{name}': "), exc.value
    assert {"missing": "cannot load", "a certificate": "holds CERTIFICATE, not only X509 CRLs",
            "expired": "the CRL of fep-ca expired at 2020-01-02 00:00:00 UTC",
            "not yet valid": "the CRL of fep-ca is not valid before 2099-01-01 00:00:00 UTC (its thisUpdate",
            "not a CRL": "holds no PEM X509 CRL"}[case] in str(exc.value), exc.value


def test_an_invalid_cipher_string_is_one_line(certs) -> None:
    with pytest.raises(ConfigError) as exc:
        server_ctx(certs, ciphers="NO-SUCH-CIPHER")
    assert str(exc.value).startswith("[tls] ciphers = 'NO-SUCH-CIPHER': OpenSSL selects no cipher from it")


async def test_a_master_offering_only_a_cbc_cipher_is_refused(proto: Proto, caplog, certs) -> None:
    """[tls] ciphers' default (ECDHE with AES-GCM or ChaCha20): a TLS 1.2 master offering only ECDHE with
    AES-CBC (which Python's default list took) is refused, the line saying so."""
    ctx = client_ctx(certs)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256")
    async with scene(proto, caplog, certs) as sc:
        await refused(sc, ctx, "no cipher suite that [tls] ciphers allows")


async def test_min_version_1_3_refuses_a_tls_1_2_master(proto: Proto, caplog, certs) -> None:
    ctx = client_ctx(certs)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with scene(proto, caplog, certs, ctx=server_ctx(certs, min_version="1.3")) as sc:
        await refused(sc, ctx, "TLS version below 1.3")


@pytest.mark.parametrize("env,line", [
    ({"FEP_TLS_CRL": "cfg/none.pem"}, "[tls] crl = 'cfg/none.pem': cannot load {root}/cfg/none.pem: No such file "
                                      "or directory"),
    ({"FEP_TLS_CIPHERS": "RC4-MD5"}, "[tls] ciphers = 'RC4-MD5': OpenSSL selects no cipher from it"),
    ({"FEP_TLS_CRL": "crl.pem", "FEP_TLS_CA": ""}, "[tls] crl = 'crl.pem': needs ca"),
    ({"FEP_TLS_CERT": "{certs}/stale-cert.pem", "FEP_TLS_KEY": "{certs}/stale-key.pem"},
     "[tls] cert = '{certs}/stale-cert.pem': {certs}/stale-cert.pem: the certificate of fep-stale expired at "
     "2020-01-02 00:00:00 UTC (its notAfter): masters refuse it; put a renewed one there")])
def test_fep_forwarder_stops_with_one_line(certs, tmp_path: Path, env: dict[str, str], line: str) -> None:
    """The real fep-forwarder with such a [tls]: exit 2, its last line says why, no traceback."""
    make_cert_dated(certs, "stale", "20200101000000Z", "20200102000000Z")
    (tmp_path / "cfg").mkdir()
    shutil.copy(REPO / "cfg" / "syslod.cfg", tmp_path / "cfg")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FEP_")}
    p = subprocess.run(["fep-forwarder"], capture_output=True, text=True, timeout=30, check=False, env={
        **base_env, "FEPROOT": str(tmp_path), "FEP_LOG_DIR": "", "FEP_LOG_CONSOLE": "false",
        "FEP_TLS_CERT": str(certs / "server-cert.pem"), "FEP_TLS_KEY": str(certs / "server-key.pem"),
        "FEP_TLS_CA": str(certs / "ca-cert.pem"), **{k: v.format(certs=certs) for k, v in env.items()}})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert line.format(root=tmp_path, certs=certs) in p.stderr.strip().splitlines()[-1], p.stderr


@pytest.mark.parametrize("change", ["crl", "cert"])
async def test_the_forwarder_gives_its_servers_a_new_context(certs, monkeypatch, change: str) -> None:
    """The runner's `_watch_tls`: the CRL file replaced, or (without [tls] crl: before, nothing was watched
    then) the certificate and key, every TLS server gets the new context (and its revoked sessions closed)
    within a look; a server without TLS (modbus_trains) is left alone."""
    monkeypatch.setattr(app, "TLS_CHECK_S", 0.02)
    monkeypatch.setenv("FEPROOT", str(certs))
    if change == "crl":
        write_crl(certs, "ca", (), out="crl-runner.pem")
        cfg = server_cfg(ca="ca-cert.pem", crl="crl-runner.pem")
    else:
        make_cert_now(certs, "runner-next")
        install(certs, "master", "runner")
        cfg = server_cfg(cert="runner-cert.pem", key="runner-key.pem")
    fwd = app.Forwarder(cfg, asyncio.Event())

    class Srv:
        def __init__(self, tls: ssl.SSLContext | None) -> None:
            self.tls, self.checked = tls, 0

        def close_distrusted(self, distrusts: Callable[[bytes], tuple[str, str] | None]) -> int:
            self.checked += 1
            return 0

    tls, plain = Srv(fwd.tls), Srv(None)
    fwd.servers = {1: tls, 2: plain}  # type: ignore[dict-item]
    first = fwd.tls
    watch = asyncio.create_task(fwd._watch_tls())
    try:
        await asyncio.sleep(0.1)
        assert tls.tls is first and not tls.checked  # unchanged file: nothing done
        if change == "crl":
            write_crl(certs, "ca", (2,), out="crl-runner.pem")
        else:
            install(certs, "runner-next", "runner")
        end = time.monotonic() + 2
        while tls.tls is first and time.monotonic() < end:
            await asyncio.sleep(0.01)
        assert tls.tls is fwd.tls is not first and tls.checked == 1
        assert plain.tls is None and not plain.checked
    finally:
        fwd.stop.set()
        await watch
        for r in (fwd.master, fwd.sink.master, fwd.local_rw):
            await r.aclose()


def test_a_revoked_master_cannot_resume_a_session_of_before(certs) -> None:
    """TLS 1.3 session tickets skip the certificate check: a master revoked by a new CRL must not come back
    with a ticket the server gave it before. The new CRL makes a new context (new ticket keys), so its ticket
    is not taken and its full handshake is refused; with the context before, the ticket resumes."""
    write_crl(certs, "ca", (), out="crl-tickets.pem")
    policy = TlsPolicy(server_cfg(ca="ca-cert.pem", crl="crl-tickets.pem"), certs)
    client = client_ctx(certs, "revoked")
    server: list[str] = []  # what the server side of each connection ended with

    def serve(ctx: ssl.SSLContext, sock: socket.socket) -> None:
        try:
            with ctx.wrap_socket(sock, server_side=True) as s:
                s.sendall(b"x")
                s.recv(1)
            server.append("served")
        except (ssl.SSLError, OSError) as exc:
            server.append(tls_failure(exc, 1, "t0"))

    def connect(session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession | None, bool]:
        """One connection over a socket pair: -> (its session, whether it was resumed)."""
        assert policy.context is not None
        ours, theirs = socket.socketpair()
        t = threading.Thread(target=serve, args=(policy.context, ours))
        t.start()
        try:
            with client.wrap_socket(theirs, server_hostname="127.0.0.1", session=session) as c:
                c.recv(1)  # the TLS 1.3 tickets come after the handshake
                c.sendall(b"y")
                return c.session, c.session_reused
        except (ssl.SSLError, OSError):
            return None, False
        finally:
            t.join(5)
            ours.close()

    first, resumed = connect()
    assert first is not None and not resumed
    again, resumed = connect(first)
    assert again is not None and resumed  # the same context: its ticket is taken
    write_crl(certs, "ca", (2,), out="crl-tickets.pem")
    assert policy.refresh()
    assert connect(again) == (None, False)
    assert server == ["served", "served", "certificate revoked: [tls] crl lists it"]


# --- [tls] cert, key and ca taken anew while running ------------------------------------------------------


def install(certs: Path, src: str, dst: str, kinds: tuple[str, ...] = ("cert", "key")) -> None:
    """`<src>-cert.pem` and its key put in place of `<dst>-cert.pem` and `<dst>-key.pem`, each written beside
    and renamed over (as an operator replaces them)."""
    for kind in kinds:
        (certs / f"{dst}-{kind}.pem.new").write_bytes((certs / f"{src}-{kind}.pem").read_bytes())
        (certs / f"{dst}-{kind}.pem.new").rename(certs / f"{dst}-{kind}.pem")


def trusting(certs: Path, *names: str, who: str | None = None) -> ssl.SSLContext:
    """A master's context that trusts the server certificates `<name>-cert.pem` (and presents `who`'s)."""
    ctx = ssl.create_default_context()
    for name in names:
        ctx.load_verify_locations(certs / f"{name}-cert.pem")
    if who:
        ctx.load_cert_chain(certs / f"{who}-cert.pem", certs / f"{who}-key.pem")
    return ctx


def warnings_with(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and all(w in r.getMessage() for w in words)]


async def test_a_new_server_certificate_is_taken_while_running(proto: Proto, caplog, certs) -> None:
    """[tls] cert and key replaced while the servers run (renewed, with a new key): `refresh` takes them (one
    INFO line), `apply` gives the servers the new context. The master connected before keeps its session and
    is served on time; a new master gets the new certificate: one trusting only it is served, one trusting
    only the old one refuses it. Before, [tls] cert and key were read at start only."""
    make_cert_now(certs, "old-server", days=30)
    make_cert_now(certs, "new-server", days=365)
    install(certs, "old-server", "live-server")
    policy = TlsPolicy(server_cfg(cert="live-server-cert.pem", key="live-server-key.pem"), certs)
    assert policy.context is not None
    async with scene(proto, caplog, certs, ctx=policy.context, client=trusting(certs, "old-server", "new-server")) as sc:
        assert not policy.refresh()  # unchanged
        install(certs, "new-server", "live-server")
        assert policy.refresh()
        assert policy.apply([sc.srv]) == 0 and sc.srv.tls is policy.context
        await sc.on_time()  # the session from before goes on
        fresh = await proto.good(sc.port, trusting(certs, "new-server"))
        await fresh.event_s(sc.srv, 0.5)
        await fresh.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await proto.good(sc.port, trusting(certs, "old-server"))
        await sc.on_time()
    taken = [r.getMessage() for r in caplog.records if "new certificate taken" in r.getMessage()]
    assert len(taken) == 1 and "(fep-new-server, valid until " in taken[0], taken


@pytest.mark.parametrize("case", ["cert half written", "cert of another key", "expired", "not valid yet",
                                  "ca half written", "ca not certificates", "ca of crls only"])
def test_a_changed_tls_file_that_cannot_be_used_is_not_taken(caplog, certs, case: str) -> None:
    """A change of [tls] cert, key or ca that cannot be used is not taken: the context before still applies, one
    WARNING (however often it is looked at) says why; once the files are right they are taken. Before, the
    change was never looked at (without [tls] crl) or taken only at the next start, which it stopped."""
    make_cert_now(certs, "next-server")
    install(certs, "master", "live-server")
    (certs / "live-ca.pem").write_bytes((certs / "ca-cert.pem").read_bytes())
    policy = TlsPolicy(server_cfg(cert="live-server-cert.pem", key="live-server-key.pem", ca="live-ca.pem"), certs)
    before = policy.context
    caplog.set_level(logging.INFO)
    later = None  # the clock at which the refused change is taken
    if case == "cert half written":
        (certs / "live-server-cert.pem").write_bytes((certs / "next-server-cert.pem").read_bytes()[:300])
        why = "[tls] cert = 'live-server-cert.pem', key = 'live-server-key.pem': cannot load"
    elif case == "cert of another key":  # the certificate replaced, its key not yet
        install(certs, "next-server", "live-server", ("cert",))
        why = "KEY_VALUES_MISMATCH"
    elif case == "expired":
        make_cert_dated(certs, "old-server", "20200101000000Z", "20200102000000Z")
        install(certs, "old-server", "live-server")
        why = "the certificate of fep-old-server expired at 2020-01-02 00:00:00 UTC (its notAfter)"
    elif case == "not valid yet":
        make_cert_dated(certs, "early-server", "20990101000000Z", "21000101000000Z")
        install(certs, "early-server", "live-server")
        why = "the certificate of fep-early-server is not valid before 2099-01-01 00:00:00 UTC (its notBefore"
        later = datetime.datetime(2099, 1, 1, 0, 0, 10, tzinfo=datetime.UTC)
    elif case == "ca of crls only":  # OpenSSL takes such a file, and then refuses every master
        write_crl(certs, "ca", (), out="live-ca.pem")
        why = "live-ca.pem holds no certificate: every master would be refused"
    else:
        good = (certs / "ca-cert.pem").read_bytes() + (certs / "master-cert.pem").read_bytes()
        (certs / "live-ca.pem").write_bytes(good[:len(good) - 200] if case == "ca half written" else b"garbage\n")
        why = "[tls] ca = 'live-ca.pem': cannot load"
    assert not policy.refresh() and not policy.refresh()
    assert policy.context is before
    refused = warnings_with(caplog, "not taken")
    assert len(refused) == 1 and why in refused[0] and "taken before still apply" in refused[0], refused
    if later is None:  # the files put right
        install(certs, "next-server", "live-server")
        (certs / "live-ca.pem").write_bytes((certs / "ca-cert.pem").read_bytes())
    assert policy.refresh(later)
    assert policy.context is not before and len(warnings_with(caplog, "not taken")) == 1


def test_the_server_certificate_is_said_to_expire_a_week_before_and_when_it_does(caplog, certs) -> None:
    """A server certificate renewed yearly: one WARNING a week before its notAfter (not one per look), one when
    it passes (masters that check it refuse the handshakes from then on); none before."""
    make_cert_now(certs, "yearly", days=365)
    policy = TlsPolicy(server_cfg(cert="yearly-cert.pem", key="yearly-key.pem"), certs)
    assert policy.cert is not None
    end = policy.cert.not_after
    caplog.set_level(logging.INFO)
    for before in (30, 8, 6.9, 6, 1, 1e-5, -1e-5, -1, -2):
        assert not policy.refresh(end - datetime.timedelta(days=before))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    when = end.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert lines[0].startswith("[tls] cert = 'yearly-cert.pem': the server certificate of fep-yearly expires at "
                               f"{when} (its notAfter): put a renewed one"), lines
    assert f"expired at {when}" in lines[1] and "refuses the next handshakes" in lines[1], lines


def test_each_ca_certificate_is_said_to_expire_a_week_before_and_when_it_does(caplog, certs) -> None:
    """[tls] ca holding a CA renewed yearly and one valid until 2100 or so: one WARNING naming the first a week
    before its notAfter, one when it passes (every master whose certificate chains to it is refused from then
    on), none for the other; a CA renewed with the same key, the former one left in the file, is said only
    when the renewed one expires. Before, a CA's expiry was never said."""
    make_cert_now(certs, "yearca", days=365)
    make_cert_now(certs, "dayca", days=1)
    renewed = renew_cert_now(certs, "dayca", "dayca-renewed.pem")  # fep-dayca again: the same key, 2 days
    (certs / "cas-expiring.pem").write_bytes(b"".join((certs / name).read_bytes() for name in (
        "yearca-cert.pem", renewed.name, "server-cert.pem", "dayca-cert.pem")))  # the renewed one first
    policy = TlsPolicy(server_cfg(ca="cas-expiring.pem"), certs)
    caplog.set_level(logging.INFO)
    ca_end = load_cert(server_cfg(cert=renewed.name), certs).not_after  # a day after the former's
    for before in (3, -1, -3):  # the former fep-dayca near its end, then past it; the renewed one not yet near
        assert not policy.refresh(ca_end - datetime.timedelta(days=1, hours=before))
    assert not [r.getMessage() for r in caplog.records]
    assert not policy.refresh(ca_end + datetime.timedelta(seconds=1))
    assert not policy.refresh(ca_end + datetime.timedelta(seconds=2))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "the CA certificate of fep-dayca expired at" in lines[0], lines
    caplog.clear()
    end = load_cert(server_cfg(cert="yearca-cert.pem"), certs).not_after
    for before in (30, 8, 6.9, 6, 1, 1e-5, -1e-5, -1, -2):
        assert not policy.refresh(end - datetime.timedelta(days=before))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    when = end.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert lines[0] == (f"[tls] ca = 'cas-expiring.pem': the CA certificate of fep-yearca expires at {when} (its "
                        "notAfter): put a renewed one in that file before, or every master whose certificate "
                        "chains to it will be refused"), lines
    assert lines[1].startswith(f"[tls] ca = 'cas-expiring.pem': the CA certificate of fep-yearca expired at {when} "
                               "(its notAfter): every master whose certificate chains to it is refused"), lines


@pytest.mark.parametrize("case", ["expired", "not valid yet"])
def test_a_server_certificate_out_of_its_validity_stops_the_start_with_one_line(certs, case: str) -> None:
    """At start (`tls_context`): one line naming the setting, the file and why (fep-forwarder: exit 2), as for
    a CRL; before, the forwarder started and every master that checks the certificate refused it."""
    if case == "expired":
        make_cert_dated(certs, "stale", "20200101000000Z", "20200102000000Z")
    else:
        make_cert_dated(certs, "stale", "20990101000000Z", "21000101000000Z")
    with pytest.raises(ConfigError) as exc:
        server_ctx(certs, cert="stale-cert.pem", key="stale-key.pem")
    assert str(exc.value).startswith("[tls] cert = 'stale-cert.pem': "), exc.value
    assert {"expired": "the certificate of fep-stale expired at 2020-01-02 00:00:00 UTC (its notAfter): masters "
                       "refuse it; put a renewed one there",
            "not valid yet": "the certificate of fep-stale is not valid before 2099-01-01 00:00:00 UTC (its "
                             "notBefore"}[case] in str(exc.value), exc.value


async def test_a_new_ca_file_closes_the_sessions_it_no_longer_trusts(proto: Proto, caplog, certs) -> None:
    """[tls] ca replaced while the servers run. Its CA certificate renewed (the same name and key): every
    session kept. The CA of a master taken out (as a compromised CA is): that master's open session is closed
    like a revoked one (one WARNING, then `left (certificate not trusted by the new [tls] ca)`) and its next
    handshake refused; the master of the CA kept is served on time. Before, the file was read at start only."""
    renew_cert_now(certs, "ca", "ca-renewed.pem")
    (certs / "live-cas.pem").write_bytes((certs / "ca-cert.pem").read_bytes() + (certs / "master-cert.pem").read_bytes())
    policy = TlsPolicy(server_cfg(ca="live-cas.pem"), certs)
    assert policy.context is not None
    async with scene(proto, caplog, certs, ctx=policy.context, who="master") as sc:
        doomed = await proto.good(sc.port, client_ctx(certs, "member"))  # of `ca`
        await doomed.event_s(sc.srv, 0.5)
        (certs / "live-cas.pem").write_bytes((certs / "ca-renewed.pem").read_bytes()
                                             + (certs / "master-cert.pem").read_bytes())
        assert policy.refresh()
        assert policy.apply([sc.srv]) == 0  # the same CA: trusted as before
        await doomed.event_s(sc.srv, 0.75)
        (certs / "live-cas.pem").write_bytes((certs / "master-cert.pem").read_bytes())
        await one_closed(sc, policy, doomed, "certificate no longer trusted: the new [tls] ca holds no certificate "
                         "of its issuer", "left (certificate not trusted by the new [tls] ca)")
        await sc.on_time()
        await refused(sc, client_ctx(certs, "member"), "certificate")
    assert len([r for r in caplog.records if "new CA certificates taken (1)" in r.getMessage()]) == 1


async def test_a_handshake_in_progress_when_a_new_crl_is_taken_is_checked_against_it(proto: Proto, caplog,
                                                                                        certs) -> None:
    """A master whose certificate a new CRL revokes, in its handshake when the CRL is taken (its ClientHello
    answered, its certificate not sent yet): the handshake ends against the context it began with, then its
    session is checked against the new CRL and closed (one WARNING). Before, it was kept, for months."""
    write_crl(certs, "ca", (), out="crl-midway.pem")
    policy = TlsPolicy(server_cfg(ca="ca-cert.pem", crl="crl-midway.pem"), certs)
    async with scene(proto, caplog, certs, ctx=policy.context, who="member") as sc:
        bad = await RawPeer.open(sc.port)
        bad.writer.write(bad.client_hello(client_ctx(certs, "revoked")))
        bad.inc.write(await asyncio.wait_for(bad.reader.read(65536), 5))  # the server's flight: it waits
        write_crl(certs, "ca", (2,), out="crl-midway.pem")
        assert policy.refresh()
        assert policy.apply([sc.srv]) == 0  # not a session yet
        assert bad.tls is not None
        while True:
            try:
                bad.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                bad.writer.write(bad.out.read())
                bad.inc.write(await asyncio.wait_for(bad.reader.read(65536), 5))
        bad.writer.write(bad.out.read())  # its certificate: the server's handshake ends
        assert await bad.closed_after(2) < 1
        await sc.check(bad.peer, "certificate revoked: the new [tls] crl lists it: connection closed")


def test_the_ends_of_the_tls_files_taken_are_reported_for_metrics(certs) -> None:
    """`TlsPolicy.expiries` (the forwarder's heartbeat `tls_expiry`, /metrics
    `fep_tls_expiry_timestamp_seconds`): the server certificate's notAfter, each CA's, the CRL's nextUpdate;
    before, only the log said them (a week, a day before), nothing an operator's Prometheus could alarm on."""
    (certs / "cas-two.pem").write_bytes((certs / "ca-cert.pem").read_bytes() + (certs / "intruder-cert.pem").read_bytes())
    write_crl(certs, "ca", (), out="crl-ends.pem", next_update="20990630120000Z")
    policy = TlsPolicy(server_cfg(ca="cas-two.pem", crl="crl-ends.pem"), certs)
    end = lambda name: int(load_cert(server_cfg(cert=f"{name}-cert.pem"), certs).not_after.timestamp() * 1000)
    assert sorted(policy.expiries(), key=lambda e: (e["file"], e["cn"])) == [
        {"file": "ca", "cn": "fep-ca", "ms": end("ca")},
        {"file": "ca", "cn": "fep-intruder", "ms": end("intruder")},
        {"file": "cert", "cn": "fep-server", "ms": end("server")},
        {"file": "crl", "cn": "fep-ca", "ms": int(datetime.datetime(2099, 6, 30, 12, tzinfo=datetime.UTC).timestamp() * 1000)},
    ]
    assert TlsPolicy(NodeConfig(), certs).expiries() == []     # no [tls]: nothing
