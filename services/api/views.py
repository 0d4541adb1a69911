"""Turning what Redis holds into response models: plain functions, no I/O, tested as tables.

Redis hashes come in as ``dict[str, str]`` (possibly empty: the key does not exist yet). Every field is
parsed defensively: a missing or malformed field becomes ``None`` rather than an exception, because one
odd key must not turn a status page into a 500.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fep_api import models as m
from fepha import heartbeat as hbmod
from fepha import keyspace as ks
from fepha import points
from fepha.semodel import model as sem

NODES: tuple[str, str] = ("A", "B")
MAX_STREAM_ID = 2**64 - 1


def to_int(v: Any) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return int(f) if math.isfinite(f) else None


def to_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def to_bool(v: Any) -> bool | None:
    if v is None or v == "":
        return None
    return str(v).lower() in ("1", "true", "yes", "on")


def iso(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    try:
        return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


def redis_time_ms(t: Any) -> int:
    """Result of TIME (seconds, microseconds) -> ms."""
    sec, usec = t
    return int(sec) * 1000 + int(usec) // 1000


def value_fields(record: str | None) -> dict[str, Any]:
    """Fields of `PointValue` from a value record (fepha.points), or empty ones when there is none."""
    if record is None:
        return {}
    try:
        v = points.decode(record)
    except ValueError as exc:
        return {"error": str(exc)}
    value: float | int | None = v.value
    if isinstance(value, float) and not math.isfinite(value):
        value = None  # JSON has no NaN/inf
    flags = [q.name for q in points.Quality if q and v.quality & q and q.name]
    return {"value": value, "quality": v.quality, "quality_flags": flags, "valid": v.valid,
            "ts_ms": v.ts_ms, "time": iso(v.ts_ms)}


def lease(h: Mapping[str, str], now_ms: int) -> m.Lease:
    holder = h.get("holder") or None
    expires = to_int(h.get("expires_ms"))
    remaining = None if expires is None or holder is None else expires - now_ms
    handover = h.get("handover") or None
    until = to_int(h.get("handover_until_ms"))
    if handover is not None and (until is None or until < now_ms):
        handover, until = None, None  # a planned move whose window passed is no longer in progress
    return m.Lease(
        holder=holder if holder in NODES else None,
        epoch=to_int(h.get("epoch")) or 0,
        since_ms=to_int(h.get("since_ms")),
        expires_ms=expires,
        remaining_ms=remaining,
        lapsed=remaining is not None and remaining < 0,
        reached_ms=to_int(h.get("reached_ms")) or None,
        handover=handover if handover in NODES else None,
        handover_until_ms=until if handover in NODES else None,
    )


def channels(rtu: sem.Rtu, node: str, h: Mapping[str, str]) -> m.NodeChannels:
    """One node's channel state (`keyspace.channel_state`: active,
    ch<n>_connected/_since_ms/_error/_switches). A channel never tried has since_ms 0: shown as null."""
    out = []
    for ch in rtu.channels:
        p = f"ch{ch.no}_"
        out.append(m.ChannelStatus(no=ch.no, host=ch.host, port=ch.port,
                                   connected=to_bool(h.get(p + "connected")),
                                   since_ms=to_int(h.get(p + "since_ms")) or None,
                                   error=h.get(p + "error") or None,
                                   switches=to_int(h.get(p + "switches"))))
    return m.NodeChannels(node=node, reported=bool(h),  # type: ignore[arg-type]
                          active=to_int(h.get("active")), channels=out)


def link(h: Mapping[str, str]) -> m.Link:
    return m.Link(vala=to_bool(h.get("vala")), valb=to_bool(h.get("valb")), val=to_bool(h.get("val")),
                  since_a_ms=to_int(h.get("since_a")), since_b_ms=to_int(h.get("since_b")),
                  since_ms=to_int(h.get("since")))


def clients(node: str, h: Mapping[str, str]) -> list[m.FwdClient]:
    out = []
    for peer, raw in sorted(h.items()):
        try:
            state = json.loads(raw)
        except ValueError:
            state = {"raw": raw}
        if not isinstance(state, dict):
            state = {"value": state}
        out.append(m.FwdClient(node=node, peer=peer, state=state))  # type: ignore[arg-type]
    return out


def rtu(r: sem.Rtu, now_ms: int, lease_h: Mapping[str, str] | None = None,
        chan: Mapping[str, Mapping[str, str]] | None = None, link_h: Mapping[str, str] | None = None,
        fwd: Mapping[str, Mapping[str, str]] | None = None) -> m.Rtu:
    base: dict[str, Any] = {"id": r.id, "name": r.name, "rtutype": r.rtutype, "protocol": r.protocol}
    if r.acquisition:
        chan = chan or {}
        return m.Rtu(**base, type="acquisition", points=len(r.points), lease=lease(lease_h or {}, now_ms),
                     channel_state=[channels(r, n, chan.get(n, {})) for n in NODES], link=link(link_h or {}))
    fwd = fwd or {}
    return m.Rtu(**base, type="forwarding", points=len(r.forwards), listen_port=r.listen_port,
                 clients=[c for n in NODES for c in clients(n, fwd.get(n, {}))])


def point(p: sem.Point, record: str | None) -> m.Point:
    return m.Point(id=p.id, rtu=p.rtu, kind=p.kind,  # type: ignore[arg-type]
                   name=p.name, area=p.area, address=p.address, datatype=p.datatype, **value_fields(record))


def virtual_point(vp: sem.VirtualPoint, record: str | None, link_h: Mapping[str, str]) -> m.VirtualPoint:
    lk = link(link_h)
    return m.VirtualPoint(id=vp.id, rtu=vp.rtu, name=vp.name, vala=lk.vala, valb=lk.valb, val=lk.val,
                          since_ms=lk.since_ms, **value_fields(record))


CONTROL_INTS = ("id", "rtu", "point", "epoch", "created_ms", "deadline_ms", "claimed_ms", "finished_ms")


def control(stream_id: str, f: Mapping[str, str]) -> m.Control:
    ints = {k: to_int(f.get(k)) for k in CONTROL_INTS}
    return m.Control(stream_id=stream_id, value=to_float(f.get("value")), origin=f.get("origin"),
                     state=f.get("state"), result=f.get("result"), executor=f.get("executor"), **ints)


def heartbeat(service: str, node: str, raw: str | None, max_age_s: float) -> m.Heartbeat:
    """Freshness decided by `fepha.heartbeat.check` (the same rule as the services' `--check`), on the
    value already read: a dict stands in for the Redis client it calls `get` on."""
    ok, detail = hbmod.check({ks.heartbeat(service, node): raw}, service, node, max_age_s)
    hb: dict[str, Any] = {}
    if raw:
        try:
            loaded = json.loads(raw)
            hb = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            pass
    ts = to_int(hb.get("ts_ms"))
    age = None if ts is None else round(time.time() - ts / 1000, 3)
    host = hb.get("host")
    return m.Heartbeat(service=service, node=node, alive=ok, detail=detail, age_s=age,  # type: ignore[arg-type]
                       pid=to_int(hb.get("pid")), host=str(host) if host is not None else None,
                       gen=to_int(hb.get("gen")))


def parse_stream_id(s: str) -> tuple[int, int] | None:
    """'ms-seq' or 'ms' -> (ms, seq); None when it is not a valid Redis stream id."""
    ms_s, _, seq_s = s.partition("-")
    if not ms_s.isdigit() or (seq_s and not seq_s.isdigit()) or (_ and not seq_s):
        return None
    ms, seq = int(ms_s), int(seq_s) if seq_s else 0
    if ms > MAX_STREAM_ID or seq > MAX_STREAM_ID:
        return None
    return ms, seq


def id_before(sid: tuple[int, int]) -> str | None:
    """The greatest stream id smaller than `sid` (an inclusive XREVRANGE end), None when there is none."""
    ms, seq = sid
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms > 0:
        return f"{ms - 1}-{MAX_STREAM_ID}"
    return None
