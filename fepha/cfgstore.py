"""Reading the live configuration from Redis as one consistent snapshot.

`sysload init` switches a whole configuration in one MULTI/EXEC (RENAME of staged tables, INCR of the
generation, PUBLISH); a reader that reads the generation and every table inside one MULTI/EXEC therefore
sees either the old or the new configuration, never a mix. Works on a replica (reads only).

What identifies a loaded configuration is its stamp, (generation, sha256 of its content), not the
generation alone: a Redis restarted without persistence (data lost) counts from generation 1 again, so a
service that compared generations kept running its old configuration when another was loaded then.
"""

from __future__ import annotations

import json
from typing import Any

from fepha import keyspace as ks
from fepha.semodel.model import TABLES, Model, Row


def _queue(pipe: Any) -> None:
    pipe.get(ks.CFG_GEN)
    for t in TABLES:
        pipe.hvals(ks.cfg_table(t))


def _model(results: list[Any]) -> Model | None:
    gen = results[0]
    if gen is None:
        return None
    rows: dict[str, list[Row]] = {t: [json.loads(v) for v in vals] for t, vals in zip(TABLES, results[1:], strict=False)}
    return Model.from_rows(rows, gen=int(gen))


def read_sync(r: Any) -> Model | None:
    """The live configuration, or None when none was ever loaded."""
    pipe = r.pipeline(transaction=True)
    _queue(pipe)
    return _model(pipe.execute())


def gen_sync(r: Any) -> int:
    g = r.get(ks.CFG_GEN)
    return int(g) if g is not None else 0


async def gen_async(r: Any) -> int:
    g = await r.get(ks.CFG_GEN)
    return int(g) if g is not None else 0


Stamp = tuple[int, str]


def _stamp(gen: Any, sha: Any) -> Stamp:
    return (int(gen) if gen is not None else 0, sha or "")


async def stamp_async(r: Any) -> Stamp:
    """(generation, sha256) of the configuration in Redis; (0, "") when none is loaded."""
    pipe = r.pipeline(transaction=True)
    pipe.get(ks.CFG_GEN)
    pipe.hget(ks.CFG_META, "sha256")
    return _stamp(*await pipe.execute())


async def read_stamped_async(r: Any) -> tuple[Model | None, Stamp]:
    """The live configuration and its stamp, read in one MULTI/EXEC."""
    pipe = r.pipeline(transaction=True)
    _queue(pipe)
    pipe.hget(ks.CFG_META, "sha256")
    res = await pipe.execute()
    return _model(res[:-1]), _stamp(res[0], res[-1])
