"""`sysload` against real redis-server processes: init, refusal of a replica, the atomic switch,
leftover keys, broken files, and the generation notification."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fep_loader.cli import main as sysload
from fep_loader.store import digest, replace_config
from fepha import cfgstore, redisfns
from fepha import keyspace as ks
from fepha.semodel import db
from fepha.semodel.model import TABLES, Model, row_key


def dump(r) -> dict[str, object]:
    """Every key and its content (for 'Redis untouched' comparisons)."""
    out: dict[str, object] = {}
    for k in r.scan_iter(count=1000):
        t = r.type(k)
        out[k] = {"hash": r.hgetall, "string": r.get, "stream": lambda k: r.xrange(k),
                  "list": lambda k: r.lrange(k, 0, -1), "set": r.smembers}[t](k)
    return out


def rows_of(feproot: Path) -> dict:
    rows, problems = db.read_rows(feproot / "db" / "SEMODEL.db")
    assert not problems
    return rows


def init(feproot: Path, port: int, *extra: str) -> int:
    return sysload(["init", "--redis", f"127.0.0.1:{port}", *extra])


def test_init_loads_exactly_the_database(feproot: Path, redis_master, capsys) -> None:
    assert init(feproot, redis_master.port) == 0
    out = capsys.readouterr().out
    assert "T011_POINT" in out and "24 rows" in out and "generation 1" in out
    r = redis_master.client()
    rows = rows_of(feproot)
    for t in TABLES:
        live = {k: json.loads(v) for k, v in r.hgetall(ks.cfg_table(t)).items()}
        assert live == {row_key(t, row): row for row in rows[t]}, t
    assert r.get(ks.CFG_GEN) == "1"
    assert r.hget(ks.CFG_META, "sha256") == digest(rows)
    assert not [k for k in r.scan_iter(match=ks.cfg_stage("*"))]
    model = cfgstore.read_sync(r)
    assert model is not None and model.gen == 1 and sorted(model.rtus) == [1, 2, 3, 10, 11, 12]


def test_init_removes_everything_of_an_earlier_configuration(feproot: Path, redis_master) -> None:
    r = redis_master.client()
    rows = rows_of(feproot)
    bigger = copy.deepcopy(rows)
    bigger["T004_RTU"].append({**rows["T004_RTU"][0], "RTUID": 4, "NAME": "Old RTU"})
    bigger["T010_CHANNEL"].append({"RTUID": 4, "CHANNO": 1, "HOST": "127.0.0.1", "PORT": 1502, "UNITID": 1})
    bigger["T036_VTPNT"].append({"VPID": 904, "RTUID": 4, "NAME": "old link"})
    bigger["T009_ZFAO"] = []
    replace_config(r, bigger)
    # runtime state of RTU 4, as the services would have written it
    redisfns.load_sync(r)
    r.fcall(*redisfns.lease_tick(4, "A", True, 10_000, 90_000).argv)
    r.fcall(*redisfns.write_values(4, "A", 1, ["777", "1|0|1"]).argv)
    r.fcall(*redisfns.link_set(4, "A", True, [904]).argv)
    r.hset(ks.channel_state(4, "A"), "active", 1)
    assert r.exists(ks.cfg_table("T009_ZFAO")) == 0

    replace_config(r, rows)
    keys = set(r.scan_iter(count=1000))
    for k in (ks.values(4), ks.lease(4), ks.link(4), ks.channel_state(4, "A")):
        assert k not in keys
    assert "904" not in r.hkeys(ks.VPOINTS)
    assert json.loads(r.hget(ks.cfg_table("T004_RTU"), "1"))["NAME"] == "Substation North"
    assert "4" not in r.hkeys(ks.cfg_table("T004_RTU"))
    assert r.hlen(ks.cfg_table("T009_ZFAO")) == 4


def test_invalid_database_leaves_redis_untouched(feproot: Path, redis_master, capsys) -> None:
    assert init(feproot, redis_master.port) == 0
    r = redis_master.client()
    before = dump(r)
    con = sqlite3.connect(feproot / "db" / "SEMODEL.db")
    con.execute("UPDATE T004_RTU SET RTUTYPE = 5 WHERE RTUID = 2")
    con.execute("UPDATE T011_POINT SET DATATYPE = 'float32', AREA = 'di' WHERE PNTID = 102")
    con.commit()
    con.close()
    capsys.readouterr()
    assert init(feproot, redis_master.port) == 1
    err = capsys.readouterr().err
    assert "T004_RTU [2] RTUTYPE" in err and "T011_POINT [102] DATATYPE" in err
    assert dump(r) == before


def test_init_refuses_a_replica(feproot: Path, redis_pair, capsys) -> None:
    _, replica = redis_pair
    assert init(feproot, replica.port) == 3
    assert "replica" in capsys.readouterr().err
    assert replica.client().get(ks.CFG_GEN) is None


def test_configuration_and_functions_reach_the_replica(feproot: Path, redis_pair) -> None:
    master, replica = redis_pair
    assert init(feproot, master.port) == 0
    replica.caught_up(master)
    rep = replica.client()
    assert cfgstore.read_sync(rep).gen == 1
    def as_dict(flat: list) -> dict:  # RESP2 replies are flat name/value lists
        return dict(zip(flat[::2], flat[1::2], strict=False))
    names = {as_dict(f)["name"] for lib in rep.function_list() for f in as_dict(lib)["functions"]}
    assert {"lease_tick", "write_values", "link_set", "ctl_submit", "ctl_claim"} <= names


def test_generation_is_notified(feproot: Path, redis_master) -> None:
    r = redis_master.client()
    ps = r.pubsub()
    ps.subscribe(ks.CFG_CHANGED)
    ps.get_message(timeout=1)
    assert init(feproot, redis_master.port) == 0
    assert init(feproot, redis_master.port) == 0
    got = [ps.get_message(timeout=2) for _ in range(2)]
    assert [m["data"] for m in got] == ["1", "2"]
    ps.close()


def test_reader_never_sees_a_mixed_or_empty_configuration(feproot: Path, redis_master) -> None:
    """A reader polling during repeated loads of two different configurations sees one or the other."""
    r = redis_master.client()
    a = rows_of(feproot)
    b = copy.deepcopy(a)
    for row in b["T004_RTU"]:
        row["NAME"] = row["NAME"] + " (B)"
    b["T011_POINT"] += [{**a["T011_POINT"][1], "PNTID": 5000 + i, "ADDRESS": 300 + i} for i in range(2000)]
    names_a = {row["NAME"] for row in a["T004_RTU"]}
    names_b = {row["NAME"] for row in b["T004_RTU"]}
    replace_config(r, a)
    stop = threading.Event()
    seen: list[tuple[int, frozenset, int]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        rr = redis_master.client()
        try:
            while not stop.is_set():
                m = cfgstore.read_sync(rr)
                seen.append((m.gen, frozenset(x.name for x in m.rtus.values()), len(m.points)))
        except Exception as exc:  # noqa: BLE001 - any failure of the reader is reported below
            errors.append(exc)
        finally:
            rr.close()

    t = threading.Thread(target=reader)
    t.start()
    for i in range(12):
        replace_config(r, b if i % 2 == 0 else a)
    stop.set()
    t.join()
    assert not errors
    assert len({g for g, _, _ in seen}) > 3, "reader too slow to observe several generations"
    for gen, names, npoints in seen:
        assert names in (frozenset(names_a), frozenset(names_b)), gen
        assert npoints == (24 if names == frozenset(names_a) else 2024), gen


@pytest.mark.parametrize("content,expect", [
    (None, "no such file"),
    (b"this is not a database", "not a SQLite database"),
])
def test_check_reports_a_bad_file(feproot: Path, capsys, content, expect) -> None:
    path = feproot / "db" / "broken.db"
    if content is not None:
        path.write_bytes(content)
    assert sysload(["check", "--db", str(path)]) == 1
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def test_check_reports_missing_table_and_column(feproot: Path, capsys) -> None:
    path = feproot / "db" / "SEMODEL.db"
    con = sqlite3.connect(path)
    con.execute("DROP TABLE T036_VTPNT")
    con.execute("ALTER TABLE T011_POINT DROP COLUMN DEADBAND")
    con.commit()
    con.close()
    assert sysload(["check"]) == 1
    err = capsys.readouterr().err
    assert "T036_VTPNT [-] -: table is missing" in err
    assert "T011_POINT [-] DEADBAND: column is missing" in err


def test_a_database_made_before_inflight_reads_it_as_null(feproot: Path, capsys) -> None:
    """T004_RTU.INFLIGHT came after databases were made without it: such a database is still valid and
    reads as NULL there (one request in flight); a value in the column is still checked."""
    path = feproot / "db" / "SEMODEL.db"
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE T004_RTU DROP COLUMN INFLIGHT")
    con.commit()
    con.close()
    assert sysload(["check"]) == 0, capsys.readouterr().err
    rows, problems = db.read_rows(path)
    assert problems == [] and all(r["INFLIGHT"] is None for r in rows["T004_RTU"])
    assert Model.from_rows(rows).rtus[1].inflight == 1


def test_console_script_check_and_build(feproot: Path) -> None:
    """The installed `sysload` command, as an operator runs it."""
    p = subprocess.run(["sysload", "build"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["sysload", "check"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0 and "valid (75 rows" in p.stdout


@pytest.mark.timeout(10)
@pytest.mark.parametrize("sql,expect", [
    (b"-- ok\nINSERT INTO T004_RTU (RTUID, NAME) VALUES (1, 'caf\xe9');\n",
     "line 2: byte 0xe9 is not UTF-8 (save the file as UTF-8)"),
    (b"INSERT INTO T004_RTU (RTUID, NAME) VALUES (1, 'a\x00b');\n", "line 1: a NUL character (U+0000)"),
    (b"INSERT INTO T004_RTU VALUES (1, 'too few');\n", "table T004_RTU has 10 columns but 2 values were supplied"),
    (None, "is a named pipe (FIFO), not a file"),
], ids=["latin-1", "NUL", "bad SQL", "named pipe"])
def test_build_of_broken_sql_is_one_line(feproot: Path, capsys, sql: bytes | None, expect: str) -> None:
    """cfgfuzz: SQL text that is not UTF-8, or holds a NUL, was a traceback; a named pipe hung; the database
    built before is left as it was, and no half-built one is left beside it."""
    path = feproot / "cfg" / "broken.sql"
    if sql is None:
        os.mkfifo(path)
    else:
        path.write_bytes(sql)
    before = (feproot / "db" / "SEMODEL.db").read_bytes()
    assert sysload(["build", "--sql", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"sysload build: {path}: {expect}\n", err
    assert (feproot / "db" / "SEMODEL.db").read_bytes() == before
    assert sorted(p.name for p in (feproot / "db").iterdir()) == ["SEMODEL.db"]


def test_init_against_unreachable_redis(feproot: Path, capsys) -> None:
    from tests.redisproc import free_port
    assert init(feproot, free_port()) == 3
    assert "Redis 127.0.0.1" in capsys.readouterr().err


@pytest.mark.parametrize("arg,ok", [("127.0.0.1:99999", False), ("127.0.0.1:0", False), (":80", False),
                                    ("localhost", False), ("999.1.1.1:6379", False), ("[::1]:6379", True),
                                    ("redis-a:6379", True)])
def test_redis_argument_is_checked(arg: str, ok: bool) -> None:
    """--redis HOST:PORT: a port out of 1..65535 was tried (and reported as 'connection refused'), and an IPv6
    address in brackets was looked up as a host name."""
    from fep_loader.cli import _parse_hostport

    if ok:
        host, port = _parse_hostport(arg)
        assert port == 6379 and "[" not in host
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
            _parse_hostport(arg)


HOLDER = """
import json, os, socket, sys, time, redis
r = redis.Redis(port=int(sys.argv[1]), decode_responses=True)
token = json.dumps({"run_id": r.info("server")["run_id"], "client": r.client_id(), "host": socket.gethostname(),
                    "pid": os.getpid(), "since_ms": int(time.time() * 1000)})  # as store.lock_token
assert r.set("fep:cfg:lock", token, nx=True, px=120_000)
print("held", flush=True)
time.sleep(60)
"""


def test_a_load_lock_left_by_a_killed_sysload_is_taken_over(feproot: Path, redis_master, capsys) -> None:
    """A sysload holding the load lock (as `sysload init` does while it loads): while it lives, another init
    is refused with one line naming it, Redis untouched; SIGKILLed (the lock is left, its TTL 120 s), the
    next init takes the lock over at once and loads (it was refused for those 120 s: "another sysload init
    is loading")."""
    import sys
    r = redis_master.client()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(redis_master.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"  # type: ignore[union-attr]
        before = dump(r)
        assert init(feproot, redis_master.port) == 3
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and f"another sysload init is loading (pid {holder.pid} on " in err[0], err
        assert dump(r) == before
        holder.kill()
        holder.wait(5)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
        holder.stdout.close()  # type: ignore[union-attr]
    assert r.pttl(ks.CFG_LOCK) > 100_000  # left behind
    gone = json.loads(r.get(ks.CFG_LOCK))["client"]
    while r.execute_command("CLIENT", "LIST", "ID", gone):  # Redis has seen the killed process's socket close
        time.sleep(0.01)
    assert init(feproot, redis_master.port) == 0
    out = capsys.readouterr().out
    assert f"took over the load lock of a sysload init stopped while loading (pid {holder.pid} on " in out, out
    assert r.get(ks.CFG_GEN) == "1" and r.get(ks.CFG_LOCK) is None
    assert init(feproot, redis_master.port) == 0 and "took over" not in capsys.readouterr().out


def test_a_load_whose_lock_was_taken_over_switches_nothing(feproot: Path, redis_master, monkeypatch) -> None:
    """The load lock taken by another init while this one stages (its lock lapsed, or was taken over as a
    killed one's): this load's switch is refused and nothing is switched (it switched its staged tables,
    which the other load was writing too)."""
    from fep_loader import store

    r = redis_master.client()
    rows = rows_of(feproot)
    replace_config(r, rows, source="first")
    load = store.redisfns.load_sync

    def taken_meanwhile(rr) -> None:
        load(rr)
        r.set(ks.CFG_LOCK, '{"pid": 1}', px=60_000)

    monkeypatch.setattr(store.redisfns, "load_sync", taken_meanwhile)
    with pytest.raises(store.Busy, match="nothing was switched"):
        replace_config(r, rows, source="second")
    assert r.get(ks.CFG_GEN) == "1" and r.hget(ks.CFG_META, "source") == "first"
    assert r.get(ks.CFG_LOCK) == '{"pid": 1}'  # the other load's lock is left to it
