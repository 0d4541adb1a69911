"""The three SCADA-facing servers against a hostile master (seeded fuzzing, real Redis controls): while a
sentinel master is connected and receiving, a second connection sends damaged frames one at a time, then
frames before STARTDT / hello, oversize and zero lengths, half frames then a close, and floods.

The rule (docs/se104s.md, docs/modbus_trains.md, docs/sefeps.md): each frame gets the answer the protocol
prescribes (IEC 104: a mirror, negative with causes 44 .. 47 or ACT_CON/DEACT_CON; Modbus: an exception
code; sefeps: `res`) or its connection is closed (sefeps: after an `err`); a control reaches the device
(the acquisition RTU's Redis queue, executed by a real executor) only for a frame answered as executed; the
server lives on, the sentinel still gets a change made afterwards, once; nothing is logged as an error.
The codec-level fuzzing of the same mutations: tests/iec104/test_codec_fuzz.py and the first tests here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from fep_forwarder.base import Update
from fep_forwarder.modbus_trains import ModbusTrainsServer
from fep_forwarder.modbus_trains.pdu import WRITES, check
from fep_forwarder.se104s import Se104Server
from fep_forwarder.sefeps import codec
from fepha.iec104 import codec as c
from fepha.points import Value
from fepha.semodel.model import FwdPoint, Model, Rtu
from tests.forwarder import mbt_fixtures as mbt
from tests.forwarder import se104s_fixtures as s104
from tests.forwarder import test_sefeps_server as sef
from tests.forwarder.ctl_helpers import Executor, redis_controls
from tests.fuzzing import mutate
from tests.iec104.rawmaster import RawMaster, raw_master
from tests.iec104.test_codec_fuzz import hostile_asdu, valid_asdus

DEVICE_RTU = 77  # the acquisition RTU whose executor runs every control of these tests
WAIT_S = 3.0


def no_errors_logged(caplog: pytest.LogCaptureFixture, executor: Executor) -> None:
    """Nothing logged as an error, and no control reached the device with a value that is not a number (a
    finite sefeps set-point divided by a COEF of 0.5 did: 1.7e308 became inf)."""
    assert all(math.isfinite(v) for _, v in executor.executed), executor.executed
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def soon(pred: Callable[[], Any], what: str, timeout: float = WAIT_S) -> None:
    """Wait until `pred()` holds, looking every millisecond (a few hundred cases per test: the fixtures'
    `until` looks every 20 ms)."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = WAIT_S) -> bytes:
    """Everything the server sends until it closes the connection (fails when it does not within `timeout`)."""
    return await asyncio.wait_for(reader.read(), timeout)


# --- IEC 104 (se104s) ---------------------------------------------------------------------------------------

ANSWER_CAUSES = (c.COT_ACTCON, c.COT_DEACTCON, c.COT_UNKNOWN_TYPE, c.COT_UNKNOWN_COT, c.COT_UNKNOWN_CA,
                 c.COT_UNKNOWN_IOA)


def answers(m: RawMaster, type_id: int) -> list[c.Asdu]:
    """The answers `m` received to ASDUs of `type_id`: mirrors (confirmations, refusals) and read answers."""
    return [a for a in list(m.asdus) if (a.type_id == type_id and a.cause in ANSWER_CAUSES)
            or (type_id == c.C_RD_NA_1 and a.type_id < c.C_SC_NA_1 and a.cause == c.COT_REQ)]


def edge_asdus() -> list[bytes]:
    """Always sent first: sequential addressing with the most objects a count can say (their mirrors must
    keep that form: rebuilt with an IOA per object they exceeded an APDU), for a read, an interrogation
    and a command, each to be refused."""
    return [c.header(c.C_RD_NA_1, 127, c.COT_ACT, s104.CA, sq=True) + c.ioa(1001),
            c.header(c.C_IC_NA_1, 120, c.COT_ACT, s104.CA, sq=True) + c.ioa(1) + bytes([20] * 120),
            c.header(c.C_SC_NA_1, 100, c.COT_ACT, s104.CA, sq=True) + c.ioa(5001) + bytes(100),
            c.header(200, 0xFF, c.COT_ACT, 0xFFFF, sq=True) + c.ioa(0xFFFFFF) + bytes(200)]


async def send_one(m: RawMaster, asdu: bytes, executor: Executor) -> str:
    """Send one ASDU on a started master and check what it got: 'answered' or 'closed'."""
    type_id = asdu[0] if asdu else -1
    before, ran = len(answers(m, type_id)), len(executor.executed)
    await soon(lambda: m.link.window_open or m.closed, "the k window")
    if m.closed:
        return "closed"
    m.send(asdu)
    await soon(lambda: len(answers(m, type_id)) > before or m.closed,
               f"an answer to {asdu.hex()}, or the connection closed")
    if len(answers(m, type_id)) == before:  # closed: only for an ASDU that breaks the standard
        with pytest.raises(c.ProtocolError):
            c.parse_asdu(asdu)
        assert len(executor.executed) == ran, f"{asdu.hex()}: control run on a closed connection"
        return "closed"
    ans = answers(m, type_id)[before]
    executed = executor.executed[ran:]
    if type_id in c.COMMAND_BASE and ans.cause == c.COT_ACTCON and not ans.negative:
        a = c.parse_asdu(asdu)
        selected = c.decode_command(type_id, a.objects[0][1]).select
        assert len(executed) == (0 if selected else 1), f"{asdu.hex()}: confirmed, run {executed}"
    else:  # refused: nothing ran, unless the device itself refused it (the executor fails the value 99)
        assert all(round(v, 6) == 99 for _, v in executed), f"{asdu.hex()}: answered {ans}, ran {executed}"
    return "answered"


async def test_se104s_hostile_master(redis_master: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rng = random.Random(2404)
    rtu_of = {f.src: DEVICE_RTU for f in s104.COMMANDS}
    async with redis_controls(redis_master, rtu_of, (DEVICE_RTU,)) as (sink, (executor,)), \
            s104.se104_server(sink, t2=0.05) as srv:
        srv.load_image([s104.upd(1001, 1.0)])
        async with raw_master(srv.port) as sentinel:
            await sentinel.start()
            outcomes: dict[str, int] = {"answered": 0, "closed": 0}
            asdus = valid_asdus(s104.CA, int(time.time() * 1000))
            cases = edge_asdus() + [hostile_asdu(rng, asdus) for _ in range(1200)]
            while cases:
                async with raw_master(srv.port) as m:
                    m.link.start(time.monotonic())
                    m.flush()
                    await soon(lambda: m.link.started, "STARTDT con")
                    while cases:
                        outcome = await send_one(m, cases.pop(0), executor)
                        outcomes[outcome] += 1
                        if outcome == "closed":
                            break
            assert outcomes["answered"] > 150 and outcomes["closed"] > 20, outcomes
            ran = len(executor.executed)

            # frames before STARTDT, broken APCI, a half frame, nothing at all: closed (or left), nothing run
            command = c.i_frame(0, 0, c.build_asdu(c.C_SC_NA_1, c.COT_ACT, s104.CA, [(5001, b"\x01")]))
            for data, close_first in ((command, False), (c.u_frame(c.STARTDT_ACT) + b"\x68\x02\x01\x00", False),
                                      (b"\x68\xfe" + bytes(254), False), (b"\x16" + bytes(20), False),
                                      (b"\x68\x0e\x00\x00", True), (b"", True)):
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                writer.write(data)
                if close_first:
                    writer.write_eof()
                frames = c.FrameReader().feed(await closed_by_server(reader))  # no answer to what was sent
                assert all(f.kind == "U" or f.asdu[0] == c.M_EI_NA_1 for f in frames), frames
                writer.close()
            # a flood of TESTFR act in one segment: every one confirmed, the connection kept
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(c.u_frame(c.STARTDT_ACT) + c.u_frame(c.TESTFR_ACT) * 500)
            got = await asyncio.wait_for(reader.readexactly(6 * 501), WAIT_S)
            assert got[6:] == c.u_frame(c.TESTFR_CON) * 500
            writer.close()
            assert len(executor.executed) == ran

            # the sentinel was not disturbed and gets a change made now, once
            srv.apply([s104.upd(1001, 42.5)])
            await s104.until(lambda: (s104.CA, 1001, 42.5) in [v[:3] for v in sentinel.values()], WAIT_S,
                             "the change at the sentinel")
            await asyncio.sleep(0.3)
            assert [v[:3] for v in sentinel.values()].count((s104.CA, 1001, 42.5)) == 1
            assert {(a.type_id, a.cause) for a in sentinel.asdus} == {(c.M_EI_NA_1, c.COT_INIT),
                                                                      (c.M_ME_NC_1, c.COT_SPONT)}
            assert sentinel.error is None and not sentinel.closed
            await s104.until(lambda: len(srv.station.sessions) == 1, WAIT_S, "every other connection gone")
    no_errors_logged(caplog, executor)


async def test_se104s_master_flooding_requests_without_acknowledging_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    """A master that sends interrogations (it acknowledges nothing, so no answer leaves the k window) is
    closed once `answers_max` answers wait for it; before, they piled up until its t1 (15 s): 530,000 ASDUs
    after 3 s. Another master is served meanwhile."""
    caplog.set_level(logging.INFO)
    async with s104.se104_server(answers_max=2_000) as srv:
        srv.load_image([s104.upd(f.addr, 1.0) for f in s104.MONITOR])
        async with raw_master(srv.port) as sentinel:
            await sentinel.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(c.u_frame(c.STARTDT_ACT))
            await asyncio.wait_for(reader.readexactly(6), WAIT_S)
            async def closed() -> None:
                with contextlib.suppress(ConnectionResetError):  # reset: it was still sending
                    await closed_by_server(reader, 5.0)  # else: TimeoutError
            flood = asyncio.create_task(closed())
            peak, ns = 0, 0
            while not flood.done() and not writer.is_closing():
                writer.write(b"".join(c.i_frame((ns + i) & 0x7FFF, 0, c.interrogation(s104.CA)) for i in range(200)))
                ns += 200
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                peak = max([peak] + [len(s.queue) for s in srv.station.sessions])
            await flood
            writer.close()
            assert peak < 2_000 + 50, peak
            srv.apply([s104.upd(1001, 42.5)])
            await soon(lambda: (s104.CA, 1001, 42.5) in [v[:3] for v in sentinel.values()], "the sentinel's change")
    assert any("without reading their answers" in r.getMessage() for r in caplog.records)
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad


async def test_se104s_master_flooding_executes_has_a_bounded_number_running() -> None:
    """200 valid executes sent as fast as the k window allows: `controls_max` of them run (the device slow to answer), the others
    are refused at once with a negative ACT_CON; before, all 200 were queued for the device together (28,000
    in a second of flooding)."""
    sink = s104.Sink(delay_s=0.5)
    async with s104.se104_server(sink, controls_max=8) as srv:
        srv.load_image([])
        async with raw_master(srv.port) as m:
            await m.start()
            cmd = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, s104.CA, [(5001, b"\x01")])
            for _ in range(200):
                await soon(lambda: m.link.window_open, "the k window")
                m.send(cmd)
            negative = lambda: [a for a in m.asdus if a.type_id == c.C_SC_NA_1 and a.negative]
            await soon(lambda: len(negative()) == 192, "192 refusals")
            assert len(srv._in_flight) == 8  # handed to the ControlSink, not answered yet
            await soon(lambda: len([a for a in m.asdus if a.cause == c.COT_ACTTERM]) == 8, "8 executed")
            assert len(sink.calls) == 8
            m.send(cmd)  # answered: room again
            await soon(lambda: len(sink.calls) == 9, "the next one run")


async def test_se104s_interrogations_sent_while_resuming_hold_one_answer() -> None:
    """STARTDT and 1,000 interrogations in one write from a master whose position is being read: one waits
    (held) and is built when the position comes, the 999 others are refused at once (negative ACT_CON);
    before, all were held, then built at once when the position came (4,000 of a 2,000-point RTU: 276,000
    ASDUs, the event loop held 10 s) and the connection closed once past `answers_max`."""
    async def cursor(rtu: int, identity: str) -> tuple[int, int]:
        await asyncio.sleep(0.05)
        return (0, 0)  # known, with nothing to replay

    async with s104.se104_server(answers_max=2_000) as srv:
        srv.load_image([s104.upd(f.addr, 1.0) for f in s104.MONITOR])
        srv.cursor_source = cursor
        _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(c.u_frame(c.STARTDT_ACT) + b"".join(c.i_frame(n, 0, c.interrogation(s104.CA))
                                                          for n in range(1_000)))
        await soon(lambda: any(s.interrogations_refused == 999 for s in srv.station.sessions), "999 refused")
        (s,) = srv.station.sessions
        assert len(s.held) == 1
        await soon(lambda: s.resumed and not s.held and not s.building, "the one answer built")
        assert not s.closed
        writer.close()


async def flood_interrogations(port: int, seconds: float) -> dict[str, int]:
    """A master that writes station interrogations as fast as the socket takes them for `seconds` and
    acknowledges everything it receives (an S frame after each read), connecting again whenever it is
    closed (it sends more than the k window lets the server answer: `answers_max`). What it got:
    terminated interrogations (`done`), refused ones (`refused`), connections (`connections`)."""
    got = {"done": 0, "refused": 0, "connections": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got["connections"] += 1
        writer.write(c.u_frame(c.STARTDT_ACT))
        vr = 0

        async def read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal vr
            frames = c.FrameReader()
            while data := await reader.read(65536):
                for f in frames.feed(data):
                    if f.kind == "I":
                        vr = (vr + 1) & 0x7FFF
                        a = c.parse_asdu(f.asdu)
                        got["done"] += a.type_id == c.C_IC_NA_1 and a.cause == c.COT_ACTTERM
                        got["refused"] += a.type_id == c.C_IC_NA_1 and a.negative
                writer.write(c.s_frame(vr))

        reading = asyncio.create_task(read(reader, writer))
        await asyncio.sleep(0.02)  # STARTDT con
        ns = 0
        with contextlib.suppress(ConnectionError):
            while time.monotonic() < end and not reading.done():
                writer.write(b"".join(c.i_frame((ns + i) & 0x7FFF, vr, c.interrogation(s104.CA)) for i in range(50)))
                ns += 50
                await writer.drain()
                await asyncio.sleep(0)
        reading.cancel()
        writer.close()
        await asyncio.gather(reading, return_exceptions=True)
    return got


async def test_se104s_master_flooding_interrogations_does_not_delay_the_other_masters_events() -> None:
    """A master flooding station interrogations of a 5,000-point RTU and acknowledging what it gets, for
    2 s, while another master receives a change every 10 ms: that master gets each within 150 ms of the
    change (the interrogation in progress is built in slices of `SLICE_POINTS` points, and those asked
    meanwhile are refused; here 8 ms at most). Before, each interrogation read was built in full at once:
    the changes came up to 0.5 s late (p99 0.43 s)."""
    fwds = tuple(FwdPoint(i, "T005_ZFAI", "AI", 10, 100 + i, 10_000 + i, "M_ME_NC_1") for i in range(5_000))
    probe = FwdPoint(9_999, "T005_ZFAI", "AI", 10, 9_999, 900_000, "M_ME_TF_1")
    rtu = Rtu(id=10, name="flood", rtutype=2, protocol="se104s", listen_port=0, address=s104.CA,
              forwards=(*fwds, probe))
    srv = Se104Server(rtu, Model({}, "", ""), "127.0.0.1", s104.Sink(), "A")
    await srv.start()
    try:
        srv.load_image([Update(f, Value(1.0, 0, s104.now_ms())) for f in fwds])
        async with raw_master(srv.port) as steady:
            steady.asdus = Stamped()
            await steady.start()
            flood = asyncio.create_task(flood_interrogations(srv.port, 2.0))
            for k in range(1, 201):
                srv.apply([Update(probe, Value(k, 0, s104.now_ms()))])
                await asyncio.sleep(0.01)
            got = await flood
            await soon(lambda: len([v for v in steady.values() if v[1] == 900_000]) == 200, "every change")
    finally:
        await srv.stop()
    late = sorted(at - ts for a, at in zip(steady.asdus, steady.asdus.at, strict=True) if a.type_id == c.M_ME_TF_1
                  for _, e in a.objects for *_, ts in [c.decode_element(a.type_id, e)] if ts)
    assert late[-1] < 150, (late[-1], late[len(late) * 99 // 100], len(late), got)
    assert got["done"] >= 2 and got["refused"] > 0, got


class Stamped(list[c.Asdu]):
    """The ASDUs a RawMaster received, with when each came (wall clock ms, `at`)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def append(self, asdu: c.Asdu) -> None:
        super().append(asdu)
        self.at.append(time.time() * 1000)


async def test_se104s_master_alternating_startdt_and_stopdt_has_one_position_fetch_at_a_time() -> None:
    """300 STARTDT / STOPDT pairs, each frame in a segment of its own, while reading the master's position
    (Redis) takes 50 ms: one fetch runs at a time; before, each STARTDT started its own (a task and a Redis
    read each). A STARTDT after them resumes the master as usual (events after its position, then the
    image as a background scan)."""
    fetches = 0

    async def cursor(rtu: int, identity: str) -> tuple[int, int]:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.05)
        return (0, 0)  # known, with nothing to replay

    async with s104.se104_server() as srv:
        srv.load_image([s104.upd(1001, 1.0)])
        srv.cursor_source = cursor
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        peak = 0
        for _ in range(300):
            for code in (c.STARTDT_ACT, c.STOPDT_ACT):
                writer.write(c.u_frame(code))
                await writer.drain()
                await asyncio.sleep(0.001)
            peak = max([peak] + [len(io.tasks) for io in srv._io.values()])
        assert peak <= 4 and fetches < 100, (peak, fetches)  # reader, sender, timers, one fetch
        writer.write(c.u_frame(c.STARTDT_ACT))
        frames: list[c.Frame] = []
        rx = c.FrameReader()
        while not any(f.kind == "I" and f.asdu[2] == c.COT_BACKGROUND for f in frames):  # resumed: its scan
            frames += rx.feed(await asyncio.wait_for(reader.read(65536), WAIT_S))
        writer.close()


# --- Modbus TCP (modbus_trains) -----------------------------------------------------------------------------

MBAP = struct.Struct(">HHHB")
EXCEPTIONS = (0x01, 0x02, 0x03, 0x04, 0x0A, 0x0B)
REFUSED_BEFORE_RUNNING = (0x01, 0x02, 0x03, 0x0A)


def modbus_requests(rng: random.Random, n: int) -> list[bytes]:
    """Request PDUs of every function code 0 .. 255 with quantities 0, in range, over the limit and over the
    address space, byte counts that match or not, then damaged at random (the function code kept)."""
    out = []
    for _ in range(n):
        fc = rng.choice((1, 2, 3, 4, 5, 6, 15, 16, 22, 23, rng.randrange(256)))
        start = rng.choice((0, 1, 3, 10, 12) if rng.random() < 0.7 else (2, 0xFFFE, 0xFFFF, rng.randrange(0x10000)))
        qty = rng.choice((1, 2) if rng.random() < 0.5 else (0, 4, 123, 124, 125, 126, 1968, 1969, 2000, 2001, 0xFFFF))
        body = struct.pack(">HH", start, qty)
        if fc in (5, 6):
            body = struct.pack(">HH", start, rng.choice((0, 0xFF00, 1, 0xFFFF, rng.randrange(0x10000))))
        elif fc in (15, 16):
            count = rng.choice(((qty + 7) // 8, 2 * qty, rng.randrange(256))) & 0xFF
            body += bytes((count,)) + bytes(rng.randrange(256) for _ in range(rng.choice((count, count + 1, 3))))
        elif fc == 22:
            body += struct.pack(">HH", rng.randrange(0x10000), rng.randrange(0x10000))
        elif fc == 23:
            wq = rng.choice((0, 1, 2, 121, 122))
            body += struct.pack(">HHB", rng.choice((0, 1, 3, 0xFFFF)), wq, 2 * wq & 0xFF) + bytes(2 * wq)
        pdu = bytes((fc,)) + body
        if rng.random() < 0.3:
            pdu = mutate(rng, pdu, keep=1)
        out.append(pdu[:253])
    return out


def test_modbus_request_checks_every_function_code_and_length() -> None:
    """pdu.check over every function code with every truncation of its requests and seeded damage: an
    exception code 01, 02 or 03 (01 exactly for the codes not served) or None, never an error of its own;
    a PDU shorter than its function defines is never taken as well-formed."""
    rng = random.Random(502)
    minimum = {1: 5, 2: 5, 3: 5, 4: 5, 5: 5, 6: 5, 15: 7, 16: 8, 22: 7, 23: 12}
    for pdu in modbus_requests(rng, 20_000):
        for cut in range(1, len(pdu) + 1):
            code = check(pdu[:cut])
            assert code in (None, 0x01, 0x02, 0x03)
            assert (code == 0x01) is (pdu[0] not in minimum)
            if cut < minimum.get(pdu[0], 0):
                assert code is not None


async def modbus_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tid: int, unit: int,
                          pdu: bytes) -> bytes:
    """One request; its answer PDU (transaction id, protocol id and unit id checked)."""
    writer.write(MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
    rtid, pid, length, runit = MBAP.unpack(await asyncio.wait_for(reader.readexactly(7), WAIT_S))
    assert (rtid, pid, runit) == (tid, 0, unit) and 2 <= length <= 254
    return await asyncio.wait_for(reader.readexactly(length - 1), WAIT_S)


async def test_modbus_trains_hostile_master(redis_master: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rng = random.Random(1502)
    rtu_of = {f.src: DEVICE_RTU for f in mbt.FORWARDS if f.kind in ("DO", "AO")}
    async with redis_controls(redis_master, rtu_of, (DEVICE_RTU,)) as (sink, (executor,)):
        srv = ModbusTrainsServer(mbt.rtu(), None, "127.0.0.1", sink, "A", quality_unit=2)
        await srv.start()
        sentinel = AsyncModbusTcpClient("127.0.0.1", port=srv.port, timeout=2, retries=0)
        try:
            srv.load_image(mbt.IMAGE)
            assert await sentinel.connect()
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            answered: dict[str, int] = {"normal": 0, "exception": 0}
            for tid, pdu in enumerate(modbus_requests(rng, 3_000)):
                unit = rng.choice((1, 1, 1, 2, 0, 0xFF, 7))
                ran = len(executor.executed)
                ans = await modbus_exchange(reader, writer, tid, unit, pdu)
                if ans[0] == pdu[0] | 0x80:
                    answered["exception"] += 1
                    assert len(ans) == 2 and ans[1] in EXCEPTIONS, (pdu.hex(), ans.hex())
                    if ans[1] in REFUSED_BEFORE_RUNNING:
                        assert len(executor.executed) == ran, f"{pdu.hex()} refused {ans.hex()}, yet ran"
                    if unit in (1, 2, 0, 0xFF) and (code := check(pdu)) is not None:
                        assert ans[1] == code, (pdu.hex(), ans.hex())
                else:
                    answered["normal"] += 1
                    assert ans[0] == pdu[0] and check(pdu) is None, (pdu.hex(), ans.hex())
                    assert (len(executor.executed) > ran) is (pdu[0] in WRITES), (pdu.hex(), executor.executed[ran:])
            assert answered["normal"] > 150 and answered["exception"] > 500, answered
            ran = len(executor.executed)

            # another protocol's frame is discarded (the next request gets the next answer); a pipelined
            # flood is answered in order
            writer.write(MBAP.pack(9000, 1, 6, 1) + bytes.fromhex("0600000001"))
            assert await modbus_exchange(reader, writer, 9001, 1, bytes.fromhex("0400030001")) == b"\x04\x02\x00\x07"
            flood = bytes.fromhex("0400030001")
            writer.write(b"".join(MBAP.pack(10_000 + i, 0, 6, 1) + flood for i in range(200)))
            for i in range(200):
                rtid, _, _, _ = MBAP.unpack(await asyncio.wait_for(reader.readexactly(7), WAIT_S))
                assert rtid == 10_000 + i and await reader.readexactly(4) == b"\x04\x02\x00\x07"
            writer.close()
            # a length field out of range, a half frame then a close, nothing at all: closed, nothing run
            for data, close_first in ((MBAP.pack(1, 0, 0, 1) + b"\x05", False), (MBAP.pack(1, 0, 1, 1) + b"\x05", False),
                                      (MBAP.pack(1, 0, 255, 1) + bytes(254), False),
                                      (MBAP.pack(1, 0, 0xFFFF, 1) + b"\x06", False),
                                      (MBAP.pack(1, 0, 6, 1) + bytes.fromhex("0500"), True), (b"", True)):
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                w.write(data)
                if close_first:
                    w.write_eof()
                assert await closed_by_server(r) == b""
                w.close()
            assert len(executor.executed) == ran

            # the sentinel still reads, and sees a change made now
            srv.apply([mbt.upd(3, 4242)])
            rr = await sentinel.read_input_registers(3, count=1, device_id=1)
            assert not rr.isError() and rr.registers == [4242]
            await soon(lambda: len(srv.conns) == 1, "every other connection gone")
        finally:
            sentinel.close()
            await srv.stop()
    no_errors_logged(caplog, executor)


# --- sefeps -----------------------------------------------------------------------------------------------------

PROBE_ADDR = 999_999  # no such point: a cmd on it is answered `rejected` at once, in order
WEIRD = (None, True, False, 0, 1, -1, 99, 2**63, 10**400, -(10**400), 1e308, -1e308, 0.5, "", "x", [], [1], {},
         {"session": "s"}, [[[]]])


def sefeps_frames(rng: random.Random, n: int) -> list[bytes]:
    """Client messages with fields deleted, given values of another type, huge or out of range, unknown
    types, and frames damaged at random (the length prefix still counting the body)."""
    templates: list[dict[str, Any]] = [
        {"t": "cmd", "id": 1, "addr": 30, "value": 1}, {"t": "cmd", "id": 2, "addr": 40, "value": 2.5},
        {"t": "cmd", "id": 3, "addr": 1, "value": 0}, {"t": "ack", "seq": 0}, {"t": "hb"},
        {"t": "resume", "session": "?", "seq": 0}, codec.hello(), codec.hello(resume=("?", 5)), {"t": "bye"}]
    out = []
    for _ in range(n):
        msg = dict(rng.choice(templates))
        kind = rng.randrange(10)
        if kind == 0:
            msg[rng.choice(list(msg))] = rng.choice(WEIRD)
        elif kind == 1 and len(msg) > 1:
            del msg[rng.choice([k for k in msg if k != "t"])]
        elif kind == 2:
            msg["t"] = rng.choice(("welcome", "err", "image", "CMD", "", 1, None))
        elif kind in (3, 4) and msg["t"] == "cmd":
            msg["id"] = rng.randrange(10, 10**6)
        elif kind in (5, 6) and msg["t"] == "cmd":
            msg["value"] = rng.choice((0, 1, 99, 2, -0.0, 1e-300, 1.7e308, 10**300, -(10**300), 10**400))
        body = json.dumps(msg).encode()
        if rng.random() < 0.15:
            body = mutate(rng, body) or b" "
        out.append(struct.pack(">I", len(body)) + body)
    return [struct.pack(">I", len(b)) + b for b in (
        b'{"t":"cmd","id":7,"addr":40,"value":1' + b"0" * 400 + b"}",  # an integer beyond a double
        b'{"t":"cmd","id":7,"addr":40,"value":NaN}', b'{"t":"cmd","id":8,"addr":40,"value":1.7e308}',
        b"[" * 100_000, b'{"t":"hb"}\xff')] + out


def test_sefeps_decoder_seeded_frames() -> None:
    """Damaged frames, fed whole and byte by byte: ProtocolError, or messages whose fields have the
    documented types (numbers finite), never another exception (an integer beyond a double's range leaked
    OverflowError from the number check)."""
    rng = random.Random(7070)
    accepted = 0
    for frame in sefeps_frames(rng, 5_000):
        for chunk in (len(frame), 1):
            dec = codec.Decoder(codec.CLIENT_MESSAGES)
            try:
                msgs = [m for i in range(0, len(frame), chunk) for m in dec.feed(frame[i:i + chunk])]
            except codec.ProtocolError:
                continue
            accepted += chunk > 1
            for m in msgs:
                fields = codec.CLIENT_MESSAGES[m["t"]]
                assert all(name not in m or type(m[name]).__name__ in {"int": ("int",), "num": ("int", "float"),
                           "str": ("str",), "list": ("list",), "dict": ("dict",)}[kind]
                           for name, (kind, _) in fields.items())
                if m["t"] == "cmd":
                    assert abs(float(m["value"])) < float("inf")
    assert 1_000 < accepted < 4_900


async def sefeps_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dec: codec.Decoder,
                          frame: bytes, wait_ids: set[int], probe_id: int) -> tuple[list[dict[str, Any]], bool]:
    """Send a frame, then a probe cmd: the messages received until the probe's res and a res for each of
    `wait_ids`, or until the server closed the connection (then True)."""
    writer.write(frame + codec.encode({"t": "cmd", "id": probe_id, "addr": PROBE_ADDR, "value": 0}))
    got: list[dict[str, Any]] = []
    while not {probe_id, *wait_ids} <= {m["id"] for m in got if m["t"] == "res"}:
        data = await asyncio.wait_for(reader.read(65536), WAIT_S)
        if not data:
            return got, True
        got += dec.feed(data)
    return got, False


async def sefeps_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, codec.Decoder]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    dec = codec.Decoder(codec.SERVER_MESSAGES)
    writer.write(codec.encode(codec.hello()))
    msgs: list[dict[str, Any]] = []
    while not any(m["t"] == "image" and not m["more"] for m in msgs):
        msgs += dec.feed(await asyncio.wait_for(reader.read(65536), WAIT_S))
    return reader, writer, dec


async def test_sefeps_hostile_master(redis_master: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rng = random.Random(17070)
    rtu_of = {f.src: DEVICE_RTU for f in sef.FWD.values() if f.kind in ("DO", "AO")}
    async with redis_controls(redis_master, rtu_of, (DEVICE_RTU,)) as (sink, (executor,)), \
            sef.sefeps_server(sink=sink, heartbeat_s=5) as srv:
        srv.load_image([sef.upd(1, 1.5), sef.upd(10, 1)])
        async with sef.sefeps_client(srv.port, name="sentinel") as sentinel:
            await sentinel.connect()
            await sentinel.wait_image()
            outcomes = {"answered": 0, "closed": 0}
            frames = sefeps_frames(rng, 600)
            while frames:
                reader, writer, dec = await sefeps_open(srv.port)
                while frames:
                    frame = frames.pop(0)
                    try:  # only whether it holds a cmd or a bye (the decoder itself: the test above)
                        sent = codec.Decoder(codec.CLIENT_MESSAGES).feed(frame)
                    except Exception:  # noqa: BLE001
                        sent = []
                    cmds = {m["id"] for m in sent if m["t"] == "cmd"}
                    ran = len(executor.executed)
                    got, closed = await sefeps_exchange(reader, writer, dec, frame, cmds, probe_id=-1)
                    if closed:  # with an err saying why, but after a bye
                        outcomes["closed"] += 1
                        errs = [m for m in got if m["t"] == "err"]
                        if [m["t"] for m in sent] == ["bye"]:
                            assert not errs, (frame, got)
                        else:
                            assert errs and errs[-1]["code"] in ("frame", "proto", "version"), (frame[:80], got)
                        assert len(executor.executed) == ran, (frame[:80], executor.executed[ran:])
                        writer.close()
                        break
                    outcomes["answered"] += 1
                    for res in (m for m in got if m["t"] == "res" and m["id"] in cmds):
                        n = len(executor.executed) - ran
                        assert n == (1 if res["ok"] or res["state"] == "failed" else 0), (frame[:80], res)
                else:
                    writer.close()
            assert outcomes["answered"] > 200 and outcomes["closed"] > 50, outcomes
            ran = len(executor.executed)

            # before hello, lengths 0 and over the limit: err, closed; a half frame then a close; nothing at all
            for data, code in ((codec.encode({"t": "cmd", "id": 1, "addr": 30, "value": 1}), "proto"),
                               (bytes(4), "frame"), (b"\xff\xff\xff\xff", "frame"),
                               (codec.encode(codec.hello(versions=[2**70])), "version"),
                               (codec.encode(codec.hello())[:9], None), (b"", None)):
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                w.write(data)
                if code is None:
                    w.write_eof()
                msgs = codec.Decoder(codec.SERVER_MESSAGES).feed(await closed_by_server(r))
                assert [m.get("code") for m in msgs] == ([code] if code else []), msgs
                w.close()
            # a flood of heartbeats and probes in one write: every probe answered, in order
            r, w, dec = await sefeps_open(srv.port)
            hb = codec.encode({"t": "hb"})
            w.write(b"".join(hb + codec.encode({"t": "cmd", "id": i, "addr": PROBE_ADDR, "value": 0})
                             for i in range(500)))
            got = []
            while len(got) < 500:
                got += [m["id"] for m in dec.feed(await asyncio.wait_for(r.read(65536), WAIT_S)) if m["t"] == "res"]
            assert got == list(range(500))
            w.close()
            assert len(executor.executed) == ran

            # the sentinel was not disturbed and gets a change made now, once
            seq = sentinel.seq
            srv.apply([sef.upd(1, 7.25, ts=5000)])
            assert await sentinel.next_change() == (seq + 1, 1, 7.25, 0, 5000)
            await asyncio.sleep(0.3)
            assert sentinel.changes.empty() and sentinel.error is None and not sentinel.closed.is_set()
            await soon(lambda: len(srv.conns) == 1, "every other connection gone")
    no_errors_logged(caplog, executor)


async def test_sefeps_master_flooding_resumes_does_not_hold_the_event_loop() -> None:
    """`resume` of this session from the oldest kept seq, over and over in one write (10,000 events kept):
    each costs a pass over the history, and the ~1,500 of one 64 KiB read held the event loop 1.3 s (every
    master of the process waited); the server now lets the others run every 64 messages."""
    async with sef.sefeps_server(heartbeat_s=5) as srv:
        srv.load_image([sef.upd(1, 1.0)])
        reader, writer, _ = await sefeps_open(srv.port)
        for k in range(10):
            srv.apply([sef.upd(1, float(i), ts=1000 + i) for i in range(k * 1000, k * 1000 + 1000)])
        first = srv.history.items[0][1][0]
        await soon(lambda: next(iter(srv.conns)).sent_seq == srv.seq, "the events sent")

        async def discard() -> None:
            while await reader.read(1 << 20):
                pass

        lags: list[float] = []

        async def probe() -> None:
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - t - 0.01)

        tasks = [asyncio.create_task(discard()), asyncio.create_task(probe())]
        resume = codec.encode({"t": "resume", "session": srv.session, "seq": first - 1})
        writer.write(resume * 5_000)  # (each answered with the 10,000 events again: read and discarded)
        await asyncio.sleep(1.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        assert len(lags) > 3 and max(lags) < 0.6, lags
