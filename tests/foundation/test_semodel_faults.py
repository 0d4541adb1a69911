"""SEMODEL.db broken in each way a fault run or an operator's own tooling breaks it: `sysload init` lists
every problem (table, key, column), exits 1 and leaves Redis untouched; never a traceback."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fep_loader.cli import main as sysload
from fepha import cfgstore
from fepha import keyspace as ks
from tests.foundation.test_sysload import dump, init


def sql(*statements: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        con = sqlite3.connect(path)
        for s in statements:
            con.execute(s)
        con.commit()
        con.close()
    return run


def without_primary_key(table: str, *then: str) -> Callable[[Path], None]:
    """The table rebuilt by other tooling without its PRIMARY KEY, so SQLite no longer refuses duplicates."""
    return sql(f"CREATE TABLE X AS SELECT * FROM {table}", f"DROP TABLE {table}", f"ALTER TABLE X RENAME TO {table}",
               *then)


def untyped(table: str, *then: str) -> Callable[[Path], None]:
    """The table rebuilt by other tooling with no column types: SQLite keeps 2.0 a real and '01' text there."""
    def run(path: Path) -> None:
        con = sqlite3.connect(path)
        cols = ", ".join(r[1] for r in con.execute(f"PRAGMA table_info({table})"))
        con.close()
        sql(f"CREATE TABLE X ({cols})", f"INSERT INTO X SELECT * FROM {table}", f"DROP TABLE {table}",
            f"ALTER TABLE X RENAME TO {table}", *then)(path)
    return run


BREAKAGES: list[tuple[str, Callable[[Path], None], list[str]]] = [
    # cfgfuzz: one id spelt two ways was two keys, and the second row silently replaced the first in Redis
    ("an id spelt '01' and 1.0 besides 1", untyped("T004_RTU", "INSERT INTO T004_RTU SELECT '01', 'Again', RTUTYPE, "
                                                   "PROTOCOL, POLLMS, TIMEOUTMS, LISTENPORT, ADDRESS, ALLOW, INFLIGHT "
                                                   "FROM T004_RTU WHERE RTUID = 1",
                                                   "INSERT INTO T004_RTU SELECT 2.0, 'Again', RTUTYPE, PROTOCOL, "
                                                   "POLLMS, TIMEOUTMS, LISTENPORT, ADDRESS, ALLOW, INFLIGHT "
                                                   "FROM T004_RTU WHERE RTUID = 2"),
     ["T004_RTU [1] RTUID: key held by 2 rows", "T004_RTU [2] RTUID: key held by 2 rows"]),
    ("duplicate RTUID", without_primary_key("T004_RTU", "INSERT INTO T004_RTU SELECT * FROM T004_RTU WHERE RTUID=1"),
     ["T004_RTU [1] RTUID: key held by 2 rows"]),
    ("duplicate PNTID and channel",
     lambda p: (without_primary_key("T011_POINT", "INSERT INTO T011_POINT SELECT * FROM T011_POINT WHERE PNTID=101")(p),
                without_primary_key("T010_CHANNEL", "INSERT INTO T010_CHANNEL SELECT * FROM T010_CHANNEL "
                                    "WHERE RTUID=1 AND CHANNO=1")(p)),
     ["T011_POINT [101] PNTID: key held by 2 rows", "T010_CHANNEL [1:1] RTUID, CHANNO: key held by 2 rows"]),
    ("BLOB in a text column", sql("UPDATE T011_POINT SET NAME = X'FFFE' WHERE PNTID = 101"),
     ["T011_POINT [101] NAME: b'\\xff\\xfe' is a BLOB, not text or a number"]),
    ("infinite numbers", sql("UPDATE T011_POINT SET SCALE = 9e999 WHERE PNTID = 101",
                             "UPDATE T011_POINT SET DEADBAND = -9e999 WHERE PNTID = 102",
                             "UPDATE T011_POINT SET OFFSET = 'nan' WHERE PNTID = 103"),
     ["T011_POINT [101] SCALE: inf is not a non-zero number", "T011_POINT [102] DEADBAND: -inf is not a number >= 0",
      "T011_POINT [103] OFFSET: 'nan' is not a number"]),
    ("wrong column type and dangling ids", sql("UPDATE T011_POINT SET ADDRESS = 'abc' WHERE PNTID = 101",
                                               "UPDATE T011_POINT SET RTUID = 999 WHERE PNTID = 102",
                                               "UPDATE T005_ZFAI SET SRCID = 99999 WHERE ZFID = 1"),
     ["T011_POINT [101] ADDRESS: 'abc' is not an integer", "T011_POINT [102] RTUID: 999 is not an RTU",
      "T005_ZFAI [1] SRCID: 99999 is not a point"]),
    ("zero-length file", lambda p: p.write_bytes(b""), ["not a SQLite database"]),
    ("truncated file", lambda p: p.write_bytes(p.read_bytes()[:5000]), ["unreadable SQLite database"]),
    # cfgaudit: broken inputs an independent checker tries, each through the real `sysload init`
    ("NULL ZFID: every service would fail reading it",
     without_primary_key("T005_ZFAI", "UPDATE T005_ZFAI SET ZFID = NULL WHERE ZFID = 1"),
     ["T005_ZFAI [None] ZFID: None is not an integer"]),
    ("text that is not UTF-8, in two tables",
     sql("UPDATE T004_RTU SET NAME = CAST(X'FF41' AS TEXT) WHERE RTUID = 1",
         "UPDATE T011_POINT SET KIND = CAST(X'C3' AS TEXT) WHERE PNTID = 102"),
     ["T004_RTU [1] NAME: b'\\xffA' is text that is not UTF-8", "T011_POINT [102] KIND: b'\\xc3' is text that is not UTF-8"]),
    ("modbus_trains float32 past the last register", sql("UPDATE T005_ZFAI SET ADDR = 65535 WHERE ZFID = 12"),
     ["T005_ZFAI [12] ADDR: float32 at 65535 runs past address 65535"]),
    ("all-numeric host names", sql("UPDATE T010_CHANNEL SET HOST = '1.2.3' WHERE RTUID = 1 AND CHANNO = 1",
                                   "UPDATE T010_CHANNEL SET HOST = '999.1.1.1' WHERE RTUID = 2 AND CHANNO = 2"),
     ["T010_CHANNEL [1:1] HOST: '1.2.3' is not a host name or IP address",
      "T010_CHANNEL [2:2] HOST: '999.1.1.1' is not a host name or IP address"]),
    ("both nodes one IPv6 address", sql("UPDATE T020_UNION SET IP1 = '::1', IP2 = '0:0::1'"),
     ["T020_UNION [1] IP2: must differ from IP1 (the same address)"]),
    ("columns of the other RTU type", sql("UPDATE T004_RTU SET ALLOW = 'garbage' WHERE RTUID = 1",
                                          "UPDATE T004_RTU SET POLLMS = -5 WHERE RTUID = 10"),
     ["T004_RTU [1] ALLOW: is only for forwarding RTUs", "T004_RTU [10] POLLMS: is only for acquisition RTUs"]),
    ("a deadband that would hide a DI's changes", sql("UPDATE T011_POINT SET DEADBAND = 1 WHERE PNTID = 105"),
     ["T011_POINT [105] DEADBAND: is only for AI points"]),
    ("an RTU of no known type, its rows not repeated", sql("UPDATE T004_RTU SET RTUTYPE = 1 WHERE RTUID = 1"),
     ["T004_RTU [1] RTUTYPE: 1 is not one of 0, 2"]),
    ("ids 0, negative and past 2^53", sql("UPDATE T011_POINT SET PNTID = 0 WHERE PNTID = 104",
                                          "UPDATE T036_VTPNT SET VPID = -903 WHERE VPID = 903",
                                          "UPDATE T006_ZFDI SET SRCID = -903 WHERE SRCID = 903",
                                          "UPDATE T004_RTU SET RTUID = 9223372036854775807 WHERE RTUID = 12",
                                          "UPDATE T005_ZFAI SET RTUID = 9223372036854775807 WHERE RTUID = 12",
                                          "UPDATE T006_ZFDI SET RTUID = 9223372036854775807 WHERE RTUID = 12",
                                          "UPDATE T007_ZFACC SET RTUID = 9223372036854775807 WHERE RTUID = 12",
                                          "UPDATE T008_ZFDO SET RTUID = 9223372036854775807 WHERE RTUID = 12",
                                          "UPDATE T009_ZFAO SET RTUID = 9223372036854775807 WHERE RTUID = 12"),
     ["T011_POINT [0] PNTID: 0 is not an id in 1..9007199254740991", "T036_VTPNT [-903] VPID: -903 is not an id",
      "T004_RTU [9223372036854775807] RTUID: 9223372036854775807 is not an id"]),
    ("a symbolic link to itself", lambda p: (p.unlink(), p.symlink_to(p)),
     ["SEMODEL.db: no such file (a symbolic link to a missing file, or a loop)"]),
    # cfgaudit: cases that were already right, pinned end to end (exit 1, the line, Redis untouched)
    ("a directory", lambda p: (p.unlink(), p.mkdir()), ["SEMODEL.db: is a directory, not a SQLite database"]),
    ("the header only", lambda p: p.write_bytes(p.read_bytes()[:16]), ["unreadable SQLite database: file is not a database"]),
    ("a page overwritten", lambda p: p.write_bytes(p.read_bytes()[:4096] + b"\xff" * 4096 + p.read_bytes()[8192:]),
     ["unreadable SQLite database: database disk image is malformed"]),
    ("a view for a table", sql("CREATE TABLE V AS SELECT * FROM T036_VTPNT", "DROP TABLE T036_VTPNT",
                               "CREATE VIEW T036_VTPNT AS SELECT * FROM V"), ["T036_VTPNT [-] -: table is missing"]),
    ("NULLs where required", sql("UPDATE T011_POINT SET KIND = NULL WHERE PNTID = 101",
                                 "UPDATE T010_CHANNEL SET PORT = NULL WHERE RTUID = 1 AND CHANNO = 1",
                                 "UPDATE T005_ZFAI SET ADDR = NULL WHERE ZFID = 2"),
     ["T011_POINT [101] KIND: is not set (one of AI, DI, ACC, DO, AO)", "T010_CHANNEL [1:1] PORT: is not set",
      "T005_ZFAI [2] ADDR: is not set"]),
    ("a float and a BLOB in integer columns", sql("UPDATE T011_POINT SET ADDRESS = 2.5 WHERE PNTID = 102",
                                                  "UPDATE T011_POINT SET ADDRESS = X'00' WHERE PNTID = 103"),
     ["T011_POINT [102] ADDRESS: 2.5 is not an integer in 0..65535",
      "T011_POINT [103] ADDRESS: b'\\x00' is a BLOB, not text or a number"]),
    ("dangling references", sql("UPDATE T036_VTPNT SET RTUID = 999 WHERE VPID = 901",
                                "UPDATE T006_ZFDI SET RTUID = 999 WHERE ZFID = 5",
                                "UPDATE T010_CHANNEL SET RTUID = 998 WHERE RTUID = 2 AND CHANNO = 2"),
     ["T036_VTPNT [901] RTUID: 999 is not an RTU of T004_RTU", "T006_ZFDI [5] RTUID: 999 is not an RTU of T004_RTU",
      "T010_CHANNEL [998:2] RTUID: 998 is not an RTU of T004_RTU"]),
    # a table that cannot be read does not hide the other tables' problems, nor add any that are not
    # their own rows' (without T004_RTU no row's RTU, type or protocol is known: the rows that need them wait)
    ("a table missing, other tables broken", sql("DROP TABLE T036_VTPNT", "UPDATE T004_RTU SET POLLMS = 0 WHERE RTUID = 1",
                                                 "UPDATE T010_CHANNEL SET PORT = 0 WHERE RTUID = 1 AND CHANNO = 2",
                                                 "UPDATE T005_ZFAI SET ADDR = 16777216 WHERE ZFID = 1"),
     ["T036_VTPNT [-] -: table is missing", "T004_RTU [1] POLLMS: 0 is not an integer in 10..3600000",
      "T010_CHANNEL [1:2] PORT: 0 is not an integer in 1..65535",
      "T005_ZFAI [1] ADDR: 16777216 is not an integer in 1..16777215"]),
    ("T004_RTU missing, keys of the others still checked",
     lambda p: (without_primary_key("T011_POINT", "INSERT INTO T011_POINT SELECT * FROM T011_POINT WHERE PNTID=101")(p),
                sql("DROP TABLE T004_RTU", "UPDATE T020_UNION SET IP2 = 'nowhere'")(p)),
     ["T004_RTU [-] -: table is missing", "T011_POINT [101] PNTID: key held by 2 rows",
      "T020_UNION [1] IP2: 'nowhere' is not an IP address"]),
    ("T010_CHANNEL missing: RTUs not said to lack channel 1",
     sql("DROP TABLE T010_CHANNEL", "UPDATE T011_POINT SET KIND = 'XX' WHERE PNTID = 101"),
     ["T010_CHANNEL [-] -: table is missing", "T011_POINT [101] KIND: 'XX' is not one of AI, DI, ACC, DO, AO"]),
    ("T011_POINT missing: forwards not said to name no point",
     sql("DROP TABLE T011_POINT", "UPDATE T005_ZFAI SET COEF = 0 WHERE ZFID = 1"),
     ["T011_POINT [-] -: table is missing", "T005_ZFAI [1] COEF: 0.0 is not a non-zero number"]),
    ("no T020_UNION row", sql("DELETE FROM T020_UNION"),
     ["T020_UNION [-] -: must hold exactly one row (the two nodes), holds 0"]),
    ("IEC 104 and Modbus ranges", sql("UPDATE T004_RTU SET ADDRESS = 65535 WHERE RTUID = 10",
                                      "UPDATE T004_RTU SET ADDRESS = 248 WHERE RTUID = 11",
                                      "UPDATE T010_CHANNEL SET UNITID = 256 WHERE RTUID = 1 AND CHANNO = 1",
                                      "UPDATE T010_CHANNEL SET PORT = 65536 WHERE RTUID = 1 AND CHANNO = 2",
                                      "UPDATE T005_ZFAI SET ADDR = 16777216 WHERE ZFID = 1",
                                      "UPDATE T011_POINT SET ADDRESS = 0 WHERE PNTID = 303"),
     ["T004_RTU [10] ADDRESS: 65535 is not an integer in 1..65534", "T004_RTU [11] ADDRESS: 248 is not an integer in 0..247",
      "T010_CHANNEL [1:1] UNITID: 256 is not an integer in 0..255",
      "T010_CHANNEL [1:2] PORT: 65536 is not an integer in 1..65535",
      "T005_ZFAI [1] ADDR: 16777216 is not an integer in 1..16777215",
      "T011_POINT [303] ADDRESS: 0 is not an integer in 1..16777215"]),
    ("addresses used twice", sql("UPDATE T004_RTU SET LISTENPORT = 2404 WHERE RTUID = 11",
                                 "UPDATE T008_ZFDO SET ADDR = 1 WHERE ZFID = 1",
                                 "UPDATE T006_ZFDI SET ADDR = 0 WHERE ZFID = 12",
                                 "UPDATE T011_POINT SET ADDRESS = 100 WHERE PNTID = 302"),
     ["T004_RTU [11] LISTENPORT: 2404 is also used by RTU 10",
      "T008_ZFDO [1] ADDR: address 1 of forwarding RTU 10 is already used by T006_ZFDI [1]",
      "T006_ZFDI [12] ADDR: address 0 of forwarding RTU 11 in area di is already used by T006_ZFDI [11]",
      "T011_POINT [302] ADDRESS: IOA 100 of RTU 3 is already used by PNTID 301"]),
    ("unknown names and bad periods", sql("UPDATE T004_RTU SET PROTOCOL = 'MODBUS_TCP', POLLMS = 0 WHERE RTUID = 1",
                                          "UPDATE T004_RTU SET POLLMS = -1 WHERE RTUID = 2",
                                          "UPDATE T011_POINT SET DATATYPE = 'int64', DEADBAND = -1 WHERE PNTID = 102"),
     ["T004_RTU [1] PROTOCOL: 'MODBUS_TCP' is not one of modbus_tcp, iec104",
      "T004_RTU [1] POLLMS: 0 is not an integer in 10..3600000", "T004_RTU [2] POLLMS: -1 is not an integer in 10..3600000",
      "T011_POINT [102] DATATYPE: 'int64' is not one of bool, int16, uint16, int32, uint32, float32",
      "T011_POINT [102] DEADBAND: -1.0 is not a number >= 0"]),
    ("a writer that died mid-transaction (a hot journal)", lambda p: _die_writing(p),
     ["SEMODEL.db: a program stopped in the middle of writing it: SEMODEL.db-journal holds its unfinished change; "
      "open the database once with sqlite3 (that rolls the change back), then run sysload again"]),
    ("a socket where the file should be", lambda p: (p.unlink(), _bind_unix(p)), ["SEMODEL.db: cannot read: "]),
    # cfgfuzz: open() of a named pipe waits for a writer: sysload hung for ever
    ("a named pipe where the file should be", lambda p: (p.unlink(), os.mkfifo(p)),
     ["SEMODEL.db: is a named pipe (FIFO), not a SQLite database"]),
]


def _die_writing(path: Path) -> None:
    """A process that exits in the middle of a transaction larger than its cache, leaving a hot journal."""
    code = ("import os, sqlite3, sys\n"
            "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "con.execute('PRAGMA cache_size=1')\n"
            "con.execute('BEGIN')\n"
            "for i in range(2000):\n"
            "    con.execute('INSERT INTO T011_POINT (PNTID, RTUID, KIND, NAME) VALUES (?, 1, ?, ?)', (10000 + i, 'AI', 'x' * 200))\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert path.with_name(path.name + "-journal").exists()


def _bind_unix(path: Path) -> None:
    """A listening UNIX socket at `path` (open() of it fails with ENXIO); closed with the test process."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    _SOCKETS.append(s)


_SOCKETS: list[socket.socket] = []


@pytest.mark.parametrize("name,breakage,expect", BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_broken_database_listed_and_redis_untouched(feproot: Path, redis_master, capsys, name: str,
                                                    breakage: Callable[[Path], None], expect: list[str]) -> None:
    assert init(feproot, redis_master.port) == 0
    r = redis_master.client()
    before = dump(r)
    breakage(feproot / "db" / "SEMODEL.db")
    capsys.readouterr()
    assert init(feproot, redis_master.port) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for line in expect:
        assert line in err, err
    assert len(err.strip().splitlines()) == 1 + len(expect), err  # the count line, then one per problem
    assert dump(r) == before


def test_locked_and_readonly_database(feproot: Path, capsys) -> None:
    """A database another program holds an exclusive lock on is reported (after SQLite's 5 s busy wait); a read-only file
    is read (sysload never writes SEMODEL.db)."""
    path = feproot / "db" / "SEMODEL.db"
    os.chmod(path, 0o444)
    assert sysload(["check"]) == 0
    os.chmod(path, 0o644)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    try:
        assert sysload(["check"]) == 1
    finally:
        con.close()
    assert "database is locked" in capsys.readouterr().err


def test_a_hundred_broken_rows_all_listed_each_line_bounded(feproot: Path, redis_master, capsys) -> None:
    """100 broken rows (five problems each, one value 100,000 characters long): every problem is listed,
    each on one line of bounded length, and Redis is untouched."""
    assert init(feproot, redis_master.port) == 0
    r = redis_master.client()
    before = dump(r)
    sql(*[f"INSERT INTO T011_POINT (PNTID, RTUID, KIND, AREA, ADDRESS, DATATYPE) VALUES ({5000 + i}, 999, 'XX', "
          f"'{'z' * 100_000 if i == 0 else 'zz'}', -1, 'nope')" for i in range(100)])(feproot / "db" / "SEMODEL.db")
    capsys.readouterr()
    assert init(feproot, redis_master.port) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].endswith("SEMODEL.db: 500 problems") and len(lines) == 501, lines[:3]
    assert {line.split("]")[0].split("[")[1] for line in lines[1:]} == {str(5000 + i) for i in range(100)}
    assert max(len(line) for line in lines[1:]) < 160, max(lines[1:], key=len)
    assert "(100000 characters)" in "\n".join(lines)
    assert dump(r) == before


def test_ids_spelt_as_reals_load_again_and_keep_their_values(feproot: Path, redis_master) -> None:
    """cfgfuzz: a table written with other DDL holds the id 2 as 2.0. It was stored under the field '2.0', and
    every later `sysload init` (of any database) ended with a ValueError traceback reading it back; a virtual
    point's id 903.0 made each init delete that point's current value (its field is '903')."""
    path = feproot / "db" / "SEMODEL.db"
    untyped("T004_RTU", "UPDATE T004_RTU SET RTUID = 2.0 WHERE RTUID = 2")(path)
    untyped("T036_VTPNT", "UPDATE T036_VTPNT SET VPID = 903.0 WHERE VPID = 903")(path)
    con = sqlite3.connect(path)
    assert con.execute("SELECT typeof(RTUID) FROM T004_RTU WHERE RTUID = 2").fetchone() == ("real",)
    con.close()
    assert init(feproot, redis_master.port) == 0
    r = redis_master.client()
    assert sorted(r.hkeys(ks.cfg_table("T004_RTU")), key=int) == ["1", "2", "3", "10", "11", "12"]
    r.hset(ks.VPOINTS, "903", "1|0|1700000000000")
    assert init(feproot, redis_master.port) == 0
    assert r.hget(ks.VPOINTS, "903") == "1|0|1700000000000"
    model = cfgstore.read_sync(r)
    assert model is not None and sorted(model.rtus) == [1, 2, 3, 10, 11, 12] and 903 in model.vpoints
