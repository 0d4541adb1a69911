"""Replacing the configuration in the master Redis, atomically.

1. Refuse a replica (writes must go to the master; the replica follows by replication).
2. Take the load lock, so two `sysload init` never interleave. The lock names its holder's connection; a
   lock whose holder's connection is gone (a sysload killed while loading) is taken over at once, not
   waited out for its TTL.
3. Write every table into staging hashes with a pipeline (many fields per HSET, no round trip per row).
4. One MULTI/EXEC: RENAME each staged table onto the live name (or DEL a table that is now empty),
   delete the runtime keys of RTUs that are gone, INCR the generation, record the metadata and PUBLISH
   the new generation. Readers (`fepha.cfgstore`) read inside MULTI/EXEC too, so they see the old or the
   new configuration, never a mix and never nothing.
The old tables' memory is freed in the background (lazyfree), so the switch does not stall the master.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from fepha import events, redisfns
from fepha import keyspace as ks
from fepha.semodel.model import TABLES, Row, int_value, row_key

log = logging.getLogger("sysload")

FIELDS_PER_HSET = 1000
LOCK_TTL_MS = 120_000


class NotMaster(Exception):
    """The Redis we were pointed at is a replica."""


class Busy(Exception):
    """Another `sysload init` holds the load lock."""


@dataclass
class LoadReport:
    gen: int
    rows: dict[str, int]
    removed_rtus: list[int]
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    took_over: str = ""
    """The holder of a lock left behind by a sysload that was stopped while loading, when one was taken over."""

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def encode_row(row: Row) -> str:
    """The stored form of a row (a field of `fep:cfg:t:{TABLE}`): compact JSON with sorted keys; also what
    the digest is taken over. orjson, because the stdlib encoder took a third of a 100,000-point init;
    decoded to str at once, because each bytes object orjson returns keeps a 4 KB buffer (436 MB for
    100,000 rows, measured)."""
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode()


def digest(rows: Mapping[str, Sequence[Row]]) -> str:
    """sha256 over every row's stored form, in table order: identifies a configuration's content."""
    h = hashlib.sha256()
    for t in TABLES:
        for r in rows.get(t, ()):
            h.update(encode_row(r).encode())
    return h.hexdigest()


def ensure_master(r: Any) -> None:
    info = r.info("replication")
    if info.get("role") != "master":
        raise NotMaster(f"Redis {r.connection_pool.connection_kwargs.get('host')}:"
                        f"{r.connection_pool.connection_kwargs.get('port')} is a replica of "
                        f"{info.get('master_host')}:{info.get('master_port')}; run sysload init against "
                        f"the master (the VIP in fep-ha.cfg)")


def replace_config(r: Any, rows: Mapping[str, Sequence[Row]], source: str = "") -> LoadReport:
    """Replace the live configuration with `rows` (already validated). `r`: sync client, decode on."""
    t0 = time.perf_counter()
    ensure_master(r)
    token = lock_token(r)
    took_over = take_lock(r, token)
    phases: dict[str, float] = {}
    try:
        redisfns.load_sync(r)
        # the ids of the rows, not the hash's fields: a sysload before row_key wrote integers as one stored an
        # id held as 2.0 under the field '2.0' (int() of it ended every later init with a traceback)
        old_rtus = {i for v in r.hvals(ks.cfg_table("T004_RTU"))
                    if (i := int_value(orjson.loads(v).get("RTUID"))) is not None}
        t1 = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        sha = hashlib.sha256()  # the digest of `digest(rows)`, taken while encoding (rows encoded once)
        for t in TABLES:
            pipe.delete(ks.cfg_stage(t))
            mapping: dict[str, str] = {}
            for row in rows.get(t, ()):
                enc = encode_row(row)
                sha.update(enc.encode())
                mapping[row_key(t, row)] = enc
                if len(mapping) >= FIELDS_PER_HSET:
                    pipe.hset(ks.cfg_stage(t), mapping=mapping)
                    mapping = {}
            if mapping:
                pipe.hset(ks.cfg_stage(t), mapping=mapping)
        pipe.execute()
        phases["stage_s"] = time.perf_counter() - t1
        new_rtus = {int_value(row["RTUID"]) for row in rows.get("T004_RTU", ())}
        removed = sorted(old_rtus - new_rtus)
        counts = {t: len(rows.get(t, ())) for t in TABLES}
        keep_vps = {row_key("T036_VTPNT", row) for row in rows.get("T036_VTPNT", ())}  # as the acquirer writes them
        stale_vps = [k for k in r.hkeys(ks.VPOINTS) if k not in keep_vps]
        t2 = time.perf_counter()
        gen = int(r.get(ks.CFG_GEN) or 0) + 1
        tx = r.pipeline(transaction=True)
        tx.watch(ks.CFG_LOCK)  # a load whose lock lapsed and was taken by another switches nothing (WatchError)
        if tx.get(ks.CFG_LOCK) not in (token, None):  # None: lapsed (a load past the TTL), no other holder
            tx.reset()
            raise Busy(f"the load lock ({ks.CFG_LOCK}) lapsed during the load and another sysload init took it; "
                       "nothing was switched")
        tx.multi()
        tx.incr(ks.CFG_GEN)
        for t in TABLES:
            if counts[t]:
                tx.rename(ks.cfg_stage(t), ks.cfg_table(t))
            else:
                tx.delete(ks.cfg_table(t))
        for rid in removed:
            tx.delete(*ks.node_keys_for_rtu(rid))
        if stale_vps:
            tx.hdel(ks.VPOINTS, *stale_vps)
        tx.delete(ks.CFG_META)
        tx.hset(ks.CFG_META, mapping={"gen": gen, "loaded_at_ms": int(time.time() * 1000), "source": source,
                                      "sha256": sha.hexdigest(),
                                      **{f"rows:{t}": n for t, n in counts.items()}})
        row_counts: dict[str, Any] = {f"rows:{t}": n for t, n in counts.items() if n}
        events.add(tx, "config", gen=gen, source=source, sha256=sha.hexdigest(), removed_rtus=len(removed),
                   **row_counts)
        tx.publish(ks.CFG_CHANGED, gen)
        try:
            res = tx.execute()
        except redis.WatchError as exc:
            raise Busy(f"another sysload init took the load lock ({ks.CFG_LOCK}) during the load; nothing was "
                       "switched") from exc
        if int(res[0]) != gen:  # the lock makes this impossible unless someone bypassed it
            raise Busy(f"generation moved to {res[0]} during the load (expected {gen})")
        phases["switch_s"] = time.perf_counter() - t2
    finally:
        if r.get(ks.CFG_LOCK) == token:
            r.delete(ks.CFG_LOCK)
    return LoadReport(gen, counts, removed, time.perf_counter() - t0, phases, took_over)


def lock_token(r: Any) -> str:
    """The load lock's value: who holds it (host, pid, since) and through which connection of which server
    (run_id, CLIENT ID), so that another sysload can tell a holder that was killed from one still loading."""
    return orjson.dumps({"run_id": r.info("server")["run_id"], "client": r.client_id(), "host": socket.gethostname(),
                         "pid": os.getpid(), "since_ms": int(time.time() * 1000)}).decode()


def take_lock(r: Any, token: str) -> str:
    """Take the load lock, or raise Busy saying who holds it. A lock whose holder's connection to this
    server is gone is taken over: the holder was stopped (SIGKILL, SIGTERM) and can send nothing more,
    since its client has no retry (a sysload whose connection drops fails). A holder whose host was lost
    keeps its connection in Redis until TCP keepalive drops it, or its lock until its TTL. Returns the
    holder taken over from ("" when the lock was free)."""
    while True:
        if r.set(ks.CFG_LOCK, token, nx=True, px=LOCK_TTL_MS):
            return ""
        held = r.get(ks.CFG_LOCK)
        if held is None:
            continue  # lapsed in between
        holder, alive = _holder(r, held)
        if alive:
            left = r.pttl(ks.CFG_LOCK)
            raise Busy(f"another sysload init is loading ({holder}; key {ks.CFG_LOCK}, lapses in "
                       f"{max(left, 0) / 1000:.0f} s); try again when it is done")
        with r.pipeline(transaction=True) as tx:
            tx.watch(ks.CFG_LOCK)
            if tx.get(ks.CFG_LOCK) != held:
                continue
            tx.multi()
            tx.set(ks.CFG_LOCK, token, px=LOCK_TTL_MS)
            try:
                tx.execute()
            except redis.WatchError:
                continue
        log.warning("took over the load lock of a sysload init that was stopped while loading (%s)", holder)
        return holder


def _holder(r: Any, held: str) -> tuple[str, bool]:
    """(who, alive) of a lock's value. Alive unless its connection to this server is gone: made to another
    server (another run_id: Redis restarted with the key, or a replica promoted) or no longer in CLIENT
    LIST. A value of an older sysload (a time only) is alive until its TTL."""
    try:
        h = orjson.loads(held)
        who = f"pid {int(h['pid'])} on {h['host']}, since {(time.time() * 1000 - h['since_ms']) / 1000:.0f} s"
        run_id, client = str(h["run_id"]), int(h["client"])
    except (ValueError, TypeError, KeyError):
        return "an older sysload", True
    if run_id != r.info("server")["run_id"]:
        return who, False
    return who, bool(r.execute_command("CLIENT", "LIST", "ID", client))

