"""The point model: one value record format, shared by every writer and reader.

A value record is the string ``"<value>|<quality>|<ts_ms>"`` in a value hash and in change-stream entries.
It is a string rather than JSON because the acquirer writes up to a few hundred thousand of them a second
and forwarders parse as many; ``|`` never occurs in a number.

Quality is a bit set with the meanings of IEC 60870-5-101/104 so that se104s passes it through unchanged:
0 is good.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag


class Quality(IntFlag):
    """Quality bits (IEC 60870-5-101 7.2.6.3 layout)."""

    GOOD = 0
    OV = 0x01  # overflow: value outside the representable range of its forwarding type
    BL = 0x10  # blocked
    SB = 0x20  # substituted
    NT = 0x40  # not topical: not updated within its expected period (stale)
    IV = 0x80  # invalid: the device was not reached or the value could not be decoded


@dataclass(frozen=True, slots=True)
class Value:
    """A point value as stored: value (float or int), quality bits, acquisition time in epoch ms."""

    value: float | int
    quality: int
    ts_ms: int

    @property
    def valid(self) -> bool:
        return not self.quality & Quality.IV


def encode(value: float, quality: int, ts_ms: int) -> str:
    """Encode one record. Integral floats are written as integers so DI/ACC values stay exact."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return f"{value}|{quality}|{ts_ms}"


def decode(record: str | bytes) -> Value:
    """Decode one record; raises ValueError on a malformed record."""
    if isinstance(record, bytes):
        record = record.decode()
    try:
        v, q, t = record.split("|")
        num: float | int = int(v) if v.lstrip("-").isdigit() else float(v)
        return Value(num, int(q), int(t))
    except ValueError as exc:
        raise ValueError(f"malformed value record {record!r}") from exc
