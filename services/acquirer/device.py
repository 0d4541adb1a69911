"""Modbus TCP I/O with one device over one channel (our own client, mbtcp.py). Thin on purpose: what to
read comes from plan.py, how to decode from plan.py and fepha.datatypes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fep_acquirer import mbtcp
from fep_acquirer.plan import Block
from fepha import datatypes as dt
from fepha.semodel.model import Channel, Point

PATH_UNAVAILABLE, TARGET_NO_RESPONSE = 0x0A, 0x0B  # gateway exceptions: the device behind is not reached
BUSY = 0x06  # SERVER DEVICE BUSY: "retransmit the request later"


class LinkError(Exception):
    """The device was not reached over this channel (connect, timeout, gateway): switch logic applies."""


class Unanswered(LinkError):
    """A request sent whose answer never came: no answer within the timeout, the connection lost after
    the send, or an answer too malformed to tell anything (the connection is closed). A write may have
    been executed by the device (readback.py judges a set-point's by reading it back); one not sent
    (connection already closed and not opened again) is a plain LinkError."""


class DeviceError(Exception):
    """The device answered with a Modbus exception (bad address, type...): a configuration problem."""


class Busy(DeviceError):
    """The device answered SERVER DEVICE BUSY (0x06) for this block: read it again at the next poll."""


class NoAnswer(DeviceError):
    """This block was not answered (timeout, or a gateway's 0x0B) although the block before it in the same
    poll was: the device is reached, this block is not (rtu.py: its points go invalid)."""


def _exception_error(exc: mbtcp.ExceptionAnswer) -> LinkError | DeviceError:
    if exc.code in (PATH_UNAVAILABLE, TARGET_NO_RESPONSE):
        return LinkError(str(exc))
    return Busy(str(exc)) if exc.code == BUSY else DeviceError(str(exc))


def _missed(out: list[bytes | DeviceError], why: str) -> NoAnswer:
    """A block not answered: that block's NoAnswer when the block before it in this poll was answered
    (data or a Modbus exception), else LinkError: the poll's first request, or a second in a row, unanswered
    means the device (or the path to it) is not reached, found within one or two timeouts."""
    if not out or isinstance(out[-1], NoAnswer):
        raise LinkError(why)
    return NoAnswer(why)


class DeviceLink:
    def __init__(self, channel: Channel, timeout_s: float, inflight: int = 1) -> None:
        self.channel = channel
        self.client = mbtcp.Client(channel.host, channel.port, channel.unit, timeout_s, inflight)
        self.lock = asyncio.Lock()  # a control write and a poll share the connection, one at a time
        self.waiting = 0  # control requests waiting for the lock: a poll's reads pause for them
        self.reopened = 0  # connections opened again after the device closed one (read_all, _call)
        self.closed = False  # closed by its runner (a channel's connection ended): never opened again

    async def connect(self) -> None:
        try:
            await self.client.connect()
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"connect {self.channel.host}:{self.channel.port}: {exc or type(exc).__name__}") from exc

    def close(self) -> None:
        self.closed = True
        self.client.close()

    async def _reopen(self) -> None:
        """Connect again at once after the device closed the connection (idle timeout, or a device that
        closes after each answer); LinkError when it cannot be reached, or when its runner has closed this
        link (a control's read-back that took it just before must not leave a connection open behind it)."""
        if self.closed:
            raise LinkError("connection closed by its runner")
        self.client.close()
        self.reopened += 1
        await self.connect()

    async def _acquire(self) -> None:
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1

    async def _call(self, pdu: bytes) -> bytes:
        await self._acquire()
        try:
            try:
                return await self.client.request(pdu)
            except mbtcp.NotConnected:  # closed by the device since the last request: nothing was sent
                await self._reopen()
                return await self.client.request(pdu)
        except mbtcp.ExceptionAnswer as exc:
            raise _exception_error(exc) from exc
        except (mbtcp.SequenceTimeout, mbtcp.SequenceLost, mbtcp.Malformed) as exc:  # sent: the device may
            raise Unanswered(str(exc) or type(exc).__name__) from exc  # have executed it (a malformed answer too)
        except (TimeoutError, OSError) as exc:
            raise LinkError(str(exc) or type(exc).__name__) from exc
        finally:
            self.lock.release()

    async def read_all(self, blocks: Sequence[Block]) -> list[bytes | DeviceError]:
        """Every block's answer data bytes (registers big-endian, bits packed LSB first: plan.py decodes), or
        the DeviceError of a block the device refused (Busy for 0x06, NoAnswer for a block not answered, see
        `_missed`). The reads go as one sequence (mbtcp.Client.requests), paused for a waiting control
        write once the requests already sent are answered (one with INFLIGHT 1, up to INFLIGHT). A
        connection the device closed (between polls, or after answering some of this poll's requests) is
        opened again at once and the poll goes on; closed again before any answer, the device is not
        reached; closed by us for a malformed frame that came between polls, it is not (as for a malformed
        answer). Raises LinkError (device not reached)."""
        out: list[bytes | DeviceError] = []
        answered = True  # an answer came since the connection was last opened again in this poll
        while len(out) < len(blocks):
            await self._acquire()
            lost: str | None = None
            missed: str | None = None
            try:
                got = await self.client.requests([b.request for b in blocks[len(out):]],
                                                 lambda: self.waiting > 0)
            except mbtcp.ClosedMalformed as exc:  # garbage between polls: not a device that closed
                raise LinkError(str(exc)) from exc
            except mbtcp.NotConnected as exc:
                got, lost = [], str(exc)
            except mbtcp.SequenceLost as exc:
                got, lost = exc.answers, str(exc)
            except mbtcp.SequenceTimeout as exc:  # the connection stays open: late answers are dropped
                got, missed = exc.answers, str(exc)
            except (TimeoutError, OSError, mbtcp.Malformed) as exc:
                raise LinkError(str(exc) or type(exc).__name__) from exc
            finally:
                self.lock.release()
            answered = answered or bool(got)
            for a in got:
                if isinstance(a, mbtcp.ExceptionAnswer):
                    if a.code == TARGET_NO_RESPONSE:
                        out.append(_missed(out, str(a)))
                        continue
                    err = _exception_error(a)
                    if isinstance(err, LinkError):
                        raise err from a
                    out.append(err)
                else:
                    out.append(a)
            if missed is not None:
                out.append(_missed(out, missed))
            elif lost is not None and len(out) < len(blocks):
                if not answered:
                    raise LinkError(lost)
                await self._acquire()  # not while a control write uses the connection
                try:
                    await self._reopen()
                finally:
                    self.lock.release()
                answered = False
        return out

    async def write(self, p: Point, value: float) -> None:
        """Write an engineering value to a coil or holding register(s); raises ValueError if not writable,
        Unanswered when the write went out and its answer never came."""
        if p.area not in dt.WRITABLE_AREAS:
            raise ValueError(f"point {p.id} is in area {p.area}, not writable")
        if p.area == "co":
            await self._call(mbtcp.write_coil_pdu(p.address, bool(value)))
            return
        if p.datatype == "bool":  # one bit of a holding register: read-modify-write
            raw = await self._call(mbtcp.read_pdu("hr", p.address, 1))
            cur = int.from_bytes(raw, "big")
            bit = 1 << (p.bit or 0)
            await self._call(mbtcp.write_register_pdu(p.address, (cur | bit) if value else (cur & ~bit)))
            return
        words = register_words(p, value)
        if len(words) == 1:
            await self._call(mbtcp.write_register_pdu(p.address, words[0]))
        else:
            await self._call(mbtcp.write_registers_pdu(p.address, words))

    async def read_registers(self, address: int, count: int) -> bytes:
        """Holding registers `address`.. (`count`), as the answer's data bytes: one FC3 request on this
        connection (a control's read-back, rtu.py); LinkError / DeviceError as `_call`."""
        return await self._call(mbtcp.read_pdu("hr", address, count))


def register_words(p: Point, value: float) -> list[int]:
    """The raw registers a numeric holding-register point is written with for an engineering value."""
    return dt.encode_registers(dt.unscaled(value, p.scale, p.offset), p.datatype, p.byteorder, p.wordorder)
