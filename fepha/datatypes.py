"""Modbus data types, declared once: struct code, register count and the register areas they may live in.

The acquirer decodes with this table, the modbus_trains forwarder encodes with it, the PLC simulator
encodes with it and the SEMODEL.db validator checks against it, so a type or an order means the same
thing everywhere. Decoding never mutates its input.

Byte order is the order of the two bytes inside each 16-bit register ("big" is the Modbus standard);
word order is the order of the registers of a 32-bit value ("big": high word first).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

AREAS = ("co", "di", "hr", "ir")
"""Modbus areas: coils, discrete inputs, holding registers, input registers."""
BIT_AREAS = ("co", "di")
REGISTER_AREAS = ("hr", "ir")
WRITABLE_AREAS = ("co", "hr")
ORDERS = ("big", "little")

MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


@dataclass(frozen=True, slots=True)
class DataType:
    name: str
    struct_code: str  # struct format of the value in big-endian byte/word order, "" for bits
    registers: int  # 16-bit registers occupied; 0 for a single bit
    areas: tuple[str, ...]
    integer: bool


DATATYPES: dict[str, DataType] = {
    t.name: t
    for t in (
        DataType("bool", "", 0, AREAS, True),  # a coil/discrete input, or one bit of a register
        DataType("int16", ">h", 1, REGISTER_AREAS, True),
        DataType("uint16", ">H", 1, REGISTER_AREAS, True),
        DataType("int32", ">i", 2, REGISTER_AREAS, True),
        DataType("uint32", ">I", 2, REGISTER_AREAS, True),
        DataType("float32", ">f", 2, REGISTER_AREAS, False),
    )
}


def span(datatype: str, area: str) -> int:
    """Number of addresses (bits or registers) a value occupies in its area."""
    dt = DATATYPES[datatype]
    if area in BIT_AREAS:
        return 1
    return max(dt.registers, 1)


def _to_bytes(registers: Sequence[int], byteorder: str, wordorder: str) -> bytes:
    words = list(registers) if wordorder == "big" else list(reversed(registers))
    raw = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in words)
    if byteorder == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def _from_bytes(raw: bytes, byteorder: str, wordorder: str) -> list[int]:
    if byteorder == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if wordorder == "big" else list(reversed(words))


def decode_registers(
    registers: Sequence[int],
    datatype: str,
    byteorder: str = "big",
    wordorder: str = "big",
    bit: int | None = None,
) -> int | float:
    """Decode the registers of one value (exactly `span` of them) into its raw number."""
    dt = DATATYPES[datatype]
    if dt.name == "bool":
        if bit is None:
            raise ValueError("bool in a register area needs a bit index")
        return (int(registers[0]) >> bit) & 1
    (value,) = struct.unpack(dt.struct_code, _to_bytes(registers[: dt.registers], byteorder, wordorder))
    return value


def encode_registers(
    value: float, datatype: str, byteorder: str = "big", wordorder: str = "big"
) -> list[int]:
    """Encode a raw number into registers; raises ValueError when it does not fit the type."""
    dt = DATATYPES[datatype]
    if dt.name == "bool":
        return [1 if value else 0]
    number: float = round(value) if dt.integer else float(value)
    try:
        raw = struct.pack(dt.struct_code, number)
    except struct.error as exc:
        raise ValueError(f"{value!r} does not fit {datatype}") from exc
    return _from_bytes(raw, byteorder, wordorder)


def scaled(raw: float, scale: float, offset: float) -> int | float:
    """Engineering value = raw * scale + offset; stays an int when both are neutral."""
    if scale == 1.0 and offset == 0.0:
        return raw
    return raw * scale + offset


def unscaled(value: float, scale: float, offset: float) -> float:
    """Raw value for an engineering value (inverse of `scaled`), for writes to a device."""
    return (value - offset) / scale
