"""fepha.listen: a listen host that resolves to several addresses (a name with an IPv6 and an IPv4 address,
such as "localhost" on most systems) is served on every one of them, on one port, by every server that
listens through it (se104s, modbus_trains, sefeps; the api passes the same sockets to uvicorn).

This machine's "localhost" resolves to 127.0.0.1 only, so the name "dual.test" is made to resolve to ::1
and 127.0.0.1 (in that order, with a repeat, as getaddrinfo answers) by patching socket.getaddrinfo for
that one name; every other name resolves as usual."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from typing import Any

import pytest

from fep_forwarder.modbus_trains import ModbusTrainsServer
from fep_forwarder.se104s import Se104Server
from fep_forwarder.sefeps import SefepsServer
from fepha import listen
from fepha.semodel.model import Model
from tests.forwarder import se104s_fixtures, test_sefeps_server
from tests.forwarder.mbt_fixtures import ScriptedSink, rtu

DUAL = "dual.test"
_real = socket.getaddrinfo


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")


@pytest.fixture
def dual(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != DUAL:
            return _real(host, port, *args, **kwargs)
        return [*_real("::1", port, *args, **kwargs), *_real("127.0.0.1", port, *args, **kwargs),
                *_real("::1", port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_every_address_of_the_name_is_bound_on_one_port(dual: None) -> None:
    socks = listen.listeners(DUAL, 0, "test")
    try:
        assert sorted(s.family.name for s in socks) == ["AF_INET", "AF_INET6"]  # the repeat bound once
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1  # port 0: the others take the first one's port
        port = ports.pop()
        assert _connects("::1", port) and _connects("127.0.0.1", port)
        v6 = next(s for s in socks if s.family == socket.AF_INET6)
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1  # the IPv4 port is its own socket's
        assert all(s.spare is not None for s in socks)  # each one a GuardedListener, set up
    finally:
        for s in socks:
            s.close()


def test_a_single_address_is_one_socket() -> None:
    socks = listen.listeners("127.0.0.1", 0, "test")
    try:
        assert len(socks) == 1 and socks[0].getsockname()[0] == "127.0.0.1"
    finally:
        socks[0].close()
    socks = listen.listeners("::1", 0, "test")
    try:
        assert len(socks) == 1 and socks[0].family == socket.AF_INET6
    finally:
        socks[0].close()


def test_an_address_that_cannot_be_bound_leaves_nothing_open(dual: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            listen.listeners(DUAL, port, "test")  # ::1 is free, 127.0.0.1 taken
        assert not _connects("::1", port)  # the ::1 socket bound first was closed again


SERVERS: dict[str, Callable[[], Any]] = {
    "modbus_trains": lambda: ModbusTrainsServer(rtu(), None, DUAL, ScriptedSink(), "A"),
    "se104s": lambda: Se104Server(se104s_fixtures.rtu(0), Model({}, "", ""), DUAL, se104s_fixtures.Sink(), "A"),
    "sefeps": lambda: SefepsServer(dataclasses.replace(test_sefeps_server.RTU), None, DUAL,
                                   test_sefeps_server.Sink(), "A"),
}


@pytest.mark.parametrize("name", list(SERVERS))
async def test_servers_listen_on_every_address(dual: None, name: str) -> None:
    """A master reaches the server on ::1 and on 127.0.0.1 (before: only on the first address of the name);
    the server's port is that of both; stop closes both."""
    srv = SERVERS[name]()
    await srv.start()
    try:
        port = srv.port
        for host in ("::1", "127.0.0.1"):
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            writer.close()
    finally:
        await srv.stop()
    await asyncio.sleep(0.05)
    assert not _connects("::1", port) and not _connects("127.0.0.1", port)


async def test_modbus_trains_answers_on_both_families(dual: None) -> None:
    """A Modbus request over IPv6 and over IPv4 to a server bound to the name: both answered."""
    from tests.forwarder.mbt_fixtures import IMAGE

    srv = ModbusTrainsServer(rtu(), None, DUAL, ScriptedSink(), "A")
    await srv.start()
    try:
        srv.load_image(IMAGE)
        for host in ("::1", "127.0.0.1"):
            reader, writer = await asyncio.open_connection(host, srv.port)
            writer.write(bytes.fromhex("0009 0000 0006 01 04 0003 0001"))
            assert await asyncio.wait_for(reader.readexactly(11), 3) == bytes.fromhex("0009 0000 0005 01 04 02 0007")
            writer.close()
    finally:
        await srv.stop()


async def test_an_accepted_connection_has_tcp_nodelay() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and an accepted socket takes the
    # listener's: made with proto 0, every served connection ran Nagle against the master's delayed ACK
    # (bench/forward.py: p50 22 ms, p99 44 ms from the write in Redis to the frame at the c104 client, against
    # 1.5 / 4 ms before the guarded listener came in)
    got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    socks = listen.listeners("127.0.0.1", 0, "test")
    server = await asyncio.start_server(serve, sock=socks[0])
    try:
        _r, w = await asyncio.open_connection("127.0.0.1", socks[0].getsockname()[1])
        assert await asyncio.wait_for(got, 5) != 0
        w.close()
    finally:
        server.close()
        await server.wait_closed()
