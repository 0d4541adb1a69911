"""Modbus TCP client of the acquirer: the codec (plain functions, table-tested without a network) and one
asyncio connection per device channel.

Why our own and not pymodbus's client: at 100 RTUs x 2,000 points (1,600 read requests/s,
bench/acquire.py) pymodbus's request/response path (its transaction manager, framer, PDU objects and
the conversion of every answer into a list of ints) was the larger part of the acquirer's CPU. A read
here is one `bytes` request out and the answer's data bytes back, which plan.py diffs and decodes
directly. Only what the acquirer uses: reads FC1-4, writes FC5, FC6 and FC16.

A poll's reads go as one sequence (`Client.requests`): the protocol sends the next request from the
callback that received the previous answer, and wakes the poll once at the end. Awaiting each request
cost two event-loop rounds per request (the answer, then the task's step that sends the next one): at
the bench's load (1,600 requests/s, one answer per wakeup) that loop overhead was the largest part of
the acquirer's CPU. Still one request in flight: the device sees exactly what it saw before.

Several requests in flight (`Client(inflight=N)`, T004_RTU.INFLIGHT, `_Pipelined`) is opt-in per RTU: many
devices serve one request at a time and some drop or mishandle a second one sent before the first is
answered. With N > 1 a sequence keeps up to N requests outstanding and matches answers by transaction id.

Answers: a Modbus exception answer is an `ExceptionAnswer` (its code; `request` raises it, `requests`
returns it in its place and stops the sequence there, with several in flight once the requests already
sent are answered); anything malformed (protocol id
not 0, a length outside the MBAP range, another unit id, another function, a byte count that does not
fit the request, a write echo that does not match) raises `Malformed` and the connection is closed, as
its byte stream can no longer be trusted; a malformed frame while no request is pending closes it too,
and the next sequence on it raises `ClosedMalformed` (nothing sent). An answer with another transaction
id (a late answer to a request that timed out) is dropped.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit id + PDU), unit id
MBAP_LENGTH = (2, 254)  # the MBAP length field: unit id + function code ... unit id + a 253-byte PDU
READ_FC = {"co": 1, "di": 2, "hr": 3, "ir": 4}
WRITE_COIL, WRITE_REGISTER, WRITE_REGISTERS = 5, 6, 16
_ADDR_COUNT = struct.Struct(">HH")


class Malformed(Exception):
    """The answer breaks the protocol: the connection must be closed."""


class NotConnected(ConnectionError):
    """The connection was already closed (by the device, or never opened): nothing was sent."""


class ClosedMalformed(NotConnected):
    """The connection was closed for a malformed frame that came while no request was pending (garbage
    between polls): nothing was sent; the device's stream is not to be trusted, as for a malformed answer."""


class SequenceLost(ConnectionError):
    """The connection was lost during a sequence; `answers` holds those of the requests before it."""

    def __init__(self, why: str, answers: list[bytes | ExceptionAnswer]) -> None:
        super().__init__(why)
        self.answers = answers


class SequenceTimeout(TimeoutError):
    """A request of a sequence was not answered in time; `answers` holds those of the requests before it
    (the connection stays open: a late answer is dropped by its transaction id)."""

    def __init__(self, answers: list[bytes | ExceptionAnswer]) -> None:
        super().__init__("no answer within the timeout")
        self.answers = answers


EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "server device failure", 5: "acknowledge", 6: "server device busy", 8: "memory parity error",
                   0x0A: "gateway path unavailable", 0x0B: "gateway target device failed to respond"}
"""The Modbus specification's names: a control's result and a channel's error are read by operators."""


class ExceptionAnswer(Exception):
    """The device answered with a Modbus exception."""

    def __init__(self, code: int) -> None:
        name = EXCEPTION_NAMES.get(code)
        super().__init__(f"modbus exception {code:#04x}" + (f" ({name})" if name else ""))
        self.code = code


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    """An MBAP frame around a PDU."""
    return MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


def read_pdu(area: str, start: int, count: int) -> bytes:
    return struct.pack(">BHH", READ_FC[area], start, count)


def write_coil_pdu(address: int, value: bool) -> bytes:
    return struct.pack(">BHH", WRITE_COIL, address, 0xFF00 if value else 0)


def write_register_pdu(address: int, value: int) -> bytes:
    return struct.pack(">BHH", WRITE_REGISTER, address, value & 0xFFFF)


def write_registers_pdu(address: int, values: list[int]) -> bytes:
    n = len(values)
    return struct.pack(f">BHHB{n}H", WRITE_REGISTERS, address, n, 2 * n, *(v & 0xFFFF for v in values))


def read_bytes(area: str, count: int) -> int:
    """Data bytes of the answer to a read of `count` bits or registers."""
    return (count + 7) // 8 if area in ("co", "di") else 2 * count


def header(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int, int]:
    """(transaction id, frame length in bytes, unit id) of the MBAP header at `pos` in `buf` (7 bytes)."""
    tid, proto, length, unit = MBAP.unpack_from(buf, pos)
    if proto != 0:
        raise Malformed(f"protocol id {proto}, not 0")
    if not MBAP_LENGTH[0] <= length <= MBAP_LENGTH[1]:
        raise Malformed(f"MBAP length {length} outside {MBAP_LENGTH[0]}..{MBAP_LENGTH[1]}")
    return tid, 6 + length, unit


def answer(request: bytes, pdu: bytes) -> bytes:
    """Check the answer PDU to a request PDU; returns a read's data bytes (b"" for a write).
    Raises ExceptionAnswer for a Modbus exception, Malformed for anything else that does not fit."""
    fc = request[0]
    if not pdu:
        raise Malformed("empty PDU")
    if pdu[0] == fc | 0x80:
        if len(pdu) != 2:
            raise Malformed(f"exception answer of {len(pdu)} bytes")
        raise ExceptionAnswer(pdu[1])
    if pdu[0] != fc:
        raise Malformed(f"function {pdu[0]} in the answer to function {fc}")
    if fc <= 4:
        _, count = _ADDR_COUNT.unpack_from(request, 1)
        want = read_bytes(("co", "di", "hr", "ir")[fc - 1], count)
        if len(pdu) < 2 or pdu[1] != want or len(pdu) != 2 + want:
            raise Malformed(f"read of {count}: byte count {pdu[1] if len(pdu) > 1 else '-'} in "
                            f"{len(pdu)} bytes, {want} expected")
        return pdu[2:]
    if pdu[:5] != request[:5] or len(pdu) != 5:  # FC5/6 echo address and value, FC16 address and quantity
        raise Malformed(f"write answer {pdu.hex()} does not echo the request {request[:5].hex()}")
    return b""


class _Sequence:
    """Requests sent one after the other on one connection; `fut` gets the answers when all are in (or
    when `stop()` says so between two requests, or at an exception answer), or the error that ended it."""

    __slots__ = ("answers", "fut", "pdus", "stop")

    def __init__(self, pdus: Sequence[bytes], fut: asyncio.Future[list[bytes | ExceptionAnswer]],
                 stop: Callable[[], bool] | None) -> None:
        self.pdus, self.fut, self.stop = pdus, fut, stop
        self.answers: list[bytes | ExceptionAnswer] = []


class _Protocol(asyncio.Protocol):
    """Frames the byte stream; hands each frame of the pending transaction to the running sequence and
    sends the sequence's next request from there."""

    def __init__(self, unit: int, timeout_s: float) -> None:
        self.unit, self.timeout_s = unit, timeout_s
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.tid = 0
        self.request = b""
        self.seq: _Sequence | None = None
        self.lost: Exception | None = None
        self.malformed: Malformed | None = None  # why this side closed the connection
        self.deadline = 0.0  # loop time by which the pending request must be answered
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionError(f"connection lost: {exc}" if exc else "connection closed by the device")
        if self.seq is not None:
            self.fail(SequenceLost(str(self.lost), self.seq.answers))

    def fail(self, exc: Exception) -> None:
        seq, self.seq = self.seq, None
        if seq is not None and not seq.fut.done():
            seq.fut.set_exception(exc)

    def start(self, seq: _Sequence) -> None:
        self.seq = seq
        self._send(seq.pdus[0])

    def _send(self, pdu: bytes) -> None:
        assert self.transport is not None
        self.tid = (self.tid + 1) & 0xFFFF
        self.request = pdu
        self.transport.write(frame(self.tid, self.unit, pdu))
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.timeout_s
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self.check_deadline)

    def check_deadline(self) -> None:
        """The one timer of the connection: fails the sequence once its pending request's deadline has
        passed, else re-arms itself at that deadline. A timer per request (call_later + cancel, 1,600 a
        second at the bench's load) was a visible part of the acquirer's CPU; this one fires about once
        per timeout."""
        self.timer = None
        if self.seq is None:
            return  # idle: the next request arms it again
        loop = asyncio.get_running_loop()
        if loop.time() >= self.deadline:
            self.fail(SequenceTimeout(self.seq.answers))
        else:
            self.timer = loop.call_at(self.deadline, self.check_deadline)

    def data_received(self, data: bytes) -> None:
        """Frames of the byte stream. The usual chunk is one whole answer: its frames are cut from `data`
        itself; only what is left of a frame split over chunks waits in `buf` (a copy of each answer into
        the buffer and out again was a visible part of the acquirer's CPU per request, bench/acquire.py)."""
        if self.buf:
            self.buf += data
            data = bytes(self.buf)
            self.buf.clear()
        pos, end = 0, len(data)
        while end - pos >= 7:
            try:
                tid, n, unit = header(data, pos)
            except Malformed as exc:
                self._malformed(exc)
                return
            if end - pos < n:
                break
            pos += n
            if not self._frame(tid, unit, data[pos - n + 7:pos]):
                return  # the connection is closed: the rest of the stream is not read
        if pos < end:
            self.buf += data[pos:]

    def _frame(self, tid: int, unit: int, pdu: bytes) -> bool:
        """One answer frame: the pending request's answer goes to the sequence, which ends or sends its next
        request; another transaction id (a late answer to a request that timed out, or none pending) is
        dropped. False when the frame was malformed and the connection is closed."""
        seq = self.seq
        if seq is None or tid != self.tid:
            return True
        if unit != self.unit:
            self._malformed(Malformed(f"unit id {unit} in the answer, {self.unit} asked"))
            return False
        try:
            seq.answers.append(answer(self.request, pdu))
        except ExceptionAnswer as exc:
            seq.answers.append(exc)
        except Malformed as exc:
            self._malformed(exc)
            return False
        if (len(seq.answers) == len(seq.pdus) or isinstance(seq.answers[-1], ExceptionAnswer)
                or (seq.stop is not None and seq.stop())):
            self.seq = None
            if not seq.fut.done():
                seq.fut.set_result(seq.answers)
        elif seq.fut.done():  # cancelled by the caller: send nothing more
            self.seq = None
        else:
            self._send(seq.pdus[len(seq.answers)])
        return True

    def _malformed(self, exc: Malformed) -> None:
        self.malformed = exc
        self.fail(exc)
        self._close()

    def _close(self) -> None:
        self.buf.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()


class _Pipelined(_Protocol):
    """A sequence with up to `window` requests outstanding (T004_RTU.INFLIGHT > 1): the Modbus Messaging on
    TCP/IP Implementation Guide lets a client send requests before the earlier ones are answered, each with
    its own transaction id. Request i of a sequence has transaction id `base + i`; an answer is matched by
    it, so a device may answer out of order; one outside the requests outstanding (late, unknown, or a
    second answer to the same request) is dropped. Each request's timeout runs from its own send (one timer
    per connection: the oldest request not answered is the one whose deadline comes first). An exception
    answer or `stop()` ends the sending; the requests already sent are still awaited and their answers
    returned. On a timeout or a lost connection the answers returned are those before the first request not
    answered (`answers` is always that prefix, in block order: an answer after a missing one is never taken
    for it)."""

    def __init__(self, unit: int, timeout_s: float, window: int) -> None:
        super().__init__(unit, timeout_s)
        self.window = window
        self.base = 0  # transaction id of the sequence's first request
        self.sent = 0  # requests of the sequence sent
        self.deadlines: list[float] = []  # per request sent: loop time by which it must be answered
        self.ahead: dict[int, bytes | ExceptionAnswer] = {}  # answers that came before an earlier request's
        self.halted = False  # an exception answer or stop(): send nothing more in this sequence

    def start(self, seq: _Sequence) -> None:
        self.seq = seq
        self.base = (self.tid + 1) & 0xFFFF
        self.sent, self.deadlines, self.ahead, self.halted = 0, [], {}, False
        self._fill(seq)

    def _fill(self, seq: _Sequence) -> None:
        """Send the next requests until `window` are outstanding, in one write (one segment, one send)."""
        limit = min(len(seq.pdus), len(seq.answers) + len(self.ahead) + self.window)
        if self.sent >= limit:
            return
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        frames = []
        while self.sent < limit:
            self.tid = (self.tid + 1) & 0xFFFF
            frames.append(frame(self.tid, self.unit, seq.pdus[self.sent]))
            self.deadlines.append(deadline)
            self.sent += 1
        self.transport.write(b"".join(frames))
        if self.timer is None:
            self.timer = loop.call_at(self.deadlines[len(seq.answers)], self.check_deadline)

    def check_deadline(self) -> None:
        self.timer = None
        seq = self.seq
        if seq is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self.deadlines[len(seq.answers)]  # the oldest request not answered
        if loop.time() >= deadline:
            self.fail(SequenceTimeout(seq.answers))
        else:
            self.timer = loop.call_at(deadline, self.check_deadline)

    def _frame(self, tid: int, unit: int, pdu: bytes) -> bool:
        seq = self.seq
        if seq is None:
            return True
        answers = seq.answers
        i = (tid - self.base) & 0xFFFF
        if not len(answers) <= i < self.sent or i in self.ahead:
            return True
        if unit != self.unit:
            self._malformed(Malformed(f"unit id {unit} in the answer, {self.unit} asked"))
            return False
        got: bytes | ExceptionAnswer
        try:
            got = answer(seq.pdus[i], pdu)
        except ExceptionAnswer as exc:
            got, self.halted = exc, True
        except Malformed as exc:
            self._malformed(exc)
            return False
        if i == len(answers):
            answers.append(got)
            while len(answers) in self.ahead:
                answers.append(self.ahead.pop(len(answers)))
        else:
            self.ahead[i] = got
        if seq.fut.done():  # cancelled by the caller: send nothing more
            self.seq = None
            return True
        if seq.stop is not None and seq.stop():
            self.halted = True
        if not self.halted:
            self._fill(seq)
        if len(answers) == self.sent:  # nothing outstanding: all answered, or halted
            self.seq = None
            seq.fut.set_result(answers)
        return True


class Client:
    """One Modbus TCP connection, `inflight` requests outstanding at most (1: the next request goes once
    the previous one is answered). `request` and `requests` raise Malformed (connection closed),
    TimeoutError, or OSError / ConnectionError when the connection is gone; `request` raises
    ExceptionAnswer too."""

    def __init__(self, host: str, port: int, unit: int, timeout_s: float, inflight: int = 1) -> None:
        self.host, self.port, self.unit, self.timeout_s = host, port, unit, timeout_s
        self.inflight = inflight
        self.proto: _Protocol | None = None

    def _protocol(self) -> _Protocol:
        if self.inflight > 1:
            return _Pipelined(self.unit, self.timeout_s, self.inflight)
        return _Protocol(self.unit, self.timeout_s)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(self._protocol, self.host, self.port), self.timeout_s)
        self.proto = proto

    def close(self) -> None:
        proto, self.proto = self.proto, None
        if proto is not None:
            proto.fail(ConnectionError("closed"))
            proto._close()

    async def requests(self, pdus: Sequence[bytes],
                       stop: Callable[[], bool] | None = None) -> list[bytes | ExceptionAnswer]:
        """Send `pdus` in order, each with the whole timeout from its own send: with `inflight` 1 each as
        soon as the previous one is answered, else as long as fewer than `inflight` are outstanding.
        Returns the answers in order: all of them, or fewer when an exception answer came or `stop()` was
        true after an answer (the caller sends the rest later). With `inflight` 1 the last answer is then
        that exception answer; above 1 the requests already sent are awaited too, so exception answers
        may stand anywhere in the list."""
        proto = self.proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            if proto is not None and proto.malformed is not None:
                raise ClosedMalformed(f"closed for a malformed frame between requests: {proto.malformed}")
            raise NotConnected(str(proto.lost) if proto is not None and proto.lost else "not connected")
        if proto.seq is not None:
            raise RuntimeError("a request is already in flight on this connection")
        if not pdus:
            return []
        fut: asyncio.Future[list[bytes | ExceptionAnswer]] = asyncio.get_running_loop().create_future()
        seq = _Sequence(pdus, fut, stop)
        proto.start(seq)
        try:
            return await fut
        finally:
            if proto.seq is seq:  # cancelled: the answer, if it comes, is dropped
                proto.seq = None

    async def request(self, pdu: bytes) -> bytes:
        """One request; its answer's data bytes (b"" for a write). Raises ExceptionAnswer."""
        got = (await self.requests((pdu,)))[0]
        if isinstance(got, ExceptionAnswer):
            raise got
        return got
