"""/metrics: Prometheus text built from the counters the services keep in Redis.

The services count in their own processes and HINCRBY the totals into `keyspace.metrics(service, node)`
once a second; the api is the one place that exposes them, for both nodes, plus what only Redis knows:
lease changes, audited controls, control queue depths, the change stream's length and age, heartbeat
ages, link and channel states, and the ends of the [tls] files each forwarder reports in its heartbeat.

Reading Redis is async and a prometheus-client `Collector` is sync, so a request first reads a
`MetricsSnapshot` (one pipeline) and then renders it with a `SnapshotCollector` in a registry made for
that request: nothing is registered globally, so tests and requests never see each other's metrics.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from fep_api import views
from fepha import heartbeat, redisconn
from fepha import keyspace as ks
from fepha.semodel.model import Model

NODES = views.NODES
GAUGES = {"stream_lag_ms", "clients"}
"""Counter-hash fields that are set, not incremented (docs/keyspace.md)."""

HELP: dict[str, str] = {
    "changes_written": "point changes written to Redis by the lease holder",
    "write_errors": "fenced writes that failed (Redis error or fenced out)",
    "compensations": "points rewritten after a failed write (master side)",
    "full_images": "full images written (after a takeover or reconnect)",
    "changes_replayed": "changes seen while standby and written on taking the lease over",
    "lease_changes": "leases this node's acquirer gained or lost",
    "channel_switches": "switches to the other channel after channel_switch_s without reconnect",
    "polls": "device polls",
    "poll_errors": "device polls that failed",
    "controls_executed": "controls executed on a device",
    "controls_failed": "controls that failed on the device",
    "controls_refused": "controls refused unexecuted: their claim did not reach the replica (replica lagging, hung or cut off)",
    "duplicates_dropped": "IEC 104 events re-sent by an RTU after a reconnect or takeover and already written",
    "events_sent": "value events sent to masters",
    "events_buffered": "value events buffered for a master",
    "events_dropped": "value events dropped (buffer overflow)",
    "controls": "controls received from masters",
    "controls_ok": "controls that ended done",
    "control_latency_ms_sum": "sum of the control latencies in ms",
    "connections_refused": "master connections refused by T004_RTU.ALLOW",
    "connections_opening_refused": "master connections closed at accept: their address had [forwarder] "
                                   "opening_max connections in their opening already",
    "tls_handshakes_failed": "TLS handshakes of master connections that failed or timed out",
    "stream_lag_ms": "age of the last change-stream entry the forwarder processed, ms",
    "clients": "masters connected to this node's forwarding servers",
}

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(service: str, field_name: str) -> str:
    return _NAME.sub("_", f"fep_{service}_{field_name}")


@dataclass
class StreamInfo:
    length: int = 0
    added: int = 0
    last_ms: int | None = None


@dataclass
class MetricsSnapshot:
    """What one scrape shows, read from the local Redis."""

    now_ms: int
    gen: int
    role: str
    counters: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (service, node) -> hash
    heartbeats: dict[tuple[str, str], str | None] = field(default_factory=dict)
    hb_ttl_ms: dict[tuple[str, str], int | None] = field(default_factory=dict)  # PTTL of each heartbeat key
    info: dict[str, Any] = field(default_factory=dict)  # INFO replication of the local Redis
    behind: str | None = None  # why the local copy may be behind the master's (Store.behind)
    hb_unknown: str | None = None  # why a missing heartbeat says nothing (Store.hb_unknown)
    lease_events: StreamInfo = field(default_factory=StreamInfo)
    audit: StreamInfo = field(default_factory=StreamInfo)
    changes: StreamInfo = field(default_factory=StreamInfo)
    leases: dict[int, dict[str, str]] = field(default_factory=dict)
    queues: dict[int, int] = field(default_factory=dict)
    links: dict[int, dict[str, str]] = field(default_factory=dict)
    channels: dict[tuple[int, str], dict[str, str]] = field(default_factory=dict)
    fwd_clients: dict[tuple[int, str], int] = field(default_factory=dict)
    api: tuple[str, int, int] | None = None
    """This api process's live stream: (node, clients holding a place, clients dropped since it started)."""


def _stream(info: Any) -> StreamInfo:
    """XINFO STREAM result (an error when the stream does not exist yet) -> StreamInfo."""
    if not isinstance(info, dict):
        return StreamInfo()
    length = views.to_int(info.get("length")) or 0
    added = views.to_int(info.get("entries-added"))
    last = info.get("last-generated-id") or ""
    sid = views.parse_stream_id(str(last)) if last else None
    last_ms = sid[0] if sid and sid != (0, 0) else None
    return StreamInfo(length=length, added=length if added is None else added, last_ms=last_ms)


async def read_snapshot(r: Any, model: Model | None) -> MetricsSnapshot:
    acq = sorted(model.acquisition_rtus(), key=lambda x: x.id) if model else []
    fwd = sorted(model.forwarding_rtus(), key=lambda x: x.id) if model else []
    pairs = [(s, n) for s in heartbeat.SERVICES for n in NODES]
    pipe = r.pipeline(transaction=False)
    pipe.time()
    pipe.get(ks.CFG_GEN)
    pipe.info("replication")
    for s, n in pairs:
        pipe.hgetall(ks.metrics(s, n))
        pipe.get(ks.heartbeat(s, n))
        pipe.pttl(ks.heartbeat(s, n))
    for key in (ks.LEASE_EVENTS, ks.CTL_AUDIT, ks.CHANGES):
        pipe.xinfo_stream(key)
    for rt in acq:
        pipe.hgetall(ks.lease(rt.id))
        pipe.llen(ks.control_queue(rt.id))
        pipe.hgetall(ks.link(rt.id))
        for n in NODES:
            pipe.hgetall(ks.channel_state(rt.id, n))
    for rt in fwd:
        for n in NODES:
            pipe.hlen(ks.fwd_clients(rt.id, n))
    res = iter(await pipe.execute(raise_on_error=False))
    t, gen, info = next(res), next(res), next(res)
    for x in (t, gen, info):
        if isinstance(x, Exception):
            raise x
    snap = MetricsSnapshot(now_ms=views.redis_time_ms(t), gen=views.to_int(gen) or 0,
                           role=redisconn.role_of(info)[0], info=info)
    for s, n in pairs:
        h, hb, ttl = next(res), next(res), next(res)
        snap.counters[(s, n)] = h if isinstance(h, dict) else {}
        snap.heartbeats[(s, n)] = hb if isinstance(hb, str) else None
        snap.hb_ttl_ms[(s, n)] = ttl if isinstance(ttl, int) else None
    snap.lease_events, snap.audit, snap.changes = _stream(next(res)), _stream(next(res)), _stream(next(res))
    for rt in acq:
        snap.leases[rt.id], q, snap.links[rt.id] = next(res), next(res), next(res)
        snap.queues[rt.id] = q if isinstance(q, int) else 0
        for n in NODES:
            snap.channels[(rt.id, n)] = next(res)
    for rt in fwd:
        for n in NODES:
            c = next(res)
            snap.fwd_clients[(rt.id, n)] = c if isinstance(c, int) else 0
    return snap


class SnapshotCollector(Collector):
    """Renders one `MetricsSnapshot`; registered only in a registry built for one scrape."""

    def __init__(self, snap: MetricsSnapshot, model: Model | None, hb_max_age_s: float) -> None:
        self.snap = snap
        self.model = model
        self.hb_max_age_s = hb_max_age_s

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        yield GaugeMetricFamily("fep_cfg_generation", "configuration generation in the local Redis",
                                value=s.gen)
        role = GaugeMetricFamily("fep_redis_role", "role of the local Redis (1 for the current role)",
                                 labels=["role"])
        role.add_metric([s.role], 1)
        yield role
        yield from self._replication()
        yield from self._service_counters()
        yield from self._streams()
        yield from self._heartbeats()
        yield from self._tls()
        yield from self._rtus()
        if s.api is not None:
            node, clients, dropped = s.api
            g = GaugeMetricFamily("fep_api_stream_clients", "live stream clients of this api (places held)",
                                  labels=["node"])
            g.add_metric([node], clients)
            c = CounterMetricFamily("fep_api_stream_dropped", "live stream clients this api dropped (fell "
                                    "stream_queue behind, or took no data for stream_write_timeout_s)",
                                    labels=["node"])
            c.add_metric([node], dropped)
            yield from (g, c)

    def _replication(self) -> Iterator[Metric]:
        """The replication link as the api's node view shows it (`views.replication`), and whether what the
        local Redis holds is current (`behind`: the rule /api/v1 shows "not current" by)."""
        s = self.snap
        rep = views.replication(s.info)
        yield GaugeMetricFamily("fep_redis_replication_link_up", "1 when the local Redis's replication link is "
                                "up (a replica: to its master; a master: a replica online)",
                                value=1 if rep.link_status == "up" else 0)
        if rep.lag_bytes is not None:
            yield GaugeMetricFamily("fep_redis_replication_lag_bytes", "master: replication offset its replica "
                                    "has not acknowledged", value=rep.lag_bytes)
        yield GaugeMetricFamily("fep_redis_current", "1 when the local Redis's copy of the master's state is "
                                "current; 0: a replica whose link is down (or that heard nothing for "
                                "replica_down_s), or a master left behind by the VIP", value=0 if s.behind else 1)

    def _service_counters(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        latency: dict[str, tuple[int, float]] = {}
        for (service, node), h in sorted(self.snap.counters.items()):
            for fname, raw in sorted(h.items()):
                v = views.to_float(raw)
                if v is None or fname == "control_latency_ms_sum":  # shown as the summary below
                    continue
                name = metric_name(service, fname)
                if name not in families:
                    doc = HELP.get(fname, f"{service} counter {fname}")
                    cls = GaugeMetricFamily if fname in GAUGES else CounterMetricFamily
                    families[name] = cls(name, doc, labels=["node"])
                families[name].add_metric([node], v)  # type: ignore[attr-defined]
            if service == "forwarder" and "control_latency_ms_sum" in h:
                latency[node] = (views.to_int(h.get("controls")) or 0,
                                 views.to_float(h.get("control_latency_ms_sum")) or 0.0)
        yield from families.values()
        if latency:
            lat = SummaryMetricFamily(
                "fep_forwarder_control_latency_ms",
                "latency of controls from a master's command to the device's answer, ms", labels=["node"])
            for node, (count, total) in sorted(latency.items()):
                lat.add_metric([node], count_value=count, sum_value=total)
            yield lat

    def _streams(self) -> Iterator[Metric]:
        s = self.snap
        yield CounterMetricFamily("fep_lease_changes", "changes of lease holder (all RTUs, both nodes)",
                                  value=s.lease_events.added)
        yield CounterMetricFamily("fep_controls_finished",
                                  "controls that reached a final state (audit entries)", value=s.audit.added)
        yield CounterMetricFamily("fep_changes_entries", "fenced writes recorded in the change stream",
                                  value=s.changes.added)
        yield GaugeMetricFamily("fep_changes_stream_length", "entries kept in the change stream",
                                value=s.changes.length)
        if s.changes.last_ms is not None:
            yield GaugeMetricFamily("fep_changes_last_age_seconds",
                                    "age of the newest change-stream entry (Redis clock)",
                                    value=max(0.0, (s.now_ms - s.changes.last_ms) / 1000))

    def _heartbeats(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("fep_service_up", "1 when the service's heartbeat is fresh",
                               labels=["service", "node"])
        age = GaugeMetricFamily("fep_heartbeat_age_seconds", "age of the service's last heartbeat",
                                labels=["service", "node"])
        for (service, node), raw in sorted(self.snap.heartbeats.items()):
            hb = views.heartbeat(service, node, raw, self.hb_max_age_s, self.snap.hb_ttl_ms.get((service, node)),
                                 self.snap.hb_unknown)
            if hb.alive is not None:  # unknown (a replica cut off from the master): no sample
                up.add_metric([service, node], 1 if hb.alive else 0)
            if raw and hb.age_s is not None:
                age.add_metric([service, node], max(0.0, hb.age_s))
        yield up
        yield age

    def _tls(self) -> Iterator[Metric]:
        """The [tls] files' ends each forwarder reports in its heartbeat (`tls_expiry`, `TlsPolicy.expiries`):
        the earliest per file and CN (two CAs of one name), nothing of an entry that is not one."""
        ends: dict[tuple[str, str, str], float] = {}
        for n in NODES:
            for e in _entries(self.snap.heartbeats.get(("forwarder", n)), "tls_expiry"):
                ms = views.to_int(e.get("ms"))
                if ms is not None and isinstance(e.get("file"), str) and isinstance(e.get("cn"), str):
                    key = (n, e["file"], e["cn"])
                    ends[key] = min(ends.get(key, math.inf), ms / 1000)
        g = GaugeMetricFamily("fep_tls_expiry_timestamp_seconds", "when a [tls] file of the node's forwarder "
                              "expires (the server certificate's or a CA certificate's notAfter, a CRL's "
                              "nextUpdate), Unix seconds", labels=["node", "file", "cn"])
        for (n, f, cn), t in sorted(ends.items()):
            g.add_metric([n, f, cn], t)
        yield g

    def _rtus(self) -> Iterator[Metric]:
        s = self.snap
        holder = GaugeMetricFamily("fep_lease_holder", "1 for the node that holds the RTU's lease",
                                   labels=["rtu", "node"])
        epoch = GaugeMetricFamily("fep_lease_epoch", "epoch of the RTU's lease", labels=["rtu"])
        queue = GaugeMetricFamily("fep_control_queue_depth", "controls waiting for the RTU's lease holder",
                                  labels=["rtu"])
        link = GaugeMetricFamily("fep_link_up", "1 when the node reaches the RTU's device (vala/valb)",
                                 labels=["rtu", "node"])
        conn = GaugeMetricFamily("fep_channel_connected",
                                 "1 when the node's channel to the device is connected",
                                 labels=["rtu", "node", "channel"])
        active = GaugeMetricFamily("fep_channel_active", "channel the node uses for the RTU (1 or 2)",
                                   labels=["rtu", "node"])
        acq_alive = {n: views.heartbeat("acquirer", n, s.heartbeats.get(("acquirer", n)), self.hb_max_age_s,
                                        s.hb_ttl_ms.get(("acquirer", n)), s.hb_unknown).alive for n in NODES}
        for rid, h in sorted(s.leases.items()):
            ls = views.lease(h if isinstance(h, dict) else {}, s.now_ms, s.behind)
            for n in NODES:
                if s.behind is None:  # a copy that may be behind the master's says nothing current
                    holder.add_metric([str(rid), n], 1 if ls.holder == n and not ls.lapsed else 0)
            epoch.add_metric([str(rid)], ls.epoch)
            queue.add_metric([str(rid)], s.queues.get(rid, 0))
            lk = views.link(s.links.get(rid) if isinstance(s.links.get(rid), dict) else {}, s.behind)
            for n, v in (("A", lk.vala), ("B", lk.valb)):
                if v is not None:
                    link.add_metric([str(rid), n], 1 if v else 0)
            rtu = self.model.rtus.get(rid) if self.model else None
            for n in NODES:
                ch = s.channels.get((rid, n))
                if rtu is None or not isinstance(ch, dict) or not ch or s.behind or not acq_alive[n]:
                    continue  # no report, or one left by an acquirer not seen alive: not current
                st = views.channels(rtu, n, ch)
                if st.active is not None:
                    active.add_metric([str(rid), n], st.active)
                for c in st.channels:
                    if c.connected is not None:
                        conn.add_metric([str(rid), n, str(c.no)], 1 if c.connected else 0)
        clients = GaugeMetricFamily("fep_forwarder_connected_masters",
                                    "masters connected to a forwarding RTU", labels=["rtu", "node"])
        for (rid, n), c in sorted(s.fwd_clients.items()):
            clients.add_metric([str(rid), n], c)
        yield from (holder, epoch, queue, link, conn, active, clients)


def _entries(raw: str | None, name: str) -> list[dict[str, Any]]:
    """The objects of the list `name` of a heartbeat's JSON (none when it is not one: another writer's, garbled)."""
    try:
        hb = json.loads(raw) if raw else {}
    except ValueError:
        return []
    items = hb.get(name) if isinstance(hb, dict) else None
    return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []


def render(snap: MetricsSnapshot, model: Model | None, hb_max_age_s: float) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap, model, hb_max_age_s))
    return generate_latest(registry)
