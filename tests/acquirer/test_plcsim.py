"""The PLC simulator's own behaviour over real sockets (pymodbus client): the benchmark's change-on-read
load, a cut unit answering exception 0x0B, a muted address, the line control interface and the read hook."""

from __future__ import annotations

import asyncio
import struct

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice

from fep_acquirer import mbtcp
from fep_acquirer.device import DeviceLink
from fep_acquirer.plan import plan_reads
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


async def test_a_muted_address_leaves_the_requests_that_cover_it_unanswered() -> None:
    """mute(rtu, area, address): requests covering that address get 0x0B (a gateway's "no answer"), the
    others are answered; unmute undoes it; an unknown RTU is refused."""
    port = free_port()
    sim = PlcSim(Model.from_rows(merge(rtu_rows(1, port, points=4))))
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        assert await client.connect()
        sim.mute(1, "hr", 2)
        covering = await client.read_holding_registers(0, count=4, device_id=1)
        assert covering.isError() and covering.exception_code == 0x0B, covering
        assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
        assert not (await client.read_coils(100, count=1, device_id=1)).isError()  # another area
        sim.unmute(1, "hr", 2)
        assert not (await client.read_holding_registers(0, count=4, device_id=1)).isError()
        with pytest.raises(KeyError):
            sim.mute(9, "hr", 0)
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
        for line in ("set 1001 42", "get 1001", "cut 1 2", "status", "restore 1", "get 424242", "fly",
                     "lose 1 hr 3 answer 1", "lose 1 ir 3 answer", "unmute 1 hr 3 1"):
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answers.append((await reader.readline()).decode().strip())
        writer.close()
        await writer.wait_closed()
        assert answers[:4] == ["ok", "ok 42", "ok", "ok 1/1=up 1/2=cut"]
        assert answers[4] == "ok" and not sim.is_cut(1, 2)
        assert answers[5].startswith("err") and "424242" in answers[5]
        assert answers[6].startswith("err unknown command")
        assert answers[7:] == ["ok", "err cannot lose the 'answer' of a write to 'ir'", "ok"] and not sim._lost
    finally:
        await sim.stop()


async def test_a_muted_address_leaves_the_reads_covering_it_unanswered_on_both_channels() -> None:
    """`mute RTU AREA ADDR [CH]` (docs/plcsim.md): a read covering the address gets exception 0x0B on either
    channel (or on CH only), a read beside it is answered; `silence`: no answer at all, the next request
    on the connection answered; `unmute` answers it again (the HA lab's device reached in part)."""
    port = free_port()
    sim = PlcSim(Model.from_rows(merge(rtu_rows(1, port, points=4))), control=("127.0.0.1", 0))
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.control_port)

        async def command(line: str) -> str:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.readline()).decode().strip()
        assert await command("mute 1 hr 2") == "ok"
        assert (await command("mute 1 xx 2")).startswith("err")
        assert (await command("mute 7 hr 2")).startswith("err")
        assert await client.connect()
        covering = await client.read_holding_registers(0, count=4, device_id=1)
        assert covering.isError() and covering.exception_code == 0x0B
        beside = await client.read_holding_registers(0, count=2, device_id=1)
        assert not beside.isError() and len(beside.registers) == 2
        after = await client.read_holding_registers(3, count=1, device_id=1)
        assert not after.isError()
        other = AsyncModbusTcpClient("127.0.0.2", port=port, timeout=2, retries=0)   # channel 2
        try:
            assert await other.connect()
            assert (await other.read_holding_registers(2, count=1, device_id=1)).exception_code == 0x0B
        finally:
            other.close()
        assert await command("unmute 1 hr 2") == "ok"
        assert not (await client.read_holding_registers(0, count=4, device_id=1)).isError()
        assert await command("mute 1 hr 2 2") == "ok"   # channel 2 only
        assert not (await client.read_holding_registers(0, count=4, device_id=1)).isError()
        other = AsyncModbusTcpClient("127.0.0.2", port=port, timeout=2, retries=0)
        try:
            assert await other.connect()
            assert (await other.read_holding_registers(2, count=1, device_id=1)).exception_code == 0x0B
        finally:
            other.close()
        assert await command("unmute 1 hr 2 2") == "ok"
        assert await command("silence 1 hr 2") == "ok"   # no answer at all; the next request is answered
        frames = [mbtcp.read_pdu("hr", 0, 4), mbtcp.read_pdu("hr", 0, 2)]
        assert [tid for _, tid in await _answers(port, frames, 0.5)] == [2]
        assert await command("unmute 1 hr 2") == "ok"
        assert [tid for _, tid in await _answers(port, frames, 0.5)] == [1, 2]
        writer.close()
        await writer.wait_closed()
    finally:
        client.close()
        await sim.stop()


async def _answers(port: int, pdus: list[bytes], wait_s: float) -> list[tuple[bytes, int]]:
    """Send the read PDUs (unit 1, transaction ids 1, 2, ...) on one connection; (pdu, tid) of the answers
    received within `wait_s`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for tid, pdu in enumerate(pdus, 1):
        writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, 1) + pdu)
    await writer.drain()
    out = []
    try:
        while True:
            head = await asyncio.wait_for(reader.readexactly(7), wait_s)
            tid, _, length, _ = struct.unpack(">HHHB", head)
            out.append((await reader.readexactly(length - 1), tid))
    except TimeoutError:
        pass
    writer.close()
    return out


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


# ---- several requests in flight (T004_RTU.INFLIGHT > 1): a single-threaded device's answers ----

def _pipelined_rows(port: int) -> dict:
    """Four hr points on two blocks far apart, so that one poll is several requests."""
    rows = merge(rtu_rows(1, port, points=2))
    rows["T011_POINT"].append({**rows["T011_POINT"][0], "PNTID": 1500, "ADDRESS": 500})
    return rows


async def _send_in_one_segment(port: int, frames: list[bytes], n: int) -> list[tuple[float, bytes]]:
    """Send `frames` in one write; the first `n` answers with their arrival time after the send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        writer.write(b"".join(frames))
        out = []
        for _ in range(n):
            hdr = await asyncio.wait_for(reader.readexactly(7), 2.0)
            out.append((loop.time() - t0, hdr + await reader.readexactly(mbtcp.MBAP.unpack(hdr)[2] - 1)))
        return out
    finally:
        writer.close()


async def test_requests_in_one_segment_are_answered_in_order_each_after_the_delay() -> None:
    """Several requests in one TCP segment (a client with several in flight): each answered, in the order
    sent, one after the other (a single-threaded device); a unit id not served is answered in its turn
    (exception 0x04, as pymodbus's own handler answers it)."""
    port = free_port()
    sim = PlcSim(Model.from_rows(_pipelined_rows(port)), delay_ms=60)
    await sim.start()
    sim.set_value(1000, 11)
    sim.set_value(1500, 55)
    try:
        frames = [mbtcp.frame(1, 1, mbtcp.read_pdu("hr", 0, 1)), mbtcp.frame(2, 9, mbtcp.read_pdu("hr", 0, 1)),
                  mbtcp.frame(3, 1, mbtcp.write_register_pdu(1, 7)), mbtcp.frame(4, 1, mbtcp.read_pdu("hr", 500, 1))]
        got = await _send_in_one_segment(port, frames, 4)
    finally:
        await sim.stop()
    assert [mbtcp.header(a)[0] for _, a in got] == [1, 2, 3, 4]
    assert got[0][1][7:] == b"\x03\x02\x00\x0b"
    assert got[1][1][7:] == b"\x83\x04" and mbtcp.header(got[1][1])[2] == 9
    assert got[2][1][7:] == mbtcp.write_register_pdu(1, 7) and sim.value(1001) == 7
    assert got[3][1][7:] == b"\x03\x02\x00\x37"
    times = [t for t, _ in got]
    assert times[0] >= 0.05 and times[3] - times[2] >= 0.05 and times[2] - times[0] >= 0.05  # one at a time


async def test_device_link_with_several_in_flight_reads_plcsim() -> None:
    """Our client with 4 in flight against the simulator (pymodbus's server with the in-order handler):
    every block read, in its place, poll after poll."""
    port = free_port()
    model = Model.from_rows(_pipelined_rows(port))
    sim = PlcSim(model, change_on_read=True)
    await sim.start()
    rtu = model.rtus[1]
    blocks = plan_reads(rtu.points)
    assert [(b.area, b.start) for b in blocks] == [("co", 100), ("hr", 0), ("hr", 500)]
    link = DeviceLink(rtu.channels[0], 1.0, inflight=4)
    try:
        await link.connect()
        for k in range(1, 4):
            got = await link.read_all(blocks)
            assert got == [bytes([k % 2]), k.to_bytes(2, "big") * 2, k.to_bytes(2, "big")], got
    finally:
        link.close()
        await sim.stop()


async def test_pymodbus_own_handler_leaves_the_second_request_of_a_segment_unanswered() -> None:
    """Why fep-plcsim has its own handler (docs/plcsim.md): pymodbus 3.16's server, given two requests in
    one TCP segment, answers the first only; the second waits for more bytes that a client awaiting its
    answer never sends. (If a pymodbus upgrade makes this fail, its server handles pipelined requests.)"""
    port = free_port()
    sim = PlcSim(Model.from_rows(_pipelined_rows(port)))
    srv = ModbusTcpServer([SimDevice(id=1, simdata=sim.stores[1].simdata())], address=("127.0.0.1", port))
    await srv.serve_forever(background=True)
    try:
        frames = [mbtcp.frame(1, 1, mbtcp.read_pdu("hr", 0, 1)), mbtcp.frame(2, 1, mbtcp.read_pdu("hr", 1, 1))]
        assert len(await _send_in_one_segment(port, frames, 1)) == 1
        with pytest.raises(TimeoutError):
            await _send_in_one_segment(port, frames, 2)
    finally:
        await srv.shutdown()
