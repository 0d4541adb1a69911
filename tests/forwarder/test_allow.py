"""T004_RTU.ALLOW: the one rule (table tests) and its enforcement by every forwarding protocol, each with a
real client of that protocol on 127.0.0.1 (refused when ALLOW leaves 127.0.0.1 out, served when it holds it)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
from pymodbus.client import AsyncModbusTcpClient

from fep_forwarder.allow import Allowlist, peer_host
from fep_forwarder.modbus_trains import ModbusTrainsServer
from fep_forwarder.se104s import Se104Server
from fep_forwarder.sefeps import SefepsServer
from fep_tools.sefeps_client import SefepsClient, SefepsError
from tests.forwarder import mbt_fixtures as mbt
from tests.forwarder import se104s_fixtures as s104
from tests.forwarder.test_sefeps_server import RTU as SEFEPS_RTU

REFUSING = ("10.9.9.0/24", "192.0.2.7")
SERVING = ("10.9.9.0/24", "127.0.0.0/8")


@pytest.mark.parametrize(("entries", "host", "ok"), [
    ((), "203.0.113.9", True),  # no ALLOW: everyone
    (("10.9.9.0/24",), "10.9.9.200", True),
    (("10.9.9.0/24",), "10.9.8.1", False),
    (("10.9.9.0/24", " 192.0.2.7 "), "192.0.2.7", True),
    (("10.9.9.0/24",), "::ffff:10.9.9.3", True),  # dual-stack listener: IPv4-mapped
    (("2001:db8::/32",), "2001:db8::1", True),
    (("2001:db8::/32",), "fe80::1%eth0", False),
    (("10.9.9.0/24",), "?", False),  # no peer address: refused
])
def test_rule(entries: tuple[str, ...], host: str, ok: bool) -> None:
    assert Allowlist(entries).permits(host) is ok


def test_each_refused_address_is_logged_once_and_a_scan_is_bounded() -> None:
    a = Allowlist(["10.0.0.0/8"])
    assert a.first_refusal("192.0.2.1") is not None and a.first_refusal("192.0.2.1") is None
    a.MAX_LOGGED = 3
    lines = [a.first_refusal(f"192.0.2.{i}") for i in range(2, 10)]
    assert sum(line is not None for line in lines) == 3 and "not logged" in str(lines[2])
    assert peer_host(("127.0.0.1", 5)) == "127.0.0.1" and peer_host(None) == "?"


async def _modbus_read(port: int) -> bool:
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
    try:
        if not await c.connect():
            return False
        rr = await c.read_input_registers(0, count=1, device_id=1)
        return not rr.isError()
    except Exception:  # noqa: BLE001  a closed connection shows as some pymodbus exception
        return False
    finally:
        c.close()


async def _sefeps_hello(port: int) -> bool:
    c = SefepsClient("127.0.0.1", port)
    try:
        await c.connect(timeout=2)
        return True
    except (TimeoutError, SefepsError, OSError):
        return False
    finally:
        await c.close()


async def _iec104_open(port: int) -> bool:
    """An IEC 104 master on fepha.iec104's client link (c104's client crashed the interpreter when its
    connections were refused over and over): True when STARTDT is confirmed within 2 s."""
    from fepha.iec104.link import STARTED, Link, Role

    link = Link(Role.CLIENT)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        link.start(0.0)
        writer.write(link.data_to_send())
        while True:
            data = await asyncio.wait_for(reader.read(4096), 2)
            if not data:
                return False
            if STARTED in link.receive(data, 0.0):
                return True
    except (TimeoutError, OSError):
        return False
    finally:
        writer.close()


async def _served(cls, rtu, client, caplog) -> None:
    """ALLOW without 127.0.0.1: two attempts refused, each counted, logged once; with it: served."""
    for allow, served in ((REFUSING, False), (SERVING, True)):
        srv = cls(dataclasses.replace(rtu, allow=allow), None, "127.0.0.1", mbt.ScriptedSink(), "A")
        await srv.start()
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                assert await client(srv.port) is served
                assert await client(srv.port) is served
            refusals = [r for r in caplog.records if "refused (not in T004_RTU.ALLOW" in r.getMessage()]
            assert srv.counters()["connections_refused"] == (0 if served else 2)
            assert len(refusals) == (0 if served else 1)
            assert not served or srv.clients() is not None
        finally:
            await srv.stop()


async def test_modbus_trains_refuses_with_a_pymodbus_client(caplog) -> None:
    await _served(ModbusTrainsServer, mbt.rtu(), _modbus_read, caplog)


async def test_sefeps_refuses_with_the_reference_client(caplog) -> None:
    await _served(SefepsServer, SEFEPS_RTU, _sefeps_hello, caplog)


async def test_a_refusal_reaches_metrics_through_the_runner(redis_master, feproot) -> None:
    """The runner's forwarder with the sample's sefeps RTU under an ALLOW without 127.0.0.1: a real client
    is refused, the runner adds it to fep:m:forwarder:A, and /metrics renders it."""
    import time

    import redis.asyncio as aredis

    from fep_api import metrics
    from fep_loader.store import replace_config
    from fepha import cfgstore
    from fepha import keyspace as ks
    from fepha.semodel import db
    from tests.forwarder.test_runner import forwarder, node_cfg, wait_listening
    from tests.redisproc import free_port

    rows, _ = db.read_rows(feproot / "db" / "SEMODEL.db")
    port = free_port()
    rows["T004_RTU"] = [dict(r, LISTENPORT=port, ALLOW="10.9.9.0/24") if r["RTUID"] == 12 else r
                        for r in rows["T004_RTU"] if r["RTUID"] not in (10, 11)]
    replace_config(redis_master.client(), rows)
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    try:
        async with forwarder(node_cfg(redis_master)):
            await wait_listening(port)  # a probe from 127.0.0.1: refused and counted too
            assert await _sefeps_hello(port) is False
            end = time.monotonic() + 5
            while int((await r.hgetall(ks.metrics("forwarder", "A"))).get("connections_refused", 0)) < 2:
                assert time.monotonic() < end
                await asyncio.sleep(0.05)
            model, _ = await cfgstore.read_stamped_async(r)
            text = metrics.render(await metrics.read_snapshot(r, model), model, 10.0).decode()
            assert 'fep_forwarder_connections_refused_total{node="A"} 2.0' in text
    finally:
        await r.aclose()


async def test_se104s_refuses_with_an_iec104_client_link(caplog) -> None:
    await _served(Se104Server, s104.rtu(), _iec104_open, caplog)
