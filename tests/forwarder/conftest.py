"""Fixtures shared by the forwarder tests."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from fep_forwarder.modbus_trains import ModbusTrainsServer
from tests.forwarder.mbt_fixtures import IMAGE, ScriptedSink, rtu


@pytest.fixture
async def served():
    """(server, sink, client) on a free port, image loaded."""
    sink = ScriptedSink()
    srv = ModbusTrainsServer(rtu(), None, "127.0.0.1", sink, "A", quality_unit=2)
    await srv.start()
    srv.load_image(IMAGE)
    client = AsyncModbusTcpClient("127.0.0.1", port=srv.port, timeout=2, retries=0)
    assert await client.connect()
    try:
        yield srv, sink, client
    finally:
        client.close()
        await srv.stop()
