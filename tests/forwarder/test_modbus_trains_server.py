"""modbus_trains against real clients: pymodbus's AsyncModbusTcpClient and Debian's mbpoll, over TCP on
127.0.0.1, with a plain in-test ControlSink (server behaviour) or controls through a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from fep_forwarder.base import Update, server_class
from fep_forwarder.modbus_trains import ModbusTrainsServer
from fep_forwarder.modbus_trains.server import mbap_problem
from fepha.points import Quality, Value
from tests.forwarder.mbt_fixtures import IMAGE, ScriptedSink, rtu, upd


def f32(v: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", v)))


def test_lookup_by_protocol():
    assert server_class("modbus_trains") is ModbusTrainsServer


async def test_read_each_area_and_type(served):
    srv, _, c = served
    ir = await c.read_input_registers(0, count=4)
    assert ir.registers == [*f32(230.5), 0xFF85, 7]  # -12.3 * COEF 10 -> -123
    acc = await c.read_input_registers(10, count=4)
    assert acc.registers == [1, 4464, 0xFFFF, 0xFFFE]
    di = await c.read_discrete_inputs(0, count=2)
    assert di.bits[:2] == [True, False]
    assert (await c.read_discrete_inputs(5, count=1)).bits[0] is True
    co = await c.read_coils(0, count=2)
    assert co.bits[:2] == [False, True]
    hr = await c.read_holding_registers(0, count=5)
    assert hr.registers == [11, *f32(0.5), 0, 2]  # source 4 * COEF 0.5
    assert next(iter(srv.clients())).startswith("127.0.0.1:")


async def test_changes_and_quality_unit(served):
    srv, _, c = served
    srv.apply([upd(3, 9, Quality.NT), upd(1, 0, Quality.IV)])
    assert (await c.read_input_registers(0, count=4)).registers == [*f32(230.5), 65413, 9]
    q = await c.read_input_registers(0, count=4, device_id=2)
    assert q.registers == [Quality.IV, Quality.IV, 0, Quality.NT]
    qdi = await c.read_discrete_inputs(0, count=2, device_id=2)
    assert qdi.bits[:2] == [False, False]
    w = await c.write_register(0, 5, device_id=2)
    assert w.isError() and w.exception_code == 0x01


@pytest.mark.parametrize("call,code", [
    (lambda c: c.read_input_registers(4, count=1), 0x02),  # hole between 3 and 10
    (lambda c: c.read_input_registers(0, count=5), 0x02),
    (lambda c: c.read_discrete_inputs(2, count=1), 0x02),  # hole inside the used bit range
    (lambda c: c.read_discrete_inputs(0, count=3), 0x02),
    (lambda c: c.read_coils(2, count=1), 0x02),
    (lambda c: c.read_holding_registers(100, count=1), 0x02),
    (lambda c: c.write_register(2, 1), 0x02),  # half of a float32
    (lambda c: c.write_coil(7, True), 0x02),
    (lambda c: c.read_input_registers(0, count=1, device_id=9), 0x0A),  # unknown unit
    (lambda c: c.write_coil(0, True, device_id=9), 0x0A),
])
async def test_illegal_requests_get_exceptions(served, call, code):
    _, sink, c = served
    r = await call(c)
    assert r.isError() and r.exception_code == code
    assert sink.calls == []
    assert not (await c.read_coils(0, count=1)).isError()  # connection still serves


async def test_writes_become_controls(served):
    srv, sink, c = served
    r = await c.write_coil(0, True)
    assert not r.isError() and r.bits[0] is True
    r = await c.write_registers(0, [12, *f32(1.5), 0, 10])
    assert not r.isError()
    origin = "modbus_trains:50@A"
    assert sink.calls == [(9, 1.0, origin), (11, 12.0, origin), (12, 1.5, origin), (13, 20.0, origin)]
    assert (await c.read_holding_registers(0, count=5)).registers == [12, *f32(1.5), 0, 10]
    assert (await c.read_coils(0, count=1)).bits[0] is True
    assert (srv.counts.controls, srv.counts.controls_ok) == (4, 4)
    r = await c.mask_write_register(address=0, and_mask=0x00F0, or_mask=0x0003)  # FC 22: (12 & F0) | 3
    assert not r.isError() and sink.calls[-1] == (11, 3.0, origin)
    r = await c.readwrite_registers(read_address=0, read_count=1, write_address=3, values=[0, 7])  # FC 23
    assert not r.isError() and r.registers == [3] and sink.calls[-1] == (13, 14.0, origin)
    r = await c.mask_write_register(address=1, and_mask=0, or_mask=1)  # half of a float32
    assert r.isError() and r.exception_code == 0x02


@pytest.mark.parametrize("state,code", [("failed", 0x04), ("rejected", 0x04), ("expired", 0x0B),
                                        ("unknown", 0x0B)])
async def test_failed_controls_answer_exceptions(served, state, code):
    srv, sink, c = served
    sink.fail_values[13.0] = state
    r = await c.write_register(0, 13)
    assert r.isError() and r.exception_code == code
    assert (await c.read_holding_registers(0, count=1)).registers == [11]  # not stored
    sink.fail_values[0.0] = state
    r = await c.write_coil(1, False)
    assert r.isError() and r.exception_code == code
    assert (await c.read_coils(1, count=1)).bits[0] is True
    assert (srv.counts.controls, srv.counts.controls_ok) == (2, 0)


class BlockingSink(ScriptedSink):
    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def execute(self, fwd, value, origin, timeout_ms=None):
        self.calls.append((fwd.id, value, origin))
        await self.release.wait()
        return await super().execute(fwd, value, origin, timeout_ms)


async def test_slow_control_blocks_only_its_connection_and_stop_cancels_it():
    sink = BlockingSink()
    srv = ModbusTrainsServer(rtu(), None, "127.0.0.1", sink, "A")
    await srv.start()
    srv.load_image(IMAGE)
    c1 = AsyncModbusTcpClient("127.0.0.1", port=srv.port, timeout=5, retries=0)
    c2 = AsyncModbusTcpClient("127.0.0.1", port=srv.port, timeout=2, retries=0)
    await c1.connect()
    await c2.connect()
    write = asyncio.create_task(c1.write_register(0, 5))
    try:
        while not sink.calls:
            await asyncio.sleep(0.01)
        assert (await c2.read_input_registers(3, count=1)).registers == [7]  # other master still served
    finally:
        await srv.stop()  # cancels the waiting control; no task may be left behind
        write.cancel()
        c1.close()
        c2.close()
        await asyncio.gather(write, return_exceptions=True)
    assert srv._writes == set()


async def mbpoll(port: int, *args: str) -> tuple[int, str, str]:
    """Run Debian's mbpoll once (PDU addressing, 2 s timeout) without blocking the server's loop."""
    host_args = [] if "127.0.0.1" in args else ["127.0.0.1"]
    p = await asyncio.create_subprocess_exec(
        "mbpoll", "-m", "tcp", "-p", str(port), "-0", "-1", "-o", "2", *args, *host_args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    return p.returncode or 0, out.decode(), err.decode()


async def test_mbpoll_reads_writes_and_exceptions(served):
    srv, sink, _ = served
    port = srv.port
    rc, out, _ = await mbpoll(port, "-t", "3:float", "-B", "-r", "0")
    assert rc == 0 and "[0]: \t230.5" in out
    rc, out, _ = await mbpoll(port, "-t", "3", "-r", "2", "-c", "2")
    assert rc == 0 and "[2]: \t65413 (-123)" in out and "[3]: \t7" in out
    rc, out, _ = await mbpoll(port, "-t", "3", "-r", "3", "-a", "255")  # the guide's unit id of a TCP server
    assert rc == 0 and "[3]: \t7" in out
    rc, out, _ = await mbpoll(port, "-t", "3:int", "-B", "-r", "10", "-c", "2")
    assert rc == 0 and "[10]: \t70000" in out and "[12]: \t-2" in out
    rc, out, _ = await mbpoll(port, "-t", "1", "-r", "0", "-c", "2")
    assert rc == 0 and "[0]: \t1" in out and "[1]: \t0" in out
    rc, out, _ = await mbpoll(port, "-t", "0", "-r", "0", "-c", "2")
    assert rc == 0 and "[0]: \t0" in out and "[1]: \t1" in out
    rc, out, err = await mbpoll(port, "-t", "3", "-r", "4")
    assert rc != 0 and "Illegal data address" in err
    rc, out, err = await mbpoll(port, "-t", "3", "-r", "0", "-a", "9")
    assert rc != 0 and "Gateway path unavailable" in err
    rc, out, _ = await mbpoll(port, "-t", "0", "-r", "0", "127.0.0.1", "1")
    assert rc == 0 and "Written 1 references" in out
    rc, out, _ = await mbpoll(port, "-t", "4:float", "-B", "-r", "1", "127.0.0.1", "2.5")
    assert rc == 0
    sink.fail_values[13.0] = "failed"
    rc, out, err = await mbpoll(port, "-t", "4", "-r", "0", "127.0.0.1", "13")
    assert rc != 0 and "Slave device or server failure" in err
    assert [(c[0], c[1]) for c in sink.calls] == [(9, 1.0), (12, 2.5), (11, 13.0)]
    rc, out, _ = await mbpoll(port, "-t", "4:float", "-B", "-r", "1")
    assert "[1]: \t2.5" in out


async def _refused(port: int) -> bool:
    """True when the server drops a fresh connection without answering a valid request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(bytes.fromhex("000100000006010400000001"))  # read input register 0, unit 1
        await writer.drain()
        data = await asyncio.wait_for(reader.read(100), 2)
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        writer.close()
    return data == b""


GOOD_READ = bytes.fromhex("0001 0000 0006 01 04 0000 0001")  # FC 4, input register 0, one register


@pytest.mark.parametrize(("buf", "problem"), [
    (GOOD_READ, None),
    (GOOD_READ[:5], None),  # header not complete yet: wait
    (bytes.fromhex("0001 1234 0006 01 04 0000 0001"), None),  # another protocol id: discarded (not_modbus)
    (bytes.fromhex("0001 0000 ffff 01 03"), "length field 65535"),
    (bytes.fromhex("0001 0000 0001 01"), "length field 1"),
    (bytes.fromhex("0001 0000 00ff 01"), "length field 255"),
    (bytes.fromhex("0001 0000 00fe 01"), None),  # 254: a 253-byte PDU, the largest there is
    (b"\xde\xad\xbe\xef" * 8, "length field 57005"),
])
def test_mbap_header_rules(buf: bytes, problem: str | None) -> None:
    got = mbap_problem(buf)
    assert got is None if problem is None else got is not None and got.startswith(problem)


async def test_malformed_frame_closes_only_that_connection(served):
    """An MBAP length field out of range (garbage, another protocol) closes that connection (pymodbus alone
    would keep it open and deaf); a PDU that does not decode gets an exception answer; the other master and
    new connections are served."""
    srv, _, c = served

    async def exchange(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(data)
            return await asyncio.wait_for(reader.read(100), 3)  # b"": closed by the server
        finally:
            writer.close()

    for bad in (bytes.fromhex("0001 0000 ffff 01 03") + bytes(20), bytes.fromhex("0001 0000 0001 01") + GOOD_READ,
                b"\xde\xad\xbe\xef" * 8, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
        assert await exchange(bad) == b""
        assert (await c.read_input_registers(10, count=1)).registers == [1]
    # a header that is fine around a PDU that is not: an exception answer, the connection stays usable
    answer = await exchange(bytes.fromhex("0007 0000 0003 01 03 00") + GOOD_READ)
    assert answer[:9] == bytes.fromhex("0007 0000 0003 01 83 03")  # ILLEGAL DATA VALUE under its own FC
    assert (await c.read_input_registers(0, count=2)).registers == f32(230.5)
    assert await exchange(GOOD_READ) == bytes.fromhex("0001 0000 0005 01 04 02") + bytes(f32(230.5)[0].to_bytes(2, "big"))


async def test_allowlist():
    sink = ScriptedSink()
    for allow, refused in ((("10.0.0.0/8", "192.0.2.1"), True), (("10.0.0.0/8", "127.0.0.0/8"), False)):
        srv = ModbusTrainsServer(rtu(allow=allow), None, "127.0.0.1", sink, "A")
        await srv.start()
        try:
            assert await _refused(srv.port) is refused
            assert srv.clients() == {} if refused else True
        finally:
            await srv.stop()


async def test_unit_zero_answers_every_unit_and_busy_port_raises():
    srv = ModbusTrainsServer(rtu(unit=0), None, "127.0.0.1", ScriptedSink(), "A")
    await srv.start()
    try:
        srv.load_image(IMAGE)
        c = AsyncModbusTcpClient("127.0.0.1", port=srv.port, timeout=2, retries=0)
        await c.connect()
        for unit in (1, 7, 247):
            assert (await c.read_input_registers(3, count=1, device_id=unit)).registers == [7]
        c.close()
        other = ModbusTrainsServer(rtu(port=srv.port), None, "127.0.0.1", ScriptedSink(), "A")
        with pytest.raises(OSError):
            await other.start()
    finally:
        await srv.stop()


@contextlib.asynccontextmanager
async def captured(port: int, pcap: Path) -> AsyncIterator[None]:
    """dumpcap on lo for `port` around the block; the capture is written to `pcap` at its end."""
    cap = await asyncio.create_subprocess_exec(
        "dumpcap", "-q", "-i", "lo", "-f", f"tcp port {port}", "-P", "-w", "-",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    data = bytearray()

    async def collect() -> None:
        assert cap.stdout is not None
        while chunk := await cap.stdout.read(65536):
            data.extend(chunk)

    reader = asyncio.create_task(collect())
    try:
        # dumpcap says "Capturing" before its filter is live: knock until a packet shows up past the
        # 24-byte pcap header
        for _ in range(100):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await asyncio.sleep(0.05)
            if len(data) > 24:
                break
        else:
            raise AssertionError("dumpcap captured nothing on lo")
        yield
        await asyncio.sleep(0.3)
    finally:
        if cap.returncode is None:
            cap.terminate()
        await cap.wait()
        await reader
    pcap.write_bytes(bytes(data))


async def tshark(pcap: Path, port: int, *args: str) -> str:
    """tshark -V of a capture, `port` being a Modbus/TCP server port (so that requests and answers are told
    apart: decoding the port as mbtcp alone leaves an expert warning on every packet)."""
    p = await asyncio.create_subprocess_exec(
        "tshark", "-r", str(pcap), "-o", f"mbtcp.tcp.port:{port}", *args, "-V",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out_b, err_b = await p.communicate()
    assert p.returncode == 0, err_b
    return out_b.decode()


async def test_tshark_decodes_traffic_without_malformed_packets(served, tmp_path):
    srv, sink, _ = served
    port = srv.port
    async with captured(port, tmp_path / "mbt.pcap"):
        c2 = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await c2.connect()
        sink.fail_values[13.0] = "expired"
        await c2.read_input_registers(0, count=4)
        await c2.read_input_registers(10, count=4)
        await c2.read_discrete_inputs(0, count=2)
        await c2.read_coils(0, count=2)
        await c2.read_holding_registers(0, count=5)
        await c2.write_coil(0, True)
        await c2.write_registers(0, [12, *f32(1.5), 0, 10])
        await c2.write_register(0, 13)  # exception 0x0B
        await c2.read_input_registers(4, count=1)  # exception 0x02
        await c2.read_input_registers(0, count=1, device_id=9)  # exception 0x0A
        c2.close()
    out = await tshark(tmp_path / "mbt.pcap", port)
    assert "Malformed" not in out and "Expert Info (Error" not in out and "Expert Info (Warning" not in out
    assert out.count("Modbus/TCP") >= 20  # 10 requests, 10 responses
    assert out.count("Exception Code:") == 3
    for code in ("Illegal data address", "Gateway path unavailable", "Gateway target device failed to respond"):
        assert code in out


async def test_sample_configuration_rtu_11(feproot):
    """The sample SEMODEL (ZFID 11 exists in all five tables of RTU 11): every point where docs say."""
    import dataclasses

    from fepha.semodel import db
    from fepha.semodel.model import Model

    rows, problems = db.read_rows(feproot / "db" / "SEMODEL.db")
    assert not problems
    model = Model.from_rows(rows)
    r11 = dataclasses.replace(model.rtus[11], listen_port=0)
    values = {"T005_ZFAI": 1.25, "T006_ZFDI": 1, "T007_ZFACC": 123456, "T008_ZFDO": 1, "T009_ZFAO": 300}
    srv = ModbusTrainsServer(r11, model, "127.0.0.1", ScriptedSink(), "A")
    await srv.start()
    srv.load_image([Update(f, Value(values[f.table] + (f.addr if f.table == "T005_ZFAI" else 0), 0, 1))
                    for f in r11.forwards])
    c = AsyncModbusTcpClient("127.0.0.1", port=srv.port, timeout=2, retries=0)
    try:
        await c.connect()
        assert (await c.read_input_registers(0, count=4)).registers == f32(1.25) + f32(3.25)
        assert (await c.read_input_registers(10, count=2)).registers == [1, 57920]
        assert (await c.read_discrete_inputs(0, count=3)).bits[:3] == [True, True, True]
        assert (await c.read_coils(0, count=1)).bits[0] is True
        assert (await c.read_holding_registers(0, count=1)).registers == [300]
    finally:
        c.close()
        await srv.stop()
