"""Modbus TCP I/O with one device over one channel (our own client, mbtcp.py). Thin on purpose: what to
read comes from plan.py, how to decode from plan.py and fepha.datatypes."""

from __future__ import annotations

import asyncio

from fep_acquirer import mbtcp
from fep_acquirer.plan import Block
from fepha import datatypes as dt
from fepha.semodel.model import Channel, Point

LINK_EXCEPTIONS = (0x0A, 0x0B)  # gateway path unavailable / target failed to respond: device not reached


class LinkError(Exception):
    """The device was not reached over this channel (connect, timeout, gateway): switch logic applies."""


class DeviceError(Exception):
    """The device answered with a Modbus exception (bad address, type...): a configuration problem."""


class DeviceLink:
    def __init__(self, channel: Channel, timeout_s: float) -> None:
        self.channel = channel
        self.client = mbtcp.Client(channel.host, channel.port, channel.unit, timeout_s)
        self.lock = asyncio.Lock()

    async def connect(self) -> None:
        try:
            await self.client.connect()
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"connect {self.channel.host}:{self.channel.port}: {exc or type(exc).__name__}") from exc

    def close(self) -> None:
        self.client.close()

    async def _call(self, pdu: bytes) -> bytes:
        try:
            async with self.lock:  # a control write and a poll share the connection, one request at a time
                return await self.client.request(pdu)
        except mbtcp.ExceptionAnswer as exc:
            if exc.code in LINK_EXCEPTIONS:
                raise LinkError(str(exc)) from exc
            raise DeviceError(str(exc)) from exc
        except (TimeoutError, OSError, mbtcp.Malformed) as exc:
            raise LinkError(str(exc) or type(exc).__name__) from exc

    async def read(self, block: Block) -> bytes:
        """The answer's data bytes: registers big-endian, or bits packed LSB first (plan.py decodes)."""
        return await self._call(block.request)

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
