"""The api's reads of the local Redis (and its one write, the handover, on the master).

All reads go to the node's own Redis, so the api answers the same on the master's node and on the
replica's. Reads that belong together go in one pipeline. The configuration model is read with
`fepha.cfgstore` once per generation and cached: a request costs one GET of the generation plus the
runtime keys it shows, not a re-read of every table.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rex

from fep_api import models as m
from fep_api import views
from fep_api.metrics import MetricsSnapshot, read_snapshot
from fepha import cfgstore, freshness, heartbeat, leftbehind, redisconn, redisfns
from fepha import keyspace as ks
from fepha.config import NodeConfig
from fepha.semodel.model import Model
from fepha.semodel.model import Point as SemPoint

NODES = views.NODES


class NoConfig(Exception):
    """No configuration was loaded into Redis yet (503)."""


class NotFound(Exception):
    """An id that the live configuration does not have (404)."""


class Conflict(Exception):
    """An action that the current state does not allow (409)."""


class Unprocessable(Exception):
    """A parameter that passed the schema but means nothing (422)."""


@dataclass
class Served:
    """Value records as SCADA is served them (`Store._records`), and per RTU why its values are NT and why
    they may be IV (`views.point`'s nt_reason, iv_reason)."""

    records: dict[int, str | None]
    why: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    limits_from: m.LimitsFrom | None = None  # whose freshness limits the NT above goes by (`Store.limits`)


@dataclass
class _Cache:
    model: Model | None = None
    points: list[SemPoint] = field(default_factory=list)
    stamp: cfgstore.Stamp = (0, "")  # of `model` (cfgstore: the generation alone repeats after data loss)


def _not_current(behind: str | None) -> str | None:
    """The reason shown for what the local Redis holds while its copy may be behind (`State.staleness`)."""
    return f"local Redis {behind}" if behind else None


def _replica_gap(info: dict[str, Any], now_ms: int, limit_ms: int) -> str | None:
    """On a replica whose link is down (for how long Redis says, in whole seconds), or that has heard
    nothing from its master for more than `limit_ms`: why its copy may be behind; otherwise None."""
    if info.get("role") != "slave":
        return None
    if info.get("master_link_status") != "up":
        down = views.to_int(info.get("master_link_down_since_seconds"))
        return "cut off from the master (replication link down" + (f" for {down} s)" if down is not None else ")")
    ms = freshness.ReplicaWatch().observe(info, now_ms)
    return f"hearing nothing from the master for {ms} ms" if ms > limit_ms else None


def _count_replies(client: Any) -> list[int]:
    """Count the replies `client` reads (its pool's connections, made from now on): [count]. A reply is
    proof that the Redis answers; an error reply (LOADING, WRONGTYPE) is raised, not counted."""
    pool = getattr(client, "connection_pool", None)
    count = [0]
    if pool is None:
        return count
    base = pool.connection_class

    class Counted(base):  # type: ignore[misc, valid-type]
        async def read_response(self, *args: Any, **kw: Any) -> Any:
            reply = await super().read_response(*args, **kw)
            count[0] += 1
            return reply

    pool.connection_class = Counted
    return count


class Store:
    """Reads for one api process. `local` is the node's own Redis (async client, decode on)."""

    def __init__(self, cfg: NodeConfig, local: Any) -> None:
        self.cfg = cfg
        self.local = local
        self._replies = _count_replies(local)
        self._master: Any = None
        self.vip_probe = leftbehind.VipProbe(cfg, self.SPLIT_EVERY_S)
        self._cache = _Cache()
        self._lock: asyncio.Lock | None = None
        self.own_limits = freshness.Limits.of(cfg)
        """The api's own limits: NT is shown by them only while this node's forwarder reports none."""
        self.own_timers = views.LeaseTimers.of(heartbeat.lease_timers(cfg))
        """The api's own [timers]: a forecast goes by them only while no acquirer reports its own."""

    @property
    def replies(self) -> int:
        """Replies read from the local Redis so far: the api logs an outage as over only once one more came
        (`app.py`), not on any answer below 500 (a 405, a 422, /health touch no Redis)."""
        return self._replies[0]

    @property
    def master(self) -> Any:
        if self._master is None:
            self._master = redisconn.master_async(self.cfg)
        return self._master

    async def aclose(self) -> None:
        await self.local.aclose()
        await self.vip_probe.aclose()
        if self._master is not None:
            await self._master.aclose()

    @property
    def hb_max_age_s(self) -> float:
        """A heartbeat is fresh for three periods (the lifetime of its key)."""
        return self.cfg.heartbeat_s * 3

    # --- configuration -----------------------------------------------------------------------------

    async def model(self) -> Model:
        stamp = await cfgstore.stamp_async(self.local)
        cached = self._cache
        if cached.model is not None and cached.stamp == stamp:
            return cached.model
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            cached = self._cache
            if cached.model is not None and cached.stamp == stamp:
                return cached.model
            model, stamp = await cfgstore.read_stamped_async(self.local)
            if model is None:
                raise NoConfig("no configuration is loaded in Redis: run `sysload init` on the master's node")
            self._cache = _Cache(model, sorted(model.points.values(), key=lambda p: p.id), stamp)
            return model

    async def _points(self) -> list[SemPoint]:
        await self.model()
        return self._cache.points

    async def now_ms(self) -> int:
        return views.redis_time_ms(await self.local.time())

    # --- node and readiness ------------------------------------------------------------------------

    async def heartbeats(self, nodes: tuple[str, ...] = NODES, unknown: str | None = None) -> list[m.Heartbeat]:
        """The heartbeats of `nodes` (their age from the keys' remaining TTL); `unknown`: why a missing one
        says nothing (`hb_unknown`)."""
        keys = [(s, n) for n in nodes for s in heartbeat.SERVICES]
        pipe = self.local.pipeline(transaction=False)
        for s, n in keys:
            pipe.get(ks.heartbeat(s, n))
            pipe.pttl(ks.heartbeat(s, n))
        res = await pipe.execute()
        return [views.heartbeat(s, n, raw, self.hb_max_age_s, ttl, unknown)
                for (s, n), raw, ttl in zip(keys, res[0::2], res[1::2], strict=False)]

    @staticmethod
    def ask_timers(pipe: Any) -> None:
        """Queue the reads of both nodes' acquirer heartbeats on `pipe`: their replies, in `timers`, give the
        timers a takeover forecast goes by."""
        for n in NODES:
            pipe.get(ks.heartbeat("acquirer", n))

    def timers(self, raws: list[Any]) -> views.NodeTimers:
        """The forecast's timers from the replies of `ask_timers` (`views.NodeTimers`)."""
        return views.NodeTimers(self.own_timers,
                                {n: views.reported_timers(raw) for n, raw in zip(NODES, raws, strict=True)})

    def ask_limits(self, pipe: Any) -> None:
        """Queue the read of this node's forwarder's heartbeat on `pipe`: its reply, in `limits`, gives the
        freshness limits NT is shown by."""
        pipe.get(ks.heartbeat("forwarder", self.cfg.node_id))

    def limits(self, raw: Any) -> tuple[freshness.Limits, m.LimitsFrom]:
        """(limits, limits_from) from the reply of `ask_limits` (`views.served_limits`)."""
        return views.served_limits(raw, self.own_limits)

    def behind(self, info: dict[str, Any], now_ms: int, lim: freshness.Limits | None = None) -> str | None:
        """Why the local Redis's copy of the master's state may be behind (a replica whose link is down,
        or that has heard nothing from its master for longer than replica_down_s, the rule of `values_nt`),
        None when it is current: what is evaluated against a clock (lease expiry, links, a node's
        liveness) is then not shown as current. `lim`: the limits of `limits` (default the api's own)."""
        return _replica_gap(info, now_ms, (lim or self.own_limits).replica_down_ms)

    SPLIT_EVERY_S = 1.0
    """How long a verdict of the VIP probe is reused."""
    SPLIT_WAIT_S = 0.3
    """How long a request waits for the VIP probe before it uses the last verdict."""

    async def left_behind(self, info: dict[str, Any]) -> str | None:
        """Why a local Redis that is a master without an online replica holds no current state: the VIP
        leads to another Redis (`fepha.leftbehind`, the forwarder's rule too). A request waits for the
        probe SPLIT_WAIT_S at most (a VIP that nobody holds must not make every page wait for a connect
        timeout), then uses the last verdict."""
        return await self.vip_probe.check(self.local, info, self.SPLIT_WAIT_S)

    async def staleness(self, info: dict[str, Any], now_ms: int,
                        lim: freshness.Limits | None = None) -> tuple[str | None, str | None]:
        """(`behind`, `hb_unknown`) of the local Redis, a master left behind counting for both."""
        split = await self.left_behind(info)
        return self.behind(info, now_ms, lim) or split, self.hb_unknown(info, now_ms) or split

    def hb_unknown(self, info: dict[str, Any], now_ms: int) -> str | None:
        """Why a missing heartbeat says nothing: heartbeats reach a replica only through replication, so
        while its link is down, or nothing came for a heartbeat's lifetime, their keys expire there
        whatever the services do."""
        return _replica_gap(info, now_ms, int(self.hb_max_age_s * 1000))

    async def node(self) -> m.NodeInfo:
        pipe = self.local.pipeline(transaction=False)
        pipe.time()
        pipe.info("replication")
        pipe.get(ks.CFG_GEN)
        pipe.hgetall(ks.CFG_META)
        t, info, gen, meta = await pipe.execute()
        role, master = redisconn.role_of(info)
        now = views.redis_time_ms(t)
        kw = self.local.connection_pool.connection_kwargs
        return m.NodeInfo(
            node=self.cfg.node_id, peer=self.cfg.peer, ip=self.cfg.ip,
            time_ms=now,
            redis=m.RedisInfo(address=f"{kw.get('host')}:{kw.get('port')}", role=role, master=master,
                              link_status=info.get("master_link_status")),
            cfg=m.CfgInfo(gen=views.to_int(gen) or 0, loaded_at_ms=views.to_int(meta.get("loaded_at_ms")),
                          source=meta.get("source"), sha256=meta.get("sha256")),
            heartbeats=await self.heartbeats(unknown=(await self.staleness(info, now))[1]),
        )

    async def ready(self) -> m.Ready:
        checks: list[m.Check] = []
        try:
            await self.local.ping()
            checks.append(m.Check(name="redis", ok=True, detail="local Redis answers"))
            gen = await cfgstore.gen_async(self.local)
            checks.append(m.Check(name="config", ok=gen > 0,
                                  detail=f"configuration generation {gen}" if gen > 0 else
                                  "no configuration loaded: run `sysload init` on the master's node"))
            pipe = self.local.pipeline(transaction=False)
            pipe.time()
            pipe.info("replication")
            self.ask_limits(pipe)
            t, info, fwd_hb = await pipe.execute()
            now = views.redis_time_ms(t)
            lim = self.limits(fwd_hb)[0]
            behind, unknown = await self.staleness(info, now, lim)
            # the rule of values_nt (a link down for a moment is not yet a reason), or left behind
            cut = self._all_nt(info, now, behind, lim)
            if info.get("role") == "slave" or cut:
                checks.append(m.Check(name="replication", ok=cut is None,
                                      detail=cut or "local Redis replicates the master"))
            for hb in await self.heartbeats((self.cfg.node_id,), unknown):
                checks.append(m.Check(name=f"heartbeat:{hb.service}", ok=bool(hb.alive), detail=hb.detail))
        except Exception as exc:  # noqa: BLE001 - any Redis failure is a reason, never an error page
            checks.append(m.Check(name="redis", ok=False, detail=f"local Redis unreachable: {exc}"))
        reasons = [c.detail for c in checks if not c.ok]
        return m.Ready(ready=not reasons, node=self.cfg.node_id,
                       checks=checks, reasons=reasons)

    # --- RTUs and leases ---------------------------------------------------------------------------

    async def rtus(self, rtu_id: int | None = None) -> m.RtuList:
        model = await self.model()
        if rtu_id is None:
            rtus = sorted(model.rtus.values(), key=lambda r: r.id)
        elif rtu_id in model.rtus:
            rtus = [model.rtus[rtu_id]]
        else:
            raise NotFound(f"RTU {rtu_id} is not in the configuration (generation {model.gen})")
        pipe = self.local.pipeline(transaction=False)
        pipe.time()
        pipe.info("replication")
        self.ask_timers(pipe)
        self.ask_limits(pipe)
        for r in rtus:
            if r.acquisition:
                pipe.hgetall(ks.lease(r.id))
                pipe.hgetall(ks.link(r.id))
                for n in NODES:
                    pipe.hgetall(ks.channel_state(r.id, n))
            else:
                for n in NODES:
                    pipe.hgetall(ks.fwd_clients(r.id, n))
        res = await pipe.execute()
        now = views.redis_time_ms(res[0])
        lim, lim_from = self.limits(res[4])
        behind, unknown = await self.staleness(res[1], now, lim)
        cut_off = self._all_nt(res[1], now, behind, lim)
        acq_nc = {hb.node: None if hb.alive else f"the acquirer of node {hb.node} is not seen alive "
                                                   f"({hb.detail}): its last report is not current"
                  for hb in await self.heartbeats(unknown=unknown)
                  if hb.service == "acquirer"}
        timers = self.timers(res[2:4])
        it = iter(res[5:])
        items = []
        for r in rtus:
            if r.acquisition:
                lease_h, link_h = next(it), next(it)
                chan = {n: next(it) for n in NODES}
                item = views.rtu(r, now, lease_h=lease_h, chan=chan, link_h=link_h,
                                 behind=_not_current(behind), chan_not_current=acq_nc, timers=timers)
                item.values_nt = cut_off or freshness.rtu_reason(lease_h, now, r.poll_ms, lim, freshness.replids(res[1]))
                item.limits_from = lim_from
                items.append(item)
            else:
                items.append(views.rtu(r, now, fwd={n: next(it) for n in NODES}))
        return m.RtuList(gen=model.gen, time_ms=now, items=items)

    async def leases(self) -> m.LeaseList:
        model = await self.model()
        rtus = sorted(model.acquisition_rtus(), key=lambda r: r.id)
        pipe = self.local.pipeline(transaction=False)
        pipe.time()
        pipe.info("replication")
        self.ask_timers(pipe)
        self.ask_limits(pipe)
        for r in rtus:
            pipe.hgetall(ks.lease(r.id))
            pipe.hgetall(ks.link(r.id))
        res = await pipe.execute()
        now = views.redis_time_ms(res[0])
        behind = (await self.staleness(res[1], now, self.limits(res[4])[0]))[0]
        nc = _not_current(behind)
        timers = self.timers(res[2:4])
        items = [m.LeaseItem(rtu=r.id, name=r.name, **views.lease(h, now, nc, lk, timers).model_dump())
                 for r, h, lk in zip(rtus, res[5::2], res[6::2], strict=False)]
        return m.LeaseList(time_ms=now, items=items)

    # --- values ------------------------------------------------------------------------------------

    async def virtual_points(self) -> m.VirtualPointList:
        model = await self.model()
        vps = sorted(model.vpoints.values(), key=lambda v: v.id)
        if not vps:
            return m.VirtualPointList(items=[])
        pipe = self.local.pipeline(transaction=False)
        pipe.time()
        pipe.info("replication")
        self.ask_limits(pipe)
        pipe.hmget(ks.VPOINTS, [str(v.id) for v in vps])
        for v in vps:
            pipe.hgetall(ks.link(v.rtu))
        res = await pipe.execute()
        behind = (await self.staleness(res[1], views.redis_time_ms(res[0]), self.limits(res[2])[0]))[0]
        nc = _not_current(behind)
        return m.VirtualPointList(items=[views.virtual_point(v, rec, lk, nc)
                                         for v, rec, lk in zip(vps, res[3], res[4:], strict=False)])

    async def points(self, rtu: int | None, kind: str | None, offset: int, limit: int,
                     quality: str | None = None) -> m.PointPage:
        model = await self.model()
        if rtu is not None and rtu not in model.rtus:
            raise NotFound(f"RTU {rtu} is not in the configuration (generation {model.gen})")
        sel = [p for p in await self._points()
               if (rtu is None or p.rtu == rtu) and (kind is None or p.kind == kind)]
        now = await self.now_ms()
        if quality is not None:  # the filter needs every selected value before paging
            served = await self._records(sel)
            sel = [p for p in sel if views.quality_matches(views.value_fields(served.records.get(p.id)), quality)]
            page = sel[offset:offset + limit]
        else:
            page = sel[offset:offset + limit]
            served = await self._records(page)
        return m.PointPage(total=len(sel), offset=offset, limit=limit, time_ms=now,
                           limits_from=served.limits_from,
                           items=[views.point(p, served.records.get(p.id), now, served.why.get(p.rtu))
                                  for p in page])

    async def stream_rtus(self, ids: list[str]) -> frozenset[str]:
        """The live stream's RTU filter as the change stream names RTUs ("01" is "1"; "vp" the virtual
        points); an RTU the configuration does not have is a 404."""
        model = await self.model()
        out = frozenset(r if r == "vp" else str(int(r)) for r in ids)
        for r in sorted(out - {"vp"}):
            if int(r) not in model.rtus:
                raise NotFound(f"RTU {r} is not in the configuration (generation {model.gen})")
        return out

    async def forwards(self, rtu_id: int) -> m.ForwardList:
        """The forwarding points of a forwarding RTU, each with its source point's current value."""
        model = await self.model()
        r = model.rtus.get(rtu_id)
        if r is None:
            raise NotFound(f"RTU {rtu_id} is not in the configuration (generation {model.gen})")
        if r.acquisition:
            raise Conflict(f"RTU {rtu_id} is an acquisition RTU: its points are in /api/v1/points?rtu={rtu_id}")
        srcs = [model.points[f.src] for f in r.forwards if f.src in model.points]
        records = (await self._records(srcs, [f.src for f in r.forwards if f.src in model.vpoints])).records
        now = await self.now_ms()
        items = []
        for f in r.forwards:
            src = model.points.get(f.src) or model.vpoints.get(f.src)
            items.append(m.Forward(id=f.id, rtu=f.rtu, table=f.table, kind=f.kind,
                                   address=f.addr, type=f.type, coef=f.coef, src=f.src,
                                   src_name=src.name if src else None, src_rtu=src.rtu if src else None,
                                   **views.value_fields(records.get(f.src))))
        return m.ForwardList(rtu=rtu_id, time_ms=now, items=items)

    def _all_nt(self, info: dict[str, Any], now_ms: int, behind: str | None, lim: freshness.Limits) -> str | None:
        """Why every value is served NT: cut off from the master (`_cut_off`), or a master left behind
        (`behind` on a master can only be that)."""
        return self._cut_off(info, now_ms, lim) or (_not_current(behind) if info.get("role") == "master" else None)

    @staticmethod
    def _cut_off(info: dict[str, Any], now_ms: int, lim: freshness.Limits) -> str | None:
        """Why every value is NT (the local Redis cut off from its master longer than `lim`'s replica_down_ms,
        from Redis's own counters), None when it is not."""
        ms = freshness.ReplicaWatch().observe(info, now_ms)
        return f"local Redis cut off from the master for {ms} ms" if ms > lim.replica_down_ms else None

    async def _records(self, pts: list[SemPoint], vps: list[int] | None = None) -> Served:
        """The value records of `pts` (and of the virtual points `vps`) as SCADA is served them: with NT
        added where the forwarder adds it (`fepha.freshness`: the local Redis cut off from the master or a
        master left behind, for every value; the RTU without a live lease holder or without a complete poll
        for `stale_polls` periods). Stored records say nothing of that: a frozen or dead acquirer leaves its
        last values looking current. `why`, per RTU of `pts`: that NT reason, and the lease's
        `reach_detail` (the holder reaches the device in part or not at all: why points are invalid)."""
        by_rtu: dict[int, list[SemPoint]] = {}
        for p in pts:
            by_rtu.setdefault(p.rtu, []).append(p)
        if not by_rtu and not vps:
            return Served({})
        pipe = self.local.pipeline(transaction=False)
        pipe.time()
        pipe.info("replication")
        self.ask_timers(pipe)
        self.ask_limits(pipe)
        if vps:
            pipe.hmget(ks.VPOINTS, [str(v) for v in vps])
        else:
            pipe.echo("")  # keeps the replies' places
        for rid, ps in by_rtu.items():
            pipe.hmget(ks.values(rid), [str(p.id) for p in ps])
            pipe.hgetall(ks.lease(rid))
            pipe.hgetall(ks.link(rid))
        res = await pipe.execute()
        now = views.redis_time_ms(res[0])
        split = await self.left_behind(res[1])
        lim, lim_from = self.limits(res[4])
        cut_off = self._cut_off(res[1], now, lim) or _not_current(split)
        rtus = self._cache.model.rtus if self._cache.model is not None else {}
        out = Served({v: views.served(rec, cut_off is not None)
                      for v, rec in zip(vps or (), res[5] or (), strict=True)}, limits_from=lim_from)
        behind = _not_current(self.behind(res[1], now, lim) or split)
        timers = self.timers(res[2:4])
        ids = freshness.replids(res[1])
        for (rid, ps), recs, lease, link_h in zip(by_rtu.items(), res[6::3], res[7::3], res[8::3], strict=False):
            poll_ms = rtus[rid].poll_ms if rid in rtus else None
            nt = cut_off or freshness.rtu_reason(lease, now, poll_ms, lim, ids)
            out.why[rid] = (nt, views.lease(lease, now, behind, link_h, timers).reach_detail)
            out.records.update({p.id: views.served(rec, nt is not None) for p, rec in zip(ps, recs, strict=False)})
        return out

    async def point(self, pid: int) -> m.Point:
        model = await self.model()
        p = model.points.get(pid)
        if p is None:
            if pid in model.vpoints:
                raise NotFound(f"point {pid} is a virtual point: see /api/v1/virtual-points")
            raise NotFound(f"point {pid} is not in the configuration (generation {model.gen})")
        served = await self._records([p])
        return views.point(p, served.records.get(pid), await self.now_ms(), served.why.get(p.rtu))

    # --- timeline and trends -----------------------------------------------------------------------

    EVENT_SCAN = 500
    """Entries read per XREVRANGE while looking for events that match a filter."""

    async def events(self, kind: str | None, rtu: int | None, before: str | None, limit: int) -> m.EventPage:
        """The merged timeline, newest first. A filter scans at most the bounded streams (~10000 each)."""
        cursor = None
        if before is not None:
            cursor = views.parse_event_id(before)
            if cursor is None:
                raise Unprocessable(f"`before` {before!r} is not an event id")
        found: list[m.Event] = []
        for src in views.sources_for(kind):
            end = views.bound_for(src, cursor)
            got = 0
            while end is not None and got <= limit:
                batch = await self.local.xrevrange(views.EVENT_SOURCES[src], max=end, min="-",
                                                   count=self.EVENT_SCAN)
                for sid, f in batch:
                    ev = views.event(src, sid, f)
                    if ev is not None and views.event_matches(ev, kind, rtu):
                        found.append(ev)
                        got += 1
                        if got > limit:
                            break
                if len(batch) < self.EVENT_SCAN:
                    break
                sid = views.parse_stream_id(batch[-1][0])
                end = views.id_before(sid) if sid else None
        found.sort(key=lambda e: views.event_sort_key(e.id), reverse=True)
        more = len(found) > limit
        items = found[:limit]
        return m.EventPage(limit=limit, items=items, next_before=items[-1].id if more and items else None)

    async def last_event(self, kind: str, pred: Any) -> m.Event | None:
        """The newest event of `kind` for which `pred(event)` holds (scans its stream back)."""
        end: str | None = "+"
        src = views.sources_for(kind)[0]
        while end is not None:
            batch = await self.local.xrevrange(views.EVENT_SOURCES[src], max=end, min="-", count=self.EVENT_SCAN)
            for sid, f in batch:
                ev = views.event(src, sid, f)
                if ev is not None and ev.kind == kind and pred(ev):
                    return ev
            if len(batch) < self.EVENT_SCAN:
                return None
            sid = views.parse_stream_id(batch[-1][0])
            end = views.id_before(sid) if sid else None
        return None

    TREND_SCAN = 20_000
    """Most change-stream entries one trend request reads (the stream holds ~20000)."""
    TREND_SAMPLES = 600
    """Most samples per series (the newest are kept)."""

    async def trends(self, rtu_id: int, seconds: int) -> m.TrendSet:
        """Analog (AI) values of one RTU over the last `seconds`, from the change stream `fep:chg`."""
        model = await self.model()
        r = model.rtus.get(rtu_id)
        if r is None:
            raise NotFound(f"RTU {rtu_id} is not in the configuration (generation {model.gen})")
        if not r.acquisition:  # an empty trend would say "no changes", not "nothing to trend here"
            raise Conflict(f"RTU {rtu_id} is a forwarding RTU: it has no acquisition points to trend; its "
                           f"forwarding points are in /api/v1/rtus/{rtu_id}/forwards")
        analog = {p.id: p for p in r.points if p.kind == "AI"}
        now = await self.now_ms()
        start = now - seconds * 1000
        series: dict[int, list[m.Sample]] = {pid: [] for pid in analog}
        scanned, lo, tag = 0, f"{start}-0", str(rtu_id)
        try:  # entries trimmed away from inside the window: the trend misses changes
            deleted = views.parse_stream_id(str((await self.local.xinfo_stream(ks.CHANGES))
                                                .get("max-deleted-entry-id") or "0-0"))
        except rex.ResponseError:  # no change stream yet
            deleted = None
        truncated = deleted is not None and deleted[0] >= start
        while analog and scanned < self.TREND_SCAN:
            batch = await self.local.xrange(ks.CHANGES, min=lo, max="+", count=1000)
            scanned += len(batch)
            for _sid, f in batch:
                if f.get("r") != tag:
                    continue
                for pid_s, rec in f.items():
                    pid = views.to_int(pid_s)
                    if pid in series:
                        pv = views.value_fields(rec)
                        if pv.get("ts_ms") is not None and pv["ts_ms"] >= start and "error" not in pv:
                            series[pid].append(m.Sample(ts_ms=pv["ts_ms"], value=pv["value"],
                                                        quality=pv["quality"]))
            if len(batch) < 1000:
                break
            sid = views.parse_stream_id(batch[-1][0])
            lo = f"({batch[-1][0]}" if sid else "+"
        else:
            truncated = truncated or scanned >= self.TREND_SCAN
        current = (await self._records(list(analog.values()))).records
        out = []
        for pid, p in sorted(analog.items()):
            samples = series[pid]
            pv = views.value_fields(current.get(pid))
            if pv.get("ts_ms") is not None and "error" not in pv:
                samples.append(m.Sample(ts_ms=max(pv["ts_ms"], now), value=pv["value"], quality=pv["quality"]))
            out.append(m.Series(id=pid, name=p.name, samples=samples[-self.TREND_SAMPLES:]))
        return m.TrendSet(rtu=rtu_id, seconds=seconds, time_ms=now, scanned=scanned, truncated=truncated,
                          series=out)

    # --- health at a glance ------------------------------------------------------------------------

    async def overview(self) -> m.Overview:
        info = await self.node()
        pipe = self.local.pipeline(transaction=False)
        pipe.info("replication")
        self.ask_limits(pipe)  # "may be hung" by the replica_down_s the values are served by, as on every page
        rep, fwd_hb = await pipe.execute()
        replication = views.replication(rep)
        # the peer's role is known only through the replication link: as our replica (link up on the
        # master) or as our master (link up on the replica); otherwise it is shown as unknown
        local_master: bool | None = replication.role == "master"
        link_up = replication.link_status == "up"
        peer_master = (False if link_up else None) if local_master else (True if link_up else None)
        behind = (await self.staleness(rep, info.time_ms, self.limits(fwd_hb)[0]))[0]
        detail = None
        if behind is not None and local_master and behind.startswith(leftbehind.HOLDS_VIP):
            # the VIP is on this host, keepalived is gone: which node's Redis the others write to is unknown
            local_master, peer_master = None, None
            detail = f"node {self.cfg.node_id}'s Redis is {behind}"
        elif behind is not None and local_master:  # the VIP leads to the peer's Redis: that is the master
            local_master, peer_master = False, True
            detail = (f"node {self.cfg.node_id}'s Redis is {behind.split(':')[0]}: the VIP {self.cfg.vip} leads "
                      f"to node {self.cfg.peer}'s")
        elif behind is not None:  # an "up" link the master has not spoken on for replica_down_s: it may be hung
            peer_master = None
        if peer_master is None and detail is None:
            detail = (f"no replica is connected to this node's Redis: node {self.cfg.peer}'s role is unknown"
                      if local_master else f"local Redis {behind or 'has no link to a master'}: whether node "
                                           f"{self.cfg.peer}'s Redis is still the master is unknown")
        by = {(h.node, h.service): h for h in info.heartbeats}
        nodes = [m.NodeHealth(node=n, this=n == self.cfg.node_id,
                              master=local_master if n == self.cfg.node_id else peer_master,
                              acquirer=by[(n, "acquirer")], forwarder=by[(n, "forwarder")]) for n in NODES]
        master_node = self.cfg.node_id if local_master else (self.cfg.peer if peer_master else None)
        last = await self.last_event("role", lambda e: e.fields.get("role") == "master")
        return m.Overview(node=self.cfg.node_id, time_ms=info.time_ms,
                          master_node=master_node, master_detail=detail, nodes=nodes, replication=replication,
                          last_failover=last, cfg=info.cfg)

    # --- controls ----------------------------------------------------------------------------------

    async def controls(self, before: str | None, limit: int) -> m.ControlPage:
        end: str | None = "+"
        if before is not None:
            sid = views.parse_stream_id(before)
            # beyond the largest stream id (the route's pattern allows 20 digits): older than everything
            end = views.id_before(sid) if sid is not None else "+"

        pipe = self.local.pipeline(transaction=False)
        pipe.xlen(ks.CTL_AUDIT)
        if end is not None:
            pipe.xrevrange(ks.CTL_AUDIT, max=end, min="-", count=limit + 1)
        res = await pipe.execute()
        entries = res[1] if end is not None else []
        more = len(entries) > limit
        entries = entries[:limit]
        return m.ControlPage(total=res[0], limit=limit, items=[views.control(sid, f) for sid, f in entries],
                             next_before=entries[-1][0] if more and entries else None)

    async def control(self, ctl_id: int) -> m.ControlRecord:
        """One control as its hash holds it now (queued and executing ones too, which the audit has not)."""
        pipe = self.local.pipeline(transaction=False)
        pipe.hgetall(ks.control(ctl_id))
        pipe.get(ks.CTL_SEQ)
        h, seq = await pipe.execute()
        if h:
            return views.control_record(h)
        last = views.to_int(seq) or 0
        if last <= 0:  # "ids run from 1 to 0" said nothing
            raise NotFound(f"control {ctl_id} does not exist: no control has been given yet")
        if not 0 < ctl_id <= last:
            raise NotFound(f"control {ctl_id} does not exist: ids run from 1 to {last}, the last one given")
        raise NotFound(f"control {ctl_id} is no longer kept: a control's record expires a day after it was queued or finished "
                       f"(the audit, /api/v1/controls, keeps the last ~10000 finished)")

    # --- the operator action -----------------------------------------------------------------------

    async def handover(self, rtu_id: int, req: m.HandoverRequest) -> m.HandoverResult:
        model = await self.model()
        r = model.rtus.get(rtu_id)
        if r is None:
            raise NotFound(f"RTU {rtu_id} is not in the configuration (generation {model.gen})")
        if not r.acquisition:
            raise Conflict(f"RTU {rtu_id} is a forwarding RTU: only acquisition RTUs have a lease to hand "
                           f"over")
        target = req.target
        if target is None:
            holder = await self.local.hget(ks.lease(rtu_id), "holder")
            if holder not in NODES:
                raise Conflict(f"RTU {rtu_id} has no lease holder yet: nothing to hand over")
            target = "B" if holder == "A" else "A"
        window_ms = int((req.window_s or self.cfg.lease_ttl_s) * 1000)
        if window_ms < self.cfg.lease_tick_s * 1000:  # 0.0001 s was marked "pending" and lapsed at once
            raise Unprocessable(f"window_s {window_ms / 1000:g} is shorter than one lease tick "
                                f"({self.cfg.lease_tick_s:g} s): the target could not take the lease within it")
        res = await self.master.fcall(*redisfns.lease_handover(rtu_id, target, window_ms).argv)
        holder, epoch, status = (res[0] or None), int(res[1]), str(res[2])
        if status == "none":
            raise Conflict(f"RTU {rtu_id} has no lease holder yet: nothing to hand over")
        if status == "already":
            return m.HandoverResult(rtu=rtu_id, status="already", holder=holder, epoch=epoch, target=target,
                                    detail=f"node {target} already holds the lease of RTU {rtu_id}")
        now = views.redis_time_ms(await self.master.time())
        until = now + window_ms
        if not req.wait:
            return m.HandoverResult(
                rtu=rtu_id, status="pending", holder=holder, epoch=epoch, target=target, until_ms=until,
                detail=f"node {target} takes the lease at its next tick if it reaches the device within "
                       f"{window_ms / 1000:g} s; watch /api/v1/leases")
        return await self._wait_moved(rtu_id, target, epoch, window_ms)

    async def _wait_moved(self, rtu_id: int, target: str, epoch: int, window_ms: int) -> m.HandoverResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window_ms / 1000 + self.cfg.lease_tick_s
        step = min(0.2, self.cfg.lease_tick_s / 4)
        while True:
            holder, ep = await self.local.hmget(ks.lease(rtu_id), ["holder", "epoch"])
            if holder == target and (views.to_int(ep) or 0) > epoch:
                return m.HandoverResult(rtu=rtu_id, status="moved", holder=holder, epoch=int(ep),
                                        target=target, detail=f"node {target} took the lease of RTU {rtu_id}")
            if loop.time() >= deadline:
                raise Conflict(f"node {target} did not take the lease of RTU {rtu_id} within "
                               f"{window_ms / 1000:g} s (it does not reach the device, or its acquirer is "
                               f"not running); node {holder} keeps it")
            await asyncio.sleep(step)

    # --- metrics -----------------------------------------------------------------------------------

    async def metrics_snapshot(self) -> tuple[MetricsSnapshot, Model | None]:
        """Everything /metrics shows, read at once; without a configuration, the per-RTU part is empty."""
        model: Model | None
        try:
            model = await self.model()
        except NoConfig:
            model = None
        snap = await read_snapshot(self.local, model)
        snap.behind, snap.hb_unknown = await self.staleness(snap.info, snap.now_ms)
        return snap, model
