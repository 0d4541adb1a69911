"""The configuration model: SEMODEL.db's tables as typed, immutable objects.

Rows reach the model the same way from SQLite (`sysload`) and from Redis (every service), as
``{table: [row dict, ...]}``; `Model.from_rows` is the one place that turns them into objects. It assumes
rows that passed `fepha.semodel.validate`; defaults for NULL columns are applied here and only here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

from fepha import datatypes
from fepha.checks import ip_address

Row = dict[str, Any]
Rows = Mapping[str, Sequence[Row]]

SCHEMA_SQL = resources.files("fepha.semodel").joinpath("schema.sql").read_text()

ACQUISITION = 0
FORWARDING = 2
RTUTYPES = (ACQUISITION, FORWARDING)
MODBUS_TCP, IEC104 = "modbus_tcp", "iec104"
ACQ_PROTOCOLS = (MODBUS_TCP, IEC104)
FWD_PROTOCOLS = ("se104s", "modbus_trains", "sefeps")
KINDS = ("AI", "DI", "ACC", "DO", "AO")
POLLED_KINDS = ("AI", "DI", "ACC")
# Poll period of a Modbus acquisition RTU, ms: T004_RTU.POLLMS and fep-ha.cfg's default [timers] poll_ms.
POLL_MS_RANGE = (10, 3_600_000)
# Modbus TCP requests outstanding at most per connection of an acquisition RTU: T004_RTU.INFLIGHT.
INFLIGHT_RANGE = (1, 16)

# Primary-key columns of each table; their values joined by ":" form the row key in Redis and reports.
KEYS: dict[str, tuple[str, ...]] = {
    "T004_RTU": ("RTUID",),
    "T010_CHANNEL": ("RTUID", "CHANNO"),
    "T011_POINT": ("PNTID",),
    "T036_VTPNT": ("VPID",),
    "T020_UNION": ("ID",),
    "T005_ZFAI": ("ZFID",),
    "T006_ZFDI": ("ZFID",),
    "T007_ZFACC": ("ZFID",),
    "T008_ZFDO": ("ZFID",),
    "T009_ZFAO": ("ZFID",),
}
TABLES: tuple[str, ...] = tuple(KEYS)

# Forwarding tables: the point kinds their sources may have ("VP" is a virtual point).
FWD_TABLES: dict[str, tuple[str, ...]] = {
    "T005_ZFAI": ("AI",),
    "T006_ZFDI": ("DI", "VP"),
    "T007_ZFACC": ("ACC",),
    "T008_ZFDO": ("DO",),
    "T009_ZFAO": ("AO",),
}
FWD_KIND: dict[str, str] = {"T005_ZFAI": "AI", "T006_ZFDI": "DI", "T007_ZFACC": "ACC", "T008_ZFDO": "DO",
                            "T009_ZFAO": "AO"}


_DIGITS = re.compile(r"-?[0-9]+")  # ASCII: int() also reads Arabic-Indic digits


def int_value(v: Any) -> int | None:
    """The integer an integer column's cell holds: an integer, a real with no fraction (2.0) or text of ASCII
    digits ('5', which a table written with other DDL keeps as text); None for anything else."""
    if type(v) is int:
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and _DIGITS.fullmatch(v.strip()):
        return int(v)
    return None


def row_key(table: str, row: Mapping[str, Any]) -> str:
    """The row's key in Redis and in reports: its key columns joined by ":", each integer written as one
    (a table written with other DDL may hold the id 2 as 2.0 or '02': one key, not three, so that a second
    row with it is reported as a duplicate instead of silently replacing the first in Redis)."""
    parts = []
    for c in KEYS[table]:
        v = row.get(c)
        i = int_value(v)
        parts.append(str(v) if i is None else str(i))
    return ":".join(parts)


@dataclass(frozen=True, slots=True)
class Channel:
    rtu: int
    no: int
    host: str
    port: int
    unit: int


@dataclass(frozen=True, slots=True)
class Point:
    id: int
    rtu: int
    kind: str
    name: str
    area: str
    address: int
    datatype: str
    byteorder: str = "big"
    wordorder: str = "big"
    bit: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    deadband: float = 0.0
    ctlmode: str = "direct"  # iec104 DO/AO: "direct" or "sbo" (select before operate)

    @property
    def span(self) -> int:
        return datatypes.span(self.datatype, self.area)


@dataclass(frozen=True, slots=True)
class VirtualPoint:
    id: int
    rtu: int
    name: str


@dataclass(frozen=True, slots=True)
class FwdPoint:
    id: int
    table: str
    kind: str  # AI, DI, ACC, DO, AO: the kind of the forwarding table
    rtu: int  # forwarding RTU
    src: int  # source point id (T011_POINT or T036_VTPNT)
    addr: int
    type: str | None
    coef: float = 1.0


@dataclass(frozen=True, slots=True)
class Rtu:
    id: int
    name: str
    rtutype: int
    protocol: str
    poll_ms: int | None = None
    timeout_ms: int = 1000
    listen_port: int | None = None
    address: int = 1
    allow: tuple[str, ...] = ()
    inflight: int = 1  # Modbus TCP requests outstanding at most on a connection (T004_RTU.INFLIGHT)
    channels: tuple[Channel, ...] = ()
    points: tuple[Point, ...] = ()
    vpoints: tuple[VirtualPoint, ...] = ()
    forwards: tuple[FwdPoint, ...] = ()

    @property
    def acquisition(self) -> bool:
        return self.rtutype == ACQUISITION

    @property
    def iec104(self) -> bool:
        """An acquisition RTU the acquirer reaches as an IEC 60870-5-104 master (docs/acquirer.md)."""
        return self.rtutype == ACQUISITION and self.protocol == IEC104

    def signature(self) -> str:
        """A stable text of everything that configures this RTU: equal signatures need no restart."""
        return json.dumps(_plain(self), sort_keys=True, default=str)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _plain(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    return obj


def _f(v: Any, default: float) -> float:
    return default if v is None else float(v)


@dataclass(frozen=True)
class Model:
    """A whole configuration. `gen` is the Redis generation it was read at (0 when read from SQLite)."""

    rtus: dict[int, Rtu]
    ip1: str
    ip2: str
    gen: int = 0
    rows: dict[str, list[Row]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_rows(cls, rows: Rows, gen: int = 0) -> Model:
        channels: dict[int, list[Channel]] = {}
        for r in rows.get("T010_CHANNEL", ()):
            ch = Channel(int(r["RTUID"]), int(r["CHANNO"]), str(r["HOST"]), int(r["PORT"]),
                         1 if r["UNITID"] is None else int(r["UNITID"]))  # NULL: 1, the Modbus default
            channels.setdefault(ch.rtu, []).append(ch)
        points: dict[int, list[Point]] = {}
        for r in rows.get("T011_POINT", ()):
            p = Point(
                id=int(r["PNTID"]), rtu=int(r["RTUID"]), kind=str(r["KIND"]), name=str(r["NAME"] or ""),
                area=str(r["AREA"] or ""), address=int(r["ADDRESS"]), datatype=str(r["DATATYPE"]),
                byteorder=r.get("BYTEORDER") or "big", wordorder=r.get("WORDORDER") or "big",
                bit=None if r.get("BITINDEX") is None else int(r["BITINDEX"]),
                scale=_f(r.get("SCALE"), 1.0), offset=_f(r.get("OFFSET"), 0.0),
                deadband=_f(r.get("DEADBAND"), 0.0), ctlmode=r.get("CTLMODE") or "direct",
            )
            points.setdefault(p.rtu, []).append(p)
        vpoints: dict[int, list[VirtualPoint]] = {}
        for r in rows.get("T036_VTPNT", ()):
            vp = VirtualPoint(int(r["VPID"]), int(r["RTUID"]), str(r["NAME"] or ""))
            vpoints.setdefault(vp.rtu, []).append(vp)
        forwards: dict[int, list[FwdPoint]] = {}
        for table in FWD_TABLES:
            for r in rows.get(table, ()):
                fp = FwdPoint(int(r["ZFID"]), table, FWD_KIND[table], int(r["RTUID"]), int(r["SRCID"]),
                              int(r["ADDR"]), r.get("TYPE"), _f(r.get("COEF"), 1.0))
                forwards.setdefault(fp.rtu, []).append(fp)
        rtus: dict[int, Rtu] = {}
        for r in rows.get("T004_RTU", ()):
            rid = int(r["RTUID"])
            rtype = int(r["RTUTYPE"])
            allow = tuple(a.strip() for a in (r.get("ALLOW") or "").split(",") if a.strip())
            rtus[rid] = Rtu(
                id=rid, name=str(r["NAME"] or ""), rtutype=rtype,
                protocol=r.get("PROTOCOL") or ("modbus_tcp" if rtype == ACQUISITION else ""),
                poll_ms=None if r.get("POLLMS") is None else int(r["POLLMS"]),
                # iec104: NULL stays 0, i.e. [iec104] t1_s of fep-ha.cfg (the node's setting, not the model's)
                timeout_ms=int(r.get("TIMEOUTMS") or (0 if r.get("PROTOCOL") == IEC104 else 1000)),
                listen_port=None if r.get("LISTENPORT") is None else int(r["LISTENPORT"]),
                address=1 if r.get("ADDRESS") is None else int(r["ADDRESS"]),
                allow=allow,
                inflight=1 if r.get("INFLIGHT") is None else int(r["INFLIGHT"]),
                channels=tuple(sorted(channels.get(rid, ()), key=lambda c: c.no)),
                points=tuple(sorted(points.get(rid, ()), key=lambda p: p.id)),
                vpoints=tuple(sorted(vpoints.get(rid, ()), key=lambda v: v.id)),
                forwards=tuple(sorted(forwards.get(rid, ()), key=lambda f: (f.table, f.addr))),
            )
        union = list(rows.get("T020_UNION", ()))
        ip1 = str(union[0]["IP1"]) if union else ""
        ip2 = str(union[0]["IP2"]) if union else ""
        return cls(rtus=rtus, ip1=ip1, ip2=ip2, gen=gen, rows={t: list(v) for t, v in rows.items()})

    def acquisition_rtus(self) -> list[Rtu]:
        return [r for r in self.rtus.values() if r.rtutype == ACQUISITION]

    def modbus_rtus(self) -> list[Rtu]:
        """Acquisition RTUs polled over Modbus TCP (what fep-plcsim serves)."""
        return [r for r in self.acquisition_rtus() if r.protocol == MODBUS_TCP]

    def forwarding_rtus(self) -> list[Rtu]:
        return [r for r in self.rtus.values() if r.rtutype == FORWARDING]

    @cached_property
    def points(self) -> dict[int, Point]:
        return {p.id: p for r in self.rtus.values() for p in r.points}

    @cached_property
    def vpoints(self) -> dict[int, VirtualPoint]:
        return {v.id: v for r in self.rtus.values() for v in r.vpoints}

    def node_of_ip(self, ip: str) -> str | None:
        """Node id (A/B) of an address in T020_UNION, None when it is neither; compared as addresses, since
        fep-ha.cfg and SEMODEL.db may spell one IPv6 address differently (fd00::1, fd00:0::1)."""
        addr = ip_address(ip)
        for node, listed in (("A", self.ip1), ("B", self.ip2)):
            if listed == ip or (addr is not None and ip_address(listed) == addr):
                return node
        return None

    def identity_problem(self, node_id: str, ip: str) -> str | None:
        """Why fep-ha.cfg's `[node] id`/`ip` disagree with T020_UNION (IP1 is node A, IP2 node B), None when
        they agree. The letter decides which link state (`vala`/`valb`) a node writes and whose leases it
        holds: two nodes configured with the same letter would both act as that node."""
        listed = self.node_of_ip(ip)
        if listed is None:
            return f"[node] ip {ip} is neither T020_UNION IP1 ({self.ip1}) nor IP2 ({self.ip2})"
        if listed != node_id:
            return (f"[node] id is {node_id} but ip {ip} is T020_UNION {'IP1' if listed == 'A' else 'IP2'}, "
                    f"i.e. node {listed}: check fep-ha.cfg on both nodes")
        return None
