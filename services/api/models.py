"""Response and request models of the api: the OpenAPI schema is generated from these.

Times are integers in milliseconds since the epoch (`*_ms`), the unit every key in Redis uses; point
values also carry an ISO 8601 `time` for people. Fields that a writer may not have set yet are optional
(`null`), so a half-initialised node (acquirer not started, no link state yet) is shown, not an error.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

NodeId = Literal["A", "B"]
Kind = Literal["AI", "DI", "ACC", "DO", "AO"]

_DIGITS = re.compile(r"-?[0-9]+")


def _digits(v: Any) -> Any:
    """Refuse an integer parameter not written in ASCII digits: read leniently (`int("1_0")` is 10,
    `int(" 1")` 1, pydantic takes "1.0" as 1), a typo would name another RTU, and a handover would move it."""
    if isinstance(v, str) and not _DIGITS.fullmatch(v):
        raise ValueError(f"{v!r} is not an integer written in digits (such as 12 or -1)")
    return v


Int = Annotated[int, BeforeValidator(_digits)]
"""An integer path or query parameter: decimal digits with an optional minus sign, nothing else."""
# Bounded ones carry their bounds inside, before the validator: given as Query(ge=...) they came after it,
# and the OpenAPI schema said "ge"/"le" (no JSON Schema keyword) instead of minimum/maximum
Offset = Annotated[int, Ge(0), Le(10**9), BeforeValidator(_digits)]
Limit = Annotated[int, Ge(1), Le(1000), BeforeValidator(_digits)]
Seconds = Annotated[int, Ge(1), Le(3600), BeforeValidator(_digits)]
RtuFilter = Annotated[int, Ge(0), Le(2**63 - 1), BeforeValidator(_digits)]
StreamRtu = Annotated[str, StringConstraints(pattern=r"^(vp|[0-9]{1,20})$")]
"""An RTU id of the live stream's filter, or `vp` (the virtual points)."""


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one sentence saying what is wrong."""

    detail: str


class ValidationErrorBody(BaseModel):
    detail: list[dict[str, Any]] | str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    node: NodeId
    version: str


class Check(BaseModel):
    name: str = Field(description="redis, config, replication (a replica, or a master left behind), "
                                  "heartbeat:acquirer, heartbeat:forwarder")
    ok: bool
    detail: str


class Ready(BaseModel):
    ready: bool
    node: NodeId
    checks: list[Check]
    reasons: list[str] = Field(description="detail of every failed check; empty when ready")


class Heartbeat(BaseModel):
    service: str
    node: NodeId
    alive: bool | None = Field(description="the heartbeat key exists (it lives 3 heartbeat periods); null: "
                                           "unknown, the local Redis is a replica cut off from the master "
                                           "(detail says so)")
    detail: str
    age_s: float | None = None
    pid: int | None = None
    host: str | None = None
    gen: int | None = Field(None, description="configuration generation the service runs")


class RedisInfo(BaseModel):
    address: str = Field(description="the local Redis this api reads")
    role: str = Field(description="master or slave (replica)")
    master: str | None = Field(None, description="host:port of the master when the local Redis is a replica")
    link_status: str | None = Field(None, description="replica only: up or down")


class CfgInfo(BaseModel):
    gen: int = Field(description="configuration generation, 0 when none is loaded")
    loaded_at_ms: int | None = None
    source: str | None = None
    sha256: str | None = None


class NodeInfo(BaseModel):
    node: NodeId
    peer: NodeId
    ip: str
    time_ms: int = Field(description="the local Redis clock")
    redis: RedisInfo
    cfg: CfgInfo
    heartbeats: list[Heartbeat] = Field(description="acquirer and forwarder of both nodes")


class Lease(BaseModel):
    holder: NodeId | None = Field(None, description="node that processes the RTU's device; "
                                                    "null before the first tick")
    epoch: int = 0
    since_ms: int | None = None
    expires_ms: int | None = None
    remaining_ms: int | None = Field(None, description="expires_ms minus the local Redis clock; <0 lapsed")
    lapsed: bool | None = Field(False, description="the holder stopped renewing (process or node dead); null "
                                                   "with remaining_ms when not_current")
    reached_ms: int | None = Field(None, description="last time the holder reached the device fully (every block "
                                                    "answered, no failed poll within its reach window)")
    answered_ms: int | None = Field(None, description="last time the holder reached the device at all (fully or "
                                                     "in part: some blocks answered)")
    polled_ms: int | None = Field(None, description="the holder's last complete poll (the NT rule goes by it)")
    handover: NodeId | None = Field(None, description="target of a planned move in progress")
    handover_until_ms: int | None = None
    reach: Literal["full", "partial", "none"] | None = Field(
        None, description="how the holder reached the device at its last renewal: full (every block answered), "
                          "partial (a poll failed or left a block unanswered), none; null without a live, "
                          "current lease")
    reach_detail: str | None = Field(None, description="with reach partial or none: what the operator sees and "
                                                       "whether, and when, the other node takes the lease over")
    takeover_in_ms: int | None = Field(None, description="with reach partial or none: the earliest time, from now, "
                                                         "at which the other node can take the lease over (if it "
                                                         "reaches the device, fully for a partial holder; 0: as "
                                                         "soon as it does); null when it is known not to reach it")
    timers_from: Literal["acquirers", "api"] | None = Field(
        None, description="with reach: whose [timers] the reach and the takeover time go by: acquirers (as "
                          "their heartbeats report them: the holder's lease_ttl_s and lease_tick_s, the other "
                          "node's takeover_s; a node whose acquirer reports none by the other's), api (no "
                          "acquirer reports its timers: the api's own [timers], which may differ from "
                          "theirs)")
    not_current: str | None = Field(None, description="why the fields above are null (not current): the local "
                                                        "Redis is a replica cut off from the master, its copy "
                                                        "of the lease may be behind")


class LeaseItem(Lease):
    rtu: int
    name: str


class ChannelStatus(BaseModel):
    no: int
    host: str
    port: int
    connected: bool | None = Field(None, description="null: the node's acquirer has not reported it")
    since_ms: int | None = None
    error: str | None = None
    switches: int | None = None


class NodeChannels(BaseModel):
    node: NodeId
    reported: bool = Field(description="the node's acquirer has written a channel state for this RTU")
    active: int | None = Field(None, description="channel in use (1 or 2)")
    channels: list[ChannelStatus]
    not_current: str | None = Field(None, description="why the fields above are null (not current): that "
                                                        "node's acquirer is not alive (its last report stays "
                                                        "behind), or the local Redis is cut off from the master; "
                                                        "active, connected, since_ms and error are null then")


class Link(BaseModel):
    vala: bool | None = Field(None, description="node A reaches the device")
    valb: bool | None = Field(None, description="node B reaches the device")
    val: bool | None = Field(None, description="vala OR valb")
    since_a_ms: int | None = None
    since_b_ms: int | None = None
    since_ms: int | None = None
    not_current: str | None = Field(None, description="why the fields above are null (not current): the local "
                                                        "Redis is a replica cut off from the master, where links "
                                                        "are evaluated; vala, valb and val are null then")


class FwdClient(BaseModel):
    node: NodeId
    peer: str
    state: dict[str, Any] = Field(description="as the forwarder reported it")


LimitsFrom = Literal["forwarder", "api"]
"""Whose freshness limits NT is shown by (`Rtu.limits_from`)."""


class Rtu(BaseModel):
    id: int
    name: str
    type: Literal["acquisition", "forwarding"]
    rtutype: int
    protocol: str
    points: int = Field(description="acquisition points (T011_POINT) or forwarding points (T005..T009)")
    lease: Lease | None = Field(None, description="acquisition RTUs only")
    channel_state: list[NodeChannels] | None = Field(None, description="acquisition RTUs only, nodes A and B")
    link: Link | None = Field(None, description="acquisition RTUs only")
    values_nt: str | None = Field(None, description="acquisition RTUs: why SCADA is served this RTU's values "
                                  "with NT (not topical) now, None when they are topical (docs/forwarder.md "
                                  "\"Quality\"; /points shows them so too)")
    limits_from: LimitsFrom | None = Field(
        None, description="acquisition RTUs: whose freshness limits values_nt goes by: forwarder (the limits "
                          "this node's forwarder serves SCADA by, as its heartbeat reports them), api (no "
                          "forwarder of this node reports them: the api's own replica_down_s, "
                          "quality_stale_polls and lease_tick_s, which may differ from its)")
    listen_port: int | None = Field(None, description="forwarding RTUs only")
    clients: list[FwdClient] | None = Field(None, description="forwarding RTUs only: connected masters")


class RtuList(BaseModel):
    gen: int
    time_ms: int
    items: list[Rtu]


class LeaseList(BaseModel):
    time_ms: int
    items: list[LeaseItem]


class PointValue(BaseModel):
    value: float | int | None = None
    quality: int | None = Field(None, description="IEC 104 quality bits, 0 = good")
    quality_flags: list[str] = Field(default_factory=list,
                                     description="names of the set bits: IV, NT, SB, BL, OV")
    valid: bool = Field(False, description="a value exists and IV is not set")
    ts_ms: int | None = None
    time: str | None = Field(None, description="ts_ms as ISO 8601 UTC")
    error: str | None = Field(None, description="why the stored record could not be decoded")


class VirtualPoint(PointValue):
    id: int
    rtu: int
    name: str
    vala: bool | None = None
    valb: bool | None = None
    val: bool | None = None
    since_ms: int | None = Field(None, description="when val last changed")
    not_current: str | None = Field(None, description="why vala, valb and val are null: the local Redis is a "
                                                      "replica cut off from the master (the value is served "
                                                      "with NT then)")


class VirtualPointList(BaseModel):
    items: list[VirtualPoint]


class Point(PointValue):
    id: int
    rtu: int
    kind: Kind
    name: str
    area: str
    address: int
    datatype: str
    nt_reason: str | None = Field(None, description="with NT: why it is served not topical (its RTU's "
                                                    "`values_nt`); null when NT is not set, or set by the device")
    iv_reason: str | None = Field(None, description="with IV: the holder reaches the device in part or not at "
                                                    "all (its lease's `reach_detail`); null otherwise: the "
                                                    "device's own quality, or a block refused with a Modbus "
                                                    "exception (the acquirer's log and channel error say which)")
    age_ms: int | None = Field(None, description="time_ms of the page minus ts_ms: how old the source "
                                                 "timestamp is (a value that does not change keeps its "
                                                 "timestamp, so age alone is not staleness); null when the "
                                                 "source time is ahead of this node's Redis clock (clocks "
                                                 "differ)")
    stale: bool = Field(False, description="NT (not topical) is set: the value is not current")


class PointPage(BaseModel):
    total: int = Field(description="points matching the filter")
    offset: int
    limit: int
    time_ms: int | None = Field(None, description="the local Redis clock when the page was read")
    limits_from: LimitsFrom | None = Field(
        None, description="whose freshness limits NT goes by (as `Rtu.limits_from`); null: no value was read")
    items: list[Point]


Quality = Literal["good", "bad", "IV", "NT", "SB", "BL", "OV"]
"""Point filter: good (a value, quality 0), bad (no value, or any bit set), or one quality bit set."""


class Forward(PointValue):
    """A forwarding point (T005..T009) with the value of its source point, as masters are served it."""

    id: int = Field(description="ZFID")
    rtu: int = Field(description="forwarding RTU")
    table: str
    kind: Kind
    address: int
    type: str | None = None
    coef: float
    src: int = Field(description="source point id (T011_POINT or T036_VTPNT)")
    src_name: str | None = Field(None, description="null: the source is not in the configuration")
    src_rtu: int | None = None


class ForwardList(BaseModel):
    rtu: int
    time_ms: int
    items: list[Forward]


EventKind = Literal["lease", "channel", "link", "config", "control", "role", "master"]


class Event(BaseModel):
    """One entry of the timeline (fep:events, fep:lease:events or fep:ctl:audit, see docs/keyspace.md)."""

    id: str = Field(description="<stream id>.<source> (0 events, 1 lease, 2 control); pass as `before`")
    kind: EventKind
    ts_ms: int | None = Field(None, description="when it happened (the writer's clock)")
    time: str | None = None
    node: str | None = Field(None, description="the node it happened on or concerns (A/B)")
    rtu: int | None = None
    text: str = Field(description="one line for people")
    fields: dict[str, str] = Field(description="the stream entry as written")


class EventPage(BaseModel):
    limit: int
    items: list[Event] = Field(description="newest first")
    next_before: str | None = Field(None, description="pass as `before` for the next (older) page; null at the "
                                                      "end")


class Sample(BaseModel):
    ts_ms: int
    value: float | int | None
    quality: int


class Series(BaseModel):
    id: int
    name: str
    samples: list[Sample] = Field(description="oldest first: every change in the window, then the current "
                                              "value")


class TrendSet(BaseModel):
    rtu: int
    seconds: int
    time_ms: int
    scanned: int = Field(description="change-stream entries read")
    truncated: bool = Field(description="the window reaches past the stream's retention or the scan limit")
    series: list[Series]


class Replication(BaseModel):
    role: str = Field(description="role of the local Redis: master or slave")
    master: str | None = Field(None, description="host:port of the master (replica only)")
    link_status: str | None = Field(None, description="replica: up/down; master: up when a replica is online")
    lag_s: float | None = Field(None, description="replica: seconds since the last byte from the master; "
                                                  "master: the replica's reported lag")
    lag_bytes: int | None = Field(None, description="master: replication offset not yet acknowledged by "
                                                    "the replica")
    down_s: float | None = Field(None, description="replica with its link down: seconds since it went down "
                                                   "(lag_s is null then)")
    replicas: list[str] = Field(default_factory=list, description="master only: connected replicas")


class NodeHealth(BaseModel):
    node: NodeId
    this: bool = Field(description="the node this api runs on")
    master: bool | None = Field(None, description="its Redis is the master (null: unknown)")
    acquirer: Heartbeat
    forwarder: Heartbeat


class Overview(BaseModel):
    node: NodeId
    time_ms: int
    master_node: NodeId | None = Field(None, description="the node whose Redis is the master")
    master_detail: str | None = Field(None, description="why master_node or a node's master flag is null")
    nodes: list[NodeHealth]
    replication: Replication
    last_failover: Event | None = Field(None, description="the newest role change to master")
    cfg: CfgInfo


class ControlRecord(BaseModel):
    id: int | None = None
    rtu: int | None = None
    point: int | None = None
    value: float | None = None
    origin: str | None = None
    state: str | None = Field(None, description="queued, executing (not in the audit), then done, failed, expired "
                                                "(never executed) or unknown (the executing node vanished)")
    result: str | None = Field(None, description="why it ended so: the device's answer, or the reason it was not "
                                                 "executed")
    answered: str | None = Field(None, description="what the submitting forwarder answered its master when "
                                                   "that differs from `state`: `unknown` (the executor's "
                                                   "outcome reached the master after the deadline's answer)")
    executor: str | None = None
    epoch: int | None = None
    created_ms: int | None = None
    deadline_ms: int | None = None
    claimed_ms: int | None = None
    finished_ms: int | None = None
    from_split: str | None = Field(None, description="audit entries only: the node whose Redis ran this control "
                                                     "during a split brain, copied here before that Redis was "
                                                     "demoted (docs/ha.md \"Split brain\"); null otherwise")
    split_id: str | None = Field(None, description="with from_split: the entry's id in that node's audit")


class Control(ControlRecord):
    stream_id: str = Field(description="id of the audit entry; pass it as `before` to page on")


class ControlPage(BaseModel):
    total: int = Field(description="entries in the audit stream (bounded to about 10000)")
    limit: int
    items: list[Control]
    next_before: str | None = Field(None, description="pass as `before` for the next (older) page; "
                                                      "null at the end")


class HandoverRequest(BaseModel):
    # a misspelt field ({"targt": "A"}) is a 422, not ignored: ignored, the lease moved to the default node,
    # which may be the opposite of the one the operator named
    # strict: "wait": "yes" or "window_s": "10" is refused, not read as true or 10 (a person means something
    # by what they type; a value of another type is a mistake to show, not to guess)
    model_config = ConfigDict(extra="forbid", strict=True)

    target: NodeId | None = Field(None, description="node to move the lease to; "
                                                    "default: the node that does not hold it")
    window_s: float | None = Field(None, gt=0, le=600, allow_inf_nan=False,
                                   description="the target must take the lease within this time; "
                                               "default lease_ttl_s")
    wait: bool = Field(False, description="answer only when the target took the lease (200) or the window "
                                          "passed (409)")


class HandoverResult(BaseModel):
    rtu: int
    status: Literal["pending", "already", "moved"]
    holder: NodeId | None
    epoch: int
    target: NodeId
    until_ms: int | None = None
    detail: str
