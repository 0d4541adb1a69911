"""The point model: one value record format, shared by every writer and reader.

A value record is the string ``"<value>|<quality>|<ts_ms>"`` in a value hash and in change-stream entries.
It is a string rather than JSON because the acquirer writes up to a few hundred thousand of them a second
and forwarders parse as many; ``|`` never occurs in a number.

Quality is a bit set with the meanings of IEC 60870-5-101/104 so that se104s passes it through unchanged:
0 is good.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def _plain(value: float) -> float | int:
    """Integral floats are written as integers so DI/ACC values stay exact."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def encode(value: float, quality: int, ts_ms: int) -> str:
    """Encode one record."""
    return f"{_plain(value)}|{quality}|{ts_ms}"


def encode_pairs(samples: Mapping[int, tuple[float | int, int]], ts_ms: int) -> list[str]:
    """[point id, record, ...] of samples {point id: (value, quality)} all taken at `ts_ms` (one poll's
    changes), each record exactly as `encode` writes it: the "|quality|ts_ms" tail is built once per
    quality and only a float goes through `_plain` (the acquirer encodes 10,000s of records a second)."""
    out: list[str] = []
    tails: dict[int, str] = {}
    for pid, (v, q) in samples.items():
        tail = tails.get(q)
        if tail is None:
            tail = tails[q] = f"|{q}|{ts_ms}"
        out.append(str(pid))
        out.append(f"{_plain(v) if isinstance(v, float) else v}{tail}")
    return out


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
