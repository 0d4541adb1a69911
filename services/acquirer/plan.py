"""Read planning and decoding: computed once per configuration, so a poll is a few block reads.

Points are grouped by area into contiguous block reads of at most 125 registers / 2000 bits; a gap larger
than `max_gap` addresses starts a new block (reading unused addresses is cheaper than another request, up
to a point, and some devices reject reads of undefined addresses, hence a small default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fepha import datatypes as dt
from fepha.semodel.model import Point


@dataclass(frozen=True, slots=True)
class Block:
    """One Modbus read request and the points decoded from its answer."""

    area: str
    start: int
    count: int
    points: tuple[Point, ...]


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
    for p in block.points:
        i = p.address - block.start
        if block.area in dt.BIT_AREAS:
            out[p.id] = int(bool(data[i]))
            continue
        raw = dt.decode_registers(data[i : i + dt.span(p.datatype, p.area)], p.datatype,
                                  p.byteorder, p.wordorder, p.bit)
        out[p.id] = raw if p.datatype == "bool" else dt.scaled(raw, p.scale, p.offset)
    return out
