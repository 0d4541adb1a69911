"""IEC 60870-5-104 framing and ASDU coding: pure functions, no sockets, no clock.

Everything our IEC 104 peers put on the wire or read from it goes through here (se104s, the SCADA
server; the acquirer's IEC 104 client; the simulated RTU in tools/), so the table tests in
tests/iec104/test_codec.py cover the protocol without a network. Sizes follow the standard's
104 profile: cause of transmission 2 octets (cause + originator), common address 2 octets, information
object address 3 octets, little endian; an APDU is at most 253 octets after start and length.
"""

from __future__ import annotations

import calendar
import datetime
import math
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

START = 0x68
MAX_APDU = 253  # length octet: control field (4) + ASDU
MAX_ASDU = MAX_APDU - 4
HEADER = 6  # type, vsq, cot, originator, ca (2)
IOA_LEN = 3


class ProtocolError(Exception):
    """A frame that breaks the standard: the connection that sent it is closed."""


# --- type identifications --------------------------------------------------------------------------
M_SP_NA_1, M_DP_NA_1, M_ME_NA_1, M_ME_NB_1, M_ME_NC_1, M_IT_NA_1 = 1, 3, 9, 11, 13, 15
M_SP_TB_1, M_DP_TB_1, M_ME_TD_1, M_ME_TE_1, M_ME_TF_1, M_IT_TB_1 = 30, 31, 34, 35, 36, 37
M_EI_NA_1 = 70
M_ME_ND_1 = 21  # normalised value without quality descriptor: read by the acquirer, never sent by se104s
C_SC_NA_1, C_DC_NA_1, C_SE_NA_1, C_SE_NB_1, C_SE_NC_1 = 45, 46, 48, 49, 50
C_SC_TA_1, C_DC_TA_1, C_SE_TA_1, C_SE_TB_1, C_SE_TC_1 = 58, 59, 61, 62, 63
C_IC_NA_1, C_CI_NA_1, C_RD_NA_1, C_CS_NA_1, C_TS_NA_1, C_RP_NA_1, C_TS_TA_1 = 100, 101, 102, 103, 104, 105, 107
# C_TS_NA_1 (test command without time tag) is IEC 60870-5-101 only: IEC 104 uses C_TS_TA_1.

TYPE_IDS: dict[str, int] = {
    "M_SP_NA_1": M_SP_NA_1, "M_SP_TB_1": M_SP_TB_1, "M_DP_NA_1": M_DP_NA_1, "M_DP_TB_1": M_DP_TB_1,
    "M_ME_NA_1": M_ME_NA_1, "M_ME_NB_1": M_ME_NB_1, "M_ME_NC_1": M_ME_NC_1, "M_ME_TD_1": M_ME_TD_1,
    "M_ME_TE_1": M_ME_TE_1, "M_ME_TF_1": M_ME_TF_1, "M_IT_NA_1": M_IT_NA_1, "M_IT_TB_1": M_IT_TB_1,
    "C_SC_NA_1": C_SC_NA_1, "C_DC_NA_1": C_DC_NA_1, "C_SE_NA_1": C_SE_NA_1, "C_SE_NB_1": C_SE_NB_1,
    "C_SE_NC_1": C_SE_NC_1, "C_SC_TA_1": C_SC_TA_1, "C_DC_TA_1": C_DC_TA_1, "C_SE_TA_1": C_SE_TA_1,
    "C_SE_TB_1": C_SE_TB_1, "C_SE_TC_1": C_SE_TC_1,
}
TIME_TAGGED = {M_SP_TB_1, M_DP_TB_1, M_ME_TD_1, M_ME_TE_1, M_ME_TF_1, M_IT_TB_1,
               C_SC_TA_1, C_DC_TA_1, C_SE_TA_1, C_SE_TB_1, C_SE_TC_1}
# Command type -> its base form (a point configured with one form accepts the other).
COMMAND_BASE = {C_SC_NA_1: C_SC_NA_1, C_SC_TA_1: C_SC_NA_1, C_DC_NA_1: C_DC_NA_1, C_DC_TA_1: C_DC_NA_1,
                C_SE_NA_1: C_SE_NA_1, C_SE_TA_1: C_SE_NA_1, C_SE_NB_1: C_SE_NB_1, C_SE_TB_1: C_SE_NB_1,
                C_SE_NC_1: C_SE_NC_1, C_SE_TC_1: C_SE_NC_1}
# Monitoring element sizes without IOA and without time tag.
_ELEM = {M_SP_NA_1: 1, M_DP_NA_1: 1, M_ME_NA_1: 3, M_ME_NB_1: 3, M_ME_NC_1: 5, M_IT_NA_1: 5}
_BASE_OF = {M_SP_TB_1: M_SP_NA_1, M_DP_TB_1: M_DP_NA_1, M_ME_TD_1: M_ME_NA_1, M_ME_TE_1: M_ME_NB_1,
            M_ME_TF_1: M_ME_NC_1, M_IT_TB_1: M_IT_NA_1}

# --- causes of transmission ------------------------------------------------------------------------
COT_PERIODIC, COT_BACKGROUND, COT_SPONT, COT_INIT, COT_REQ = 1, 2, 3, 4, 5
COT_ACT, COT_ACTCON, COT_DEACT, COT_DEACTCON, COT_ACTTERM = 6, 7, 8, 9, 10
COT_RETREM, COT_RETLOC = 11, 12  # return information caused by a remote / local command
COT_INROGEN, COT_REQCOGEN = 20, 37  # station interrogation (groups 1 .. 16: 21 .. 36); general counter request
COT_UNKNOWN_TYPE, COT_UNKNOWN_COT, COT_UNKNOWN_CA, COT_UNKNOWN_IOA = 44, 45, 46, 47
NEGATIVE = 0x40
TEST = 0x80
BROADCAST_CA = 0xFFFF  # global address: only C_IC, C_CI, C_CS and C_RP may use it (IEC 60870-5-101 7.2.4)
BROADCAST_TYPES = frozenset({C_IC_NA_1, C_CI_NA_1, C_CS_NA_1, C_RP_NA_1})

# --- APCI ------------------------------------------------------------------------------------------
STARTDT_ACT, STARTDT_CON, STOPDT_ACT, STOPDT_CON, TESTFR_ACT, TESTFR_CON = 0x07, 0x0B, 0x13, 0x23, 0x43, 0x83
U_CODES = {STARTDT_ACT, STARTDT_CON, STOPDT_ACT, STOPDT_CON, TESTFR_ACT, TESTFR_CON}


@dataclass(frozen=True, slots=True)
class Frame:
    """One APDU: kind 'I' (ns, nr, asdu), 'S' (nr) or 'U' (code)."""

    kind: str
    ns: int = 0
    nr: int = 0
    code: int = 0
    asdu: bytes = b""


def i_frame(ns: int, nr: int, asdu: bytes) -> bytes:
    if len(asdu) > MAX_ASDU:
        raise ValueError(f"ASDU of {len(asdu)} octets exceeds {MAX_ASDU}")
    return struct.pack("<BBHH", START, len(asdu) + 4, (ns << 1) & 0xFFFF, (nr << 1) & 0xFFFF) + asdu


def s_frame(nr: int) -> bytes:
    return struct.pack("<BBBBH", START, 4, 0x01, 0x00, (nr << 1) & 0xFFFF)


def u_frame(code: int) -> bytes:
    return bytes((START, 4, code, 0, 0, 0))


class FrameReader:
    """Incremental APDU parser: feed bytes as they arrive, get complete frames; ProtocolError on a
    frame that cannot be valid (wrong start octet, length, control field)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        buf = self._buf
        while len(buf) >= 2:
            if buf[0] != START:
                raise ProtocolError(f"start octet 0x{buf[0]:02x}, expected 0x68")
            n = buf[1]
            if n < 4 or n > MAX_APDU:
                raise ProtocolError(f"APDU length {n} outside 4..{MAX_APDU}")
            if len(buf) < n + 2:
                break
            out.append(parse_apdu(bytes(buf[2:n + 2])))
            del buf[:n + 2]
        return out


def parse_apdu(body: bytes) -> Frame:
    """Control field (4 octets) + ASDU, without start and length."""
    c1 = body[0]
    if c1 & 0x01 == 0:
        if len(body) < 4 + HEADER:
            raise ProtocolError(f"I frame with an ASDU of {len(body) - 4} octets")
        ns, nr = struct.unpack_from("<HH", body, 0)
        if nr & 1:
            raise ProtocolError("I frame receive sequence number with bit 0 set")
        return Frame("I", ns=ns >> 1, nr=nr >> 1, asdu=body[4:])
    if len(body) != 4:
        raise ProtocolError(f"{'S' if c1 & 0x03 == 0x01 else 'U'} frame of length {len(body)}")
    if c1 & 0x03 == 0x01:
        (nr,) = struct.unpack_from("<H", body, 2)
        if c1 != 0x01 or body[1] != 0 or nr & 1:
            raise ProtocolError("malformed S frame control field")
        return Frame("S", nr=nr >> 1)
    if c1 not in U_CODES or body[1] or body[2] or body[3]:
        raise ProtocolError(f"unknown U frame control field {body.hex()}")
    return Frame("U", code=c1)


def seq_diff(a: int, b: int) -> int:
    """a - b modulo 2^15 (sequence numbers wrap at 32768)."""
    return (a - b) & 0x7FFF


# --- CP56Time2a ------------------------------------------------------------------------------------


def cp56(ts_ms: int, invalid: bool = False) -> bytes:
    """CP56Time2a of an epoch time in ms (UTC; the SU bit is never set)."""
    secs, ms = divmod(int(ts_ms), 1000)
    t = time.gmtime(secs)
    return struct.pack("<HBBBBB", t.tm_sec * 1000 + ms, t.tm_min | (0x80 if invalid else 0), t.tm_hour,
                       t.tm_mday | ((t.tm_wday + 1) << 5), t.tm_mon, t.tm_year % 100)


def cp56_ms(b: bytes) -> int:
    """Epoch ms of a CP56Time2a (UTC, years 2000..2099; the IV, SU and day-of-week bits are not read);
    ValueError for a field out of its range (milliseconds 0..59999, minutes 0..59, hours 0..23, a day
    the month does not have, month 1..12, year 0..99)."""
    ms, minute, hour, day, month, year = struct.unpack("<HBBBBB", b[:7])
    minute, hour, day, month, year = minute & 0x3F, hour & 0x1F, day & 0x1F, month & 0x0F, year & 0x7F
    if ms > 59999 or minute > 59 or year > 99:
        raise ValueError(f"CP56Time2a field out of range: {bytes(b[:7]).hex()}")
    datetime.datetime(2000 + year, month, day, hour, minute)  # ValueError: no such date or hour
    return calendar.timegm((2000 + year, month, day, hour, minute, 0)) * 1000 + ms


# --- ASDU ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Asdu:
    type_id: int
    cot: int  # cause (6 bits) with P/N and T bits as on the wire
    oa: int
    ca: int
    sq: bool
    objects: tuple[tuple[int, bytes], ...]  # (ioa, element octets)
    raw: bytes = field(default=b"", compare=False, repr=False)  # as received (parse_asdu): what `mirror` sends back

    @property
    def cause(self) -> int:
        return self.cot & 0x3F

    @property
    def negative(self) -> bool:
        return bool(self.cot & NEGATIVE)


def header(type_id: int, n: int, cot: int, ca: int, oa: int = 0, sq: bool = False) -> bytes:
    return struct.pack("<BBBBH", type_id, n | (0x80 if sq else 0), cot, oa, ca)


def ioa(addr: int) -> bytes:
    return struct.pack("<I", addr)[:3]


def element_size(type_id: int) -> int | None:
    """Octets of one information element (without IOA) of a type this module understands."""
    sizes = {**_ELEM, C_SC_NA_1: 1, C_DC_NA_1: 1, C_SE_NA_1: 3, C_SE_NB_1: 3, C_SE_NC_1: 5, C_IC_NA_1: 1,
             C_CI_NA_1: 1, C_RD_NA_1: 0, C_CS_NA_1: 7, C_RP_NA_1: 1, C_TS_TA_1: 2 + 7, M_EI_NA_1: 1,
             M_ME_ND_1: 2}
    base = _BASE_OF.get(type_id) or COMMAND_BASE.get(type_id) or type_id
    size = sizes.get(base)
    if size is None:
        return None
    return size + (7 if type_id in TIME_TAGGED else 0)


def parse_asdu(b: bytes) -> Asdu:
    """Split an ASDU into its objects. A type this server does not know keeps its raw body as one object
    (ioa of the first object, rest of the octets) so the caller can answer 'unknown type'."""
    if len(b) < HEADER:
        raise ProtocolError(f"ASDU of {len(b)} octets")
    type_id, vsq, cot, oa, ca = struct.unpack_from("<BBBBH", b, 0)
    n, sq = vsq & 0x7F, bool(vsq & 0x80)
    body = b[HEADER:]
    size = element_size(type_id)
    if size is None:
        if len(body) < IOA_LEN:
            raise ProtocolError(f"ASDU type {type_id} without an object")
        return Asdu(type_id, cot, oa, ca, sq, ((int.from_bytes(body[:3], "little"), body[3:]),), bytes(b))
    if n == 0:
        raise ProtocolError("ASDU with zero objects")
    want = IOA_LEN + n * size if sq else n * (IOA_LEN + size)
    if len(body) != want:
        raise ProtocolError(f"ASDU type {type_id} with {n} objects: {len(body)} octets, expected {want}")
    objs = []
    if sq:
        base = int.from_bytes(body[:3], "little")
        for i in range(n):
            objs.append((base + i, body[3 + i * size:3 + (i + 1) * size]))
    else:
        step = IOA_LEN + size
        for i in range(n):
            o = i * step
            objs.append((int.from_bytes(body[o:o + 3], "little"), body[o + 3:o + step]))
    return Asdu(type_id, cot, oa, ca, sq, tuple(objs), bytes(b))


def build_asdu(type_id: int, cot: int, ca: int, objects: Iterable[tuple[int, bytes]], oa: int = 0) -> bytes:
    objs = list(objects)
    return header(type_id, len(objs), cot, ca, oa) + b"".join(ioa(a) + e for a, e in objs)


def interrogation(ca: int, qoi: int = 20, cause: int = COT_ACT) -> bytes:
    """C_IC_NA_1: QOI 20 station interrogation, 21 .. 36 group 1 .. 16."""
    return build_asdu(C_IC_NA_1, cause, ca, [(0, bytes((qoi,)))])


def counter_interrogation(ca: int, qcc: int = 5, cause: int = COT_ACT) -> bytes:
    """C_CI_NA_1: QCC request 1 .. 4 group, 5 general (freeze bits 6..7 zero: read)."""
    return build_asdu(C_CI_NA_1, cause, ca, [(0, bytes((qcc,)))])


def clock_sync(ca: int, ts_ms: int, cause: int = COT_ACT) -> bytes:
    """C_CS_NA_1 carrying `ts_ms` as CP56Time2a."""
    return build_asdu(C_CS_NA_1, cause, ca, [(0, cp56(ts_ms))])


def mirror(a: Asdu, cause: int, negative: bool = False) -> bytes:
    """The answer to a command: the same ASDU with another cause (and the P/N bit) and `a.ca`. A received
    ASDU (`raw`) is mirrored octet for octet, its variable structure qualifier included: rebuilt from its
    objects, one with sequential addressing (SQ = 1) would carry an IOA per object and could exceed
    MAX_ASDU (a C_RD_NA_1 with SQ = 1 and 127 objects: 9 octets received, 387 to send)."""
    cot = cause | (NEGATIVE if negative else 0) | (a.cot & TEST)
    if a.raw:
        return a.raw[:2] + struct.pack("<BBH", cot, a.oa, a.ca) + a.raw[HEADER:]
    return build_asdu(a.type_id, cot, a.ca, a.objects, a.oa)


# --- monitoring elements ---------------------------------------------------------------------------
_Q_STATUS = 0xF0  # BL SB NT IV: the quality bits of SIQ/DIQ
_Q_MEAS = 0xF1  # plus OV for QDS
NVA_MAX = 1.0 - 2.0 ** -15


def base_type(type_id: int) -> int:
    return _BASE_OF.get(type_id, type_id)


_TAGGED_OF = {base: tagged for tagged, base in _BASE_OF.items()}


def tagged_type(type_id: int) -> int:
    """The time-tagged (CP56Time2a) form of a monitoring type (itself if it is one already)."""
    return _TAGGED_OF.get(type_id, type_id)


def element(type_id: int, value: float, quality: int, ts_ms: int) -> bytes:
    """Information element of a monitoring type from an engineering value (COEF already applied) and
    fepha quality bits (which use the IEC layout). Values outside the type's range are clamped with OV
    (measured values) or wrapped into 32 bits (counters, as counters do); a measured value that is not a
    number is also invalid (IV), never a good NaN. Counters carry IV only: BCR's CY and CA bits are not
    NT and SB, and its sequence number stays 0."""
    base = base_type(type_id)
    if base in (M_ME_NA_1, M_ME_NB_1, M_ME_NC_1) and math.isnan(float(value)):
        quality |= 0x80
    if base == M_SP_NA_1:
        out = bytes(((1 if value else 0) | (quality & _Q_STATUS),))
    elif base == M_DP_NA_1:
        out = bytes(((2 if value else 1) | (quality & _Q_STATUS),))
    elif base == M_ME_NA_1:
        q = quality & _Q_MEAS
        v = float(value)
        if not math.isfinite(v) or v < -1.0 or v > NVA_MAX:
            q |= 0x01
            v = 0.0 if math.isnan(v) else max(-1.0, min(NVA_MAX, v))
        out = struct.pack("<hB", round(v * 32768) if v < NVA_MAX else 32767, q)
    elif base == M_ME_NB_1:
        q = quality & _Q_MEAS
        v = float(value)
        if not math.isfinite(v):
            q, iv = q | 0x01, 0
        else:
            iv = round(v)
            if iv < -32768 or iv > 32767:
                q, iv = q | 0x01, max(-32768, min(32767, iv))
        out = struct.pack("<hB", iv, q)
    elif base == M_ME_NC_1:
        q = quality & _Q_MEAS
        v = float(value)
        if math.isfinite(v) and abs(v) > 3.4028234663852886e38:
            q |= 0x01
            v = math.copysign(3.4028234663852886e38, v)
        out = struct.pack("<fB", v, q)
    elif base == M_IT_NA_1:
        v = float(value)
        counter = round(v) if math.isfinite(v) else 0
        counter = (counter + 2**31) % 2**32 - 2**31
        out = struct.pack("<iB", counter, 0x80 if quality & 0x80 else 0)
    else:
        raise ValueError(f"not a monitoring type: {type_id}")
    if type_id in TIME_TAGGED:
        out += cp56(ts_ms)
    return out


def decode_element(type_id: int, e: bytes) -> tuple[float, int, int | None]:
    """(value, quality, ts_ms or None) of a monitoring element: the inverse of `element` (tests, bench), and
    M_ME_ND_1 (a normalised value without quality: quality 0). The quality is only the descriptor's quality
    bits (SIQ, DIQ: BL SB NT IV; QDS: and OV; BCR: IV), never its reserved bits."""
    if type_id == M_ME_ND_1:
        return struct.unpack_from("<h", e)[0] / 32768, 0, None
    base = base_type(type_id)
    ts = cp56_ms(e[-7:]) if type_id in TIME_TAGGED else None
    if base == M_SP_NA_1:
        return float(e[0] & 1), e[0] & _Q_STATUS, ts
    if base == M_DP_NA_1:
        return float(e[0] & 3), e[0] & _Q_STATUS, ts
    if base == M_ME_NA_1:
        v, q = struct.unpack_from("<hB", e)
        return v / 32768, q & _Q_MEAS, ts
    if base == M_ME_NB_1:
        v, q = struct.unpack_from("<hB", e)
        return float(v), q & _Q_MEAS, ts
    if base == M_ME_NC_1:
        fv, q = struct.unpack_from("<fB", e)
        return fv, q & _Q_MEAS, ts
    if base == M_IT_NA_1:
        v, q = struct.unpack_from("<iB", e)
        return float(v), q & 0x80, ts
    raise ValueError(f"not a monitoring type: {type_id}")


def per_asdu(type_id: int) -> int:
    """How many objects of a type fit in one ASDU (non-sequential addressing)."""
    size = element_size(type_id)
    assert size is not None
    return min(127, (MAX_ASDU - HEADER) // (IOA_LEN + size))


def pack(type_id: int, cot: int, ca: int, objects: list[tuple[int, bytes]], oa: int = 0) -> Iterator[bytes]:
    """ASDUs carrying `objects` of one type, as many per ASDU as fit, in order."""
    n = per_asdu(type_id)
    for i in range(0, len(objects), n):
        yield build_asdu(type_id, cot, ca, objects[i:i + n], oa)


def answer_type(type_id: int, cause: int) -> int:
    """The type a monitored point is sent as with `cause`: the IEC 60870-5-101 table of causes per type
    allows the CP56Time2a forms (M_xx_Tx_1) with spontaneous (3), requested (5) and counter interrogation
    causes (37 .. 41) only, so background scan (2) and interrogated data (20 .. 36) go without time tag."""
    if cause == COT_BACKGROUND or COT_INROGEN <= cause <= COT_INROGEN + 16:
        return base_type(type_id)
    return type_id


# --- command elements ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded command object: `value` is what the master asked for (before COEF), `select` the S/E
    bit, `ts_ms` the time tag of the _TA_ forms."""

    value: float
    select: bool
    qualifier: int
    ts_ms: int | None


def decode_command(type_id: int, e: bytes) -> Command:
    """Raises ValueError for a value the type does not allow (DCS 0 or 3), and for a time tag that is not
    a possible date or that the master marked invalid (IV): such a command's age cannot be checked."""
    base = COMMAND_BASE[type_id]
    ts = None
    if type_id in TIME_TAGGED:
        if e[-5] & 0x80:
            raise ValueError("time tag marked invalid (IV) by the master")
        ts = cp56_ms(e[-7:])
    if base == C_SC_NA_1:
        return Command(float(e[0] & 1), bool(e[0] & 0x80), (e[0] >> 2) & 0x1F, ts)
    if base == C_DC_NA_1:
        dcs = e[0] & 3
        if dcs in (0, 3):
            raise ValueError(f"double command state {dcs} is not allowed")
        return Command(1.0 if dcs == 2 else 0.0, bool(e[0] & 0x80), (e[0] >> 2) & 0x1F, ts)
    if base == C_SE_NA_1:
        v, qos = struct.unpack_from("<hB", e)
        return Command(v / 32768, bool(qos & 0x80), qos & 0x7F, ts)
    if base == C_SE_NB_1:
        v, qos = struct.unpack_from("<hB", e)
        return Command(float(v), bool(qos & 0x80), qos & 0x7F, ts)
    fv, qos = struct.unpack_from("<fB", e)
    if not math.isfinite(fv):
        raise ValueError("set-point is not a finite number")
    return Command(fv, bool(qos & 0x80), qos & 0x7F, ts)


def encode_command(type_id: int, value: float, select: bool = False, ts_ms: int | None = None) -> bytes:
    """A command element (tests and tools; the server only decodes commands)."""
    base = COMMAND_BASE[type_id]
    se = 0x80 if select else 0
    if base == C_SC_NA_1:
        out = bytes(((1 if value else 0) | se,))
    elif base == C_DC_NA_1:
        out = bytes(((2 if value else 1) | se,))
    elif base == C_SE_NA_1:
        out = struct.pack("<hB", max(-32768, min(32767, round(value * 32768))), se)
    elif base == C_SE_NB_1:
        out = struct.pack("<hB", int(value), se)
    else:
        out = struct.pack("<fB", value, se)
    if type_id in TIME_TAGGED:
        out += cp56(ts_ms or 0)
    return out
