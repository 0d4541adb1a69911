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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fep_api import models as m
from fepha import freshness, points
from fepha import heartbeat as hbmod
from fepha import keyspace as ks
from fepha.semodel import model as sem

NODES: tuple[str, str] = ("A", "B")
MAX_STREAM_ID = 2**64 - 1


def to_int(v: Any) -> int | None:
    """An integer from a Redis field or a heartbeat's JSON value, None when it is none: a float is truncated,
    and one that is not finite (`1e400` in a heartbeat's JSON is float infinity) is None, not an error."""
    if v is None or v == "":
        return None
    try:
        return int(v)
    except OverflowError:  # int(float("inf")): a 500 on every page that read the forwarder's limits
        return None
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


@dataclass(frozen=True, slots=True)
class LeaseTimers:
    """One acquirer's lease timers ([timers]), in ms."""

    ttl_ms: int
    takeover_ms: int
    tick_ms: int

    @classmethod
    def of(cls, d: Mapping[str, int]) -> LeaseTimers:
        """From the dict of `fepha.heartbeat.lease_timers` (an acquirer's heartbeat, the api's own cfg)."""
        return cls(d["lease_ttl_ms"], d["takeover_ms"], d["lease_tick_ms"])


def _reported(raw: str | None, keys: tuple[str, ...]) -> dict[str, int] | None:
    """The fields `keys` of a heartbeat key (its JSON), each a positive integer; None without them all (no
    key, or the key of a service that does not report them) or with one that is not a positive number."""
    try:
        hb = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(hb, dict):
        return None
    got = {k: to_int(hb.get(k)) for k in keys}
    ok = {k: v for k, v in got.items() if v is not None and v > 0}
    return ok if len(ok) == len(got) else None


def reported_timers(raw: str | None) -> LeaseTimers | None:
    """The lease timers in an acquirer's heartbeat key (`_reported`)."""
    got = _reported(raw, ("lease_ttl_ms", "takeover_ms", "lease_tick_ms"))
    return LeaseTimers.of(got) if got is not None else None


def served_limits(raw: str | None, own: freshness.Limits) -> tuple[freshness.Limits, m.LimitsFrom]:
    """(limits, limits_from): the freshness limits NT is shown by, from the heartbeat key of this node's
    forwarder (`raw`): the limits it serves SCADA by ("forwarder"), else the api's own (`own`, "api": no
    forwarder reports them, dead or older), which may differ (another file, an override in one container)."""
    got = _reported(raw, freshness.Limits.FIELDS)
    return (freshness.Limits.reported(got), "forwarder") if got is not None else (own, "api")


@dataclass(frozen=True, slots=True)
class NodeTimers:
    """The timers a forecast goes by: each node's acquirer's, as its heartbeat reports them (`reported`:
    node -> timers, None for a node whose acquirer reports none: dead, or older), else the api's own
    [timers] (`own`), which may differ from theirs (another file, an override in one environment)."""

    own: LeaseTimers
    reported: Mapping[str, LeaseTimers | None] = field(default_factory=dict)

    def for_node(self, node: str) -> LeaseTimers:
        """The timers of the acquirer of `node`: its own; the other node's when it reports none (one [timers]
        for both nodes, as documented); the api's when neither reports any."""
        other = "B" if node == "A" else "A"
        return self.reported.get(node) or self.reported.get(other) or self.own

    @property
    def source(self) -> str:
        """`Lease.timers_from`: "acquirers" when one reports its timers, else "api"."""
        return "acquirers" if any(self.reported.values()) else "api"


def lease(h: Mapping[str, str], now_ms: int, not_current: str | None = None,
          link_h: Mapping[str, str] | None = None, timers: NodeTimers | None = None) -> m.Lease:
    """`not_current`: why the local copy may be behind the master's (a replica cut off from it): the
    expiry is then not compared with this clock (remaining_ms and lapsed null), the holder is the last
    known one. With `timers` (and the RTU's link, `link_h`), how the holder reached the device at its last
    renewal and whether the other node takes the lease over (`reach`)."""
    holder = h.get("holder") or None
    expires = to_int(h.get("expires_ms"))
    remaining = None if expires is None or holder is None or not_current else expires - now_ms
    handover = h.get("handover") or None
    until = to_int(h.get("handover_until_ms"))
    if handover is not None and (until is None or until < now_ms):
        handover, until = None, None  # a planned move whose window passed is no longer in progress
    out = m.Lease(
        holder=holder if holder in NODES else None,
        epoch=to_int(h.get("epoch")) or 0,
        since_ms=to_int(h.get("since_ms")),
        expires_ms=expires,
        remaining_ms=remaining,
        # a holder without a readable expiry renews nothing: lapsed, as `lease_tick` (a missing expires_ms is
        # 0 there) and the NT rule (`freshness.rtu_reason`) take it; it was shown live beside values served NT
        lapsed=(None if not_current and holder is not None
                else holder is not None and (remaining is None or remaining < 0)),
        reached_ms=to_int(h.get("reached_ms")) or None,
        answered_ms=to_int(h.get("answered_ms")) or None,
        polled_ms=to_int(h.get("polled_ms")) or None,
        handover=handover if handover in NODES else None,
        handover_until_ms=until if handover in NODES else None,
        not_current=not_current if holder is not None else None,
    )
    if timers is not None and out.holder is not None and out.lapsed is False:
        out.reach, out.reach_detail, out.takeover_in_ms, out.timers_from = reach(h, out.holder, now_ms,
                                                                                  link_h or {}, timers)
    return out


def _s(ms: int) -> str:
    return f"{max(0, ms) / 1000:.1f} s"


def reach(h: Mapping[str, str], holder: str, now_ms: int, link_h: Mapping[str, str],
          timers: NodeTimers) -> tuple[str | None, str | None, int | None, str | None]:
    """(reach, reach_detail, takeover_in_ms, timers_from) of a live lease, by the rules of `lease_tick`
    (fepha/functions.lua, docs/keyspace.md): the holder's last renewal is `expires_ms` - TTL; at it, it
    set `reached_ms` when it reached the device fully and `answered_ms` when it reached it at all. The
    other node takes the lease over once it reaches the device and the holder has not for the takeover
    time (from `answered_ms`), or it reaches it fully and the holder has not fully for as long (from
    `reached_ms`). Whether the other node reaches it is its link (`vala`/`valb`); whether fully is not
    stored. Each by the timers of the acquirer that acts (`timers`): the holder's TTL and tick date its
    last renewal, the other node's takeover time its takeover; `timers_from` says whose they were."""
    expires = to_int(h.get("expires_ms"))
    if expires is None:
        return None, None, None, None
    other = "B" if holder == "A" else "A"
    held, taker, src = timers.for_node(holder), timers.for_node(other), timers.source
    renewed = expires - held.ttl_ms - held.tick_ms // 2  # half a tick of slack: a stamp of the same renewal
    since = to_int(h.get("since_ms")) or 0
    reached = to_int(h.get("reached_ms")) or since  # 0: taken without reaching it (fully) yet
    answered = to_int(h.get("answered_ms")) or reached
    if reached >= renewed:
        return "full", None, None, src
    other_reaches = to_bool(link_h.get("val" + other.lower()))
    if answered >= renewed:
        at = reached + taker.takeover_ms
        detail = (f"the device answers holder {holder} in part only (a poll failed or left a block unanswered; "
                  f"its points of the blocks not answered are invalid) for {_s(now_ms - reached)}")
        if other_reaches is False:
            return "partial", f"{detail}; node {other} does not reach the device: no takeover", None, src
        when = f"in {_s(at - now_ms)}" if at > now_ms else "as soon as it does"
        return "partial", (f"{detail}; node {other} takes the lease over if it reads the device fully for the "
                           f"takeover time ({_s(taker.takeover_ms)}): {when}"), max(0, at - now_ms), src
    at = answered + taker.takeover_ms
    detail = f"holder {holder} has not reached the device for {_s(now_ms - answered)} (its points are invalid)"
    if other_reaches is False:
        return "none", (f"{detail}; node {other} does not reach it either: no takeover, the holder keeps the "
                        f"lease"), None, src
    when = f"in {_s(at - now_ms)}" if at > now_ms else "at its next tick"
    cond = "" if other_reaches else " if it reaches the device"
    return "none", f"{detail}; node {other} takes the lease over{cond} {when}", max(0, at - now_ms), src


def channels(rtu: sem.Rtu, node: str, h: Mapping[str, str], not_current: str | None = None) -> m.NodeChannels:
    """One node's channel state (`keyspace.channel_state`: active,
    ch<n>_connected/_since_ms/_error/_switches). A channel never tried has since_ms 0: shown as null.
    The acquirer writes it on a change only, so a dead or frozen acquirer leaves its last report behind:
    with `not_current` (why: that node's acquirer is not alive, or the local copy is behind the master)
    the connection state, the active channel and the error are null, the switch counts stay."""
    out = []
    cur = not_current is None
    for ch in rtu.channels:
        p = f"ch{ch.no}_"
        out.append(m.ChannelStatus(no=ch.no, host=ch.host, port=ch.port,
                                   connected=to_bool(h.get(p + "connected")) if cur else None,
                                   since_ms=(to_int(h.get(p + "since_ms")) or None) if cur else None,
                                   error=(h.get(p + "error") or None) if cur else None,
                                   switches=to_int(h.get(p + "switches"))))
    return m.NodeChannels(node=node, reported=bool(h), active=to_int(h.get("active")) if cur else None,
                          channels=out, not_current=not_current if h else None)


def link(h: Mapping[str, str], not_current: str | None = None) -> m.Link:
    """`not_current`: the local copy may be behind the master's (where links are evaluated and decayed):
    vala, valb and val are null then."""
    if not_current is not None and h:
        return m.Link(since_a_ms=to_int(h.get("since_a")), since_b_ms=to_int(h.get("since_b")),
                      since_ms=to_int(h.get("since")), not_current=not_current)
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
        out.append(m.FwdClient(node=node, peer=peer, state=state))
    return out


def rtu(r: sem.Rtu, now_ms: int, lease_h: Mapping[str, str] | None = None,
        chan: Mapping[str, Mapping[str, str]] | None = None, link_h: Mapping[str, str] | None = None,
        fwd: Mapping[str, Mapping[str, str]] | None = None, behind: str | None = None,
        chan_not_current: Mapping[str, str | None] | None = None, timers: NodeTimers | None = None) -> m.Rtu:
    """`behind`: why the local copy may be behind the master's; `chan_not_current`: per node, why its
    channel report is not current (its acquirer is not alive); `timers`: the lease's `reach` (`lease`)."""
    base: dict[str, Any] = {"id": r.id, "name": r.name, "rtutype": r.rtutype, "protocol": r.protocol}
    if r.acquisition:
        chan = chan or {}
        cnc = chan_not_current or {}
        return m.Rtu(**base, type="acquisition", points=len(r.points),
                     lease=lease(lease_h or {}, now_ms, behind, link_h, timers),
                     channel_state=[channels(r, n, chan.get(n, {}), behind or cnc.get(n)) for n in NODES],
                     link=link(link_h or {}, behind))
    fwd = fwd or {}
    return m.Rtu(**base, type="forwarding", points=len(r.forwards), listen_port=r.listen_port,
                 clients=[c for n in NODES for c in clients(n, fwd.get(n, {}))])


def point(p: sem.Point, record: str | None, now_ms: int | None = None,
          why: tuple[str | None, str | None] | None = None) -> m.Point:
    """`why`: the RTU's (NT reason, IV reason), each given where the value has that flag."""
    fields = aged(value_fields(record), now_ms)
    flags = fields.get("quality_flags") or []
    nt, iv = why or (None, None)
    return m.Point(id=p.id, rtu=p.rtu, kind=p.kind,
                   name=p.name, area=p.area, address=p.address, datatype=p.datatype, **fields,
                   nt_reason=nt if "NT" in flags else None, iv_reason=iv if "IV" in flags else None)


def virtual_point(vp: sem.VirtualPoint, record: str | None, link_h: Mapping[str, str],
                  behind: str | None = None) -> m.VirtualPoint:
    """`behind`: the local copy may be behind the master's: vala/valb/val null and the value served with
    NT, as the forwarder serves link points then (docs/forwarder.md "Quality", rule 1)."""
    lk = link(link_h, behind)
    record = served(record, behind is not None)
    return m.VirtualPoint(id=vp.id, rtu=vp.rtu, name=vp.name, vala=lk.vala, valb=lk.valb, val=lk.val,
                          since_ms=lk.since_ms, not_current=lk.not_current, **value_fields(record))


CONTROL_INTS = ("id", "rtu", "point", "epoch", "created_ms", "deadline_ms", "claimed_ms", "finished_ms")


def control_record(f: Mapping[str, str]) -> m.ControlRecord:
    """A control's fields (its hash `fep:ctl:{id}`, or its audit entry)."""
    ints = {k: to_int(f.get(k)) for k in CONTROL_INTS}
    return m.ControlRecord(value=to_float(f.get("value")), origin=f.get("origin"), state=f.get("state"),
                           result=f.get("result"), executor=f.get("executor"), answered=f.get("answered"),
                           from_split=f.get("from_split"), split_id=f.get("split_id"), **ints)


def control(stream_id: str, f: Mapping[str, str]) -> m.Control:
    return m.Control(stream_id=stream_id, **control_record(f).model_dump())


def heartbeat(service: str, node: str, raw: str | None, max_age_s: float, pttl_ms: int | None = None,
              unknown: str | None = None) -> m.Heartbeat:
    """A heartbeat key as read from the local Redis. `pttl_ms`: its remaining lifetime there (PTTL): the
    key lives 3 periods from its write, so its age is that lifetime minus what is left, on one Redis
    clock; the writer's `ts_ms` (its host's clock) is compared with this host's only for a key without a
    TTL, by `fepha.heartbeat.check` (the rule of `--check`). The lifetime is the key's own `ttl_ms` (its
    writer's heartbeat_s), else `max_age_s`. A remaining lifetime beyond the lifetime by more than one
    period (a third of it) was set by a clock ahead of this Redis's: neither alive nor dead.
    `unknown`: why a missing key says nothing
    (the local Redis, a replica, hears nothing from the master: heartbeats reach it only through
    replication), so the service is shown neither alive nor dead."""
    hb: dict[str, Any] = {}
    if raw:
        try:
            loaded = json.loads(raw)
            hb = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            pass
    host = hb.get("host")
    ident: dict[str, Any] = {"pid": to_int(hb.get("pid")), "host": str(host) if host is not None else None,
                             "gen": to_int(hb.get("gen"))}
    ttl = to_int(hb.get("ttl_ms"))
    life_ms = ttl if ttl is not None and ttl > 0 else round(max_age_s * 1000)  # the writer's, when it says
    if raw is not None and pttl_ms is not None and pttl_ms > life_ms * 4 / 3:
        # docs/ha.md "Clocks": Redis keeps expiries as absolute times, so a key written by a master clock
        # ahead of this Redis's lives longer here (a dead service's key would look alive that much longer)
        ahead = pttl_ms - life_ms
        return m.Heartbeat(service=service, node=node, alive=None, age_s=None, **ident,
                           detail=f"unknown: the heartbeat of {service} on node {node} expires {ahead} ms "
                                  f"later than its lifetime allows: written by a clock ahead of this Redis's")
    if raw is not None and pttl_ms is not None and pttl_ms >= 0:
        age = round(max(0.0, (life_ms - pttl_ms) / 1000), 3)
        detail = f"{service} on node {node} alive (pid {ident['pid']}, {age:.1f} s ago)"
        return m.Heartbeat(service=service, node=node, alive=True, detail=detail, age_s=age, **ident)
    if raw is None and unknown is not None:
        return m.Heartbeat(service=service, node=node, alive=None, age_s=None, **ident,
                           detail=f"unknown: no heartbeat of {service} on node {node} in the local Redis, "
                                  f"which is {unknown}")
    ok, detail = hbmod.check({ks.heartbeat(service, node): raw}, service, node, max_age_s)
    ts = to_int(hb.get("ts_ms"))
    age_s = None if ts is None else round(time.time() - ts / 1000, 3)
    return m.Heartbeat(service=service, node=node, alive=ok, detail=detail, age_s=age_s, **ident)


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


# --- the timeline -------------------------------------------------------------------------------------

EVENT_SOURCES: tuple[str, ...] = (ks.EVENTS, ks.LEASE_EVENTS, ks.CTL_AUDIT)
"""The streams the timeline merges; an event id names its stream by index here."""
SOURCE_KIND: dict[int, str | None] = {0: None, 1: "lease", 2: "control"}


def parse_event_id(s: str) -> tuple[int, int, int] | None:
    """'ms-seq.src' (or a plain stream id, read as src 0) -> (ms, seq, src); None when malformed."""
    sid, _, src_s = s.partition(".")
    parsed = parse_stream_id(sid)
    if parsed is None or (_ and not (src_s.isdigit() and int(src_s) < len(EVENT_SOURCES))):
        return None
    return parsed[0], parsed[1], int(src_s) if src_s else 0


def event_sort_key(event_id: str) -> tuple[int, int, int]:
    return parse_event_id(event_id) or (0, 0, 0)


def _yes(v: str | None) -> str:
    return {"1": "up", "0": "down"}.get(v or "", "?")


def event_text(kind: str, f: Mapping[str, str]) -> str:
    """One line for the timeline; unknown or missing fields print as '?', never fail."""
    def g(k: str) -> str:
        return f.get(k) or "?"
    rtu = f"RTU {f['rtu']}" if f.get("rtu") else "?"
    if kind == "lease":
        frm = f.get("from") or "nobody"
        detail = f": {f['detail']}" if f.get("detail") else ""  # the bad fields, or the epoch high-water
        return f"{rtu}: lease {frm} → {g('to')} (epoch {g('epoch')}, {g('reason')}{detail})"
    if kind == "control":
        res = f" ({f['result']})" if f.get("result") else ""
        by = f" by {f['executor']}" if f.get("executor") else ""
        split = f" (run on node {f['from_split']} during a split brain)" if f.get("from_split") else ""
        return f"{rtu}: control {g('id')} point {g('point')} = {g('value')}: {g('state')}{res}{by}{split}"
    if kind == "channel":
        err = f" after: {f['error']}" if f.get("error") else ""
        return f"{rtu} on node {g('node')}: channel {g('from_ch')} → {g('to_ch')}{err}"
    if kind == "link":
        was = f"was {_yes(f.get('was'))}" if f.get("was") else "first report"
        return f"{rtu}: node {g('node')} link {_yes(f.get('up'))} ({was})"
    if kind == "config":
        return f"configuration generation {g('gen')} loaded from {g('source')}"
    if kind == "role":
        return f"node {g('node')}: Redis {g('was')} → {g('role')}"
    if kind == "master":
        return f"{rtu} on node {g('node')}: master {g('peer')} {g('state')}"
    return kind


def event(src: int, stream_id: str, f: Mapping[str, str]) -> m.Event | None:
    """A stream entry as a timeline event; None for an entry without a known kind."""
    kind = SOURCE_KIND.get(src) or f.get("kind")
    if kind not in ("lease", "channel", "link", "config", "control", "role", "master"):
        return None
    if kind == "lease":
        node, ts = f.get("to"), to_int(f.get("ts_ms")) or to_int(stream_id.partition("-")[0])
    elif kind == "control":
        node, ts = f.get("executor"), to_int(f.get("finished_ms")) or to_int(stream_id.partition("-")[0])
    else:
        node, ts = f.get("node"), to_int(f.get("ts_ms"))
    return m.Event(id=f"{stream_id}.{src}", kind=kind, ts_ms=ts, time=iso(ts),
                   node=node if node in NODES else None, rtu=to_int(f.get("rtu")), text=event_text(kind, f),
                   fields={str(k): str(v) for k, v in f.items()})


def event_matches(ev: m.Event, kind: str | None, rtu: int | None) -> bool:
    return (kind is None or ev.kind == kind) and (rtu is None or ev.rtu == rtu)


def sources_for(kind: str | None) -> list[int]:
    """Which streams can hold events of `kind` (None: all)."""
    if kind is None:
        return list(SOURCE_KIND)
    return [next((s for s, k in SOURCE_KIND.items() if k == kind), 0)]


def bound_for(src: int, before: tuple[int, int, int] | None) -> str | None:
    """Inclusive XREVRANGE end in stream `src` for events strictly older than `before` in the merged
    order (ms, seq, src): the same stream id counts as older in a stream of a lower index."""
    if before is None:
        return "+"
    ms, seq, bsrc = before
    return f"{ms}-{seq}" if src < bsrc else id_before((ms, seq))


# --- values --------------------------------------------------------------------------------------------

def quality_matches(pv: Mapping[str, Any], want: str | None) -> bool:
    """The `quality` filter of /points on the fields of `value_fields`."""
    if want is None:
        return True
    good = pv.get("quality") == 0 and "error" not in pv
    if want == "good":
        return good
    if want == "bad":
        return not good
    return want in (pv.get("quality_flags") or [])


def served(record: str | None, stale: bool) -> str | None:
    """A value record with NT added when its source is not topical (an unreadable record unchanged)."""
    if record is None or not stale:
        return record
    try:
        v = freshness.overlay(points.decode(record), True)
    except ValueError:
        return record
    return points.encode(v.value, v.quality, v.ts_ms)


def aged(fields: dict[str, Any], now_ms: int | None) -> dict[str, Any]:
    """`value_fields` plus age_ms (against the page's Redis clock) and stale (NT set)."""
    ts = fields.get("ts_ms")
    age = None if ts is None or now_ms is None else now_ms - ts
    return {**fields, "age_ms": age if age is None or age >= 0 else None,  # a source time ahead of this clock
            "stale": "NT" in (fields.get("quality_flags") or [])}


LIVE_EMPTY: dict[str, Any] = {"value": None, "quality": None, "quality_flags": [], "valid": False, "ts_ms": None,
                              "error": None}
"""Every field of a live item: a client merges an item into what it shows (the dashboard does), so a field
left out kept its old value (a point once unreadable stayed "unreadable" under every good value after it)."""


def live_values(rtu: str, pairs: Mapping[str, str] | list[tuple[str, str]]) -> dict[str, Any]:
    """A change-stream entry as the live stream sends it: {rtu, items: [{id, value, quality, ...}]}, every
    field in every item (`LIVE_EMPTY`); a field that names no point (another writer's) is left out."""
    items = []
    for pid, rec in (pairs.items() if isinstance(pairs, Mapping) else pairs):
        if not (pid.isascii() and pid.isdigit()):  # "r" is the RTU; another field names no point (sent with id null)
            continue
        pv = value_fields(rec)
        pv.pop("time", None)
        items.append({"id": int(pid), **LIVE_EMPTY, **pv})
    return {"rtu": rtu, "items": items}


def replication(info: Mapping[str, Any]) -> m.Replication:
    """INFO replication of the local Redis (as redis-py parses it) -> link state and lag."""
    role = str(info.get("role") or "?")
    if role == "master":
        offset = to_int(info.get("master_repl_offset"))
        replicas, lag_s, lag_bytes, up = [], None, None, False
        for k, v in sorted(info.items()):
            if not (str(k).startswith("slave") and isinstance(v, Mapping)):
                continue
            replicas.append(f"{v.get('ip')}:{v.get('port')} ({v.get('state')})")
            up = up or v.get("state") == "online"
            lag_s = to_float(v.get("lag"))
            so = to_int(v.get("offset"))
            lag_bytes = None if so is None or offset is None else max(0, offset - so)
        return m.Replication(role=role, link_status="up" if up else "down", lag_s=lag_s, lag_bytes=lag_bytes,
                             replicas=replicas)
    host, port = info.get("master_host"), info.get("master_port")
    up = info.get("master_link_status") == "up"
    lag = to_float(info.get("master_last_io_seconds_ago"))  # Redis says -1 while the link is down
    return m.Replication(role=role, master=f"{host}:{port}" if host else None,
                         link_status=info.get("master_link_status"),
                         lag_s=lag if up and lag is not None and lag >= 0 else None,
                         down_s=None if up else to_float(info.get("master_link_down_since_seconds")))
