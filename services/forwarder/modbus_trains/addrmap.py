"""modbus_trains rules without a network: where each forwarding point lives, what its registers show, which
requests are legal and which controls a write means.

Kept apart from the pymodbus server so that every rule (address checks, COEF and type encoding, quality
handling, write decoding) is table-tested without sockets. Types come from `fepha.datatypes` (never
re-implemented) and areas from `fepha.semodel.validate.MODBUS_TRAINS_AREA`.

Decisions (docs/modbus_trains.md):
- Every address a request touches must belong to a forwarding point, otherwise ILLEGAL_DATA_ADDRESS (2);
  a write must cover whole values (no half of a float32).
- Numeric values are ``source value * COEF`` encoded with the point's TYPE (big-endian bytes and words),
  clamped to the type's range (quality bit OV set); bool points ignore COEF (non-zero is 1).
- A value with the IV (invalid) bit does not change the registers: they keep the last valid value. The
  quality bits are readable on the optional quality unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fepha import datatypes
from fepha.points import Quality, Value
from fepha.semodel.model import FwdPoint
from fepha.semodel.validate import MODBUS_TRAINS_AREA

# Modbus exception codes (numbers from the Modbus application protocol v1.1b3, section 7).
ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
SERVER_DEVICE_FAILURE = 0x04
GATEWAY_PATH_UNAVAILABLE = 0x0A
GATEWAY_TARGET_NO_RESPONSE = 0x0B

FUNCTION_AREA: dict[int, str] = {1: "co", 5: "co", 15: "co", 2: "di", 3: "hr", 6: "hr", 16: "hr", 22: "hr",
                                 23: "hr", 4: "ir"}
"""Function code -> area it reads or writes."""

OUTCOME_EXCEPTION: dict[str, int] = {
    "failed": SERVER_DEVICE_FAILURE,  # the device refused or the write failed
    "rejected": SERVER_DEVICE_FAILURE,  # refused before execution (e.g. no such source point)
    "expired": GATEWAY_TARGET_NO_RESPONSE,  # not executed before its deadline
    "unknown": GATEWAY_TARGET_NO_RESPONSE,  # the executing node did not answer before the deadline
}
"""ControlOutcome.state of a failed control -> exception code the master gets."""

_INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


class RequestError(Exception):
    """A request the server answers with a Modbus exception `code`."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass(frozen=True, slots=True)
class Slot:
    """One forwarding point in its area: addresses addr .. addr+width-1."""

    fwd: FwdPoint
    area: str
    addr: int
    width: int
    dtype: str


def encode(fwd_type: str, value: float, coef: float) -> tuple[list[int], int]:
    """Registers (or [0]/[1] for a bit) showing `value`, and the extra quality bits (OV when clamped)."""
    if fwd_type == "bool":
        return [1 if value else 0], 0
    v = float(value) * coef
    if math.isnan(v):
        raise ValueError("NaN cannot be shown in a Modbus register")
    extra = 0
    if fwd_type in _INT_RANGE:
        lo, hi = _INT_RANGE[fwd_type]
        r = round(v) if math.isfinite(v) else (hi + 1 if v > 0 else lo - 1)
        if not lo <= r <= hi:
            r, extra = min(max(r, lo), hi), int(Quality.OV)
        v = r
    elif abs(v) > _FLOAT32_MAX:
        v, extra = math.copysign(_FLOAT32_MAX, v), int(Quality.OV)
    return datatypes.encode_registers(v, fwd_type), extra


def decode(fwd_type: str, registers: Sequence[int], coef: float) -> float:
    """The engineering value of the source point a write of `registers` commands."""
    if fwd_type == "bool":
        return 1.0 if registers[0] else 0.0
    raw = datatypes.decode_registers(registers, fwd_type)
    if isinstance(raw, float) and not math.isfinite(raw):
        raise RequestError(ILLEGAL_DATA_VALUE, f"{raw} is not a value")
    return float(raw) / coef


class AddressMap:
    """The four areas of one modbus_trains RTU and the image shown in them."""

    def __init__(self, forwards: Iterable[FwdPoint]) -> None:
        self.slots: dict[tuple[str, int], Slot] = {}  # (table, ZFID) -> slot; ZFIDs repeat across tables
        self.at: dict[str, dict[int, Slot]] = {a: {} for a in datatypes.AREAS}  # area -> address -> slot
        for f in forwards:
            area = MODBUS_TRAINS_AREA[f.table]
            dtype = f.type or ("bool" if area in datatypes.BIT_AREAS else "uint16")
            slot = Slot(f, area, f.addr, datatypes.span(dtype, area), dtype)
            self.slots[(f.table, f.id)] = slot
            for a in range(slot.addr, slot.addr + slot.width):
                self.at[area][a] = slot
        self.words: dict[str, dict[int, int]] = {a: {x: 0 for x in self.at[a]} for a in datatypes.AREAS}
        """The value image: area -> address -> register (0/1 for bits)."""
        self.quality: dict[str, dict[int, int]] = {a: {x: int(Quality.IV) for x in self.at[a]}
                                                   for a in datatypes.AREAS}
        """Quality bits per address; IV until a first value arrives."""

    def span(self, area: str) -> tuple[int, int] | None:
        """Lowest and highest used address of an area, None when it has no point."""
        used = self.at[area]
        return (min(used), max(used)) if used else None

    # -- image -----------------------------------------------------------------------------------------
    def set_value(self, fwd: FwdPoint, value: Value) -> bool:
        """Show a new value of a forwarding point; False when the point is not served here."""
        slot = self.slots.get((fwd.table, fwd.id))
        if slot is not None and slot.fwd != fwd:
            slot = None  # same key, another configuration's point
        if slot is None:
            return False
        quality = int(value.quality)
        if value.valid:
            try:
                regs, extra = encode(slot.dtype, value.value, slot.fwd.coef)
            except ValueError:
                regs, extra = None, int(Quality.OV)
            if regs is not None:
                for i, w in enumerate(regs):
                    self.words[slot.area][slot.addr + i] = w
            quality |= extra
        for a in range(slot.addr, slot.addr + slot.width):
            self.quality[slot.area][a] = quality
        return True

    def clear(self) -> None:
        for area in datatypes.AREAS:
            for a in self.words[area]:
                self.words[area][a] = 0
                self.quality[area][a] = int(Quality.IV)

    def read(self, area: str, address: int, count: int, quality: bool = False) -> list[int]:
        """Words (or 0/1 bits) of a checked range, from the value image or the quality image."""
        src = (self.quality if quality else self.words)[area]
        if quality and area in datatypes.BIT_AREAS:
            return [1 if src[a] else 0 for a in range(address, address + count)]
        return [src[a] for a in range(address, address + count)]

    # -- requests ---------------------------------------------------------------------------------------
    def check(self, area: str, address: int, count: int) -> None:
        """Raise RequestError(ILLEGAL_DATA_ADDRESS) unless every address of the range is a point's."""
        used = self.at[area]
        if count < 1:
            raise RequestError(ILLEGAL_DATA_VALUE, f"count {count}")
        for a in range(address, address + count):
            if a not in used:
                raise RequestError(ILLEGAL_DATA_ADDRESS, f"{area} address {a} is not a forwarding point")

    def writes(self, area: str, address: int, values: Sequence[int | bool]) -> list[tuple[FwdPoint, float,
                                                                                       list[int]]]:
        """The controls a write means, in address order: (forwarding point, source value, words).

        The range must hold only points and start and end on value boundaries."""
        self.check(area, address, len(values))
        out: list[tuple[FwdPoint, float, list[int]]] = []
        i = 0
        while i < len(values):
            slot = self.at[area][address + i]
            if slot.addr != address + i or i + slot.width > len(values):
                raise RequestError(ILLEGAL_DATA_ADDRESS,
                                   f"write does not cover the whole value at {area} {slot.addr}")
            words = [int(v) for v in values[i : i + slot.width]]
            out.append((slot.fwd, decode(slot.dtype, words, slot.fwd.coef), words))
            i += slot.width
        return out

    def store(self, area: str, address: int, words: Sequence[int]) -> None:
        """A successful control's value stays readable (the commanded setpoint) until the source changes."""
        for i, w in enumerate(words):
            self.words[area][address + i] = int(w)
