"""Every validation rule, each with a broken copy of the sample configuration (table tests, no network)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fepha.checks import shown
from fepha.semodel import db
from fepha.semodel.validate import validate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("semodel") / "SEMODEL.db"
    db.build(REPO / "cfg" / "SEMODEL.sql", path)
    rows, problems = db.read_rows(path)
    assert problems == []
    return rows


def row(rows: dict, table: str, **match: Any) -> dict:
    for r in rows[table]:
        if all(r[k] == v for k, v in match.items()):
            return r
    raise KeyError((table, match))


def setv(table: str, match: dict, column: str, value: Any) -> Callable[[dict], None]:
    def mutate(rows: dict) -> None:
        row(rows, table, **match)[column] = value
    return mutate


def add(table: str, new: dict) -> Callable[[dict], None]:
    def mutate(rows: dict) -> None:
        rows[table].append(new)
    return mutate


def drop(table: str, match: dict) -> Callable[[dict], None]:
    def mutate(rows: dict) -> None:
        rows[table].remove(row(rows, table, **match))
    return mutate


ZF = {"ZFID": 99, "RTUID": 10, "SRCID": 101, "ADDR": 7777, "TYPE": "M_ME_NC_1", "COEF": None}

CASES: list[tuple[str, Callable[[dict], None], tuple[str, str, str] | None]] = [
    ("union ip1 invalid", setv("T020_UNION", {"ID": 1}, "IP1", "300.1.1.1"), ("T020_UNION", "1", "IP1")),
    ("union ip2 missing", setv("T020_UNION", {"ID": 1}, "IP2", None), ("T020_UNION", "1", "IP2")),
    ("union ips equal", setv("T020_UNION", {"ID": 1}, "IP2", "127.0.0.1"), ("T020_UNION", "1", "IP2")),
    ("union two rows", add("T020_UNION", {"ID": 2, "IP1": "10.0.0.1", "IP2": "10.0.0.2"}), ("T020_UNION", "-", "-")),
    ("rtutype missing", setv("T004_RTU", {"RTUID": 2}, "RTUTYPE", None), ("T004_RTU", "2", "RTUTYPE")),
    ("rtutype 1", setv("T004_RTU", {"RTUID": 2}, "RTUTYPE", 1), ("T004_RTU", "2", "RTUTYPE")),
    ("rtu name missing", setv("T004_RTU", {"RTUID": 2}, "NAME", ""), ("T004_RTU", "2", "NAME")),
    ("fwd protocol unknown", setv("T004_RTU", {"RTUID": 12}, "PROTOCOL", "iec61850"), ("T004_RTU", "12", "PROTOCOL")),
    ("fwd protocol missing", setv("T004_RTU", {"RTUID": 10}, "PROTOCOL", None), ("T004_RTU", "10", "PROTOCOL")),
    ("acq protocol wrong", setv("T004_RTU", {"RTUID": 1}, "PROTOCOL", "se104s"), ("T004_RTU", "1", "PROTOCOL")),
    ("poll period zero", setv("T004_RTU", {"RTUID": 1}, "POLLMS", 0), ("T004_RTU", "1", "POLLMS")),
    ("listen port missing", setv("T004_RTU", {"RTUID": 11}, "LISTENPORT", None), ("T004_RTU", "11", "LISTENPORT")),
    ("listen port twice", setv("T004_RTU", {"RTUID": 11}, "LISTENPORT", 2404), ("T004_RTU", "11", "LISTENPORT")),
    ("modbus unit id 300", setv("T004_RTU", {"RTUID": 11}, "ADDRESS", 300), ("T004_RTU", "11", "ADDRESS")),
    ("allow not a network", setv("T004_RTU", {"RTUID": 11}, "ALLOW", "10.0.0.0/8, nonsense"), ("T004_RTU", "11", "ALLOW")),
    ("channel bad host", setv("T010_CHANNEL", {"RTUID": 1, "CHANNO": 2}, "HOST", "bad host!"), ("T010_CHANNEL", "1:2", "HOST")),
    ("channel bad port", setv("T010_CHANNEL", {"RTUID": 1, "CHANNO": 1}, "PORT", 70000), ("T010_CHANNEL", "1:1", "PORT")),
    ("channel number 3", setv("T010_CHANNEL", {"RTUID": 2, "CHANNO": 2}, "CHANNO", 3), ("T010_CHANNEL", "2:3", "CHANNO")),
    ("channel of fwd rtu", add("T010_CHANNEL", {"RTUID": 10, "CHANNO": 1, "HOST": "h", "PORT": 1, "UNITID": 1}), ("T010_CHANNEL", "10:1", "RTUID")),
    ("acq rtu without channel 1", drop("T010_CHANNEL", {"RTUID": 2, "CHANNO": 1}), ("T004_RTU", "2", "RTUID")),
    ("point of unknown rtu", setv("T011_POINT", {"PNTID": 102}, "RTUID", 77), ("T011_POINT", "102", "RTUID")),
    ("point of fwd rtu", setv("T011_POINT", {"PNTID": 102}, "RTUID", 10), ("T011_POINT", "102", "RTUID")),
    ("point kind unknown", setv("T011_POINT", {"PNTID": 102}, "KIND", "XX"), ("T011_POINT", "102", "KIND")),
    ("float32 in coils", setv("T011_POINT", {"PNTID": 101}, "AREA", "co"), ("T011_POINT", "101", "AREA")),
    ("float32 in discrete inputs of a DI", setv("T011_POINT", {"PNTID": 105}, "DATATYPE", "float32"), ("T011_POINT", "105", "DATATYPE")),
    ("datatype unknown", setv("T011_POINT", {"PNTID": 103}, "DATATYPE", "int64"), ("T011_POINT", "103", "DATATYPE")),
    ("bool AI", setv("T011_POINT", {"PNTID": 102}, "DATATYPE", "bool"), ("T011_POINT", "102", "DATATYPE")),
    ("byte order", setv("T011_POINT", {"PNTID": 101}, "BYTEORDER", "middle"), ("T011_POINT", "101", "BYTEORDER")),
    ("word order", setv("T011_POINT", {"PNTID": 101}, "WORDORDER", "x"), ("T011_POINT", "101", "WORDORDER")),
    ("bit index missing", setv("T011_POINT", {"PNTID": 107}, "BITINDEX", None), ("T011_POINT", "107", "BITINDEX")),
    ("bit index 16", setv("T011_POINT", {"PNTID": 107}, "BITINDEX", 16), ("T011_POINT", "107", "BITINDEX")),
    ("bit index on coil", setv("T011_POINT", {"PNTID": 105}, "BITINDEX", 2), ("T011_POINT", "105", "BITINDEX")),
    ("address past end", setv("T011_POINT", {"PNTID": 101}, "ADDRESS", 65535), ("T011_POINT", "101", "ADDRESS")),
    ("address negative", setv("T011_POINT", {"PNTID": 102}, "ADDRESS", -1), ("T011_POINT", "102", "ADDRESS")),
    ("scale zero", setv("T011_POINT", {"PNTID": 102}, "SCALE", 0), ("T011_POINT", "102", "SCALE")),
    ("offset text", setv("T011_POINT", {"PNTID": 102}, "OFFSET", "abc"), ("T011_POINT", "102", "OFFSET")),
    ("deadband negative", setv("T011_POINT", {"PNTID": 102}, "DEADBAND", -1), ("T011_POINT", "102", "DEADBAND")),
    ("AO in input registers", setv("T011_POINT", {"PNTID": 110}, "AREA", "ir"), ("T011_POINT", "110", "AREA")),
    ("vpoint unknown rtu", setv("T036_VTPNT", {"VPID": 901}, "RTUID", 55), ("T036_VTPNT", "901", "RTUID")),
    ("vpoint of fwd rtu", setv("T036_VTPNT", {"VPID": 901}, "RTUID", 10), ("T036_VTPNT", "901", "RTUID")),
    ("vpoint id clashes with point", setv("T036_VTPNT", {"VPID": 902}, "VPID", 101), ("T036_VTPNT", "101", "VPID")),
    ("fwd point unknown source", add("T005_ZFAI", {**ZF, "SRCID": 4242}), ("T005_ZFAI", "99", "SRCID")),
    ("fwd AI from a DI", add("T005_ZFAI", {**ZF, "SRCID": 105}), ("T005_ZFAI", "99", "SRCID")),
    ("fwd DI from an AI", add("T006_ZFDI", {**ZF, "SRCID": 101, "TYPE": "M_SP_NA_1"}), ("T006_ZFDI", "99", "SRCID")),
    ("fwd DO from a DI", add("T008_ZFDO", {**ZF, "SRCID": 105, "TYPE": "C_SC_NA_1"}), ("T008_ZFDO", "99", "SRCID")),
    ("fwd to acq rtu", add("T005_ZFAI", {**ZF, "RTUID": 1}), ("T005_ZFAI", "99", "RTUID")),
    ("fwd 104 address twice", add("T005_ZFAI", {**ZF, "ADDR": 1001}), ("T005_ZFAI", "99", "ADDR")),
    ("fwd 104 address twice across tables", add("T006_ZFDI", {**ZF, "SRCID": 106, "ADDR": 1001, "TYPE": "M_SP_NA_1"}), ("T006_ZFDI", "99", "ADDR")),
    ("fwd 104 wrong type for table", add("T005_ZFAI", {**ZF, "TYPE": "M_SP_NA_1"}), ("T005_ZFAI", "99", "TYPE")),
    ("fwd 104 IOA too large", add("T005_ZFAI", {**ZF, "ADDR": 2**24}), ("T005_ZFAI", "99", "ADDR")),
    ("fwd modbus overlap of float32", add("T005_ZFAI", {**ZF, "RTUID": 11, "ADDR": 1, "TYPE": "int16"}), ("T005_ZFAI", "99", "ADDR")),
    ("fwd modbus overlap AI/ACC input registers", add("T007_ZFACC", {**ZF, "RTUID": 11, "SRCID": 108, "ADDR": 3, "TYPE": "uint16"}), ("T007_ZFACC", "99", "ADDR")),
    ("fwd modbus type unknown", add("T005_ZFAI", {**ZF, "RTUID": 11, "ADDR": 40, "TYPE": "M_ME_NC_1"}), ("T005_ZFAI", "99", "TYPE")),
    ("fwd modbus bool for AI", add("T005_ZFAI", {**ZF, "RTUID": 11, "ADDR": 40, "TYPE": "bool"}), ("T005_ZFAI", "99", "TYPE")),
    ("fwd sefeps index twice", add("T006_ZFDI", {**ZF, "RTUID": 12, "SRCID": 106, "ADDR": 10, "TYPE": None}), ("T006_ZFDI", "99", "ADDR")),
    ("fwd sefeps with type", add("T006_ZFDI", {**ZF, "RTUID": 12, "SRCID": 106, "ADDR": 50, "TYPE": "bool"}), ("T006_ZFDI", "99", "TYPE")),
    ("fwd coef zero", add("T005_ZFAI", {**ZF, "COEF": 0}), ("T005_ZFAI", "99", "COEF")),
    # IEC 104 acquisition RTU (RTU 3 of the sample)
    ("acq protocol iec104 typo", setv("T004_RTU", {"RTUID": 3}, "PROTOCOL", "iec-104"), ("T004_RTU", "3", "PROTOCOL")),
    ("iec104 GI period too short", setv("T004_RTU", {"RTUID": 3}, "POLLMS", 10), ("T004_RTU", "3", "POLLMS")),
    ("iec104 t1 too long", setv("T004_RTU", {"RTUID": 3}, "TIMEOUTMS", 300_000), ("T004_RTU", "3", "TIMEOUTMS")),
    ("iec104 rtu with listen port", setv("T004_RTU", {"RTUID": 3}, "LISTENPORT", 2404), ("T004_RTU", "3", "LISTENPORT")),
    ("iec104 common address 0", setv("T010_CHANNEL", {"RTUID": 3, "CHANNO": 1}, "UNITID", 0), ("T010_CHANNEL", "3:1", "UNITID")),
    ("iec104 common address broadcast", setv("T010_CHANNEL", {"RTUID": 3, "CHANNO": 2}, "UNITID", 65535), ("T010_CHANNEL", "3:2", "UNITID")),
    ("iec104 common address 300 is fine", setv("T010_CHANNEL", {"RTUID": 3, "CHANNO": 2}, "UNITID", 300), None),
    ("iec104 point with an area", setv("T011_POINT", {"PNTID": 301}, "AREA", "di"), ("T011_POINT", "301", "AREA")),
    ("iec104 point with a bit index", setv("T011_POINT", {"PNTID": 301}, "BITINDEX", 1), ("T011_POINT", "301", "BITINDEX")),
    ("iec104 IOA 0", setv("T011_POINT", {"PNTID": 303}, "ADDRESS", 0), ("T011_POINT", "303", "ADDRESS")),
    ("iec104 IOA too large", setv("T011_POINT", {"PNTID": 303}, "ADDRESS", 2**24), ("T011_POINT", "303", "ADDRESS")),
    ("iec104 IOA 2^24-1 is fine", setv("T011_POINT", {"PNTID": 303}, "ADDRESS", 2**24 - 1), None),
    ("iec104 IOA twice", setv("T011_POINT", {"PNTID": 304}, "ADDRESS", 200), ("T011_POINT", "304", "ADDRESS")),
    ("iec104 command IOA may equal a monitored IOA", setv("T011_POINT", {"PNTID": 306}, "ADDRESS", 100), None),
    ("iec104 command IOA twice", setv("T011_POINT", {"PNTID": 307}, "ADDRESS", 1000), ("T011_POINT", "307", "ADDRESS")),
    ("iec104 modbus data type", setv("T011_POINT", {"PNTID": 303}, "DATATYPE", "float32"), ("T011_POINT", "303", "DATATYPE")),
    ("iec104 DI with a measured type", setv("T011_POINT", {"PNTID": 301}, "DATATYPE", "M_ME_NC_1"), ("T011_POINT", "301", "DATATYPE")),
    ("iec104 DO with a set-point type", setv("T011_POINT", {"PNTID": 306}, "DATATYPE", "C_SE_NC_1"), ("T011_POINT", "306", "DATATYPE")),
    ("iec104 ctlmode unknown", setv("T011_POINT", {"PNTID": 306}, "CTLMODE", "select"), ("T011_POINT", "306", "CTLMODE")),
    ("iec104 ctlmode on a DI", setv("T011_POINT", {"PNTID": 301}, "CTLMODE", "sbo"), ("T011_POINT", "301", "CTLMODE")),
    ("ctlmode on a modbus point", setv("T011_POINT", {"PNTID": 109}, "CTLMODE", "sbo"), ("T011_POINT", "109", "CTLMODE")),
    ("iec104 scale zero", setv("T011_POINT", {"PNTID": 304}, "SCALE", 0), ("T011_POINT", "304", "SCALE")),
    ("modbus point with an IEC type", setv("T011_POINT", {"PNTID": 101}, "DATATYPE", "M_ME_NC_1"), ("T011_POINT", "101", "DATATYPE")),
    ("fwd 104 IOA 0 is reserved", add("T005_ZFAI", {**ZF, "ADDR": 0}), ("T005_ZFAI", "99", "ADDR")),
    # broken configurations an independent checker tries (cfgaudit)
    ("fwd ZFID NULL", add("T005_ZFAI", {**ZF, "ZFID": None}), ("T005_ZFAI", "None", "ZFID")),
    ("fwd ZFID text", add("T009_ZFAO", {**ZF, "ZFID": "x", "SRCID": 110, "ADDR": 6100, "TYPE": "C_SE_NB_1"}),
     ("T009_ZFAO", "x", "ZFID")),
    ("union ID NULL", setv("T020_UNION", {"ID": 1}, "ID", None), ("T020_UNION", "None", "ID")),
    ("fwd modbus float32 past 65535", add("T005_ZFAI", {**ZF, "RTUID": 11, "ADDR": 65535, "TYPE": "float32"}),
     ("T005_ZFAI", "99", "ADDR")),
    ("fwd modbus uint16 at 65535 is fine", add("T005_ZFAI", {**ZF, "RTUID": 11, "ADDR": 65535, "TYPE": "uint16"}), None),
    ("channel host all-numeric 1.2.3", setv("T010_CHANNEL", {"RTUID": 1, "CHANNO": 1}, "HOST", "1.2.3"),
     ("T010_CHANNEL", "1:1", "HOST")),
    ("channel host 999.1.1.1", setv("T010_CHANNEL", {"RTUID": 1, "CHANNO": 1}, "HOST", "999.1.1.1"),
     ("T010_CHANNEL", "1:1", "HOST")),
    ("channel host 12345", setv("T010_CHANNEL", {"RTUID": 1, "CHANNO": 1}, "HOST", "12345"), ("T010_CHANNEL", "1:1", "HOST")),
    ("channel host name with digits is fine", setv("T010_CHANNEL", {"RTUID": 1, "CHANNO": 1}, "HOST", "plc-7.site2"), None),
    ("union one address in two notations", lambda rows: row(rows, "T020_UNION", ID=1).update(IP1="::1", IP2="0:0::1"),
     ("T020_UNION", "1", "IP2")),
    ("modbus rtu with a listen port", setv("T004_RTU", {"RTUID": 1}, "LISTENPORT", 2405), ("T004_RTU", "1", "LISTENPORT")),
    ("modbus rtu with an address", setv("T004_RTU", {"RTUID": 1}, "ADDRESS", 99999), ("T004_RTU", "1", "ADDRESS")),
    ("modbus rtu with allow", setv("T004_RTU", {"RTUID": 2}, "ALLOW", "garbage"), ("T004_RTU", "2", "ALLOW")),
    ("fwd rtu with a poll period", setv("T004_RTU", {"RTUID": 10}, "POLLMS", -5), ("T004_RTU", "10", "POLLMS")),
    ("fwd rtu with a timeout", setv("T004_RTU", {"RTUID": 11}, "TIMEOUTMS", 0), ("T004_RTU", "11", "TIMEOUTMS")),
    # T004_RTU.INFLIGHT: Modbus TCP requests outstanding, 1 ... 16, modbus_tcp acquisition RTUs only
    ("inflight 0", setv("T004_RTU", {"RTUID": 1}, "INFLIGHT", 0), ("T004_RTU", "1", "INFLIGHT")),
    ("inflight 17", setv("T004_RTU", {"RTUID": 1}, "INFLIGHT", 17), ("T004_RTU", "1", "INFLIGHT")),
    ("inflight not a number", setv("T004_RTU", {"RTUID": 1}, "INFLIGHT", "4x"), ("T004_RTU", "1", "INFLIGHT")),
    ("inflight 2.5", setv("T004_RTU", {"RTUID": 1}, "INFLIGHT", 2.5), ("T004_RTU", "1", "INFLIGHT")),
    ("inflight 16 is fine", setv("T004_RTU", {"RTUID": 1}, "INFLIGHT", 16), None),
    ("inflight 1 is fine", setv("T004_RTU", {"RTUID": 2}, "INFLIGHT", 1), None),
    ("inflight on an iec104 rtu", setv("T004_RTU", {"RTUID": 3}, "INFLIGHT", 4), ("T004_RTU", "3", "INFLIGHT")),
    ("inflight on a fwd rtu", setv("T004_RTU", {"RTUID": 11}, "INFLIGHT", 1), ("T004_RTU", "11", "INFLIGHT")),
    ("deadband on a DI", setv("T011_POINT", {"PNTID": 105}, "DEADBAND", 1), ("T011_POINT", "105", "DEADBAND")),
    ("deadband on an ACC", setv("T011_POINT", {"PNTID": 108}, "DEADBAND", 10), ("T011_POINT", "108", "DEADBAND")),
    ("deadband on an iec104 DI", setv("T011_POINT", {"PNTID": 301}, "DEADBAND", 1), ("T011_POINT", "301", "DEADBAND")),
    ("deadband 0 on a DO is fine", setv("T011_POINT", {"PNTID": 109}, "DEADBAND", 0), None),
    ("rtu name blank", setv("T004_RTU", {"RTUID": 2}, "NAME", "   "), ("T004_RTU", "2", "NAME")),
    ("point id 0", setv("T011_POINT", {"PNTID": 104}, "PNTID", 0), ("T011_POINT", "0", "PNTID")),
    ("point id negative", setv("T011_POINT", {"PNTID": 104}, "PNTID", -104), ("T011_POINT", "-104", "PNTID")),
    ("point id 2^53", setv("T011_POINT", {"PNTID": 104}, "PNTID", 2**53), ("T011_POINT", str(2**53), "PNTID")),
    ("point id 2^53-1 is fine", setv("T011_POINT", {"PNTID": 104}, "PNTID", 2**53 - 1), None),
    ("rtu id 2^63-1", add("T004_RTU", {"RTUID": 2**63 - 1, "NAME": "x", "RTUTYPE": 2, "PROTOCOL": "sefeps",
                                       "LISTENPORT": 7071}), ("T004_RTU", str(2**63 - 1), "RTUID")),
    ("fwd id negative", add("T006_ZFDI", {**ZF, "ZFID": -1, "RTUID": 12, "SRCID": 106, "ADDR": 50, "TYPE": None}),
     ("T006_ZFDI", "-1", "ZFID")),
    ("union id 0 is fine", setv("T020_UNION", {"ID": 1}, "ID", 0), None),
    ("allow blank: would allow every client", setv("T004_RTU", {"RTUID": 10}, "ALLOW", " , "), ("T004_RTU", "10", "ALLOW")),
    ("allow a number (other DDL): was a traceback", setv("T004_RTU", {"RTUID": 10}, "ALLOW", 5), ("T004_RTU", "10", "ALLOW")),
    ("address in Arabic-Indic digits", setv("T011_POINT", {"PNTID": 102}, "ADDRESS", "\u0665"), ("T011_POINT", "102", "ADDRESS")),
    ("scale on a modbus DI: ignored for a bit", setv("T011_POINT", {"PNTID": 105}, "SCALE", -1), ("T011_POINT", "105", "SCALE")),
    ("offset on a coil DO: ignored for a bit", setv("T011_POINT", {"PNTID": 109}, "OFFSET", 1), ("T011_POINT", "109", "OFFSET")),
    ("scale on a bit of a register", setv("T011_POINT", {"PNTID": 107}, "SCALE", 2), ("T011_POINT", "107", "SCALE")),
    ("scale on an iec104 DI", setv("T011_POINT", {"PNTID": 302}, "SCALE", 2), ("T011_POINT", "302", "SCALE")),
    ("offset on an iec104 DO", setv("T011_POINT", {"PNTID": 306}, "OFFSET", 1), ("T011_POINT", "306", "OFFSET")),
    ("scale 1 and offset 0 on a DI are fine", lambda rows: row(rows, "T011_POINT", PNTID=105).update(SCALE=1, OFFSET=0), None),
    ("scale on an AO is fine", setv("T011_POINT", {"PNTID": 110}, "SCALE", 0.1), None),
    ("coef on a forwarded DI: a bit is not scaled", setv("T006_ZFDI", {"ZFID": 2}, "COEF", -1), ("T006_ZFDI", "2", "COEF")),
    ("coef on a forwarded DO", setv("T008_ZFDO", {"ZFID": 11}, "COEF", 2), ("T008_ZFDO", "11", "COEF")),
    ("coef 1 on a forwarded DI is fine", setv("T006_ZFDI", {"ZFID": 2}, "COEF", 1), None),
    ("coef on a forwarded counter is fine", setv("T007_ZFACC", {"ZFID": 1}, "COEF", 0.001), None),
    ("sefeps with an address: unused", setv("T004_RTU", {"RTUID": 12}, "ADDRESS", 5), ("T004_RTU", "12", "ADDRESS")),
    ("allow with an empty entry is fine", setv("T004_RTU", {"RTUID": 10}, "ALLOW", "10.0.0.1,,10.0.0.2"), None),
    ("rtu name with an escape", setv("T004_RTU", {"RTUID": 1}, "NAME", "a\x1b[31mred"), ("T004_RTU", "1", "NAME")),
    ("point name with a NUL", setv("T011_POINT", {"PNTID": 101}, "NAME", "a\x00b"), ("T011_POINT", "101", "NAME")),
    ("vpoint name with a newline", setv("T036_VTPNT", {"VPID": 901}, "NAME", "a\nb"), ("T036_VTPNT", "901", "NAME")),
    # cfgfuzz: the C1 controls passed: NEL (U+0085) breaks the line for str.splitlines, CSI (U+009B) is ESC [
    ("point name with a NEL", setv("T011_POINT", {"PNTID": 101}, "NAME", "a\x85b"), ("T011_POINT", "101", "NAME")),
    ("rtu name with a CSI", setv("T004_RTU", {"RTUID": 1}, "NAME", "a\x9b31mred"), ("T004_RTU", "1", "NAME")),
    ("names with U+00A0 and accents are fine", setv("T004_RTU", {"RTUID": 1}, "NAME", "Poste\xa0Nord é"), None),
    ("unicode names are fine", setv("T004_RTU", {"RTUID": 1}, "NAME", "Подстанция 北 ⚡"), None),
    ("rtu name of 64 characters", setv("T004_RTU", {"RTUID": 1}, "NAME", "北" * 64), None),
    ("rtu name of 65 characters", setv("T004_RTU", {"RTUID": 1}, "NAME", "x" * 65), ("T004_RTU", "1", "NAME")),
    ("point name of 65 characters", setv("T011_POINT", {"PNTID": 101}, "NAME", "é" * 65),
     ("T011_POINT", "101", "NAME")),
    ("vpoint name of 65 characters", setv("T036_VTPNT", {"VPID": 901}, "NAME", "v" * 65),
     ("T036_VTPNT", "901", "NAME")),
]


def test_sample_is_valid(sample_rows: dict) -> None:
    assert validate(sample_rows) == []


@pytest.mark.parametrize("name,mutate,where", CASES, ids=[c[0] for c in CASES])
def test_rule(sample_rows: dict, name: str, mutate: Callable[[dict], None], where: tuple[str, str, str] | None) -> None:
    rows = copy.deepcopy(sample_rows)
    mutate(rows)
    found = [(p.table, p.key, p.column) for p in validate(rows)]
    if where is None:  # a boundary that is allowed
        assert found == [], f"{name}: expected no problem, got {found}"
        return
    assert where in found, f"{name}: expected a problem at {where}, got {found}"


def test_every_problem_listed_at_once(sample_rows: dict) -> None:
    """Twelve broken cells (none touching another's) are all reported by one validation."""
    chosen = [CASES[i] for i in (0, 1, 4, 7, 10, 11, 15, 20, 23, 30, 38, 41)]
    rows = copy.deepcopy(sample_rows)
    for _, mutate, _ in chosen:
        mutate(rows)
    found = {(p.table, p.key, p.column) for p in validate(rows)}
    assert {w for _, _, w in chosen} <= found


def test_every_iec104_problem_listed_at_once(sample_rows: dict) -> None:
    """Broken cells of the IEC 104 RTU, its channels and points, all reported by one validation."""
    chosen = [c for c in CASES if c[0] in ("iec104 GI period too short", "iec104 common address 0",
                                           "iec104 point with an area", "iec104 IOA too large",
                                           "iec104 DO with a set-point type", "iec104 ctlmode on a DI")]
    rows = copy.deepcopy(sample_rows)
    for _, mutate, _ in chosen:
        mutate(rows)
    found = {(p.table, p.key, p.column) for p in validate(rows)}
    assert len(chosen) == 6 and {w for _, _, w in chosen} <= found


def test_unitid_null_is_modbus_default_1(sample_rows: dict) -> None:
    """docs/semodel.md: T010_CHANNEL.UNITID NULL means unit 1; an explicit 0 stays 0."""
    from fepha.semodel.model import Model

    rows = copy.deepcopy(sample_rows)
    ch = rows["T010_CHANNEL"]
    ch[0]["UNITID"], ch[1]["UNITID"] = None, 0
    units = {(c.rtu, c.no): c.unit for cs in Model.from_rows(rows).rtus.values() for c in cs.channels}
    assert units[(ch[0]["RTUID"], ch[0]["CHANNO"])] == 1
    assert units[(ch[1]["RTUID"], ch[1]["CHANNO"])] == 0


def test_inflight_null_is_one_request_in_flight(sample_rows: dict) -> None:
    """docs/semodel.md: T004_RTU.INFLIGHT NULL means 1; a value is the RTU's, and changes its signature
    (the acquirer restarts that RTU's connection with the new setting)."""
    from fepha.semodel.model import Model

    rows = copy.deepcopy(sample_rows)
    row(rows, "T004_RTU", RTUID=2)["INFLIGHT"] = 4
    rtus = Model.from_rows(rows).rtus
    assert rtus[1].inflight == 1 and rtus[2].inflight == 4
    assert rtus[2].signature() != Model.from_rows(sample_rows).rtus[2].signature()


@pytest.mark.parametrize("mutate,expect", [
    (setv("T004_RTU", {"RTUID": 1}, "RTUTYPE", 1), ["T004_RTU [1] RTUTYPE: 1 is not one of 0, 2"]),
    (setv("T011_POINT", {"PNTID": 101}, "KIND", None), ["T011_POINT [101] KIND: is not set (one of AI, DI, ACC, DO, AO)"]),
    (setv("T004_RTU", {"RTUID": 10}, "PROTOCOL", "iec61850"),
     ["T004_RTU [10] PROTOCOL: 'iec61850' is not one of se104s, modbus_trains, sefeps"]),
], ids=["rtu type", "point kind", "forwarding protocol"])
def test_one_broken_cell_is_one_problem(sample_rows: dict, mutate: Callable[[dict], None], expect: list[str]) -> None:
    """A broken RTU or point is reported once, at its own cell: its channels, points and forwards, which
    name it correctly, are not each reported as pointing at nothing (14 lines for one RTUTYPE hid it)."""
    rows = copy.deepcopy(sample_rows)
    mutate(rows)
    assert [str(p) for p in validate(rows)] == expect


def _spans_in_one_area(rows: dict) -> None:
    """modbus_trains RTU 11's input registers: float32 at 0 (0..1, ZFID 11), then an int16 at 0 and one at 1."""
    rows["T005_ZFAI"] += [{**ZF, "ZFID": 13, "RTUID": 11, "SRCID": 201, "ADDR": 0, "TYPE": "int16"},
                          {**ZF, "ZFID": 14, "RTUID": 11, "SRCID": 202, "ADDR": 1, "TYPE": "int16"}]


def _new_rtu(protocol: str, point: bool) -> Callable[[dict], None]:
    """A new acquisition RTU 4 with a virtual point of its link and, with `point`, a control target (a siren's
    coil)."""
    def mutate(rows: dict) -> None:
        rows["T004_RTU"].append({"RTUID": 4, "NAME": "Siren", "RTUTYPE": 0, "PROTOCOL": protocol})
        rows["T010_CHANNEL"].append({"RTUID": 4, "CHANNO": 1, "HOST": "127.0.0.4", "PORT": 502, "UNITID": 1})
        rows["T036_VTPNT"].append({"VPID": 904, "RTUID": 4, "NAME": "Siren link"})
        if point:
            rows["T011_POINT"].append({"PNTID": 401, "RTUID": 4, "KIND": "DO", "NAME": "siren", "ADDRESS": 1,
                                       "AREA": "co", "DATATYPE": "bool"})
    return mutate


@pytest.mark.parametrize("mutate,expect", [
    # a table written with other DDL keeps 1 as '01' or 1.0: one key, a second row with it silently replaced
    # the first in Redis (an RTU was lost without a word)
    (add("T004_RTU", {"RTUID": "01", "NAME": "again", "RTUTYPE": 0, "PROTOCOL": "modbus_tcp"}),
     ["T004_RTU [1] RTUID: key held by 2 rows"]),
    (add("T010_CHANNEL", {"RTUID": 1.0, "CHANNO": 1.0, "HOST": "127.0.0.9", "PORT": 502, "UNITID": 1}),
     ["T010_CHANNEL [1:1] RTUID, CHANNO: key held by 2 rows"]),
    # an integer column holds text of digits where other DDL kept it so: CHANNO '2' was "'2' is not one of 1, 2"
    (lambda rows: (row(rows, "T010_CHANNEL", RTUID=1, CHANNO=2).update(CHANNO="2"),
                   row(rows, "T004_RTU", RTUID=12).update(RTUTYPE="2")), []),
    (setv("T004_RTU", {"RTUID": 12}, "RTUTYPE", "1"), ["T004_RTU [12] RTUTYPE: '1' is not one of 0, 2"]),
    # '$' matched before a final line break
    (setv("T010_CHANNEL", {"RTUID": 1, "CHANNO": 1}, "HOST", "plc1\n"),
     ["T010_CHANNEL [1:1] HOST: 'plc1\\n' is not a host name or IP address"]),
    # a key with a line break is quoted: one problem, one line
    (setv("T005_ZFAI", {"ZFID": 21}, "ZFID", "x\ny"), ["T005_ZFAI ['x\\ny'] ZFID: 'x\\ny' is not an integer"]),
    # the int16 at 1 overlaps the float32 at 0, not its neighbour the int16 at 0: it went unreported
    (_spans_in_one_area,
     ["T005_ZFAI [13] ADDR: address 0 of forwarding RTU 11 in area ir is already used by T005_ZFAI [11]",
      "T005_ZFAI [14] ADDR: address 1 of forwarding RTU 11 in area ir is already used by T005_ZFAI [11]"]),
    # a poll of a device with nothing to read sends nothing: it was found reached at every poll once connected
    (_new_rtu("modbus_tcp", point=False),
     ["T004_RTU [4] RTUID: modbus_tcp RTU has no point in T011_POINT: nothing would be read from it, so whether "
      "it is reached could not be told (its link would stay up once connected)"]),
    (_new_rtu("modbus_tcp", point=True), []),  # a control target is read too
    (_new_rtu("iec104", point=False), []),  # its link has test frames of its own
], ids=["rtu id spelt 01", "channel key spelt 1.0", "CHANNO and RTUTYPE as text", "RTUTYPE '1'", "host with a final line break", "key with a line break",
        "overlap past the neighbour", "modbus rtu without a point", "modbus rtu with one control target",
        "iec104 rtu without a point"])
def test_fuzz_findings(sample_rows: dict, mutate: Callable[[dict], None], expect: list[str]) -> None:
    """What tools/fuzz's seeded SEMODEL mutations found: each was accepted, or its problem not a line of its own."""
    rows = copy.deepcopy(sample_rows)
    mutate(rows)
    assert [str(p) for p in validate(rows)] == expect


def test_a_long_value_is_shown_bounded(sample_rows: dict) -> None:
    """A problem line quotes the value, cut to a readable length with its full length said."""
    rows = copy.deepcopy(sample_rows)
    row(rows, "T010_CHANNEL", RTUID=1, CHANNO=1)["HOST"] = "x y" * 100_000
    (p,) = validate(rows)
    assert len(str(p)) < 200 and "300000 characters" in str(p), str(p)


@pytest.mark.parametrize(("node", "ip", "problem"), [
    ("A", "fd00::1", None), ("B", "fd00:0:0::2", None), ("B", "fd00::1", "[node] id is B but ip fd00::1 is T020_UNION IP1"),
])
def test_identity_compares_addresses_not_spellings(node: str, ip: str, problem: str | None) -> None:
    """fep-ha.cfg [node] ip and T020_UNION may spell one IPv6 address differently: the node is still itself."""
    from fepha.semodel.model import Model

    got = Model(rtus={}, ip1="fd00:0::1", ip2="fd00::2", gen=1).identity_problem(node, ip)
    assert got == problem if problem is None else got is not None and got.startswith(problem)


def test_every_name_too_long_listed_at_once(sample_rows: dict) -> None:
    """A name longer than 64 characters had no limit (a 10,000-character one made every dashboard row a page
    long): each is refused, one short line per cell, all in one validation."""
    rows = copy.deepcopy(sample_rows)
    row(rows, "T004_RTU", RTUID=1)["NAME"] = "R" * 10_000
    row(rows, "T004_RTU", RTUID=2)["NAME"] = "r" * 65
    row(rows, "T011_POINT", PNTID=101)["NAME"] = "P" * 100
    row(rows, "T036_VTPNT", VPID=901)["NAME"] = "V" * 64
    got = [str(p) for p in validate(rows)]
    assert got == [f"T004_RTU [1] NAME: {shown('R' * 10_000)} is longer than 64 characters",
                   f"T004_RTU [2] NAME: {shown('r' * 65)} is longer than 64 characters",
                   f"T011_POINT [101] NAME: {shown('P' * 100)} is longer than 64 characters"], got
    assert all(len(line) < 150 for line in got)
