"""Validation of a configuration: every rule, every problem at once, each naming table, row and column.

The rules are plain functions of the rows, so `sysload check`, `sysload init` and the tests share them.
Nothing here rewrites a bad value into a good one: a value is either accepted as written or reported.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fepha import datatypes
from fepha.checks import ip_address, shown, valid_host, valid_ip
from fepha.semodel.model import (
    ACQ_PROTOCOLS,
    ACQUISITION,
    FORWARDING,
    FWD_KIND,
    FWD_PROTOCOLS,
    FWD_TABLES,
    IEC104,
    INFLIGHT_RANGE,
    KEYS,
    KINDS,
    POLL_MS_RANGE,
    RTUTYPES,
    Row,
    int_value,
    row_key,
)


class NotUtf8(bytes):
    """A TEXT value whose bytes are not UTF-8, as `db.read_rows` hands it over so that it is reported at its
    row and column like a BLOB, instead of ending the read of its table (SQLite stores any bytes as TEXT)."""


def _cut(key: str) -> str:
    """A row key as reports show it: a key that is a long text is cut like a value (`shown`), one holding a
    line break or another character that is not printable is quoted with it escaped (each problem is one
    line, and an ESC in a key would rewrite the terminal showing it)."""
    if not key.isprintable():
        key = repr(key)
    return key if len(key) <= 40 else f"{key[:40]}..."


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    table: str
    key: str
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.table} [{self.key}] {self.column}: {self.message}"


# IEC 60870-5-104 type names allowed per forwarding table (se104s).
IEC104_TYPES: dict[str, tuple[str, ...]] = {
    "T005_ZFAI": ("M_ME_NA_1", "M_ME_NB_1", "M_ME_NC_1", "M_ME_TD_1", "M_ME_TE_1", "M_ME_TF_1"),
    "T006_ZFDI": ("M_SP_NA_1", "M_SP_TB_1", "M_DP_NA_1", "M_DP_TB_1"),
    "T007_ZFACC": ("M_IT_NA_1", "M_IT_TB_1"),
    "T008_ZFDO": ("C_SC_NA_1", "C_DC_NA_1", "C_SC_TA_1", "C_DC_TA_1"),
    "T009_ZFAO": ("C_SE_NA_1", "C_SE_NB_1", "C_SE_NC_1", "C_SE_TA_1", "C_SE_TB_1", "C_SE_TC_1"),
}
NUMERIC_TYPES = tuple(n for n in datatypes.DATATYPES if n != "bool")
# iec104 acquisition points: the ASDU types a point of each kind may be configured with (the same as se104s
# forwards for that kind; a point accepts the time-tagged and the untagged form of its type alike).
IEC104_KIND_TYPES: dict[str, tuple[str, ...]] = {kind: IEC104_TYPES[t] for t, kind in FWD_KIND.items()}
IEC104_CTLMODES = ("direct", "sbo")
IOA_MAX = 16_777_215
# RTUID, PNTID, VPID, ZFID: positive, and at most the largest integer a JavaScript number (the dashboard's,
# the api's JSON read by browsers) holds exactly; a larger id would be shown, and asked for, as another one
ID_MAX = 2**53 - 1
# in a NAME: an ESC rewrites the terminal showing a log line, a NUL cuts it; the C1 controls too (U+0085, NEL, is a
# line break to Python's str.splitlines and other log readers; U+009B is CSI, an ESC [ to a terminal reading C1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# NAME (RTU, point, virtual point): at most this many characters (Unicode code points, so a name in Chinese
# or Cyrillic gets as many as one in ASCII). No protocol carries a name; the dashboard's tables, the RTU
# selector and log lines show it whole, and a SCADA tag name or description fits in 64 (a 10,000-character
# name made every row of the dashboard a page long).
NAME_MAX = 64
# modbus_trains: the area of each forwarding table and the data types it may hold.
MODBUS_TRAINS_AREA: dict[str, str] = {
    "T005_ZFAI": "ir", "T006_ZFDI": "di", "T007_ZFACC": "ir", "T008_ZFDO": "co", "T009_ZFAO": "hr",
}
MODBUS_TRAINS_TYPES: dict[str, tuple[str, ...]] = {
    "T005_ZFAI": NUMERIC_TYPES, "T006_ZFDI": ("bool",), "T007_ZFACC": NUMERIC_TYPES,
    "T008_ZFDO": ("bool",), "T009_ZFAO": NUMERIC_TYPES,
}
# Acquisition point kinds: the areas they may be read from / written to.
KIND_AREAS: dict[str, tuple[str, ...]] = {
    "AI": datatypes.REGISTER_AREAS, "ACC": datatypes.REGISTER_AREAS, "DI": datatypes.AREAS,
    "DO": datatypes.WRITABLE_AREAS, "AO": ("hr",),
}


_int = int_value


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v) if isinstance(v, (int, float, str)) else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None  # SQLite stores 9e999 as Inf: not a value


class _Checker:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, table: str, row: Mapping[str, Any] | None, column: str, message: str, blob: bool = False) -> None:
        """One problem; a cell holding a BLOB (or text that is not UTF-8) gets that problem only."""
        if not blob and row is not None and isinstance(row.get(column), bytes):
            return
        key = "-" if row is None else row_key(table, row)
        self.problems.append(Problem(table, _cut(key), column, message))

    def int_in(self, table: str, row: Row, column: str, lo: int, hi: int, required: bool = True) -> int | None:
        v = row.get(column)
        if v is None:
            if required:
                self.add(table, row, column, "is not set")
            return None
        i = _int(v)
        if i is None or not lo <= i <= hi:
            self.add(table, row, column, f"{shown(v)} is not an integer in {lo}..{hi}")
            return None
        return i

    def one_of(self, table: str, row: Row, column: str, allowed: Sequence[Any], required: bool = True) -> Any:
        v = row.get(column)
        if v is None:
            if required:
                self.add(table, row, column, f"is not set (one of {', '.join(map(str, allowed))})")
            return None
        if all(type(a) is int for a in allowed):  # an integer column: '2' and 2.0 are 2, as everywhere else
            i = _int(v)
            v = i if i in allowed else v
        if v not in allowed or isinstance(v, bool):
            self.add(table, row, column, f"{shown(v)} is not one of {', '.join(map(str, allowed))}")
            return None
        return v


NO_CHANNEL_1 = "acquisition RTU has no channel 1 in T010_CHANNEL"
NOTHING_POLLED = ("modbus_tcp RTU has no point in T011_POINT: nothing would be read from it, so whether it is "
                  "reached could not be told (its link would stay up once connected)")
NEEDS_RTUS = frozenset({"T010_CHANNEL", "T011_POINT", "T036_VTPNT", *FWD_TABLES})
"""Tables whose rules read their RTU's row (its type, protocol and address ranges): without T004_RTU they
would report problems that are not their own (every row's RTU "is not an RTU of T004_RTU", a point of an
IEC 104 RTU checked as a Modbus one). A forward's SRCID rule reads T011_POINT and T036_VTPNT likewise."""


def validate(rows: Mapping[str, Sequence[Row]], unread: Collection[str] = ()) -> list[Problem]:
    """Every problem of a configuration, sorted by table and row; empty when it may be loaded.

    `unread`: tables that could not be read (missing, or missing a column: `db.read_rows` reports those).
    The tables that were read are still checked, so that one run lists every problem, not one layer of them
    per run; only the rules that need an unread table are left out (`NEEDS_RTUS`, a forward's SRCID, and the
    channel 1 rule of T004_RTU without T010_CHANNEL), so that nothing is reported that is not wrong in its own row."""
    c = _Checker()
    _check_keys_and_blobs(c, rows)
    own = set(c.problems)  # key and BLOB rules read nothing but the row
    _check_union(c, rows.get("T020_UNION", ()))
    rtus = _check_rtus(c, rows.get("T004_RTU", ()))
    iec = {rid for r in rows.get("T004_RTU", ()) if (rid := _int(r.get("RTUID"))) is not None
           and rtus.get(rid) == ACQUISITION and r.get("PROTOCOL") == IEC104}
    _check_channels(c, rows.get("T010_CHANNEL", ()), rtus, iec)
    kinds = _check_points(c, rows.get("T011_POINT", ()), rtus, iec)
    _check_polled(c, rows.get("T011_POINT", ()), rtus, iec)
    _check_vpoints(c, rows.get("T036_VTPNT", ()), rtus, kinds)
    _check_forwards(c, rows, rtus, kinds)
    if not unread:
        return sorted(set(c.problems))
    gone = frozenset(unread)
    return sorted(own | {p for p in c.problems if not _needs_unread(p, gone)})


def _needs_unread(p: Problem, gone: frozenset[str]) -> bool:
    """Whether problem `p` may come from a table that could not be read rather than from its own row."""
    if p.table in gone:  # its rows were not read: only db.read_rows's own problem stands
        return True
    if p.message == NO_CHANNEL_1:
        return "T010_CHANNEL" in gone
    if p.message == NOTHING_POLLED:
        return "T011_POINT" in gone
    if p.table in FWD_TABLES and p.column == "SRCID" and not gone.isdisjoint(("T011_POINT", "T036_VTPNT")):
        return True
    return p.table in NEEDS_RTUS and "T004_RTU" in gone


def _check_keys_and_blobs(c: _Checker, rows: Mapping[str, Sequence[Row]]) -> None:
    """Rules of every table: a key (the primary key of schema.sql) held by one row only, since rows are
    stored in Redis under it and a second row would silently replace the first (a database built with
    other DDL has no PRIMARY KEY to refuse it); a one-column key an integer, since every service reads it
    as one (a NULL ZFID was loaded, and every service then failed reading the configuration); and no BLOB
    value and no text that is not UTF-8, which no column holds and which cannot be stored as JSON."""
    for table, trows in rows.items():
        if table not in KEYS:
            continue
        seen: dict[str, int] = {}
        single = KEYS[table][0] if len(KEYS[table]) == 1 else None
        for row in trows:
            k = row_key(table, row)
            seen[k] = seen.get(k, 0) + 1
            if single is not None and not (type(kv := row.get(single)) is int and 1 <= kv <= ID_MAX):  # fast path
                i = _int(kv)
                if i is None:
                    c.add(table, row, single, f"{shown(kv)} is not an integer")
                elif table != "T020_UNION" and not 1 <= i <= ID_MAX:
                    c.add(table, row, single, f"{i} is not an id in 1..{ID_MAX} (the largest integer the dashboard's "
                          "JavaScript holds exactly)")
            name = row.get("NAME")
            if isinstance(name, str) and not name.isprintable() and _CONTROL.search(name):
                c.add(table, row, "NAME", f"{shown(name)} contains a control character")
            if isinstance(name, str) and len(name) > NAME_MAX:
                c.add(table, row, "NAME", f"{shown(name)} is longer than {NAME_MAX} characters")
            for col, v in row.items():
                if isinstance(v, bytes):  # one test per value in the common case (111,602 rows: 1.5 M values)
                    c.add(table, row, col, f"{shown(bytes(v))} is text that is not UTF-8" if isinstance(v, NotUtf8)
                          else f"{shown(v)} is a BLOB, not text or a number", blob=True)
        for k, n in seen.items():
            if n > 1:
                c.problems.append(Problem(table, _cut(k), ", ".join(KEYS[table]), f"key held by {n} rows"))


def _check_union(c: _Checker, union: Sequence[Row]) -> None:
    t = "T020_UNION"
    if len(union) != 1:
        c.add(t, None, "-", f"must hold exactly one row (the two nodes), holds {len(union)}")
    for row in union:
        for col in ("IP1", "IP2"):
            if row.get(col) is None:
                c.add(t, row, col, "is not set")
            elif not valid_ip(row[col]):
                c.add(t, row, col, f"{shown(row[col])} is not an IP address")
        ip1, ip2 = ip_address(row.get("IP1")), ip_address(row.get("IP2"))
        if row.get("IP1") is not None and (row.get("IP1") == row.get("IP2") or (ip1 is not None and ip1 == ip2)):
            c.add(t, row, "IP2", "must differ from IP1 (the same address)")


def _check_rtus(c: _Checker, rtu_rows: Sequence[Row]) -> dict[int, int | None]:
    """Returns RTUID -> RTUTYPE of the RTUs with an integer id; the type is None where it is invalid (that
    RTU's problem is reported once, here, not again at each channel, point and forward naming it)."""
    t = "T004_RTU"
    rtus: dict[int, int | None] = {}
    ports: dict[int, Row] = {}
    for row in rtu_rows:
        rid = _int(row.get("RTUID"))
        if rid is None:  # reported by _check_keys_and_blobs
            continue
        if not str(row.get("NAME") or "").strip():
            c.add(t, row, "NAME", "is not set")
        rtype = c.one_of(t, row, "RTUTYPE", RTUTYPES)
        rtus[rid] = rtype
        if rtype is None:
            continue
        # a column of the other RTU type would be silently ignored: an operator setting it expects an effect
        unused = ("LISTENPORT", "ADDRESS", "ALLOW") if rtype == ACQUISITION else ("POLLMS", "TIMEOUTMS", "INFLIGHT")
        for col in unused:
            if row.get(col) is not None:
                c.add(t, row, col, "is only for forwarding RTUs (an acquisition RTU's address is in T010_CHANNEL)"
                      if rtype == ACQUISITION else "is only for acquisition RTUs")
        if rtype == ACQUISITION and row.get("PROTOCOL") == IEC104:
            c.int_in(t, row, "POLLMS", 1000, 86_400_000, required=False)  # general interrogation period
            c.int_in(t, row, "TIMEOUTMS", 100, 255_000, required=False)  # t1
            if row.get("INFLIGHT") is not None:  # IEC 104 has its own window: [iec104] k
                c.add(t, row, "INFLIGHT", "is only for modbus_tcp RTUs (IEC 104's window is [iec104] k)")
        elif rtype == ACQUISITION:
            c.one_of(t, row, "PROTOCOL", ACQ_PROTOCOLS, required=False)
            c.int_in(t, row, "POLLMS", *POLL_MS_RANGE, required=False)
            c.int_in(t, row, "TIMEOUTMS", 10, 60_000, required=False)
            c.int_in(t, row, "INFLIGHT", *INFLIGHT_RANGE, required=False)
        else:
            proto = c.one_of(t, row, "PROTOCOL", FWD_PROTOCOLS)
            port = c.int_in(t, row, "LISTENPORT", 1, 65535)
            if port is not None:
                if port in ports:
                    c.add(t, row, "LISTENPORT", f"{port} is also used by RTU {ports[port]['RTUID']}")
                ports[port] = row
            if proto == "sefeps":  # the sefeps protocol has no station address (docs/sefeps.md)
                if row.get("ADDRESS") is not None:
                    c.add(t, row, "ADDRESS", "is not used by sefeps (NULL)")
            else:
                hi = 247 if proto == "modbus_trains" else 65534
                c.int_in(t, row, "ADDRESS", 0 if proto == "modbus_trains" else 1, hi, required=False)
            allow = row.get("ALLOW")
            if allow is not None and not isinstance(allow, str):  # a number where other DDL kept it one
                c.add(t, row, "ALLOW", f"{shown(allow)} is not text (comma-separated addresses or networks)")
            elif isinstance(allow, str) and not allow.replace(",", "").strip():
                c.add(t, row, "ALLOW", f"{shown(allow)} lists no address (NULL allows every client)")
            for net in (allow if isinstance(allow, str) else "").split(","):
                if net.strip():
                    try:
                        ipaddress.ip_network(net.strip(), strict=False)
                    except ValueError:
                        c.add(t, row, "ALLOW", f"{shown(net.strip())} is not an IP address or network")
    return rtus


def _check_rtu_ref(c: _Checker, t: str, row: Row, rtus: dict[int, int | None], rtype: int) -> int | None:
    rid = _int(row.get("RTUID"))
    what = "an acquisition" if rtype == ACQUISITION else "a forwarding"
    if rid is None or rid not in rtus:
        c.add(t, row, "RTUID", f"{shown(row.get('RTUID'))} is not an RTU of T004_RTU")
        return None
    if rtus[rid] is None:  # the RTU's own RTUTYPE is reported
        return None
    if rtus[rid] != rtype:
        c.add(t, row, "RTUID", f"RTU {rid} is not {what} RTU (RTUTYPE {rtype})")
        return None
    return rid


def _check_channels(c: _Checker, chans: Sequence[Row], rtus: dict[int, int | None], iec: set[int]) -> None:
    t = "T010_CHANNEL"
    have: dict[int, set[int]] = {}
    for row in chans:
        rid = _check_rtu_ref(c, t, row, rtus, ACQUISITION)
        no = c.one_of(t, row, "CHANNO", (1, 2))
        if not valid_host(row.get("HOST")):
            c.add(t, row, "HOST", f"{shown(row.get('HOST'))} is not a host name or IP address")
        c.int_in(t, row, "PORT", 1, 65535)
        if rid in iec:  # the common address of ASDU (65535 is the broadcast address, not a station's)
            c.int_in(t, row, "UNITID", 1, 65534, required=False)
        else:
            c.int_in(t, row, "UNITID", 0, 255, required=False)
        if rid is not None and no is not None:
            have.setdefault(rid, set()).add(no)
    for rid, rtype in rtus.items():
        if rtype == ACQUISITION and 1 not in have.get(rid, set()):
            c.add("T004_RTU", {"RTUID": rid}, "RTUID", NO_CHANNEL_1)


def _check_points(c: _Checker, points: Sequence[Row], rtus: dict[int, int | None],
                  iec: set[int]) -> dict[int, str | None]:
    """Returns PNTID -> KIND of the points with an integer id; the kind is None where it is invalid (reported
    here once, not again at each forward of the point)."""
    t = "T011_POINT"
    kinds: dict[int, str | None] = {}
    ioas: dict[tuple[int, bool, int], Row] = {}
    for row in points:
        pid = _int(row.get("PNTID"))  # not an integer: reported by _check_keys_and_blobs
        rid = _check_rtu_ref(c, t, row, rtus, ACQUISITION)
        kind = c.one_of(t, row, "KIND", KINDS)
        if pid is not None:
            kinds[pid] = kind
        if rid in iec:
            _check_iec104_point(c, row, rid, kind, ioas)
            continue
        if row.get("CTLMODE") is not None:
            c.add(t, row, "CTLMODE", "is only for DO/AO points of iec104 RTUs")
        area = c.one_of(t, row, "AREA", datatypes.AREAS)
        dtype = c.one_of(t, row, "DATATYPE", tuple(datatypes.DATATYPES))
        c.one_of(t, row, "BYTEORDER", datatypes.ORDERS, required=False)
        c.one_of(t, row, "WORDORDER", datatypes.ORDERS, required=False)
        addr = c.int_in(t, row, "ADDRESS", 0, 65535)
        if kind and area and area not in KIND_AREAS[kind]:
            c.add(t, row, "AREA", f"{kind} points cannot use area {area} (allowed: {', '.join(KIND_AREAS[kind])})")
        if dtype and area:
            if area not in datatypes.DATATYPES[dtype].areas:
                c.add(t, row, "DATATYPE", f"{dtype} does not fit area {area} (a single bit)")
            elif addr is not None and addr + datatypes.span(dtype, area) - 1 > 65535:
                c.add(t, row, "ADDRESS", f"{dtype} at {addr} runs past address 65535")
        if kind == "DI" and dtype and dtype != "bool":
            c.add(t, row, "DATATYPE", f"DI points are bool, not {dtype}")
        if kind in ("AI", "ACC", "AO") and dtype == "bool":
            c.add(t, row, "DATATYPE", f"{kind} points need a numeric data type, not bool")
        bit_needed = dtype == "bool" and area in datatypes.REGISTER_AREAS
        if bit_needed:
            c.int_in(t, row, "BITINDEX", 0, 15)
        elif row.get("BITINDEX") is not None:
            c.add(t, row, "BITINDEX", "is only for bool points in register areas (hr, ir)")
        _check_scaling(c, row, kind, bit=dtype == "bool")
    return kinds


def _check_polled(c: _Checker, points: Sequence[Row], rtus: dict[int, int | None], iec: set[int]) -> None:
    """A Modbus acquisition RTU is reached when its poll is answered (every point is read, control targets
    too); with no point at all (a virtual point of its link only) a poll sends nothing, so the acquirer found
    it reached at every poll once its connection was open, however long the device had been silent (a cut
    cable is not seen by a TCP connection that sends nothing). An IEC 104 RTU's link has its own test frames
    (t3)."""
    read = {rid for row in points if (rid := _int(row.get("RTUID"))) is not None}
    for rid, rtype in rtus.items():
        if rtype == ACQUISITION and rid not in iec and rid not in read:
            c.add("T004_RTU", {"RTUID": rid}, "RTUID", NOTHING_POLLED)


def _check_scaling(c: _Checker, row: Row, kind: str | None, bit: bool) -> None:
    """SCALE, OFFSET and DEADBAND of a point (the same for every acquisition protocol). A deadband is for AI
    points only: on a DI, counter or control target it would hide changes (a DI with DEADBAND 1 never showed
    a change, 0 -> 1 not being more than 1). A point whose value is a bit (`bit`) is read and written as 0/1,
    unscaled: a SCALE or OFFSET other than 1 and 0 there would be ignored (SCALE -1 does not invert a DI)."""
    t = "T011_POINT"
    scale = _num(row.get("SCALE")) if row.get("SCALE") is not None else 1.0
    offset = _num(row.get("OFFSET")) if row.get("OFFSET") is not None else 0.0
    if scale is None or scale == 0:
        c.add(t, row, "SCALE", f"{shown(row.get('SCALE'))} is not a non-zero number")
    elif bit and scale != 1:
        c.add(t, row, "SCALE", f"{shown(row.get('SCALE'))}: a bit (0/1) is not scaled; NULL or 1 here")
    if offset is None:
        c.add(t, row, "OFFSET", f"{shown(row.get('OFFSET'))} is not a number")
    elif bit and offset != 0:
        c.add(t, row, "OFFSET", f"{shown(row.get('OFFSET'))}: a bit (0/1) is not offset; NULL or 0 here")
    if row.get("DEADBAND") is not None:
        db = _num(row.get("DEADBAND"))
        if db is None or db < 0:
            c.add(t, row, "DEADBAND", f"{shown(row.get('DEADBAND'))} is not a number >= 0")
        elif db and kind is not None and kind != "AI":
            c.add(t, row, "DEADBAND", f"is only for AI points (a deadband on a {kind} point hides its changes)")


def _check_iec104_point(c: _Checker, row: Row, rid: int, kind: str | None,
                        ioas: dict[tuple[int, bool, int], Row]) -> None:
    """A point of an iec104 RTU: IOA in ADDRESS, the ASDU type in DATATYPE, no Modbus columns; monitored
    points and command targets each have their own IOAs per RTU (a device may reuse an IOA across them)."""
    t = "T011_POINT"
    for col in ("AREA", "BYTEORDER", "WORDORDER", "BITINDEX"):
        if row.get(col) is not None:
            c.add(t, row, col, "is a Modbus column, must be NULL for an iec104 RTU")
    addr = c.int_in(t, row, "ADDRESS", 1, IOA_MAX)
    if kind is not None:
        c.one_of(t, row, "DATATYPE", IEC104_KIND_TYPES[kind])
    command = kind in ("DO", "AO")
    if command:
        c.one_of(t, row, "CTLMODE", IEC104_CTLMODES, required=False)
    elif row.get("CTLMODE") is not None:
        c.add(t, row, "CTLMODE", "is only for DO/AO points (command targets)")
    _check_scaling(c, row, kind, bit=kind in ("DI", "DO"))  # single/double points and commands: 0 or 1
    if addr is not None and kind is not None:
        key = (rid, command, addr)
        if key in ioas:
            c.add(t, row, "ADDRESS", f"IOA {addr} of RTU {rid} is already used by PNTID {ioas[key]['PNTID']}")
        else:
            ioas[key] = row


def _check_vpoints(c: _Checker, vps: Sequence[Row], rtus: dict[int, int | None],
                   kinds: dict[int, str | None]) -> None:
    t = "T036_VTPNT"
    for row in vps:
        vid = _int(row.get("VPID"))
        if vid is not None and vid in kinds:  # not an integer: reported by _check_keys_and_blobs
            c.add(t, row, "VPID", f"{vid} is also a PNTID of T011_POINT (point ids are shared)")
        elif vid is not None:
            kinds[vid] = "VP"
        _check_rtu_ref(c, t, row, rtus, ACQUISITION)


def _check_forwards(c: _Checker, rows: Mapping[str, Sequence[Row]], rtus: dict[int, int | None],
                    kinds: dict[int, str | None]) -> None:
    protocols = {int(r["RTUID"]): r.get("PROTOCOL") for r in rows.get("T004_RTU", ())
                 if _int(r.get("RTUID")) is not None}
    used: dict[tuple[int, str], list[tuple[int, int, str, Row]]] = {}
    for table, src_kinds in FWD_TABLES.items():
        for row in rows.get(table, ()):
            rid = _check_rtu_ref(c, table, row, rtus, FORWARDING)
            src = _int(row.get("SRCID"))
            if src is None or src not in kinds:
                c.add(table, row, "SRCID", f"{shown(row.get('SRCID'))} is not a point of T011_POINT or T036_VTPNT")
            elif kinds[src] is not None and kinds[src] not in src_kinds:  # None: the point's KIND is reported
                c.add(table, row, "SRCID", f"point {src} is {kinds[src]}, {table} forwards {'/'.join(src_kinds)}")
            proto = protocols.get(rid) if rid is not None else None
            # IOA 0 is reserved in IEC 60870-5-104 (station-wide objects such as interrogation use it)
            addr = c.int_in(table, row, "ADDR", 1 if proto == "se104s" else 0,
                            16_777_215 if proto == "se104s" else 65535)
            if row.get("COEF") is not None and not _num(row.get("COEF")):
                c.add(table, row, "COEF", f"{shown(row.get('COEF'))} is not a non-zero number")
            elif table in ("T006_ZFDI", "T008_ZFDO") and row.get("COEF") is not None and _num(row.get("COEF")) != 1:
                # a DI / DO is forwarded as a bit, unscaled: COEF -1 would not invert it
                c.add(table, row, "COEF", f"{shown(row.get('COEF'))}: a bit (0/1) is not scaled; NULL or 1 here")
            dtype = _check_fwd_type(c, table, row, proto)
            if rid is None or addr is None or proto is None:
                continue
            if proto == "modbus_trains":
                area = MODBUS_TRAINS_AREA[table]
                width = datatypes.span(dtype, area) if dtype else 1
                if addr + width - 1 > 65535:
                    c.add(table, row, "ADDR", f"{dtype} at {addr} runs past address 65535")
                used.setdefault((rid, area), []).append((addr, addr + width - 1, table, row))
            else:
                used.setdefault((rid, "all"), []).append((addr, addr, table, row))
    for (rid, space), spans in used.items():
        spans.sort(key=lambda s: (s[0], s[2], row_key(s[2], s[3])))
        # each span against the one reaching furthest of those before it, not only its neighbour: an int32 at
        # 0 (0..1), an int16 at 0 and an int16 at 1 overlap twice, and both are reported in one run
        hi1, t1 = -1, ""
        r1: Row = {}
        for lo2, hi2, t2, r2 in spans:
            if lo2 <= hi1:
                where = f" in area {space}" if space != "all" else ""
                c.add(t2, r2, "ADDR", f"address {lo2} of forwarding RTU {rid}{where} is already used by "
                      f"{t1} [{_cut(row_key(t1, r1))}]")
            if hi2 > hi1:
                hi1, t1, r1 = hi2, t2, r2


def _check_fwd_type(c: _Checker, table: str, row: Row, proto: str | None) -> str | None:
    v = row.get("TYPE")
    if proto == "se104s":
        c.one_of(table, row, "TYPE", IEC104_TYPES[table])
        return None
    if proto == "modbus_trains":
        return c.one_of(table, row, "TYPE", MODBUS_TRAINS_TYPES[table])
    if proto == "sefeps" and v is not None:
        c.add(table, row, "TYPE", "must be empty for sefeps")
    return None


def problems_of(rows: Mapping[str, Sequence[Row]], extra: Iterable[Problem] = ()) -> list[Problem]:
    return sorted(set(list(extra) + validate(rows)))
