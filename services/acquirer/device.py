"""Modbus TCP I/O with one device over one channel (pymodbus 3.16.1 async client). Thin on purpose:
what to read comes from plan.py, how to decode from fepha.datatypes."""

from __future__ import annotations

import asyncio
import logging

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from fep_acquirer.plan import Block
from fepha import datatypes as dt
from fepha.semodel.model import Channel, Point

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its per-request errors are ours to log once

LINK_EXCEPTIONS = (0x0A, 0x0B)  # gateway path unavailable / target failed to respond: device not reached


class LinkError(Exception):
    """The device was not reached over this channel (connect, timeout, gateway): switch logic applies."""


class DeviceError(Exception):
    """The device answered with a Modbus exception (bad address, type...): a configuration problem."""


class DeviceLink:
    def __init__(self, channel: Channel, timeout_s: float) -> None:
        self.channel = channel
        self.client = AsyncModbusTcpClient(channel.host, port=channel.port, timeout=timeout_s, retries=0,
                                           reconnect_delay=0)
        self.lock = asyncio.Lock()
        c = self.client  # the read function per area, bound once (per block read it was a measurable cost)
        self._readers = {"co": c.read_coils, "di": c.read_discrete_inputs, "hr": c.read_holding_registers,
                         "ir": c.read_input_registers}

    async def connect(self) -> None:
        try:
            ok = await self.client.connect()
        except (OSError, ModbusException) as exc:
            raise LinkError(f"connect {self.channel.host}:{self.channel.port}: {exc}") from exc
        if not ok:
            raise LinkError(f"connect {self.channel.host}:{self.channel.port} failed")

    def close(self) -> None:
        self.client.close()

    async def _call(self, coro_fn, *args, **kw):
        async with self.lock:
            try:
                res = await coro_fn(*args, device_id=self.channel.unit, **kw)
            except (TimeoutError, OSError, ModbusException) as exc:
                raise LinkError(str(exc) or type(exc).__name__) from exc
        if res.isError():
            code = getattr(res, "exception_code", 0)
            if code in LINK_EXCEPTIONS:
                raise LinkError(f"modbus exception {code:#04x}")
            raise DeviceError(f"modbus exception {code:#04x}")
        return res

    async def read(self, block: Block) -> list[int] | list[bool]:
        res = await self._call(self._readers[block.area], block.start, count=block.count)
        return res.bits[: block.count] if block.area in dt.BIT_AREAS else res.registers

    async def write(self, p: Point, value: float) -> None:
        """Write an engineering value to a coil or holding register(s); raises ValueError if not writable."""
        if p.area not in dt.WRITABLE_AREAS:
            raise ValueError(f"point {p.id} is in area {p.area}, not writable")
        c = self.client
        if p.area == "co":
            await self._call(c.write_coil, p.address, bool(value))
            return
        if p.datatype == "bool":  # one bit of a holding register: read-modify-write
            cur = (await self._call(c.read_holding_registers, p.address, count=1)).registers[0]
            bit = 1 << (p.bit or 0)
            await self._call(c.write_register, p.address, (cur | bit) if value else (cur & ~bit))
            return
        words = dt.encode_registers(dt.unscaled(value, p.scale, p.offset), p.datatype, p.byteorder,
                                    p.wordorder)
        if len(words) == 1:
            await self._call(c.write_register, p.address, words[0])
        else:
            await self._call(c.write_registers, p.address, words)
