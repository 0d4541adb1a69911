"""Seeded fuzzing of what field devices answer. At the decoder level (no network, no Redis): mutated Modbus
TCP answers fed to the acquirer's framing (mbtcp.py, one and several requests in flight), registers that
are no number (float32 NaN, infinities) through RtuRunner.poll, and mutated IEC 104 frames from an RTU fed
to the controlling station's reading path (Iec104Runner._receive: link, ASDU codec, rules, the write).
At the process level (one acquirer, a real Redis): a hostile Modbus device beside fep-plcsim, and a
hostile IEC 104 RTU beside a healthy one.

The invariant everywhere (docs/acquirer.md, "Modbus device faults" and "IEC 104 acquisition", Bad input):
only the documented handling happens (the connection closed, the value marked IV, the object ignored and
logged), never another exception, and no value from a frame that is not a well-formed answer is taken as
good. Every case is derived from a fixed seed, so a failure names a case that replays."""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import random
import struct
import time

import pytest

from fep_acquirer import iec104rules as rules
from fep_acquirer import mbtcp
from fep_acquirer.device import DeviceLink, LinkError
from fep_acquirer.iec104rtu import Iec104Runner, LinkLost
from fep_acquirer.metrics import Metrics
from fep_acquirer.plan import plan_reads
from fep_acquirer.rtu import RtuRunner
from fepha import keyspace as ks
from fepha import points
from fepha.config import NodeConfig
from fepha.iec104 import codec as c
from fepha.iec104.link import Link, LinkParams, Role
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Channel, Model, Rtu
from tests.acquirer.helpers import Node, free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.acquirer.test_iec104 import CA, IEC_FAST, _is, changes_of, iec_rows, value_of
from tests.acquirer.test_iec104_resend import ScriptRtu
from tests.acquirer.test_iec104_rules import RTU as IEC_RTU
from tests.acquirer.test_iec104_rules import T
from tests.acquirer.test_mbtcp import RecordingWriter, ScriptedLink, _Wire, serve
from tests.acquirer.test_rules import pt

# ---- Modbus TCP answers ----------------------------------------------------------------------------------

UNIT = 7
REQUESTS = (mbtcp.read_pdu("hr", 0, 2), mbtcp.read_pdu("co", 3, 10), mbtcp.read_pdu("ir", 9, 1),
            mbtcp.write_register_pdu(4, 0x1234), mbtcp.write_coil_pdu(1, True),
            mbtcp.write_registers_pdu(5, [1, 2]))


def genuine(tid: int, request: bytes) -> bytes:
    """The device's well-formed answer frame to `request` sent with `tid`: a read's data bytes say which
    transaction they answer (so that an answer taken for another request is seen)."""
    fc = request[0]
    if fc <= 4:
        n = mbtcp.read_bytes(("co", "di", "hr", "ir")[fc - 1], int.from_bytes(request[3:5], "big"))
        data = bytes((0xA0 | (tid + k) % 16) for k in range(n))
        return mbtcp.frame(tid, UNIT, bytes((fc, n)) + data)
    return mbtcp.frame(tid, UNIT, request[:5])


def mutations(rnd: random.Random, tid: int, request: bytes) -> list[tuple[str, bytes]]:
    """Mutated forms of the answer to `request` (transaction `tid`): each header field, the function code
    (other functions, the exception bit with 1, 2 and 3 octets), the byte count against the quantity asked,
    the payload against the MBAP length, truncation at every length, extra bytes, two answers in one
    chunk, random octets replaced."""
    good = genuine(tid, request)
    fc, body = request[0], good[7:]
    out: list[tuple[str, bytes]] = [("genuine", good)]
    for other in {tid ^ 1, (tid + 1) & 0xFFFF, (tid - 1) & 0xFFFF, rnd.randrange(65536)} - {tid}:
        out.append((f"tid {other}", struct.pack(">H", other) + good[2:]))
    for proto in (1, 0x8000, rnd.randrange(1, 65536)):
        out.append((f"protocol {proto}", good[:2] + struct.pack(">H", proto) + good[4:]))
    for length in (0, 1, 2, len(body), len(body) + 2, 254, 255, 0xFFFF, rnd.randrange(65536)):
        out.append((f"length {length}", good[:4] + struct.pack(">H", length) + good[6:]))
    for unit in (0, 0xFF, UNIT + 1):
        out.append((f"unit {unit}", good[:6] + bytes((unit,)) + body))
    for f in sorted({0, 1, 2, 3, 4, 5, 6, 16, 0x2B, rnd.randrange(256)} - {fc}):
        out.append((f"function {f}", mbtcp.frame(tid, UNIT, bytes((f,)) + body[1:])))
    for code in (0, 1, 2, 3, 4, 6, 0x0A, 0x0B, 0xFF):
        out.append((f"exception {code}", mbtcp.frame(tid, UNIT, bytes((fc | 0x80, code)))))
    out.append(("exception without code", mbtcp.frame(tid, UNIT, bytes((fc | 0x80,)))))
    out.append(("exception with a byte more", mbtcp.frame(tid, UNIT, bytes((fc | 0x80, 2, 0)))))
    if fc <= 4:
        for count in sorted({0, body[1] - 1, body[1] + 1, 255, rnd.randrange(256)} - {body[1]}):
            out.append((f"byte count {count}", mbtcp.frame(tid, UNIT, bytes((fc, count)) + body[2:])))
            data = bytes(count) if count <= 250 else body[2:]
            out.append((f"byte count {count} with as many bytes", mbtcp.frame(tid, UNIT, bytes((fc, count)) + data)))
    out.append(("payload a byte short", mbtcp.frame(tid, UNIT, body[:-1])))
    out.append(("payload a byte long", mbtcp.frame(tid, UNIT, body + b"\x00")))
    for cut in range(1, len(good)):
        out.append((f"truncated at {cut}", good[:cut]))
    for n in (1, 3, 7, 12):
        out.append((f"{n} extra bytes", good + rnd.randbytes(n)))
    out.append(("answered twice", good + good))
    out.append(("a stale answer first", genuine((tid - 1) & 0xFFFF, request) + good))
    for _ in range(12):
        bad = bytearray(good)
        for _ in range(rnd.choice((1, 1, 2, 4))):
            bad[rnd.randrange(len(bad))] = rnd.randrange(256)
        out.append((f"octets replaced {bytes(bad).hex()}", bytes(bad)))
    return out


def chunks(rnd: random.Random, stream: bytes, how: int) -> list[bytes]:
    """The stream whole (0), cut at one random byte (1), or byte by byte (2)."""
    if how == 0 or len(stream) < 2:
        return [stream]
    if how == 1:
        k = rnd.randrange(1, len(stream))
        return [stream[:k], stream[k:]]
    return [stream[i:i + 1] for i in range(len(stream))]


async def test_mutated_modbus_answers_give_a_genuine_answer_or_close_the_connection() -> None:
    """For every request type and each mutation of its answer (followed by the genuine answer to the next
    request), delivered whole, split, or byte by byte, to one and to two requests in flight: the framing
    never raises; every answer it hands on is a well-formed answer of that very request that the device
    sent whole (its frame is in the stream); a malformed one fails the sequence with `Malformed` and
    closes the connection; nothing is handed on after that."""
    rnd = random.Random(20261202)
    loop = asyncio.get_running_loop()
    cases = 0
    outcomes: dict[str, int] = {}
    for request in REQUESTS:
        second = mbtcp.read_pdu("hr", 100, 1)
        for name, bad in mutations(rnd, 1, request):
            for inflight, how in ((1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)):
                cases += 1
                proto = mbtcp._Protocol(UNIT, 5.0) if inflight == 1 else mbtcp._Pipelined(UNIT, 5.0, inflight)
                wire = _Wire()
                closed: list[bool] = []
                wire.close = lambda closed=closed: closed.append(True)  # type: ignore[method-assign]
                proto.connection_made(wire)  # type: ignore[arg-type]
                fut = loop.create_future()
                proto.start(mbtcp._Sequence([request, second], fut, None))
                stream = bad + genuine(2, second)
                for part in chunks(rnd, stream, how):
                    if closed:
                        break  # the transport stops reading once closed
                    proto.data_received(part)
                case = f"{request.hex()} {name} inflight {inflight} chunking {how}"
                if proto.timer is not None:
                    proto.timer.cancel()
                if not fut.done():
                    outcomes["waiting"] = outcomes.get("waiting", 0) + 1
                    assert not closed, case
                    continue
                if fut.exception() is not None:
                    exc = fut.exception()
                    assert isinstance(exc, mbtcp.Malformed), (case, exc)
                    assert closed, case
                    outcomes["malformed"] = outcomes.get("malformed", 0) + 1
                    continue
                answers = fut.result()
                assert answers, case
                for tid, (req, got) in enumerate(zip([request, second], answers, strict=False), start=1):
                    if isinstance(got, mbtcp.ExceptionAnswer):
                        assert mbtcp.frame(tid, UNIT, bytes((req[0] | 0x80, got.code))) in stream, case
                        continue
                    fc = req[0]
                    frame = (mbtcp.frame(tid, UNIT, bytes((fc, len(got))) + got) if fc <= 4
                             else mbtcp.frame(tid, UNIT, req[:5]))
                    assert frame in stream, (case, got.hex())  # the device sent it whole
                    if fc <= 4:
                        want = mbtcp.read_bytes(("co", "di", "hr", "ir")[fc - 1], int.from_bytes(req[3:5], "big"))
                        assert len(got) == want, case
                    else:
                        assert got == b"", case
                outcomes["answered"] = outcomes.get("answered", 0) + 1
    assert cases > 2500
    assert all(outcomes.get(k, 0) > 50 for k in ("answered", "malformed")), outcomes  # both sides exercised
    print(f"{cases} Modbus answer cases: {outcomes}")


async def test_mutated_answer_among_answers_out_of_order_with_several_in_flight() -> None:
    """Three or four requests in flight (INFLIGHT 4), their answers in a seeded order, one of them mutated
    (as above): the answers handed on are, in block order, answers of a prefix of the requests that the
    device sent whole, each its own request's (none taken for another's), or the sequence fails with `Malformed` and the connection is
    closed."""
    rnd = random.Random(4242)
    loop = asyncio.get_running_loop()
    pdus = [mbtcp.read_pdu("hr", 10 * k, k + 1) for k in range(4)]
    cases = 0
    for n in (3, 4):
        for victim in range(n):
            for name, bad in mutations(rnd, victim + 1, pdus[victim]):
                cases += 1
                proto = mbtcp._Pipelined(UNIT, 5.0, 4)
                wire = _Wire()
                closed: list[bool] = []
                wire.close = lambda closed=closed: closed.append(True)  # type: ignore[method-assign]
                proto.connection_made(wire)  # type: ignore[arg-type]
                fut = loop.create_future()
                proto.start(mbtcp._Sequence(pdus[:n], fut, None))
                frames = [bad if k == victim else genuine(k + 1, pdus[k]) for k in range(n)]
                rnd.shuffle(frames)
                stream = b"".join(frames)
                for part in chunks(rnd, stream, cases % 3):
                    if closed:
                        break
                    proto.data_received(part)
                if proto.timer is not None:
                    proto.timer.cancel()
                case = f"{n} in flight, answer {victim} {name}"
                if not fut.done():
                    continue  # waits for an answer still missing (its timeout would end it)
                if fut.exception() is not None:
                    assert isinstance(fut.exception(), mbtcp.Malformed) and closed, case
                    continue
                got = fut.result()
                for k, data in enumerate(got):
                    if isinstance(data, mbtcp.ExceptionAnswer):
                        assert mbtcp.frame(k + 1, UNIT, bytes((pdus[k][0] | 0x80, data.code))) in stream, case
                    else:  # its own request's answer, as the device sent it whole
                        assert len(data) == 2 * (k + 1), (case, k)
                        assert mbtcp.frame(k + 1, UNIT, bytes((3, len(data))) + data) in stream, (case, k)
    assert cases > 500


@pytest.mark.parametrize("inflight", [1, 2])
async def test_garbage_between_polls_is_a_malformed_stream_not_a_device_that_closed(inflight: int) -> None:
    """A device that sends seeded garbage after its answer, while no request is pending: the acquirer
    closes that connection (the stream cannot be trusted) and the next poll fails as for a malformed
    answer (LinkError naming it: logged, the channel's failure), the connection opened again by the
    runner's reconnect. Before, the close was taken for the device's own (an idle timeout): the poll opened
    a new connection at once and went on, so a device spewing garbage after every answer was never said."""
    rnd = random.Random(1234 + inflight)

    def handler(tid: int, unit: int, pdu: bytes):
        yield _answer(tid, unit, pdu, GOOD_BEFORE)
        junk = bytearray(rnd.randbytes(8))
        junk[2] |= 0x80  # the protocol id of whatever this is taken for: not 0
        yield bytes(junk)

    server, port = await serve(handler)
    link = DeviceLink(Channel(rtu=1, no=1, host="127.0.0.1", port=port, unit=UNIT), 0.5, inflight)
    block = plan_reads([pt(1, "hr", 0)])
    try:
        await link.connect()
        assert await link.read_all(block) == [GOOD_BEFORE.to_bytes(2, "big")]
        await asyncio.sleep(0.05)  # the garbage arrives between the polls
        with pytest.raises(LinkError, match="protocol id"):
            await link.read_all(block)
        assert link.reopened == 0
    finally:
        link.close()
        server.close()
        await server.wait_closed()


NOT_NUMBERS = ((0x7FC0, 0), (0xFFC0, 0), (0x7F80, 0), (0xFF80, 0), (0x7FFF, 0xFFFF), (0x7F80, 1))
"""float32 register pairs that are no number: quiet NaN, negative NaN, +inf, -inf, NaN with payloads."""
IV = 0x80


async def test_float32_registers_that_are_no_number_are_invalid_never_good() -> None:
    """A float32 point (with and without deadband, scaled or not) whose registers hold NaN or an infinity
    is written invalid with its last value, never as a good NaN (se104s, sefeps and the api took it as a
    value); a number again is written good at once. Before: a good 'nan' was written, and a point with a
    deadband that once held NaN stayed NaN in Redis whatever it read next (|x - nan| > deadband is false)."""
    points = (pt(1, "hr", 0, "float32"), pt(2, "hr", 2, "float32", deadband=0.5),
              pt(3, "hr", 4, "float32", scale=10.0, offset=1.0), pt(4, "hr", 6, "float32", deadband=2.0, scale=0.1),
              pt(5, "hr", 8, "int32"))
    rtu = Rtu(id=1, name="r", rtutype=0, protocol="modbus", points=points)
    writer = RecordingWriter()
    run = RtuRunner(rtu, NodeConfig(), writer, Metrics("A"), OnceLogger(logging.getLogger("t")))  # type: ignore[arg-type]
    run.lease.update("A", 1)
    link = ScriptedLink([0] * 10)
    rnd = random.Random(7)
    redis: dict[int, tuple[float, int]] = {}  # what the writes left in Redis
    numbers = 0
    for step in range(400):
        for k in rnd.sample(range(4), rnd.choice((1, 2, 4))):
            if rnd.random() < 0.35:
                link.regs[2 * k:2 * k + 2] = rnd.choice(NOT_NUMBERS)
            else:
                link.regs[2 * k:2 * k + 2] = struct.unpack(">HH", struct.pack(">f", rnd.uniform(-1e3, 1e3)))
        writer.calls.clear()
        await run.poll(link)  # type: ignore[arg-type]
        for call in writer.calls:
            redis.update(call)
        for k, p in enumerate(points[:4]):
            (raw,) = struct.unpack(">f", struct.pack(">HH", *link.regs[2 * k:2 * k + 2]))
            value, quality = redis[p.id]
            assert math.isfinite(value), (step, p.id, redis[p.id])
            if math.isfinite(raw):
                numbers += 1
                assert quality == 0 and abs(value - (raw * p.scale + p.offset)) <= p.deadband + 1e-3, (step, p.id)
            else:
                assert quality == IV, (step, p.id, redis[p.id])
    assert numbers > 500


# ---- IEC 104 frames from an RTU --------------------------------------------------------------------------

IEC_POINTS = {p.address: p for p in IEC_RTU.points if p.kind in ("DI", "AI", "ACC")}
IEC_CA = IEC_RTU.channels[0].unit
MONITORING_CAUSES = {1, 2, 3, 5, 11, 12, *range(20, 42)}
"""The causes IEC 60870-5-101's table allows with monitoring types: periodic, background, spontaneous,
requested, return information, interrogated (station, groups) and counter interrogation."""
QUALITY_BITS = {c.M_SP_NA_1: 0xF0, c.M_DP_NA_1: 0xF0, c.M_ME_NA_1: 0xF1, c.M_ME_NB_1: 0xF1, c.M_ME_NC_1: 0xF1,
                c.M_IT_NA_1: 0x80}
"""The quality descriptor's bits a sample may carry (SIQ/DIQ: BL SB NT IV; QDS: and OV; BCR: IV); the
others are reserved or are no quality (a counter's CY, CA and sequence number)."""


def iec_genuine(rnd: random.Random) -> list[tuple[str, bytes]]:
    """Well-formed monitoring ASDUs for every point of IEC_RTU, spontaneous and interrogated, one object
    and several, single (SQ 0) and sequential (SQ 1) addressing."""
    out: list[tuple[str, bytes]] = []
    for ioa, p in IEC_POINTS.items():
        typ = c.TYPE_IDS[p.datatype]
        value = {c.M_SP_NA_1: 1, c.M_DP_NA_1: 1, c.M_ME_NA_1: 0.25, c.M_ME_NB_1: 1234, c.M_ME_NC_1: 3.5,
                 c.M_IT_NA_1: 99}[c.base_type(typ)]
        for cause in (c.COT_SPONT, c.COT_INROGEN):
            t = typ if cause == c.COT_SPONT else c.base_type(typ)
            out.append((f"{t} cot {cause}", c.build_asdu(t, cause, IEC_CA, [(ioa, c.element(t, value, 0, T))])))
    elems = [c.element(c.M_SP_NA_1, i % 2, 0, 0) for i in range(3)]
    out.append(("sq", c.header(c.M_SP_NA_1, 3, c.COT_INROGEN, IEC_CA, sq=True) + c.ioa(99) + b"".join(elems)))
    out.append(("two objects", c.build_asdu(c.M_ME_NC_1, c.COT_SPONT, IEC_CA,
                                            [(202, c.element(c.M_ME_NC_1, 1.5, 0, 0)), (4242, bytes(5))])))
    return out


def iec_mutations(rnd: random.Random, name: str, asdu: bytes, every_type: bool) -> list[tuple[str, bytes]]:
    """Mutated forms of one ASDU: type ids (all 256 with `every_type`, else 24), VSQ count and SQ bit against the payload, every cause with the
    P/N and T bits, originator and common addresses, IOA, the quality octet, the CP56Time2a's fields
    (out of range, IV, SU, reserved bits), truncation at every length, extra octets, octets replaced."""
    out = [(name, asdu)]
    typ, vsq = asdu[0], asdu[1]
    for t in range(256) if every_type else rnd.sample(range(256), 24):
        out.append((f"{name} type {t}", bytes((t,)) + asdu[1:]))
    for n in sorted({0, (vsq & 0x7F) - 1, (vsq & 0x7F) + 1, 127, rnd.randrange(128)}):
        out.append((f"{name} vsq n {n}", asdu[:1] + bytes((vsq & 0x80 | n & 0x7F,)) + asdu[2:]))
    out.append((f"{name} sq flipped", asdu[:1] + bytes((vsq ^ 0x80,)) + asdu[2:]))
    for cause in range(64):
        for bits in (0, c.NEGATIVE, c.TEST, c.NEGATIVE | c.TEST):
            if rnd.random() < 0.3 or bits == c.TEST:
                out.append((f"{name} cot {cause}|{bits:#x}", asdu[:2] + bytes((cause | bits,)) + asdu[3:]))
    out.append((f"{name} oa 99", asdu[:3] + b"\x63" + asdu[4:]))
    for ca in (0, IEC_CA + 1, 0xFFFF, rnd.randrange(65536)):
        out.append((f"{name} ca {ca}", asdu[:4] + struct.pack("<H", ca) + asdu[6:]))
    out.append((f"{name} ioa 4242", asdu[:6] + c.ioa(4242) + asdu[9:]))
    size = c.element_size(typ)
    if size and len(asdu) == c.HEADER + c.IOA_LEN + size:  # one object: its quality octet and time tag
        q_at = c.HEADER + c.IOA_LEN + (size - 8 if typ in c.TIME_TAGGED else size - 1)
        for q in rnd.sample(range(256), 16):
            out.append((f"{name} quality {q:#x}", asdu[:q_at] + bytes((q,)) + asdu[q_at + 1:]))
        if typ in c.TIME_TAGGED:
            tag_at = len(asdu) - 7
            for k, v in ((0, 0xEA), (1, 0xEA), (0, 0xFF), (2, 60), (2, 63), (2, 0x80 | 5), (2, 0x40 | 5),
                         (3, 24), (3, 31), (3, 0x80 | 5), (3, 0x60 | 5), (4, 0), (4, 0x1F), (4, 0xE0 | 3),
                         (5, 0), (5, 13), (5, 15), (5, 0xF0 | 2), (6, 100), (6, 127), (6, 0x80 | 26)):
                tag = bytearray(asdu[tag_at:])
                tag[k] = v
                out.append((f"{name} cp56 octet {k} = {v:#x}", asdu[:tag_at] + bytes(tag)))
    for cut in range(1, len(asdu)):
        out.append((f"{name} truncated at {cut}", asdu[:cut]))
    for n in (1, 5):
        out.append((f"{name} {n} extra octets", asdu + rnd.randbytes(n)))
    for _ in range(8):
        bad = bytearray(asdu)
        for _ in range(rnd.choice((1, 2, 3))):
            bad[rnd.randrange(len(bad))] = rnd.randrange(256)
        out.append((f"{name} octets replaced {bytes(bad).hex()}", bytes(bad)))
    return out


def acceptable(asdu: bytes, rx_ms: int) -> set[tuple[int, float, int, int]] | None:
    """What a monitoring ASDU may be written as (point id, value, quality, ts), judged by the rules the
    acquirer documents, independently of how it implements them: None when it must close the connection
    (not a well-formed ASDU of a type we read), an empty set when it is to be ignored (another common
    address, the test bit, a cause monitoring data does not have, unknown IOA, another type)."""
    if len(asdu) < c.HEADER:
        return None
    typ, vsq, cot = asdu[0], asdu[1], asdu[2]
    (ca,) = struct.unpack_from("<H", asdu, 4)
    size = c.element_size(typ)
    n, sq = vsq & 0x7F, vsq & 0x80
    body = asdu[c.HEADER:]
    if size is not None and (n == 0 or len(body) != (c.IOA_LEN + n * size if sq else n * (c.IOA_LEN + size))):
        return None
    if size is None and len(body) < c.IOA_LEN:
        return None
    if ca != IEC_CA or cot & c.TEST or not rules.is_monitoring(typ) or cot & 0x3F not in MONITORING_CAUSES:
        return set()
    out = set()
    for i in range(n):
        if sq:
            ioa, elem = int.from_bytes(body[:3], "little") + i, body[3 + i * size:3 + (i + 1) * size]
        else:
            o = i * (c.IOA_LEN + size)
            ioa, elem = int.from_bytes(body[o:o + 3], "little"), body[o + 3:o + 3 + size]
        p = IEC_POINTS.get(ioa)
        if p is None or rules.read_as(typ) != c.base_type(c.TYPE_IDS[p.datatype]):
            continue
        v, q, _, _ = rules.sample_of(p, typ, elem, rx_ms)
        if q & IV == 0:
            q &= QUALITY_BITS[c.base_type(typ)]
        tag = tag_ms(elem[-7:]) if typ in c.TIME_TAGGED else None
        # a tag beyond the tolerances of a wrong device clock is not taken either (docs/acquirer.md)
        taken = tag is not None and -rules.CLOCK_BEHIND_MS <= tag - rx_ms <= rules.CLOCK_AHEAD_MS
        out.add((p.id, v, q, tag if taken else rx_ms))
    return out


def tag_ms(tag: bytes) -> int | None:
    """A CP56Time2a's epoch ms, None when the device marks it invalid or it is no possible UTC time (the
    SU, day-of-week and reserved bits are not read)."""
    ms = int.from_bytes(tag[:2], "little")
    minute, hour, day, month, year = tag[2] & 0x3F, tag[3] & 0x1F, tag[4] & 0x1F, tag[5] & 0x0F, tag[6] & 0x7F
    if tag[2] & 0x80 or ms >= 60_000 or minute >= 60 or year >= 100:
        return None
    try:
        when = datetime.datetime(2000 + year, month, day, hour, minute, tzinfo=datetime.UTC)
    except ValueError:
        return None
    return int(when.timestamp()) * 1000 + ms


class _Records:
    """A writer that keeps every record written, as (point id, value, quality, ts)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, float, int, int]] = []

    async def write(self, rtu: int, epoch: int, pairs: list[str]):
        from fep_acquirer.writer import WriteResult
        from fepha import points as fpt
        for pid, rec in zip(pairs[::2], pairs[1::2], strict=True):
            v = fpt.decode(rec)
            self.records.append((int(pid), v.value, v.quality, v.ts_ms))
        return WriteResult(True)


class _Chunks:
    """A StreamReader stand-in: the given chunks, then the end of the stream."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def read(self, n: int) -> bytes:
        return self.parts.pop(0) if self.parts else b""


FOLLOW = c.build_asdu(c.M_ME_NC_1, c.COT_SPONT, IEC_CA, [(202, c.element(c.M_ME_NC_1, 77.0, 0, 0))])


async def _received(stream: bytes, how: int, rnd: random.Random) -> tuple[str, list, int]:
    """Feed `stream` (after our STARTDT's confirmation) to a started holder's connection as `_receive`
    reads it; (how the connection ended, the records written, the reception time)."""
    writer = _Records()
    run = Iec104Runner(IEC_RTU, NodeConfig(), writer, Metrics("A"), OnceLogger(logging.getLogger("fuzz")))  # type: ignore[arg-type]
    run.lease.update("A", 1)
    now = 1000.0
    link = Link(Role.CLIENT, LinkParams(), now, confirm_by_caller=True)
    link.start(now)
    link.receive(c.u_frame(c.STARTDT_CON), now)
    run.link, run.channel = link, IEC_RTU.channels[0]
    rx_ms = int(time.time() * 1000)
    with pytest.raises(LinkLost) as ended:
        await run._receive(link, _Chunks(chunks(rnd, stream, how)))  # type: ignore[arg-type]
    return str(ended.value), writer.records, rx_ms


def _judge(case: str, asdu: bytes, ended: str, records: list, rx_ms: int) -> str:
    """Check one case's outcome against `acceptable`; returns its class."""
    want = acceptable(asdu, rx_ms)
    closed = ended != "closed by the RTU"
    assert all(math.isfinite(r[1]) for r in records), (case, records)
    if want is None:
        assert closed and not records, (case, ended, records)
        return "closed"
    assert not closed, (case, ended)
    follow = (IEC_POINTS[202].id, 77.0, 0)
    assert follow in [r[:3] for r in records], (case, records)  # the stream goes on after it
    mine = [r for r in records if r[:3] != follow]
    for pid, v, q, ts in mine:
        if q & IV:
            continue
        # the reception time is the clock's when the case ran: a sample stamped so matches within 5 s
        assert any(p == pid and x == pytest.approx(v) and qq == q
                   and (t == ts or (t >= rx_ms and abs(t - ts) < 5000)) for p, x, qq, t in want), \
            (case, (pid, v, q, ts), want)
    return "written" if want else "ignored"


async def test_mutated_iec104_frames_close_the_connection_or_give_only_well_formed_values() -> None:
    """Each mutation of each well-formed monitoring ASDU (then a genuine event), as one I frame after our
    STARTDT con, delivered whole, split or byte by byte, through the holder's reading path (link, ASDU
    codec, rules, the write): the connection ends only with LinkLost (never another exception, which the
    runner logs with a traceback), closed when the ASDU is malformed (nothing of it written), else the
    next event is still written, and a sample written good is one the documented rules allow: our common
    address, no test bit, a cause monitoring data has, a configured IOA of that type, a finite value, only
    quality bits (no reserved ones)."""
    rnd = random.Random(104)
    seen: dict[str, int] = {}
    cases = 0
    for i, (name, asdu) in enumerate(iec_genuine(rnd)):
        for mname, bad in iec_mutations(rnd, name, asdu, every_type=i < 2):
            if len(bad) > c.MAX_ASDU:
                continue
            stream = c.i_frame(0, 0, bad) + c.i_frame(1, 0, FOLLOW)
            how = cases % 3
            cases += 1
            ended, records, rx_ms = await _received(stream, how, rnd)
            kind = _judge(f"{mname} chunking {how}", bad, ended, records, rx_ms)
            seen[kind] = seen.get(kind, 0) + 1
    assert cases > 2000
    assert all(seen.get(k, 0) > 100 for k in ("closed", "ignored", "written")), seen
    print(f"{cases} IEC 104 ASDU cases: {seen}")


@pytest.mark.parametrize("how", [0, 1, 2])
async def test_mutated_iec104_apci_closes_the_connection_and_writes_nothing_after(how: int) -> None:
    """The APCI of an I frame mutated (start octet, length, control field, N(S), N(R) of frames never
    sent, S and U frames that do not exist), or octets replaced anywhere in it: only LinkLost, and what
    is written is only what the well-formed frame carries."""
    rnd = random.Random(60870 + how)
    asdu = FOLLOW
    good = c.i_frame(0, 0, asdu)
    bad_frames = [good[:1] + bytes((n,)) + good[2:] for n in (0, 3, 4, 5, len(asdu) + 3, len(asdu) + 5, 254, 255)]
    bad_frames += [bytes((s,)) + good[1:] for s in (0x00, 0x67, 0x69, 0xFF)]
    bad_frames += [c.i_frame(ns, 0, asdu) for ns in (1, 2, 0x7FFF)]
    bad_frames += [c.i_frame(0, nr, asdu) for nr in (1, 5, 0x7FFF)]
    bad_frames += [good[:2] + bytes((good[2], good[3], 1, 0)) + good[6:]]  # N(R) with bit 0 set
    bad_frames += [bytes((0x68, 4, 1, 0, 2, 0)), bytes((0x68, 4, 3, 0, 0, 0)), bytes((0x68, 4, 0x07, 0, 0, 0)),
                   bytes((0x68, 4, 0x0B, 0, 0, 0)), bytes((0x68, 5, 1, 0, 0, 0, 0)), bytes((0x68, 4, 0x43, 1, 0, 0))]
    for _ in range(300):
        bad = bytearray(good)
        for _ in range(rnd.choice((1, 2))):
            bad[rnd.randrange(6)] = rnd.randrange(256)
        bad_frames.append(bytes(bad))
    for bad in bad_frames:
        ended, records, _ = await _received(bad + c.i_frame(1, 0, FOLLOW), how, rnd)
        for pid, v, q, _ in records:
            assert (pid, v, q) == (IEC_POINTS[202].id, 77.0, 0), (bad.hex(), records)
        if ended == "closed by the RTU":  # the frame was taken as something well-formed (a TESTFR act...)
            continue
        assert ended.startswith("malformed frame") or "malformed ASDU" in ended, (bad.hex(), ended)


# ---- process level: a hostile device beside a healthy one, one acquirer ---------------------------------

HEALTHY, GOOD_BEFORE, GOOD_AFTER = 1, 0x0A0B, 0x0C0D


async def test_hostile_modbus_device_leaves_the_other_rtu_alone_and_recovers(redis_master, feproot, caplog):
    """RTU 2's device answers well (GOOD_BEFORE + n in register n), then with a seeded cycle of mutated answers
    (header fields, function, exception bit, byte count, truncation, extra octets, doubled answers, header
    octets replaced; the data octets as before; 12 of 30 well-formed, so that the poll's later blocks get
    mutated answers too), then well again (GOOD_AFTER + n). Meanwhile RTU 1 (fep-plcsim) keeps being
    polled and written, RTU 2 keeps being polled, the acquirer survives and logs no traceback, RTU 2's points are never written good with anything but what the device sent in a
    well-formed answer, and once the device answers well they are good again with its new value."""
    p1, p2 = free_port(), free_port()
    rows = merge(rtu_rows(HEALTHY, p1), rtu_rows(2, p2))
    load(redis_master, rows)
    sim = await start_sim(Model.from_rows(merge(rtu_rows(HEALTHY, p1))))
    rnd = random.Random(502)
    kinds = [None] * 12 + list(range(9)) * 2  # every mutation twice in 30 answers, in a seeded order
    rnd.shuffle(kinds)
    state = {"mode": "good", "served": 0}

    def handler(tid: int, unit: int, pdu: bytes):
        regs = GOOD_AFTER if state["mode"] == "after" else GOOD_BEFORE
        good = _answer(tid, unit, pdu, regs)
        if state["mode"] != "hostile":
            yield good
            return
        state["served"] += 1
        how = kinds[state["served"] % len(kinds)]
        yield good if how is None else _hostile(rnd, good, how)

    servers = [await serve(handler, port=p2, host=h) for h in ("127.0.0.1", "127.0.0.2")]
    caplog.set_level(logging.INFO)
    a = Node(node_cfg(feproot, redis_master, "A"))
    r = a.master
    try:
        await until(lambda: _good(r, {2000: GOOD_BEFORE, 1000: 0}), 5)
        start_id = (await r.xrevrange(ks.CHANGES, count=1))[0][0]
        state["mode"] = "hostile"
        for v in range(1, 6):  # 3 s of garbage while RTU 1's value moves every 0.6 s: each one written
            sim.set_value(1001, v)
            await until(lambda v=v: _good(r, {1001: v}), 2)
            await asyncio.sleep(0.6)
        assert state["served"] > 30, f"RTU 2 no longer polled: {state}"  # its runner did not die
        state["mode"] = "after"
        await until(lambda: _good(r, {2000 + i: GOOD_AFTER + i for i in range(4)}), 5)
        assert not a.task.done()
        records = [(pid, points.decode(rec)) for _, f in await r.xrange(ks.CHANGES, min=start_id)
                   for pid, rec in f.items() if pid.startswith("200")]
        assert records
        for pid, v in records:  # RTU 2's points while hostile and after: good only with what it sent whole
            n = int(pid) - 2000
            assert v.quality & points.Quality.IV or v.value in (GOOD_BEFORE + n, GOOD_AFTER + n), (pid, v)
        assert any(v.quality & points.Quality.IV for _, v in records)  # not reached: shown invalid meanwhile
        assert not [rec for rec in caplog.records if rec.exc_info or "Traceback" in rec.getMessage()]
    finally:
        await a.stop()
        await sim.stop()
        for srv, _ in servers:
            srv.close()
            await srv.wait_closed()


def _answer(tid: int, unit: int, pdu: bytes, base: int) -> bytes:
    """A well-formed answer to a read (register n holds `base` + n, every coil 1) or a write (its echo)."""
    fc = pdu[0]
    if fc > 4:
        return mbtcp.frame(tid, unit, pdu[:5])
    start, count = struct.unpack_from(">HH", pdu, 1)
    n = mbtcp.read_bytes(("co", "di", "hr", "ir")[fc - 1], count)
    data = b"".join((base + a).to_bytes(2, "big") for a in range(start, start + count)) if fc >= 3 else b"\xff" * n
    return mbtcp.frame(tid, unit, bytes((fc, n)) + data)


def _hostile(rnd: random.Random, good: bytes, how: int) -> bytes:
    """Mutation `how` (0 .. 8) of a well-formed answer, leaving its data octets as they are."""
    tid, unit, fc, body = good[:2], good[6], good[7], good[8:]
    if how == 0:
        return struct.pack(">H", rnd.randrange(65536)) + good[2:]  # another transaction id
    if how == 1:
        return good[:2] + struct.pack(">H", rnd.randrange(1, 65536)) + good[4:]  # protocol id
    if how == 2:
        length = len(good) - 6 + rnd.choice((-3, -2, -1, 1, 2, rnd.randrange(-4, 250)))
        return good[:4] + struct.pack(">H", length & 0xFFFF) + good[6:]  # MBAP length
    if how == 3:
        return good[:6] + bytes((rnd.randrange(256),)) + good[7:]  # unit id
    if how == 4:
        return mbtcp.frame(int.from_bytes(tid), unit, bytes((fc | 0x80, rnd.randrange(256))))  # exception
    if how == 5:
        return good[:7] + bytes((rnd.randrange(256),)) + body  # function code
    if how == 6:
        return good[:rnd.randrange(1, len(good))]  # truncated
    if how == 7:
        return good + rnd.randbytes(rnd.randrange(1, 9)) if rnd.random() < 0.5 else good + good  # more octets
    bad = bytearray(good)
    for _ in range(rnd.choice((1, 2))):
        bad[rnd.randrange(9)] = rnd.randrange(256)  # header, function or byte count octets replaced
    return bytes(bad)


async def _good(r, want: dict[int, int]) -> bool:
    """Whether every point of `want` (of RTU 1 or 2, by id) holds that value, good."""
    for pid, value in want.items():
        raw = await r.hget(ks.values(pid // 1000), str(pid))
        v = points.decode(raw) if raw else None
        if v is None or v.value != value or v.quality != 0:
            return False
    return True


MARK_ME, MARK_IT = 333.0, 4242
"""Values only the hostile RTU's garbage frames carry (M_ME_TF_1 before SCALE 2, M_IT_NA_1)."""


def _garbage(rnd: random.Random, ts_ms: int) -> list[tuple[bytes, bool, bool]]:
    """Frames that must never be written, in a seeded order: (octets, whether an ASDU to send in a
    well-formed I frame, else raw APCI octets, whether it closes the connection). Monitoring objects
    carrying MARK_ME / MARK_IT with the test bit, a cause monitoring data does not have, another common
    address (ignored); with a VSQ count that does not fit, truncated, with octets more (malformed); and APCI
    that is not IEC 104 (malformed)."""
    me = c.build_asdu(c.M_ME_TF_1, c.COT_SPONT, CA, [(200, c.element(c.M_ME_TF_1, MARK_ME, 0, ts_ms))])
    it = c.build_asdu(c.M_IT_NA_1, c.COT_SPONT, CA, [(300, c.element(c.M_IT_NA_1, MARK_IT, 0, 0))])
    out: list[tuple[bytes, bool, bool]] = []
    for a in (me, it):
        out.append((a[:2] + bytes((a[2] | c.TEST,)) + a[3:], True, False))
        for cause in rnd.sample([0, 4, 6, 7, 8, 9, 10, 13, 19, 42, 44, 47, 63], 3):
            out.append((a[:2] + bytes((cause,)) + a[3:], True, False))
        out.append((a[:4] + struct.pack("<H", CA + 1) + a[6:], True, False))
        out.append((a[:1] + b"\x02" + a[2:], True, True))
        out.append((a[:rnd.randrange(1, len(a))], True, True))
        out.append((a + rnd.randbytes(rnd.randrange(1, 4)), True, True))
    good = c.i_frame(0, 0, me)
    out.append((b"\x67" + good[1:], False, True))
    out.append((good[:1] + bytes((rnd.randrange(0, 4),)) + good[2:], False, True))
    out.append((bytes((0x68, 4, 0x33, 0, 0, 0)), False, True))
    rnd.shuffle(out)
    return out


async def test_hostile_iec104_rtu_leaves_the_other_rtu_alone_and_recovers(redis_master, feproot, caplog):
    """RTU 6 sends, one after the other on its connection (a new one after each it gets closed), frames
    that are to be ignored or to close the connection, all carrying values no genuine frame has; RTU 5
    reports an event after each; then RTU 6 reports a genuine event. RTU 5's events are all written, no
    record of RTU 6 carries a garbage value, each malformed frame closed RTU 6's connection (and only
    those), the acquirer survives without a traceback, and RTU 6's genuine event is written."""
    ok_port, bad_port = free_port(), free_port()
    load(redis_master, merge(iec_rows(5, ok_port), iec_rows(6, bad_port)))
    rnd = random.Random(870)
    caplog.set_level(logging.INFO)
    async with ScriptRtu(ok_port) as healthy, ScriptRtu(bad_port) as hostile:
        a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
        r = a.master
        try:
            links: list[Link] = []  # RTU 6's connections, each once (kept: their ids stay unique)

            def ready() -> bool:  # a started connection whose GI was answered
                return (hostile.conn is not None and hostile.conn[0].started
                        and c.C_IC_NA_1 in hostile.sent_types())
            garbage = _garbage(rnd, int(time.time() * 1000))
            for n, (octets, asdu, closes) in enumerate(garbage, start=1):
                await until(ready, 5)
                link, writer = hostile.conn  # type: ignore[misc]
                if link not in links:
                    links.append(link)
                if asdu:
                    hostile.send(octets)
                else:
                    writer.write(octets)
                if closes:
                    await until(lambda link=link: hostile.conn is not None and hostile.conn[0] is not link, 5)
                healthy.send(c.build_asdu(c.M_ME_NC_1, c.COT_SPONT, CA, [(200, c.element(c.M_ME_NC_1, n, 0, 0))]))
                await until(lambda n=n: _is(value_of(r, 5, 5003), 2.0 * n), 3)  # RTU 5 unaffected
            await until(ready, 5)
            links.append(hostile.conn[0])  # type: ignore[index]
            assert len(links) == 1 + sum(closes for _, _, closes in garbage), len(links)
            hostile.send(c.build_asdu(c.M_ME_NC_1, c.COT_SPONT, CA, [(200, c.element(c.M_ME_NC_1, 21.0, 0, 0))]))
            await until(lambda: _is(value_of(r, 6, 6003), 42.0), 3)  # recovered
            assert not a.task.done()
            assert not [v for v in await changes_of(r, 6003) if v.value == 2 * MARK_ME]
            assert not [v for v in await changes_of(r, 6004) if v.value == MARK_IT]
            assert not [rec for rec in caplog.records if rec.exc_info or "Traceback" in rec.getMessage()]
        finally:
            await a.stop()


def _answer_to(p, kind: str, cause: int, negative: bool, select: bool, ca: int = IEC_CA, ioa: int | None = None,
               type_id: int | None = None) -> c.Asdu:
    """An RTU's answer to a command to `p`: its object as a mirror would carry it (S/E as `select`)."""
    elem = rules.command_element(p, 1, select, T)
    cot = cause | (c.NEGATIVE if negative else 0)
    return c.parse_asdu(c.build_asdu(type_id or c.TYPE_IDS[p.datatype], cot, ca,
                                     [(p.address if ioa is None else ioa, elem)]))


def test_command_answers_in_any_order_succeed_only_after_the_executes_positive_confirmation() -> None:
    """Seeded sequences of answers to a command (direct and select before operate, each command type):
    confirmations of the select and of the execute (positive, negative), terminations, refusals (44-47),
    and answers that are not ours (another IOA, type or common address), in any order and repeated (a
    late termination of an earlier command, a select's confirmation sent twice). The command succeeds only
    when a positive confirmation of its execute (S/E 0) came after the execute was sent, and the
    termination after that; a refusal or a negative confirmation of the phase under way fails it. Before,
    a termination before the execute's confirmation, or a select's confirmation while the execute's was
    awaited, let a command whose execute the RTU never confirmed (or refused after) succeed."""
    rnd = random.Random(4546)
    targets = [p for p in IEC_RTU.points if p.kind in ("DO", "AO")]
    cases = outcomes = 0
    for _ in range(3000):
        p = rnd.choice(targets)
        sbo = rnd.random() < 0.5
        ex = rules.CommandExchange(p, IEC_CA, 1, sbo, T)
        phase = "select" if sbo else "execute"  # the reference: what the exchange waits for
        want: tuple[bool, str] | None = None
        for _ in range(rnd.randrange(1, 9)):
            kind = rnd.choice(("con", "con", "term", "refusal", "other ioa", "other type", "other ca"))
            select = rnd.random() < 0.5
            negative = rnd.random() < 0.15
            if kind == "con":
                a = _answer_to(p, kind, c.COT_ACTCON, negative, select)
            elif kind == "term":
                a = _answer_to(p, kind, c.COT_ACTTERM, False, select)
            elif kind == "refusal":
                a = _answer_to(p, kind, rnd.choice((44, 45, 46, 47)), True, select)
            elif kind == "other ioa":
                a = _answer_to(p, kind, c.COT_ACTCON, negative, select, ioa=p.address + 1)
            elif kind == "other type":
                other = next(t for t in (c.C_SC_NA_1, c.C_SE_NC_1) if t != c.TYPE_IDS[p.datatype])
                a = c.parse_asdu(c.build_asdu(other, c.COT_ACTCON, IEC_CA, [(p.address, c.encode_command(other, 1))]))
            else:
                a = _answer_to(p, kind, c.COT_ACTCON, negative, select, ca=IEC_CA + 1)
            ex.feed(a)
            ours = phase == "select" or (phase == "execute" and not select)  # a confirmation of the phase
            if want is None and kind in ("con", "term", "refusal"):
                if kind == "refusal" or (kind == "con" and negative and ours):
                    want = (False, "")
                elif kind == "con" and ours:
                    phase = "execute" if phase == "select" else "term"
                elif kind == "term" and phase == "term":
                    want = (True, "")
            cases += 1
            got = ex.result
            assert (got is None) == (want is None), (p.datatype, sbo, kind, select, negative, got, phase)
            if got is not None:
                assert got[0] == want[0], (p.datatype, sbo, got, want)  # type: ignore[index]
                outcomes += got[0]
                break
    assert cases > 5000 and outcomes > 100, (cases, outcomes)
    print(f"{cases} command answers, {outcomes} successes")
