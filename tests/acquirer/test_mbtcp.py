"""Table tests of the acquirer's Modbus TCP codec (mbtcp.py) and of decoding only what changed (plan.py):
no network, except the last tests, which run the client against in-process asyncio servers that answer
wrongly on purpose."""

from __future__ import annotations

import asyncio
import random

import pytest

from fep_acquirer import mbtcp
from fep_acquirer.device import DeviceError, DeviceLink, LinkError, NoAnswer
from fep_acquirer.plan import changed_points, decode_block, plan_reads
from fepha import datatypes as dt
from fepha.semodel.model import Channel, Point
from tests.acquirer.test_rules import bits_bytes, pt, regs_bytes


@pytest.mark.parametrize(("pdu", "frame"), [
    (mbtcp.read_pdu("hr", 0, 125), "0007 0000 0006 11 03 0000 007d"),
    (mbtcp.read_pdu("co", 10, 2000), "0007 0000 0006 11 01 000a 07d0"),
    (mbtcp.read_pdu("di", 1, 1), "0007 0000 0006 11 02 0001 0001"),
    (mbtcp.read_pdu("ir", 65535, 1), "0007 0000 0006 11 04 ffff 0001"),
    (mbtcp.write_coil_pdu(3, True), "0007 0000 0006 11 05 0003 ff00"),
    (mbtcp.write_coil_pdu(3, False), "0007 0000 0006 11 05 0003 0000"),
    (mbtcp.write_register_pdu(4, 0xBEEF), "0007 0000 0006 11 06 0004 beef"),
    (mbtcp.write_registers_pdu(5, [1, 0xFFFF]), "0007 0000 000b 11 10 0005 0002 04 0001 ffff"),
])
def test_request_frames(pdu: bytes, frame: str) -> None:
    assert mbtcp.frame(7, 0x11, pdu) == bytes.fromhex(frame.replace(" ", ""))


@pytest.mark.parametrize(("hdr", "want"), [
    ("0001 0000 0005 01", (1, 11, 1)),
    ("ffff 0000 0002 ff", (0xFFFF, 8, 255)),
    ("0001 0000 00fe 01", (1, 260, 1)),
    ("0001 0001 0005 01", "protocol id 1"),
    ("0001 0000 0001 01", "MBAP length 1"),
    ("0001 0000 00ff 01", "MBAP length 255"),
    ("0001 0000 0000 01", "MBAP length 0"),
])
def test_header(hdr: str, want: tuple[int, int, int] | str) -> None:
    raw = bytes.fromhex(hdr.replace(" ", ""))
    if isinstance(want, str):
        with pytest.raises(mbtcp.Malformed, match=want):
            mbtcp.header(raw)
    else:
        assert mbtcp.header(raw) == want


HR2 = mbtcp.read_pdu("hr", 0, 2)
CO10 = mbtcp.read_pdu("co", 0, 10)
FC16 = mbtcp.write_registers_pdu(5, [1, 2])


@pytest.mark.parametrize(("request_pdu", "answer", "want"), [
    (HR2, "03 04 0001 0002", bytes.fromhex("00010002")),
    (CO10, "01 02 ff 03", bytes.fromhex("ff03")),
    (mbtcp.write_coil_pdu(3, True), "05 0003 ff00", b""),
    (mbtcp.write_register_pdu(4, 9), "06 0004 0009", b""),
    (FC16, "10 0005 0002", b""),
    (HR2, "83 02", mbtcp.ExceptionAnswer(2)),
    (HR2, "83 0b", mbtcp.ExceptionAnswer(0x0B)),
    (HR2, "83", "exception answer of 1 bytes"),
    (HR2, "83 02 00", "exception answer of 3 bytes"),
    (HR2, "", "empty PDU"),
    (HR2, "04 04 0001 0002", "function 4 in the answer to function 3"),
    (HR2, "03 02 0001", "byte count 2"),             # fewer registers than asked
    (HR2, "03 04 0001", "byte count 4 in 4 bytes"),  # the byte count says more than the frame holds
    (HR2, "03 04 0001 0002 00", "byte count 4 in 7 bytes"),
    (HR2, "03", "byte count -"),
    (CO10, "01 01 ff", "byte count 1"),
    (mbtcp.write_coil_pdu(3, True), "05 0003 0000", "does not echo"),
    (mbtcp.write_register_pdu(4, 9), "06 0004 0009 00", "does not echo"),
    (FC16, "10 0005 0003", "does not echo"),
])
def test_answers(request_pdu: bytes, answer: str, want: bytes | Exception | str) -> None:
    pdu = bytes.fromhex(answer.replace(" ", ""))
    if isinstance(want, bytes):
        assert mbtcp.answer(request_pdu, pdu) == want
    elif isinstance(want, mbtcp.ExceptionAnswer):
        with pytest.raises(mbtcp.ExceptionAnswer) as exc:
            mbtcp.answer(request_pdu, pdu)
        assert exc.value.code == want.code
    else:
        with pytest.raises(mbtcp.Malformed, match=want):
            mbtcp.answer(request_pdu, pdu)


def test_changed_points_registers_match_a_full_decode() -> None:
    """Decoding only the points whose registers differ gives, merged into the previous values, exactly
    the full decode, for every type, order and overlap (a 32-bit point spans two registers)."""
    rnd = random.Random(3)
    ps, addr = [], 0
    for i in range(60):
        typ = rnd.choice(("int16", "uint16", "int32", "uint32", "float32"))
        ps.append(pt(i + 1, "hr", addr, typ, byteorder=rnd.choice(dt.ORDERS), wordorder=rnd.choice(dt.ORDERS),
                     scale=rnd.choice((1.0, 0.5)), offset=rnd.choice((0.0, -3.0))))
        addr += dt.span(typ, "hr") + rnd.choice((0, 0, 1, 3))
    ps.append(pt(100, "hr", 2, "bool", bit=rnd.randrange(16)))
    ps.append(pt(101, "hr", 2, "bool", bit=15))
    blocks = plan_reads(ps)
    for blk in blocks:
        regs = [rnd.randrange(65536) for _ in range(blk.count)]
        have = decode_block(blk, regs_bytes(regs))
        assert set(have) == {p.id for p in blk.points}
        for _ in range(200):
            new = list(regs)
            for _ in range(rnd.choice((0, 1, 2, 5))):
                k = rnd.randrange(blk.count)
                new[k] = rnd.choice((rnd.randrange(65536), new[k] ^ (1 << rnd.randrange(16))))
            delta = decode_block(blk, regs_bytes(new), regs_bytes(regs))
            full = decode_block(blk, regs_bytes(new))
            merged = {**have, **delta}
            assert merged.keys() == full.keys()
            for pid in full:  # NaN-safe equality of the float32 values
                assert merged[pid] == full[pid] or (merged[pid] != merged[pid] and full[pid] != full[pid])
            changed = {blk.points[k].id for k in changed_points(blk, regs_bytes(new), regs_bytes(regs))}
            touched = {p.id for p in blk.points
                       if any(new[a - blk.start] != regs[a - blk.start]
                              for a in range(p.address, p.address + dt.span(p.datatype, "hr")))}
            assert changed == touched == set(delta)
            regs, have = new, full


@pytest.mark.parametrize("area", ["co", "di"])
def test_changed_points_bits(area: str) -> None:
    rnd = random.Random(5)
    ps = [pt(i + 1, area, a, "bool") for i, a in enumerate(sorted(rnd.sample(range(40), 25)))]
    (blk,) = plan_reads(ps)
    bits = [rnd.random() < 0.5 for _ in range(blk.count)]
    for _ in range(200):
        new = list(bits)
        for _ in range(rnd.choice((0, 1, 3))):
            k = rnd.randrange(blk.count)
            new[k] = not new[k]
        delta = decode_block(blk, bits_bytes(new), bits_bytes(bits))
        assert delta == {p.id: int(new[p.address - blk.start]) for p in blk.points
                         if new[p.address - blk.start] != bits[p.address - blk.start]}
        assert decode_block(blk, bits_bytes(new)) == {p.id: int(new[p.address - blk.start]) for p in blk.points}
        bits = new
    padded = bytearray(bits_bytes(bits))
    padded[-1] |= 0x80 if blk.count % 8 else 0  # a padding bit set by the device is no address
    assert decode_block(blk, bytes(padded), bits_bytes(bits)) == {}


def test_no_previous_or_another_length_decodes_everything() -> None:
    (blk,) = plan_reads([pt(1, "hr", 0), pt(2, "hr", 1)])
    assert decode_block(blk, regs_bytes([5, 6]), regs_bytes([5, 6])) == {}
    assert decode_block(blk, regs_bytes([5, 6]), None) == {1: 5, 2: 6}
    assert decode_block(blk, regs_bytes([5, 6]), regs_bytes([5])) == {1: 5, 2: 6}


class _Wire:
    """A transport that keeps what the protocol sends (no network)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def _stream_cuts(n: int) -> list[list[int]]:
    """Ways to cut a byte stream of n bytes into chunks: whole, at every position, byte by byte."""
    return [[]] + [[k] for k in range(1, n)] + [list(range(1, n))]


async def test_frames_in_any_chunking_give_the_same_answers() -> None:
    """_Protocol.data_received: two answers (and a late one dropped between them) arriving whole, split at
    any byte, byte by byte, or all in one chunk give the same answers, and the second request goes out once
    the first is answered."""
    pdus = [mbtcp.read_pdu("hr", 0, 2), mbtcp.read_pdu("hr", 10, 1)]
    stream = (mbtcp.frame(1, 7, b"\x03\x04\x00\x05\x00\x06") + mbtcp.frame(9, 7, b"\x03\x02\x00\x01")
              + mbtcp.frame(2, 7, b"\x03\x02\x00\x09"))
    for cuts in _stream_cuts(len(stream)):
        proto = mbtcp._Protocol(unit=7, timeout_s=5.0)
        wire = _Wire()
        proto.connection_made(wire)  # type: ignore[arg-type]
        fut = asyncio.get_running_loop().create_future()
        proto.start(mbtcp._Sequence(pdus, fut, None))
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            proto.data_received(stream[a:b])
        assert fut.done() and fut.result() == [b"\x00\x05\x00\x06", b"\x00\x09"], cuts
        assert wire.sent == [mbtcp.frame(1, 7, pdus[0]), mbtcp.frame(2, 7, pdus[1])]
        assert not proto.buf
        proto._close()


# ---- the client against servers that misbehave on purpose (loopback, in process) ----

async def serve(handler, delay_s: float = 0.0, per_connection: int | None = None,
                conns: list[int] | None = None, host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, int]:
    """A device on a free loopback port (or `host`:`port`): `handler(tid, unit, pdu)` yields the frames to
    send back, after `delay_s` (the device's time per request); it closes a connection after
    `per_connection` requests (None: never) and appends to `conns` at each connection."""
    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if conns is not None:
            conns.append(0)
        try:
            for _ in iter(int, 1) if per_connection is None else range(per_connection):
                hdr = await reader.readexactly(7)
                tid, _, length, unit = mbtcp.MBAP.unpack(hdr)
                pdu = await reader.readexactly(length - 1)
                if delay_s:
                    await asyncio.sleep(delay_s)
                for out in handler(tid, unit, pdu):
                    writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, host, port)
    return server, server.sockets[0].getsockname()[1]


def link_to(port: int, timeout_s: float = 0.3, inflight: int = 1) -> DeviceLink:
    return DeviceLink(Channel(rtu=1, no=1, host="127.0.0.1", port=port, unit=7), timeout_s, inflight)


HR_BLOCK = plan_reads([Point(id=1, rtu=1, kind="AI", name="", area="hr", address=0, datatype="uint16")])[0]


async def exchange(handler, timeout_s: float = 0.3) -> tuple[list[bytes | Exception], DeviceLink]:
    server, port = await serve(handler)
    link = link_to(port, timeout_s)
    out: list[bytes | Exception] = []
    try:
        await link.connect()
        for _ in range(2):
            try:
                out.append((await link.read_all([HR_BLOCK]))[0])
            except (LinkError, DeviceError) as exc:
                out.append(exc)
    finally:
        link.close()
        server.close()
        await server.wait_closed()
    return out, link


async def test_client_reads_and_skips_a_late_answer() -> None:
    def handler(tid: int, unit: int, pdu: bytes):
        assert unit == 7 and pdu == HR_BLOCK.request
        yield mbtcp.frame((tid - 1) & 0xFFFF, unit, b"\x03\x02\x00\x63")  # a stale transaction: dropped
        yield mbtcp.frame(tid, unit, b"\x03\x02\x00" + bytes([tid]))
    out, _ = await exchange(handler)
    assert out == [b"\x00\x01", b"\x00\x02"]


async def test_exception_answers() -> None:
    codes = iter((0x02, 0x0B))

    def handler(tid: int, unit: int, pdu: bytes):
        yield mbtcp.frame(tid, unit, bytes([0x83, next(codes)]))
    out, _ = await exchange(handler)
    assert isinstance(out[0], DeviceError) and "0x02" in str(out[0])
    assert isinstance(out[1], LinkError) and "0x0b" in str(out[1])


@pytest.mark.parametrize(("bad", "why"), [
    (lambda tid, unit: mbtcp.MBAP.pack(tid, 1, 4, unit) + b"\x03\x02\x00", "protocol id 1"),
    (lambda tid, unit: mbtcp.frame(tid, unit + 1, b"\x03\x02\x00\x01"), "unit id 8"),
    (lambda tid, unit: mbtcp.frame(tid, unit, b"\x03\x04\x00\x01\x00\x02"), "byte count 4"),
])
async def test_malformed_answer_closes_the_connection(bad, why: str) -> None:
    def handler(tid: int, unit: int, pdu: bytes):
        yield bad(tid, unit)
    out, link = await exchange(handler)
    assert isinstance(out[0], LinkError) and why in str(out[0])
    assert isinstance(out[1], LinkError)  # the connection is gone, not read half-way again
    assert link.client.proto is None or link.client.proto.transport.is_closing()


async def test_timeout_then_the_late_answer_is_not_taken_for_the_next() -> None:
    seen: list[int] = []

    def handler(tid: int, unit: int, pdu: bytes):
        seen.append(tid)
        if len(seen) == 1:
            return  # no answer to the first request: it times out
        yield mbtcp.frame(seen[0], unit, b"\x03\x02\x00\x63")  # the first one's answer, late
        yield mbtcp.frame(tid, unit, b"\x03\x02\x00\x05")
    out, _ = await exchange(handler, timeout_s=0.2)
    assert isinstance(out[0], LinkError) and "timeout" in str(out[0])
    assert out[1] == b"\x00\x05"


async def test_each_request_gets_its_whole_timeout_from_its_own_send() -> None:
    """One timer per connection (check_deadline): a request sent late in the previous one's timeout still
    gets its whole timeout, and the one that is not answered fails at its own deadline, not earlier."""
    timeout = 0.4

    server, port = await serve(lambda tid, unit, pdu: ())
    client = mbtcp.Client("127.0.0.1", port, 7, timeout)
    try:
        await client.connect()
        loop = asyncio.get_running_loop()
        proto = client.proto
        assert proto is not None
        answers = []

        def reply(data: bytes) -> None:
            proto.data_received(data)

        for _ in range(3):  # each answered after 0.3 s (most of its timeout): 0.9 s in all
            t0 = loop.time()
            fut = asyncio.ensure_future(client.request(HR_BLOCK.request))
            await asyncio.sleep(0)
            loop.call_later(0.3, reply, mbtcp.frame(proto.tid, 7, b"\x03\x02\x00\x01"))
            answers.append(await fut)
            assert 0.25 < loop.time() - t0 < timeout
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await client.request(HR_BLOCK.request)  # never answered
        assert timeout - 0.02 < loop.time() - t0 < timeout + 0.2
        assert answers == [b"\x00\x01"] * 3
    finally:
        client.close()
        server.close()
        await server.wait_closed()


THREE_BLOCKS = plan_reads([Point(id=i + 1, rtu=1, kind="AI", name="", area="hr", address=100 * i, datatype="uint16")
                           for i in range(3)])


async def test_a_poll_is_one_sequence_and_a_refused_block_does_not_stop_it() -> None:
    """read_all: the blocks' requests one after the other (one in flight), a block the device refuses
    (illegal address) is that block's DeviceError and the next blocks are still read; a gateway's 0x0B
    (target failed to respond) after an answered block is that block's NoAnswer, as the poll's first
    answer it is a LinkError (device not reached)."""
    assert len(THREE_BLOCKS) == 3
    log: list[int] = []

    def handler(tid: int, unit: int, pdu: bytes):
        start = int.from_bytes(pdu[1:3], "big")
        log.append(start)
        if start == 100:
            yield mbtcp.frame(tid, unit, b"\x83\x02")
        elif (start == 200 and 3 < len(log) <= 6) or (start == 0 and len(log) > 6):
            yield mbtcp.frame(tid, unit, b"\x83\x0b")
        else:
            yield mbtcp.frame(tid, unit, b"\x03\x02" + start.to_bytes(2, "big"))

    server, port = await serve(handler)
    link = link_to(port)
    try:
        await link.connect()
        got = await link.read_all(THREE_BLOCKS)
        assert got[0] == b"\x00\x00" and isinstance(got[1], DeviceError) and got[2] == b"\x00\xc8"
        assert log == [0, 100, 200]
        got = await link.read_all(THREE_BLOCKS)
        assert got[0] == b"\x00\x00" and isinstance(got[2], NoAnswer) and "0x0b" in str(got[2])
        with pytest.raises(LinkError, match="0x0b"):
            await link.read_all(THREE_BLOCKS)
    finally:
        link.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("inflight", [1, 2])
async def test_a_control_write_waits_one_request_not_the_whole_poll(inflight: int) -> None:
    """A write that comes while a poll's sequence runs goes out after the requests in flight (one, or up to
    INFLIGHT), then the poll's remaining reads: the sequence pauses for it (DeviceLink.waiting)."""
    blocks = plan_reads([Point(id=i + 1, rtu=1, kind="AI", name="", area="hr", address=100 * i, datatype="uint16")
                         for i in range(8)])
    wire: list[str] = []

    def handler(tid: int, unit: int, pdu: bytes):
        wire.append("w" if pdu[0] == mbtcp.WRITE_REGISTER else "r")
        yield mbtcp.frame(tid, unit, pdu if pdu[0] == mbtcp.WRITE_REGISTER else b"\x03\x02\x00\x01")

    server, port = await serve(handler, delay_s=0.02)
    link = link_to(port, timeout_s=1.0, inflight=inflight)
    try:
        await link.connect()
        poll = asyncio.ensure_future(link.read_all(blocks))
        await asyncio.sleep(0.05)  # two or three reads in
        await link.write(Point(id=99, rtu=1, kind="AO", name="", area="hr", address=5, datatype="uint16"), 7)
        got = await poll
        assert got == [b"\x00\x01"] * 8
        assert wire.count("w") == 1 and wire.count("r") == 8
        assert inflight <= wire.index("w") <= 4 * inflight, wire  # after the reads in flight, not the poll's
    finally:
        link.close()
        server.close()
        await server.wait_closed()


TWO_BLOCKS = plan_reads([Point(id=1, rtu=1, kind="AI", name="", area="hr", address=0, datatype="uint16"),
                         Point(id=2, rtu=1, kind="AI", name="", area="hr", address=500, datatype="uint16")])


@pytest.mark.parametrize("inflight", [1, 2])
@pytest.mark.parametrize("cut", [3, 7, 9, 10])
async def test_a_truncated_answer_then_the_next_gives_no_value_and_the_link_recovers(inflight: int, cut: int) -> None:
    """A device that sends only the first `cut` bytes of its first answer, then answers on normally: the next
    answer completes the truncated frame (MBAP length-based framing), so what follows is cut mid-frame. No
    poll yields a value the device did not send for that block (each register holds 0x11 and its request's
    transaction id): the poll fails (timeout, a malformed frame closing the connection) until the link is
    connected again and answers whole."""
    sent = [0]

    def handler(tid: int, unit: int, pdu: bytes):
        sent[0] += 1
        whole = mbtcp.frame(tid, unit, b"\x03\x02" + bytes([0x11, tid & 0xFF]))
        yield whole[:cut] if sent[0] == 1 else whole

    server, port = await serve(handler)
    link = DeviceLink(Channel(rtu=1, no=1, host="127.0.0.1", port=port, unit=7), 0.3, inflight)
    got: list[list[bytes] | Exception] = []
    try:
        for _ in range(4):
            try:
                if link.client.proto is None or link.client.proto.transport.is_closing():
                    await link.connect()
                got.append(await link.read_all(TWO_BLOCKS))
            except (LinkError, DeviceError) as exc:
                got.append(exc)
    finally:
        link.close()
        server.close()
        await server.wait_closed()
    answers = [g for g in got if isinstance(g, list)]
    for a in answers:  # a block may be unanswered (DeviceError), never answered with a header's bytes
        assert all(r[0] == 0x11 for r in a if isinstance(r, bytes)), got
        if all(isinstance(r, bytes) for r in a):
            assert a[1][1] == a[0][1] + 1, got  # each block its own request's answer
    assert isinstance(got[-1], list) and all(isinstance(r, bytes) for r in got[-1]), got  # recovered


async def test_device_closing_the_connection_is_a_link_error() -> None:
    def handler(tid: int, unit: int, pdu: bytes):
        raise ConnectionError  # the server side drops the connection without answering
        yield b""
    out, _ = await exchange(handler, timeout_s=2.0)
    assert all(isinstance(x, LinkError) for x in out)


async def test_connect_refused_is_a_link_error() -> None:
    server, port = await serve(lambda *a: iter(()))
    server.close()
    await server.wait_closed()
    with pytest.raises(LinkError, match="connect"):
        await link_to(port).connect()


# ---- RtuRunner.poll with partial decoding: what reaches the writer equals the full-decode rule ----

class ScriptedLink:
    """Answers each block read from `regs` (the device's registers now); DeviceError for blocks in `fail`."""

    def __init__(self, regs: list[int]) -> None:
        self.regs, self.fail = regs, set()

    async def read_all(self, blocks):
        return [DeviceError("modbus exception 0x02") if b.start in self.fail
                else regs_bytes(self.regs[b.start:b.start + b.count]) for b in blocks]


class RecordingWriter:
    def __init__(self) -> None:
        self.calls: list[dict[int, tuple[float, int]]] = []
        self.ok = True

    async def write(self, rtu: int, epoch: int, pairs: list[str]):
        from fep_acquirer.writer import WriteResult
        from fepha import points as fpt
        recs = [fpt.decode(r) for r in pairs[1::2]]
        self.calls.append({int(pid): (v.value, v.quality) for pid, v in zip(pairs[::2], recs, strict=True)})
        return WriteResult(self.ok, error="" if self.ok else "down")

    async def write_many(self, rtu: int, epoch: int, writes: list[list[str]], wids=None):
        return [await self.write(rtu, epoch, pairs) for pairs in writes]


async def test_poll_writes_what_a_full_decode_would() -> None:
    """Random register changes, a deadband, failed writes and a failed block: every write carries
    exactly the points the change rule over full decodes selects (a model tracker fed full polls); the
    failed writes are re-sent as they were, first, then what changed after them."""
    import logging

    from fep_acquirer.changes import ChangeTracker
    from fep_acquirer.metrics import Metrics
    from fep_acquirer.rtu import RtuRunner
    from fepha.config import NodeConfig
    from fepha.logsetup import OnceLogger
    from fepha.semodel.model import Rtu

    points = tuple(pt(i + 1, "hr", i, deadband=(3.0 if i % 7 == 0 else 0.0)) for i in range(300))
    rtu = Rtu(id=1, name="r", rtutype=1, protocol="modbus", points=points)
    writer = RecordingWriter()
    run = RtuRunner(rtu, NodeConfig(), writer, Metrics("A"), OnceLogger(logging.getLogger("t")))  # type: ignore[arg-type]
    run.lease.update("A", 1)
    model = ChangeTracker(deadband=dict(run.deadband))
    kept: list[dict[int, tuple[float, int]]] = []  # the model's failed writes, re-sent first
    rnd = random.Random(11)
    link = ScriptedLink([rnd.randrange(100) for _ in range(300)])
    blocks = run.blocks
    for step in range(60):
        for _ in range(rnd.choice((0, 3, 15))):
            link.regs[rnd.randrange(300)] = rnd.randrange(100)
        link.fail = {blocks[1].start} if step in (20, 21) else set()
        writer.ok = step not in (30, 31)
        if step == 40:
            run.full_image()
            model.forget()
        full = {}
        for b in blocks:
            for p in b.points:
                full[p.id] = ((run.samples.get(p.id, (0, 0))[0], IV_Q) if b.start in link.fail
                              else (link.regs[p.address], 0))
        want = model.changes(full, {pid: s for w in kept for pid, s in w.items()})
        writer.calls.clear()
        await run.poll(link)  # type: ignore[arg-type]
        assert writer.calls == kept + ([want] if want else []), step
        assert run.samples == full
        if want:
            kept.append(want)
        if writer.ok:
            for w in kept:
                model.committed(w)
            kept.clear()


IV_Q = 0x80
