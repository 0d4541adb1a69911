"""The PLC simulator's own behaviour over real sockets (pymodbus client): the benchmark's change-on-read
load, a cut unit answering exception 0x0B, the line control interface and the read hook."""

from __future__ import annotations

import asyncio

from pymodbus.client import AsyncModbusTcpClient

from fep_tools.plcsim import PlcSim
from fepha.semodel.model import Model
from tests.acquirer.helpers import free_port, merge, rtu_rows


async def test_change_on_read_and_cut() -> None:
    port = free_port()
    sim = PlcSim(Model.from_rows(merge(rtu_rows(1, port, points=4))), change_on_read=True)
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        assert await client.connect()
        first = (await client.read_holding_registers(0, count=4, device_id=1)).registers
        second = (await client.read_holding_registers(0, count=4, device_id=1)).registers
        assert [b - a for a, b in zip(first, second, strict=True)] == [1, 1, 1, 1]  # every point, every read
        assert sim.value(1003) == second[3]
        c1 = (await client.read_coils(100, count=1, device_id=1)).bits[0]
        c2 = (await client.read_coils(100, count=1, device_id=1)).bits[0]
        assert c1 != c2
        sim.cut(1, 1)  # the only RTU of 127.0.0.1:port: the endpoint closes
        await sim.settle()
        assert not sim.is_cut(1, 2) and sim.is_cut(1, 1)
        client.close()
        assert not await client.connect()
        sim.restore(1, 1)
        await sim.settle()
        assert await client.connect()
        assert (await client.read_holding_registers(0, count=1, device_id=1)).registers[0] == second[0] + 1
    finally:
        client.close()
        await sim.stop()


async def test_control_interface() -> None:
    port = free_port()
    sim = PlcSim(Model.from_rows(merge(rtu_rows(1, port, points=2))), control=("127.0.0.1", 0))
    await sim.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.control_port)
        answers = []
        for line in ("set 1001 42", "get 1001", "cut 1 2", "status", "restore 1", "get 424242", "fly"):
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answers.append((await reader.readline()).decode().strip())
        writer.close()
        await writer.wait_closed()
        assert answers[:4] == ["ok", "ok 42", "ok", "ok 1/1=up 1/2=cut"]
        assert answers[4] == "ok" and not sim.is_cut(1, 2)
        assert answers[5].startswith("err") and "424242" in answers[5]
        assert answers[6].startswith("err unknown command")
    finally:
        await sim.stop()


async def test_on_read_sees_each_read_and_the_data_it_serves() -> None:
    port = free_port()
    seen: list[tuple[int, int, str, int, int, int | float]] = []
    sim = PlcSim(Model.from_rows(merge(rtu_rows(1, port, points=2))),
                 on_read=lambda *req: seen.append((*req, sim.value(1001))))
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        assert await client.connect()
        await client.read_holding_registers(0, count=2, device_id=1)
        sim.set_value(1001, 7)
        served = (await client.read_holding_registers(1, count=1, device_id=1)).registers[0]
        await client.write_register(0, 9, device_id=1)  # a write is no read: not reported
        assert seen == [(1, 1, "hr", 0, 2, 0), (1, 1, "hr", 1, 1, 7)] and served == 7
    finally:
        client.close()
        await sim.stop()
