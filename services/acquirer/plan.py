"""Read planning and decoding: computed once per configuration, so a poll is a few block reads.

Points are grouped by area into contiguous block reads of at most 125 registers / 2000 bits; a gap larger
than `max_gap` addresses starts a new block (reading unused addresses is cheaper than another request, up
to a point, and some devices reject reads of undefined addresses, hence a small default).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from fepha import datatypes as dt
from fepha.semodel.model import Point


@dataclass(frozen=True, slots=True)
class Block:
    """One Modbus read request and the points decoded from its answer.

    `fast` holds, per point, how to decode it without the general routine: the point's struct (from
    fepha.datatypes' table) when it sits in a register area in the standard (big/big) orders, else None
    (bits of a register, swapped orders: fepha.datatypes.decode_registers). Computed once per plan, so that
    decoding a poll is about one struct.unpack_from per point (the general routine cost ~3 us a point, the
    larger part of the acquirer's CPU at 100k changes/s, see bench/acquire.py)."""

    area: str
    start: int
    count: int
    points: tuple[Point, ...]
    fast: tuple[struct.Struct | None, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.fast:
            object.__setattr__(self, "fast", tuple(_fast_struct(self.area, p) for p in self.points))


def _fast_struct(area: str, p: Point) -> struct.Struct | None:
    if area not in dt.REGISTER_AREAS or p.datatype == "bool" or (p.byteorder, p.wordorder) != ("big", "big"):
        return None
    return struct.Struct(dt.DATATYPES[p.datatype].struct_code)


def plan_reads(points: Sequence[Point], max_gap: int = 8) -> list[Block]:
    """Group points into block reads per area, each within the protocol's per-request limit."""
    blocks: list[Block] = []
    for area in dt.AREAS:
        limit = dt.MAX_BITS_PER_READ if area in dt.BIT_AREAS else dt.MAX_REGISTERS_PER_READ
        mine = sorted((p for p in points if p.area == area), key=lambda p: (p.address, p.id))
        cur: list[Point] = []
        start = end = 0
        for p in mine:
            p_end = p.address + dt.span(p.datatype, area)
            if cur and (p.address - end > max_gap or max(end, p_end) - start > limit):
                blocks.append(Block(area, start, end - start, tuple(cur)))
                cur = []
            if not cur:
                start, end = p.address, p_end
            cur.append(p)
            end = max(end, p_end)
        if cur:
            blocks.append(Block(area, start, end - start, tuple(cur)))
    return blocks


def decode_block(block: Block, data: Sequence[int] | Sequence[bool]) -> dict[int, int | float]:
    """Engineering values of a block's points from the bits/registers the device answered."""
    out: dict[int, int | float] = {}
    start = block.start
    if block.area in dt.BIT_AREAS:
        for p in block.points:
            out[p.id] = int(bool(data[p.address - start]))
        return out
    try:
        raw_bytes = struct.pack(f">{len(data)}H", *data)  # the registers, big-endian
    except struct.error:  # a register outside 0..65535: keep the low 16 bits, as decode_registers does
        raw_bytes = struct.pack(f">{len(data)}H", *(int(w) & 0xFFFF for w in data))
    scaled = dt.scaled
    for p, st in zip(block.points, block.fast, strict=True):
        i = p.address - start
        if st is not None:
            raw = st.unpack_from(raw_bytes, 2 * i)[0]
        else:
            raw = dt.decode_registers(data[i : i + dt.span(p.datatype, p.area)], p.datatype,
                                      p.byteorder, p.wordorder, p.bit)
            if p.datatype == "bool":
                out[p.id] = raw
                continue
        out[p.id] = scaled(raw, p.scale, p.offset)
    return out
