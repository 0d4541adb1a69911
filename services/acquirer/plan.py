"""Read planning and decoding: computed once per configuration, so a poll is a few block reads.

Points are grouped by area into contiguous block reads of at most 125 registers / 2000 bits; a gap larger
than `max_gap` addresses starts a new block (reading unused addresses is cheaper than another request, up
to a point, and some devices reject reads of undefined addresses, hence a small default).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from fep_acquirer import mbtcp
from fepha import datatypes as dt
from fepha.semodel.model import Point


@dataclass(frozen=True, slots=True)
class Block:
    """One Modbus read request and the points decoded from its answer.

    `fast` holds, per point, how to decode it without the general routine: the point's struct (from
    fepha.datatypes' table) when it sits in a register area in the standard (big/big) orders, else None
    (bits of a register, swapped orders: fepha.datatypes.decode_registers). Computed once per plan, so that
    decoding a poll is about one struct.unpack_from per point (the general routine cost ~3 us a point, the
    larger part of the acquirer's CPU at 100k changes/s, see bench/acquire.py).

    `direct` holds, per point, (point id, byte offset in the answer, struct) when that struct alone gives
    its engineering value (a fast point without scale or offset: `fepha.datatypes.scaled` would return the
    raw value as it is), else None: the usual point then costs one tuple and one unpack, no attribute or
    call (bench/acquire.py: decode_block was the largest part of the acquirer's CPU per change).

    `touch` holds, per address of the block (bit or register), the indexes of the points that read it, so
    that a changed register of an answer leads to the points to decode again (decode_block). `request` is
    the block's Modbus request PDU, built once."""

    area: str
    start: int
    count: int
    points: tuple[Point, ...]
    fast: tuple[struct.Struct | None, ...] = field(default=(), compare=False)
    touch: tuple[tuple[int, ...], ...] = field(default=(), compare=False)
    request: bytes = field(default=b"", compare=False)
    direct: tuple[tuple[int, int, struct.Struct] | None, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.fast:
            object.__setattr__(self, "fast", tuple(_fast_struct(self.area, p) for p in self.points))
        if not self.direct:
            object.__setattr__(self, "direct", tuple(
                (p.id, 2 * (p.address - self.start), st) if st is not None and p.scale == 1.0 and p.offset == 0.0
                else None for p, st in zip(self.points, self.fast, strict=True)))
        if not self.touch:
            touch: list[list[int]] = [[] for _ in range(self.count)]
            for k, p in enumerate(self.points):
                for a in range(p.address, p.address + dt.span(p.datatype, self.area)):
                    touch[a - self.start].append(k)
            object.__setattr__(self, "touch", tuple(tuple(t) for t in touch))
        if not self.request:
            object.__setattr__(self, "request", mbtcp.read_pdu(self.area, self.start, self.count))


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


def changed_points(block: Block, raw: bytes, prev: bytes) -> list[int]:
    """Indexes (into block.points, ascending, maybe repeated) of the points that read a bit or register
    whose bytes differ between two answers of the same length. One XOR of the answers as integers, then
    one step per changed register or bit: with few changes per answer (the usual case: 5 % of the points
    change per poll at the bench's load) far cheaper than decoding every point."""
    x = int.from_bytes(raw, "big") ^ int.from_bytes(prev, "big")
    touch, nbytes = block.touch, len(raw)
    out: list[int] = []
    if block.area in dt.BIT_AREAS:  # bits packed LSB first: bit b of byte i is the address 8 * i + b
        while x:
            pos = x.bit_length() - 1
            off = (nbytes - 1 - (pos >> 3)) * 8 + (pos & 7)
            if off < len(touch):  # padding bits of the last byte belong to no address
                out += touch[off]
            x ^= 1 << pos
    else:
        last = nbytes // 2 - 1
        while x:
            w = (x.bit_length() - 1) >> 4  # the changed register, counted from the end of the answer
            out += touch[last - w]
            x &= (1 << (w << 4)) - 1
    out.reverse()
    return out


def decode_block(block: Block, raw: bytes, prev: bytes | None = None) -> dict[int, int | float]:
    """Engineering values of a block's points from the answer's data bytes (registers big-endian, bits
    packed LSB first): of every point when there is no previous answer `prev` (of the same length), else
    only of the points whose bits or registers differ from it (the others' values are what `prev` gave)."""
    points = block.points
    if prev is None or len(prev) != len(raw):
        which: range | list[int] = range(len(points))
    elif raw == prev:
        return {}
    else:
        which = changed_points(block, raw, prev)
    out: dict[int, int | float] = {}
    start = block.start
    if block.area in dt.BIT_AREAS:
        for k in which:
            off = points[k].address - start
            out[points[k].id] = (raw[off >> 3] >> (off & 7)) & 1
        return out
    scaled, fast, direct = dt.scaled, block.fast, block.direct
    for k in which:
        d = direct[k]
        if d is not None:
            out[d[0]] = d[2].unpack_from(raw, d[1])[0]
            continue
        p, st = points[k], fast[k]
        i = p.address - start
        if st is not None:
            value = st.unpack_from(raw, 2 * i)[0]
        else:
            n = dt.span(p.datatype, p.area)
            value = dt.decode_registers(struct.unpack_from(f">{n}H", raw, 2 * i), p.datatype, p.byteorder,
                                        p.wordorder, p.bit)
            if p.datatype == "bool":
                out[p.id] = value
                continue
        out[p.id] = scaled(value, p.scale, p.offset)
    return out
