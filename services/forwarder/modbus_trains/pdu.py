"""modbus_trains request checks without a network: which function codes we serve and whether a request PDU
is well-formed, in the order of the MODBUS Application Protocol Specification V1.1b3 (section 6, each
function's state diagram): function code (exception 01), then quantities, byte counts and values (03),
then the address range start + quantity (02). The address map (addrmap.py) then checks every address
against the configured points (02) and the execution answers 04 / 0B.

pymodbus's own decoder answers a quantity out of range or a short PDU with ILLEGAL FUNCTION under function
code 0 (`80 01`), executes FC 5 with any value other than 0x0000 as ON, and answers diagnostics, FIFO and
device identification requests we do not serve; so every request passes `check` first.
"""

from __future__ import annotations

import struct

from fep_forwarder.modbus_trains.addrmap import ILLEGAL_DATA_ADDRESS, ILLEGAL_DATA_VALUE, ILLEGAL_FUNCTION

SUPPORTED: frozenset[int] = frozenset({1, 2, 3, 4, 5, 6, 15, 16, 22, 23})
"""Function codes served; every other one is answered ILLEGAL FUNCTION (01)."""
WRITES: frozenset[int] = frozenset({5, 6, 15, 16, 22, 23})
_HH = struct.Struct(">HH")
_ADDRESS_SPACE = 0x10000

# function -> (fixed PDU length, or None when a byte count follows; quantity range)
_READS = {1: (1, 2000), 2: (1, 2000), 3: (1, 125), 4: (1, 125)}
_MULTI_WRITES = {15: (1, 1968), 16: (1, 123)}


def _range(start: int, count: int) -> int | None:
    return ILLEGAL_DATA_ADDRESS if start + count > _ADDRESS_SPACE else None


def check(pdu: bytes) -> int | None:
    """The exception code a request PDU gets before it reaches the address map, None when it is
    well-formed. The MBAP length delimits the PDU, so a PDU longer or shorter than its function
    defines is ILLEGAL DATA VALUE (the spec's "PDU ... incorrect" branch)."""
    fc = pdu[0]
    if fc not in SUPPORTED:
        return ILLEGAL_FUNCTION
    n = len(pdu)
    if fc in _READS:
        if n != 5:
            return ILLEGAL_DATA_VALUE
        start, count = _HH.unpack_from(pdu, 1)
        lo, hi = _READS[fc]
        return ILLEGAL_DATA_VALUE if not lo <= count <= hi else _range(start, count)
    if fc in (5, 6):
        if n != 5:
            return ILLEGAL_DATA_VALUE
        _, value = _HH.unpack_from(pdu, 1)
        if fc == 5 and value not in (0x0000, 0xFF00):
            return ILLEGAL_DATA_VALUE
        return None
    if fc in _MULTI_WRITES:
        if n < 6:
            return ILLEGAL_DATA_VALUE
        start, count = _HH.unpack_from(pdu, 1)
        lo, hi = _MULTI_WRITES[fc]
        want = (count + 7) // 8 if fc == 15 else 2 * count
        if not lo <= count <= hi or pdu[5] != want or n != 6 + want:
            return ILLEGAL_DATA_VALUE
        return _range(start, count)
    if fc == 22:
        return ILLEGAL_DATA_VALUE if n != 7 else None
    # 23: read start, read quantity, write start, write quantity, byte count, values
    if n < 10:
        return ILLEGAL_DATA_VALUE
    rstart, rcount = _HH.unpack_from(pdu, 1)
    wstart, wcount = _HH.unpack_from(pdu, 5)
    if not 1 <= rcount <= 125 or not 1 <= wcount <= 121 or pdu[9] != 2 * wcount or n != 10 + 2 * wcount:
        return ILLEGAL_DATA_VALUE
    return _range(rstart, rcount) or _range(wstart, wcount)


def write_echo(pdu: bytes) -> bytes | None:
    """The normal answer to a write that succeeded, when it is defined by the request alone: FC 5, 6 and
    22 echo the request, FC 15 and 16 echo its address and quantity. None for FC 23 (read data)."""
    fc = pdu[0]
    if fc in (5, 6, 22):
        return pdu
    if fc in (15, 16):
        return pdu[:5]
    return None
