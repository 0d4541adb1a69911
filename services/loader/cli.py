"""`sysload`: build, check and load SEMODEL.db (the seed's `./sysload init`).

    sysload build [--sql cfg/SEMODEL.sql] [--db PATH]   create SEMODEL.db from its SQL source
    sysload check [--db PATH]                          list every problem; exit 1 if there is any
    sysload init  [--db PATH] [--redis HOST:PORT]      check, then replace the configuration in the master

Exit codes: 0 done, 1 SEMODEL.db invalid (Redis untouched), 2 bad command line or fep-ha.cfg,
3 Redis refused (unreachable, a replica, or another load running).
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fep_loader.store import Busy, NotMaster, replace_config
from fepha import config
from fepha.checks import valid_host
from fepha.config import ConfigError
from fepha.logsetup import setup as log_setup
from fepha.semodel import db
from fepha.semodel.model import TABLES, Row
from fepha.semodel.validate import Problem, validate

log = logging.getLogger("sysload")


def check_file(path: Path) -> tuple[dict[str, list[Row]], list[Problem]]:
    rows, problems = db.read_rows(path)
    if not problems:
        problems = validate(rows)
    elif all(p.table in TABLES for p in problems):  # tables or columns missing: the others are checked too
        problems = sorted(set(problems).union(validate(rows, unread=set(TABLES) - set(rows))))
    return rows, problems


def _print_problems(path: Path, problems: list[Problem]) -> None:
    print(f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)


def _parse_hostport(s: str) -> tuple[str, int]:
    """HOST:PORT, the host as fep-ha.cfg's (fepha.checks), an IPv6 address in brackets ([::1]:6379)."""
    host, _, port = s.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535 and valid_host(host)):
        raise argparse.ArgumentTypeError(f"{s!r} is not HOST:PORT (a port 1..65535; an IPv6 address in brackets)")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sysload", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="create SEMODEL.db from its SQL source")
    b.add_argument("--sql", type=Path)
    b.add_argument("--db", type=Path)
    c = sub.add_parser("check", help="validate SEMODEL.db and list every problem")
    c.add_argument("--db", type=Path)
    i = sub.add_parser("init", help="validate, then replace the configuration in the master Redis")
    i.add_argument("--db", type=Path)
    i.add_argument("--redis", type=_parse_hostport, help="HOST:PORT of the master (default: the VIP)")
    args = ap.parse_args(argv)

    root = config.feproot()
    try:
        cfg = config.load_node(root)
        log_setup("sysload", config.load_log(root), root, console=False)
    except ConfigError as exc:
        print("\n".join(f"sysload: {line}" for line in exc.problems), file=sys.stderr)
        return 2
    path: Path = args.db or config.semodel_path(cfg, root)

    if args.cmd == "build":
        sql = args.sql or root / "cfg" / "SEMODEL.sql"
        try:
            db.build(sql, path)
        except (OSError, sqlite3.Error, ValueError) as exc:  # a missing file, bad SQL or text: one line, no traceback
            print(f"sysload build: {sql}: {exc}", file=sys.stderr)
            return 1
        print(f"built {path} from {sql}")
        return 0

    t0 = time.perf_counter()
    rows, problems = check_file(path)
    if problems:
        _print_problems(path, problems)
        return 1
    if args.cmd == "check":
        total = sum(len(rows.get(t, ())) for t in TABLES)
        print(f"{path}: valid ({total} rows in {len(TABLES)} tables)")
        return 0

    host, port = args.redis or (cfg.vip, cfg.port)
    # no retry: a load whose connection drops fails (the operator runs it again) rather than going on over
    # another connection, so the load lock's connection tells whether its holder can still write (store.take_lock)
    r = redis.Redis(host=host, port=port, password=cfg.password or None, decode_responses=True,
                    socket_timeout=30, socket_connect_timeout=cfg.socket_timeout_s, retry=Retry(NoBackoff(), 0))
    try:
        report = replace_config(r, rows, source=str(path))
    except NotMaster as exc:
        print(f"sysload init: {exc}", file=sys.stderr)
        return 3
    except Busy as exc:
        print(f"sysload init: {exc}", file=sys.stderr)
        return 3
    except redis.RedisError as exc:
        print(f"sysload init: Redis {host}:{port}: {exc}", file=sys.stderr)
        return 3
    finally:
        r.close()
    for t in TABLES:
        line = f"{t:<14} {report.rows[t]:>8} rows"
        print(line)
        log.info("loaded %s", line)
    if report.took_over:
        print(f"took over the load lock of a sysload init stopped while loading ({report.took_over})")
    if report.removed_rtus:
        print(f"removed runtime keys of RTUs no longer configured: {report.removed_rtus}")
    msg = (f"loaded {report.total_rows} rows into {host}:{port} as generation {report.gen} "
           f"in {time.perf_counter() - t0:.3f} s")
    print(msg)
    log.info("%s", msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
