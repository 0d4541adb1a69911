"""modbus_trains against the MODBUS Application Protocol Specification V1.1b3 and the Messaging on TCP/IP
Implementation Guide V1.0b, as an independent peer sees it: raw sockets for every malformed or pipelined
request, pymodbus's sync client, and the table of docs/modbus_trains.md ("Conformance")."""

from __future__ import annotations

import asyncio
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pymodbus.client import ModbusTcpClient

from fep_forwarder.base import ControlOutcome
from fep_forwarder.modbus_trains import ModbusTrainsServer
from fep_forwarder.modbus_trains.pdu import check
from fepha.semodel.model import FwdPoint
from tests.forwarder.mbt_fixtures import IMAGE, ScriptedSink, rtu
from tests.forwarder.test_modbus_trains_server import captured, tshark

MBAP = struct.Struct(">HHHB")


def req(tid: int, unit: int, pdu: str) -> bytes:
    p = bytes.fromhex(pdu)
    return MBAP.pack(tid, 0, len(p) + 1, unit) + p


def ans(tid: int, unit: int, pdu: str) -> bytes:
    return req(tid, unit, pdu)


async def exchange(port: int, chunks: list[bytes], want: int, gap: float = 0.0) -> bytes:
    """Send `chunks` (one TCP segment each) and read until `want` bytes came (or 3 s, or the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for c in chunks:
            writer.write(c)
            await writer.drain()
            if gap:
                await asyncio.sleep(gap)
        out = b""
        while len(out) < want:
            got = await asyncio.wait_for(reader.read(4096), 3)
            if not got:
                break
            out += got
        return out
    finally:
        writer.close()


@pytest.mark.parametrize(("pdu", "code"), [
    ("04 0000 0001", None),
    ("04 0000 0000", 3), ("04 0000 007e", 3), ("03 0000 007d", None), ("01 0000 07d0", None),
    ("01 0000 07d1", 3), ("02 0000 0000", 3),
    ("03 ffff 0002", 2), ("01 fff0 0011", 2), ("04 ffff 0001", None),  # start + quantity past 65535
    ("04 0000 0001 00", 3), ("04 0000", 3),  # PDU longer / shorter than the function defines
    ("05 0000 ff00", None), ("05 0000 0000", None), ("05 0000 0001", 3), ("05 0000 1234", 3),
    ("06 0000 1234", None), ("06 0000", 3),
    ("0f 0000 0002 01 03", None), ("0f 0000 0002 02 0300", 3), ("0f 0000 0000 00", 3),
    ("0f 0000 07b1 f7" + "00" * 247, 3), ("0f fffe 0003 01 07", 2),
    ("10 0000 0001 02 0007", None), ("10 0000 0001 04 00010002", 3), ("10 0000 0002 04 0001", 3),
    ("10 0000 0000 00", 3), ("10 0000 007c f8", 3), ("10 ffff 0002 04 00010002", 2),
    ("16 0000 00f0 0003", None), ("16 0000 00f0", 3),
    ("17 0000 0001 0000 0001 02 0005", None), ("17 0000 0001 0000 0001 04 0005", 3),
    ("17 0000 007e 0000 0001 02 0005", 3), ("17 ffff 0002 0000 0001 02 0005", 2),
    ("07", 1), ("08 0000 1234", 1), ("0b", 1), ("0c", 1), ("11", 1), ("14 07 06 0001 0000 0001", 1),
    ("18 0000", 1), ("2b 0e 01 00", 1), ("63 0000", 1), ("00", 1),
])
def test_request_checks(pdu: str, code: int | None) -> None:
    assert check(bytes.fromhex(pdu)) == code


# (request PDU, answer PDU) on the value unit of the served image; exception answers carry FC | 0x80
ANSWERS = [
    ("04 0000 0000", "84 03"), ("04 0000 007e", "84 03"), ("01 0000 07d1", "81 03"), ("04 0000", "84 03"),
    ("04 0000 0001 00", "84 03"), ("03 fff0 0020", "83 02"), ("05 0000 1234", "85 03"),
    ("0f 0000 0002 02 0300", "8f 03"), ("0f 0000 0000 00", "8f 03"), ("10 0000 0001 04 00010002", "90 03"),
    ("07", "87 01"), ("08 0000 1234", "88 01"), ("11", "91 01"), ("18 0000", "98 01"), ("2b 0e 01 00", "ab 01"),
    ("63 0000", "e3 01"), ("14 07 06 0001 0000 0001", "94 01"),
    ("04 0004 0001", "84 02"), ("02 0000 0001", "02 01 01"),
    ("05 0000 ff00", "05 0000 ff00"), ("06 0000 0007", "06 0000 0007"), ("0f 0000 0002 01 02", "0f 0000 0002"),
    ("16 0000 00f0 0003", "16 0000 00f0 0003"),
    ("17 0064 0001 0000 0001 02 0005", "97 02"),  # FC 23 reading a hole: refused before its write runs
]


async def test_raw_requests_get_the_spec_answer(served):
    """Each request of the table, one connection each: the answer (or exception) the specification defines,
    under the request's own transaction id, unit id and function code; no control for a refused write."""
    srv, sink, _ = served
    for i, (pdu, answer) in enumerate(ANSWERS):
        want = ans(100 + i, 1, answer)
        got = await exchange(srv.port, [req(100 + i, 1, pdu)], len(want))
        assert got == want, (pdu, got.hex(" "))
    assert [c[:2] for c in sink.calls] == [(9, 1.0), (11, 7.0), (9, 0.0), (10, 1.0), (11, 3.0)]


async def test_unit_ids(served):
    """ADDRESS, 0xFF and 0 (the guide's "this device" ids) answer the values, echoing the unit id; another id
    is 0x0A; the quality unit serves the quality image."""
    srv, _, _ = served
    for unit in (1, 0, 0xFF):
        got = await exchange(srv.port, [req(7, unit, "04 0003 0001")], 11)
        assert got == ans(7, unit, "04 02 0007")
    assert await exchange(srv.port, [req(8, 9, "04 0003 0001")], 9) == ans(8, 9, "84 0a")
    assert await exchange(srv.port, [req(9, 2, "04 0003 0001")], 11) == ans(9, 2, "04 02 0000")
    with pytest.raises(ValueError):
        ModbusTrainsServer(rtu(), None, "127.0.0.1", ScriptedSink(), "A", quality_unit=255)


async def test_other_protocol_id_is_discarded_and_the_connection_goes_on(served):
    """Implementation Guide V1.0b 4.4.2.2: a frame whose protocol id is not Modbus's (0) is discarded, not
    answered; its length field still delimits it, so the next request on the connection, in the same
    segment or a later one, is answered under its own transaction id. A write in such a frame runs
    nothing. (Before: the connection was closed, the good request after it never answered.)"""
    srv, sink, _ = served

    def other(tid: int, pid: int, pdu: str) -> bytes:
        p = bytes.fromhex(pdu)
        return MBAP.pack(tid, pid, len(p) + 1, 1) + p

    seg = other(1, 1, "05 0000 ff00") + req(2, 1, "04 0003 0001") + other(3, 0xFFFF, "04 0003 0001")
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(seg)
        assert await asyncio.wait_for(reader.readexactly(11), 3) == ans(2, 1, "04 02 0007")
        writer.write(req(4, 1, "02 0000 0001"))
        assert await asyncio.wait_for(reader.readexactly(10), 3) == ans(4, 1, "02 01 01")
        writer.write(other(5, 2, "06 0000 0009"))
        await asyncio.sleep(0.3)
        writer.write(req(6, 1, "04 0003 0001"))
        assert await asyncio.wait_for(reader.readexactly(11), 3) == ans(6, 1, "04 02 0007")  # 5: no answer
    finally:
        writer.close()
    assert sink.calls == []


async def test_pipelined_and_split_frames(served):
    """Several requests in one segment are all answered, in order, each with its own transaction id; a frame
    split over segments (down to one byte each) is answered once whole; 60 requests in one 720-byte segment
    (pymodbus's buffer limit was 516 bytes) are all answered."""
    srv, sink, _ = served
    seg = req(1, 1, "04 0000 0001") + req(2, 1, "04 0003 0001") + req(3, 1, "02 0000 0001") + req(4, 1, "07")
    want = ans(1, 1, "04 02 4366") + ans(2, 1, "04 02 0007") + ans(3, 1, "02 01 01") + ans(4, 1, "87 01")
    assert await exchange(srv.port, [seg], len(want)) == want
    one = req(5, 1, "04 0003 0001")
    assert await exchange(srv.port, [one[:3], one[3:9], one[9:]], 11, gap=0.05) == ans(5, 1, "04 02 0007")
    assert await exchange(srv.port, [bytes([b]) for b in one], 11, gap=0.01) == ans(5, 1, "04 02 0007")
    # the rest of a frame and the next frame in one segment
    two = req(6, 1, "04 0003 0001") + req(7, 1, "04 0003 0001")
    got = await exchange(srv.port, [two[:5], two[5:]], 22, gap=0.05)
    assert got == ans(6, 1, "04 02 0007") + ans(7, 1, "04 02 0007")
    many = b"".join(req(1000 + i, 1, "04 0003 0001") for i in range(60))
    got = await exchange(srv.port, [many], 60 * 11)
    assert got == b"".join(ans(1000 + i, 1, "04 02 0007") for i in range(60))
    assert sink.calls == []


class SlowSink(ScriptedSink):
    """Takes `delay` s per control (at most the timeout it is given, then answers expired)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.timeouts: list[int | None] = []

    async def execute(self, fwd: FwdPoint, value: float, origin: str,
                      timeout_ms: int | None = None) -> ControlOutcome:
        self.timeouts.append(timeout_ms)
        if timeout_ms is not None and self.delay * 1000 >= timeout_ms:
            await asyncio.sleep(timeout_ms / 1000)
            return ControlOutcome(False, "expired", "deadline passed")
        await asyncio.sleep(self.delay)
        return await super().execute(fwd, value, origin, timeout_ms)


async def _slow_server(delay: float, timeout_ms: int) -> tuple[ModbusTrainsServer, SlowSink]:
    sink = SlowSink(delay)
    srv = ModbusTrainsServer(rtu(), None, "127.0.0.1", sink, "A", control_timeout_ms=timeout_ms)
    await srv.start()
    srv.load_image(IMAGE)
    return srv, sink


async def test_slow_write_then_read_answered_in_order_with_own_tids():
    """pymodbus answered a slow write with the transaction id of the read sent after it (and the read
    never); now the write's answer comes first under its tid, then the read's."""
    srv, sink = await _slow_server(0.3, 2000)
    try:
        seg = req(0x21, 1, "05 0000 ff00") + req(0x22, 1, "04 0003 0001")
        want = ans(0x21, 1, "05 0000 ff00") + ans(0x22, 1, "04 02 0007")
        assert await exchange(srv.port, [seg], len(want)) == want
        assert [c[:2] for c in sink.calls] == [(9, 1.0)]
    finally:
        await srv.stop()


async def test_retransmitted_write_runs_once():
    """A master that repeats a write (same transaction id, same PDU) before the answer gets one answer
    per frame it is owed... the repeat is not run again: the control runs once."""
    srv, sink = await _slow_server(0.3, 2000)
    try:
        frame = req(0x31, 1, "06 0000 0009")
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(frame)
        await asyncio.sleep(0.1)
        writer.write(frame)  # the master's retry after its own (short) timeout
        got = await asyncio.wait_for(reader.readexactly(12), 3)
        assert got == ans(0x31, 1, "06 0000 0009")
        await asyncio.sleep(0.5)
        writer.write(req(0x32, 1, "04 0003 0001"))
        assert await asyncio.wait_for(reader.readexactly(11), 3) == ans(0x32, 1, "04 02 0007")
        writer.close()
        assert [c[:2] for c in sink.calls] == [(11, 9.0)]
    finally:
        await srv.stop()


async def test_queued_write_never_runs_after_its_deadline():
    """Two writes pipelined behind each other: the second's deadline counts from its arrival, so it gets
    only what is left of the control timeout and, once that is gone, is answered 0x0B without running."""
    srv, sink = await _slow_server(0.25, 400)
    try:
        seg = req(1, 1, "05 0000 ff00") + req(2, 1, "05 0001 0000")
        got = await exchange(srv.port, [seg], 21)
        assert got[:12] == ans(1, 1, "05 0000 ff00")
        assert sink.timeouts[0] is not None and sink.timeouts[0] > 300
        assert sink.timeouts[1] is not None and sink.timeouts[1] <= 400 - 240  # what was left of its time
        assert got[12:] == ans(2, 1, "85 0b")  # 150 ms left, 250 needed: expired
        assert [c[:2] for c in sink.calls] == [(9, 1.0)]
    finally:
        await srv.stop()
    srv, sink = await _slow_server(0.45, 400)
    try:
        seg = req(1, 1, "05 0000 ff00") + req(2, 1, "05 0001 0000")
        t0 = time.monotonic()
        got = await exchange(srv.port, [seg], 18)
        assert got == ans(1, 1, "85 0b") + ans(2, 1, "85 0b")
        assert time.monotonic() - t0 < 0.7  # the second was not given a time of its own
        assert len(sink.timeouts) == 1 and sink.calls == []
    finally:
        await srv.stop()


async def test_pymodbus_sync_client(served):
    srv, sink, _ = served
    port = srv.port

    def run() -> None:
        c = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert c.connect()
        try:
            assert c.read_input_registers(3, count=1).registers == [7]
            assert c.read_input_registers(3, count=1, device_id=255).registers == [7]
            assert c.read_discrete_inputs(0, count=2).bits[:2] == [True, False]
            r = c.read_input_registers(4, count=1)  # a hole in the map
            assert r.isError() and r.exception_code == 2
            assert not c.write_coil(1, False).isError()
            r = c.write_register(2, 1)
            assert r.isError() and r.exception_code == 2
        finally:
            c.close()

    pool = ThreadPoolExecutor(1)
    try:
        await asyncio.get_running_loop().run_in_executor(pool, run)
    finally:
        pool.shutdown(wait=True)
    assert [x[:2] for x in sink.calls] == [(10, 0.0)]


async def test_tshark_finds_nothing_wrong_in_our_answers(served, tmp_path):
    """Every answer of the table and a pipelined segment, through tshark's mbtcp dissector: no Malformed
    packet, no expert warning or error on any answer (exception answers carry the request's FC | 0x80)."""
    srv, _, _ = served
    port = srv.port
    pcap = tmp_path / "conformance.pcap"
    async with captured(port, pcap):
        for i, (pdu, answer) in enumerate(ANSWERS):
            await exchange(port, [req(200 + i, 1, pdu)], len(ans(0, 1, answer)))
        seg = req(1, 1, "04 0000 0001") + req(2, 0xFF, "04 0003 0001") + req(3, 1, "02 0000 0001")
        await exchange(port, [seg], 32)
    out = await tshark(pcap, port, "-Y", f"mbtcp && tcp.srcport=={port}")
    assert out.count("Modbus/TCP") >= len(ANSWERS) + 3
    assert "Malformed" not in out
    assert "Expert Info (Error" not in out and "Expert Info (Warning" not in out, out
    assert out.count("Exception Code:") == sum(1 for _, a in ANSWERS if int(a[:2], 16) & 0x80)


async def test_master_redis_unreachable():
    """With the master Redis unreachable a write is answered 0x0B (the forwarder cannot know whether the
    control was queued: never 0x06, which invites a retry that could run it twice), reads are still served
    from the image, and the connection stays usable."""
    import socket
    from types import SimpleNamespace

    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from fep_forwarder.app import RedisControlSink

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connection refused
        master = aredis.Redis(host="127.0.0.1", port=dead, retry=Retry(NoBackoff(), 0), socket_timeout=0.5)
        model = SimpleNamespace(points={f.src: SimpleNamespace(id=f.src, rtu=7) for f in rtu().forwards})
        srv = ModbusTrainsServer(rtu(), None, "127.0.0.1", RedisControlSink(master, model, 500), "A")
        await srv.start()
        try:
            srv.load_image(IMAGE)
            seg = req(1, 1, "05 0000 ff00") + req(2, 1, "04 0003 0001")
            assert await exchange(srv.port, [seg], 20) == ans(1, 1, "85 0b") + ans(2, 1, "04 02 0007")
            assert srv.counts.controls == 1 and srv.counts.controls_ok == 0
        finally:
            await srv.stop()
            await master.aclose()


async def test_many_slow_writes_pipelined_are_all_answered_in_order():
    """40 writes in flight behind slow controls: reading pauses from 16 queued (TCP flow control) and
    resumes; every write runs once, in order, and is answered under its own transaction id."""
    srv, sink = await _slow_server(0.01, 5000)
    try:
        frames = [req(500 + i, 1, "06 0000 " + f"{i:04x}") for i in range(40)]
        got = await exchange(srv.port, frames, 40 * 12)
        assert got == b"".join(ans(500 + i, 1, "06 0000 " + f"{i:04x}") for i in range(40))
        assert [c[1] for c in sink.calls] == [float(i) for i in range(40)]
    finally:
        await srv.stop()


async def test_pymodbus_async_client_concurrent_requests(served):
    """pymodbus's async client with several requests outstanding (asyncio.gather): each gets its own answer."""
    _, sink, c = served
    got = await asyncio.gather(*(c.read_input_registers(3, count=1) for _ in range(5)), c.write_coil(0, True),
                               c.read_input_registers(10, count=2))
    assert [r.registers for r in got[:5]] == [[7]] * 5
    assert not got[5].isError() and got[6].registers == [1, 4464]
    assert [x[:2] for x in sink.calls] == [(9, 1.0)]
