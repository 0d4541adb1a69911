"""Seeded, bounded mutations of the sample SEMODEL.db rows (cfgfuzz), in process.

A rejected configuration lists its problems one line each, at a table of the schema. An accepted one is
stored as `sysload init` stores it (one hash field per row key, the row as JSON), read back as every service
reads it (`fepha.cfgstore`), and nothing may be lost on the way; then the acquirer's runners (read plans,
IEC 104 point maps), the forwarder's servers (se104s stations, modbus_trains address maps and blocks, sefeps
catalogues) and routing, and the api's views are built from it as a reload builds them: none may raise.
The real `sysload` on broken files is tests/foundation/test_semodel_faults.py.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from typing import Any

from fep_acquirer.iec104rtu import Iec104Runner
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner
from fep_acquirer.writer import Writer
from fep_api import models as m
from fep_api import views
from fep_forwarder.base import server_class
from fep_forwarder.modbus_trains.server import _area_blocks
from fep_forwarder.stream import Routing
from fep_loader.store import encode_row
from fepha import config
from fepha.logsetup import OnceLogger
from fepha.semodel.model import FWD_TABLES, KEYS, TABLES, Model, row_key
from fepha.semodel.validate import validate
from tests.foundation.test_validate import REPO, sample_rows  # noqa: F401  (the fixture)

SEED = 20261202
CASES = 1500
ODD = [None, "", " ", "abc", "é", "x" * 70, "plc\n", -1, 0, 1, 2, 65535, 65536, 2**53, 1e19, 2.5, -0.0, 1e300,
       5e-324, b"\x00", True, "\u0665", "+5", "0x10", "1e3", "M_ME_NC_1", "C_SC_NA_1", "int16", "float32", "bool", "hr",
       "co", "di", "ir", "AI", "DI", "DO", "AO", "ACC", "big", "little", "sbo", "se104s", "sefeps", "modbus_trains",
       "iec104", "modbus_tcp", "::1", "10.0.0.0/8", 16_777_215, 16_777_216, 86_400_000, 255_000]


def _respelt(v: Any) -> list[Any]:
    """The same id as a table with no column types may hold it."""
    return [f"0{v}", float(v), f" {v}"] if type(v) is int else []


def mutate(rng: random.Random, rows: dict[str, list[dict[str, Any]]]) -> None:
    """One to four changes: a cell set to a value seen in its column (or a respelt id of another row), to an
    odd value, a row deleted, or a row copied under a new or respelt key."""
    seen: dict[str, list[Any]] = {}
    for t in TABLES:
        for r in rows[t]:
            for col, v in r.items():
                seen.setdefault(col, []).append(v)
    for _ in range(rng.choice((1, 1, 2, 4))):
        t = rng.choice(TABLES)
        if not rows[t]:
            continue
        r = rng.choice(rows[t])
        op = rng.random()
        if op < 0.55:
            col = rng.choice(list(r))
            pool = seen.get(col, [None])
            r[col] = rng.choice(pool + _respelt(rng.choice(pool)))
        elif op < 0.8:
            r[rng.choice(list(r))] = rng.choice(ODD)
        elif op < 0.9:
            rows[t].remove(r)
        else:
            new = dict(r)
            key = KEYS[t][-1]
            new[key] = rng.choice([5000 + len(rows[t]), *_respelt(r[key])])
            rows[t].append(new)


def as_stored(rows: dict[str, list[dict[str, Any]]]) -> Model:
    """The rows as sysload init stores them (a hash per table: a second row with a key replaces the first)
    and cfgstore reads them back."""
    stored = {t: {row_key(t, r): encode_row(r) for r in rows[t]} for t in TABLES}
    for t in TABLES:
        assert len(stored[t]) == len(rows[t]), f"{t}: a row replaced by another with its key in Redis"
        if len(KEYS[t]) == 1:  # sysload's next init reads the RTU ids back from the fields, as integers
            assert all(str(int(k)) == k for k in stored[t]), f"{t}: fields {sorted(stored[t])}"
    model = Model.from_rows({t: [json.loads(v) for v in stored[t].values()] for t in TABLES}, gen=1)
    assert len(model.rtus) == len(rows["T004_RTU"]) and len(model.points) == len(rows["T011_POINT"])
    assert len(model.vpoints) == len(rows["T036_VTPNT"])
    assert sum(len(r.forwards) for r in model.rtus.values()) == sum(len(rows[t]) for t in FWD_TABLES)
    return model


def build_services(model: Model, cfg: config.NodeConfig, writer: Writer, metrics: Metrics,
                   once: OnceLogger) -> None:
    for rtu in model.acquisition_rtus():
        (Iec104Runner if rtu.iec104 else RtuRunner)(rtu, cfg, writer, metrics, once)
    servers = {}
    for rtu in model.forwarding_rtus():
        srv = server_class(rtu.protocol)(rtu, model, cfg.bind, None, cfg.node_id)
        if rtu.protocol == "modbus_trains":
            _area_blocks(srv.amap)  # what its start() serves
        servers[rtu.id] = srv
    Routing.of(model, servers)
    model.identity_problem(cfg.node_id, cfg.ip)
    for r in model.rtus.values():
        views.rtu(r, 0).model_dump_json()
        for f in r.forwards:
            src = model.points.get(f.src) or model.vpoints.get(f.src)
            m.Forward(id=f.id, rtu=f.rtu, table=f.table, kind=f.kind, address=f.addr, type=f.type, coef=f.coef,
                      src=f.src, src_name=src.name if src else None, src_rtu=src.rtu if src else None)
    for p in model.points.values():
        views.point(p, None, 0).model_dump_json()
    for v in model.vpoints.values():
        views.virtual_point(v, None, {}).model_dump_json()


def test_seeded_mutations_are_listed_or_served(sample_rows: dict) -> None:  # noqa: F811
    cfg = config.load_node(REPO, env={})
    writer, metrics = Writer(None, cfg.node_id, 0, cfg.batch_size), Metrics(cfg.node_id)
    once = OnceLogger(logging.getLogger("cfgfuzz"))
    rng = random.Random(SEED)
    accepted = rejected = 0
    for case in range(CASES):
        rows = copy.deepcopy(sample_rows)
        mutate(rng, rows)
        problems = validate(rows)
        if problems:
            rejected += 1
            for p in problems:
                assert p.table in TABLES and p.column and "\n" not in str(p), (case, str(p))
            continue
        accepted += 1
        try:
            build_services(as_stored(rows), cfg, writer, metrics, once)
        except Exception as exc:
            raise AssertionError(f"case {case}: accepted, then {type(exc).__name__}: {exc}") from exc
    assert accepted >= 300 and rejected >= 900, (accepted, rejected)  # neither side vacuous (385 and 1115)
