"""Benchmark of `sysload init`: a generated SEMODEL.db with 100,000 points loaded into a real Redis.

Measures, in one run and against one redis-server started here:
- `init` as the command does it: read SEMODEL.db, validate every row, replace the configuration in Redis
  (staged pipelined HSETs + the atomic switch transaction); median of --runs;
- the seed-style load of the same rows with one Redis command per key (one HSET per row, each awaited);
- once, the whole `sysload init` command as a process (Python start-up included), for the operator's view.
The last line holds the figures as key=value pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from fep_loader.cli import check_file
from fep_loader.store import encode_row, replace_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fepha import keyspace as ks
from fepha.semodel import db
from fepha.semodel.model import TABLES, Row, row_key
from tests.redisproc import RedisProc

KINDS = (("AI", "hr", "float32"), ("AI", "ir", "int16"), ("DI", "di", "bool"), ("ACC", "ir", "uint32"),
         ("DI", "co", "bool"))


def generate(points: int, per_rtu: int) -> dict[str, list[Row]]:
    """A valid configuration: points/per_rtu acquisition RTUs with two channels and a virtual point each,
    and one se104s forwarding RTU that forwards every tenth analog point."""
    rows: dict[str, list[Row]] = {t: [] for t in TABLES}
    rows["T020_UNION"].append({"ID": 1, "IP1": "198.18.0.1", "IP2": "198.18.0.2"})
    n_rtus = (points + per_rtu - 1) // per_rtu
    fwd_rtu = n_rtus + 1
    pid = 0
    for rtu in range(1, n_rtus + 1):
        rows["T004_RTU"].append({"RTUID": rtu, "NAME": f"RTU {rtu}", "RTUTYPE": 0, "PROTOCOL": "modbus_tcp",
                                 "POLLMS": 1000, "TIMEOUTMS": 1000, "LISTENPORT": None, "ADDRESS": None,
                                 "ALLOW": None})
        for ch, host in ((1, "198.18.1.1"), (2, "198.18.2.1")):
            rows["T010_CHANNEL"].append({"RTUID": rtu, "CHANNO": ch, "HOST": host, "PORT": 10000 + rtu,
                                         "UNITID": 1})
        addr = {"hr": 0, "ir": 0, "di": 0, "co": 0}
        for i in range(min(per_rtu, points - pid)):
            pid += 1
            kind, area, dtype = KINDS[i % len(KINDS)]
            rows["T011_POINT"].append({
                "PNTID": pid, "RTUID": rtu, "KIND": kind, "NAME": f"P{pid}", "AREA": area,
                "ADDRESS": addr[area], "DATATYPE": dtype, "BYTEORDER": None, "WORDORDER": None,
                "BITINDEX": None, "SCALE": 0.1 if kind == "AI" else None, "OFFSET": None,
                "DEADBAND": 0.5 if kind == "AI" else None})
            addr[area] += 2 if dtype in ("float32", "uint32") else 1
            if kind == "AI" and pid % 10 == 1:
                rows["T005_ZFAI"].append({"ZFID": pid, "RTUID": fwd_rtu, "SRCID": pid, "ADDR": pid,
                                          "TYPE": "M_ME_NC_1", "COEF": None})
        rows["T036_VTPNT"].append({"VPID": 10_000_000 + rtu, "RTUID": rtu, "NAME": f"link {rtu}"})
    rows["T004_RTU"].append({"RTUID": fwd_rtu, "NAME": "SCADA", "RTUTYPE": 2, "PROTOCOL": "se104s",
                             "POLLMS": None, "TIMEOUTMS": None, "LISTENPORT": 2404, "ADDRESS": 1,
                             "ALLOW": None})
    return rows


def init_once(r, path: Path) -> float:
    t0 = time.perf_counter()
    rows, problems = check_file(path)
    if problems:
        raise SystemExit(f"generated SEMODEL.db is invalid: {problems[:3]}")
    replace_config(r, rows, source=str(path))
    return time.perf_counter() - t0


def per_key_once(r, path: Path) -> float:
    """The seed's way: every row written by its own awaited command."""
    t0 = time.perf_counter()
    rows, _ = check_file(path)
    r.delete(*[ks.cfg_table(t) for t in TABLES])
    for t in TABLES:
        key = ks.cfg_table(t)
        for row in rows.get(t, ()):
            r.hset(key, row_key(t, row), encode_row(row))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--per-rtu", type=int, default=250)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fep-bench-sysload-") as tmp, RedisProc() as rp:
        path = Path(tmp) / "SEMODEL.db"
        rows = generate(args.points, args.per_rtu)
        db.write_rows(path, rows)
        total_rows = sum(len(v) for v in rows.values())
        print(f"SEMODEL.db: {len(rows['T011_POINT'])} points, {total_rows} rows, "
              f"{path.stat().st_size / 1e6:.1f} MB; redis-server on port {rp.port}")
        r = redis.Redis(host=rp.host, port=rp.port, decode_responses=True, socket_timeout=60)
        inits, per_keys = [], []
        for i in range(args.runs):
            inits.append(init_once(r, path))
            per_keys.append(per_key_once(r, path))
            print(f"run {i + 1}: init {inits[-1]:.3f} s, one command per key {per_keys[-1]:.3f} s")
        # the command itself, once, as an operator runs it (includes interpreter start-up)
        t0 = time.perf_counter()
        env = {**os.environ, "FEP_LOG_DIR": "", "FEP_LOG_CONSOLE": "false"}
        out = subprocess.run([sys.executable, "-m", "fep_loader.cli", "init", "--db", str(path),
                              "--redis", f"127.0.0.1:{rp.port}"], capture_output=True, text=True, env=env, check=False)
        cmd_s = time.perf_counter() - t0
        if out.returncode != 0:
            print(out.stdout, out.stderr)
            return 1
        print(out.stdout.strip().splitlines()[-1])
        r.close()
    init_s, per_key_s = statistics.median(inits), statistics.median(per_keys)
    print(f"points={args.points} init_s={init_s:.3f} per_key_s={per_key_s:.3f} "
          f"speedup={per_key_s / init_s:.1f} command_s={cmd_s:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
