"""Modbus TCP I/O with one device over one channel (our own client, mbtcp.py). Thin on purpose: what to
read comes from plan.py, how to decode from plan.py and fepha.datatypes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fep_acquirer import mbtcp
from fep_acquirer.plan import Block
from fepha import datatypes as dt
from fepha.semodel.model import Channel, Point

LINK_EXCEPTIONS = (0x0A, 0x0B)  # gateway path unavailable / target failed to respond: device not reached


class LinkError(Exception):
    """The device was not reached over this channel (connect, timeout, gateway): switch logic applies."""


class DeviceError(Exception):
    """The device answered with a Modbus exception (bad address, type...): a configuration problem."""


def _exception_error(exc: mbtcp.ExceptionAnswer) -> LinkError | DeviceError:
    return LinkError(str(exc)) if exc.code in LINK_EXCEPTIONS else DeviceError(str(exc))


class DeviceLink:
    def __init__(self, channel: Channel, timeout_s: float) -> None:
        self.channel = channel
        self.client = mbtcp.Client(channel.host, channel.port, channel.unit, timeout_s)
        self.lock = asyncio.Lock()  # a control write and a poll share the connection, one request at a time
        self.waiting = 0  # control requests waiting for the lock: a poll's reads pause for them

    async def connect(self) -> None:
        try:
            await self.client.connect()
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"connect {self.channel.host}:{self.channel.port}: {exc or type(exc).__name__}") from exc

    def close(self) -> None:
        self.client.close()

    async def _acquire(self) -> None:
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1

    async def _call(self, pdu: bytes) -> bytes:
        await self._acquire()
        try:
            return await self.client.request(pdu)
        except mbtcp.ExceptionAnswer as exc:
            raise _exception_error(exc) from exc
        except (TimeoutError, OSError, mbtcp.Malformed) as exc:
            raise LinkError(str(exc) or type(exc).__name__) from exc
        finally:
            self.lock.release()

    async def read_all(self, blocks: Sequence[Block]) -> list[bytes | DeviceError]:
        """Every block's answer data bytes (registers big-endian, bits packed LSB first: plan.py decodes), or
        the DeviceError of a block the device refused. The reads go as one sequence (mbtcp.Client.requests),
        paused between two requests for a waiting control write. Raises LinkError (device not reached)."""
        out: list[bytes | DeviceError] = []
        while len(out) < len(blocks):
            await self._acquire()
            try:
                got = await self.client.requests([b.request for b in blocks[len(out):]],
                                                 lambda: self.waiting > 0)
            except (TimeoutError, OSError, mbtcp.Malformed) as exc:
                raise LinkError(str(exc) or type(exc).__name__) from exc
            finally:
                self.lock.release()
            for a in got:
                if isinstance(a, mbtcp.ExceptionAnswer):
                    err = _exception_error(a)
                    if isinstance(err, LinkError):
                        raise err from a
                    out.append(err)
                else:
                    out.append(a)
        return out

    async def write(self, p: Point, value: float) -> None:
        """Write an engineering value to a coil or holding register(s); raises ValueError if not writable."""
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
        words = dt.encode_registers(dt.unscaled(value, p.scale, p.offset), p.datatype, p.byteorder,
                                    p.wordorder)
        if len(words) == 1:
            await self._call(mbtcp.write_register_pdu(p.address, words[0]))
        else:
            await self._call(mbtcp.write_registers_pdu(p.address, words))
