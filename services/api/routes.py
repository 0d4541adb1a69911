"""The endpoints. Each one is a thin call into `state.Store`; errors become answers in `app.py`'s
exception handlers (unknown id 404, conflict 409, no configuration or Redis down 503)."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from fep_api import body, metrics, query
from fep_api import models as m
from fep_api.auth import require_operator, require_reader
from fep_api.live import LiveResponse
from fep_api.state import Store

try:
    VERSION = metadata.version("fep-ha")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0"


Responses = dict[int | str, dict[str, Any]]  # FastAPI's `responses=` type


def _err(desc: str) -> dict[str, Any]:
    return {"model": m.ErrorBody, "description": desc}


E404: Responses = {404: _err("unknown id")}
E503: Responses = {503: _err("Redis unreachable or no configuration loaded")}
AUTH: Responses = {401: _err("no bearer token (reads closed by configuration)"), 403: _err("wrong token")}
E422: Responses = {422: {"model": m.ValidationErrorBody,
                          "description": "a malformed, unknown or repeated parameter (query.py), or a body "
                                         "that is not the operation's fields"}}
READ: Responses = {**AUTH, **E503, **E422}

probes = APIRouter(tags=["probes"])
v1 = APIRouter(prefix="/api/v1", dependencies=[Depends(require_reader), Depends(query.known)])
ops = APIRouter(prefix="/api/v1", tags=["operator actions"])
prom = APIRouter(tags=["metrics"], dependencies=[Depends(require_reader), Depends(query.known)])


def store(request: Request) -> Store:
    return request.app.state.store


@probes.get("/health", response_model=m.Health, summary="Liveness: the process answers")
async def health(request: Request) -> m.Health:
    return m.Health(node=request.app.state.cfg.node_id, version=VERSION)


@probes.get("/ready", response_model=m.Ready, summary="Readiness of this node",
            responses={503: {"model": m.Ready, "description": "not ready; `reasons` says why"}},
            description="Ready when the local Redis answers, a configuration is loaded, the local copy is "
                        "current (check `replication`: a replica not cut off from the master past "
                        "replica_down_s, a master not left behind by the VIP) and this node's acquirer and "
                        "forwarder heartbeats are there (their keys live 3 heartbeat periods).")
async def ready(s: Store = Depends(store)) -> Any:
    r = await s.ready()
    if r.ready:
        return r
    return JSONResponse(r.model_dump(), status_code=503)


@v1.get("/node", response_model=m.NodeInfo, tags=["node"], responses=READ,
        summary="This node: identity, Redis role and master, configuration generation, heartbeats")
async def node(s: Store = Depends(store)) -> m.NodeInfo:
    return await s.node()


@v1.get("/rtus", response_model=m.RtuList, tags=["rtus"], responses=READ,
        summary="Every RTU: lease, channel and link state (acquisition), connected masters (forwarding)")
async def rtus(s: Store = Depends(store)) -> m.RtuList:
    return await s.rtus()


@v1.get("/rtus/{rtu_id}", response_model=m.Rtu, tags=["rtus"], responses={**READ, **E404}, summary="One RTU")
async def rtu(rtu_id: Annotated[m.Int, Path(description="T004_RTU.RTUID")], s: Store = Depends(store)) -> m.Rtu:
    return (await s.rtus(rtu_id)).items[0]


@v1.get("/leases", response_model=m.LeaseList, tags=["rtus"], responses=READ,
        summary="The lease of every acquisition RTU")
async def leases(s: Store = Depends(store)) -> m.LeaseList:
    return await s.leases()


@v1.get("/virtual-points", response_model=m.VirtualPointList, tags=["points"], responses=READ,
        summary="Virtual points: vala, valb, val = vala OR valb, and since when")
async def virtual_points(s: Store = Depends(store)) -> m.VirtualPointList:
    return await s.virtual_points()


@v1.get("/points", response_model=m.PointPage, tags=["points"], responses={**READ, **E404},
        summary="Acquisition points with their values, by point id, paged")
async def points(rtu: Annotated[m.Int | None, Query(description="only this RTU's points (404 if unknown)")]
                 = None,
                 kind: m.Kind | None = Query(None, description="only this kind"),
                 quality: m.Quality | None = Query(None, description="good (quality 0), bad (no value or "
                                                                     "any bit set), or one bit: IV, NT, SB, "
                                                                     "BL, OV"),
                 offset: Annotated[m.Offset, Query()] = 0,
                 limit: Annotated[m.Limit, Query()] = 100,
                 s: Store = Depends(store)) -> m.PointPage:
    return await s.points(rtu, kind, offset, limit, quality)


@v1.get("/points/{point_id}", response_model=m.Point, tags=["points"], responses={**READ, **E404},
        summary="One acquisition point: value, quality, timestamp")
async def point(point_id: Annotated[m.Int, Path(description="T011_POINT.PNTID")],
                s: Store = Depends(store)) -> m.Point:
    return await s.point(point_id)


@v1.get("/rtus/{rtu_id}/forwards", response_model=m.ForwardList, tags=["points"],
        responses={**READ, **E404, 409: _err("an acquisition RTU (its points are in /points)")},
        summary="The forwarding points of a forwarding RTU with their source points' values")
async def forwards(rtu_id: Annotated[m.Int, Path(description="T004_RTU.RTUID of a forwarding RTU")],
                   s: Store = Depends(store)) -> m.ForwardList:
    return await s.forwards(rtu_id)


@v1.get("/trends", response_model=m.TrendSet, tags=["points"],
        responses={**READ, **E404, 409: _err("a forwarding RTU (its points are in /rtus/{id}/forwards)")},
        summary="Recent values of one RTU's analog (AI) points, from the change stream",
        description="Every change of each AI point of the RTU within the last `seconds` (by source time), read from the "
                    "change stream `fep:chg` (bounded: ~20000 entries, so at a high change rate the window "
                    "is shorter; `truncated` says so), at most 20000 entries scanned and 600 samples per "
                    "point (the newest), then the current value at the page time.")
async def trends(rtu: Annotated[m.Int, Query(description="an acquisition RTU (404 if unknown)")],
                 seconds: Annotated[m.Seconds, Query(description="window, seconds back from now")]
                 = 300,
                 s: Store = Depends(store)) -> m.TrendSet:
    return await s.trends(rtu, seconds)


@v1.get("/events", response_model=m.EventPage, tags=["timeline"], responses=READ,
        summary="What happened, newest first, paged: lease changes, channel switches, link changes, "
                "configuration loads, controls, Redis role changes, masters connecting and leaving",
        description="The merge of the bounded streams `fep:events`, `fep:lease:events` and `fep:ctl:audit` "
                    "(~10000 entries each, see docs/keyspace.md). Filters scan at most those streams.")
async def events(kind: m.EventKind | None = Query(None, description="only this kind"),
                 rtu: Annotated[m.RtuFilter | None, Query(description="only events of this RTU")]
                 = None,
                 before: str | None = Query(None, pattern=r"^[0-9]{1,20}(-[0-9]{1,20})?(\.[0-2])?$",
                                            description="only events older than this event id (next_before)"),
                 limit: Annotated[m.Limit, Query()] = 50, s: Store = Depends(store)) -> m.EventPage:
    return await s.events(kind, rtu, before, limit)


@v1.get("/overview", response_model=m.Overview, tags=["node"], responses=READ,
        summary="Health at a glance: both nodes, who is master, replication link and lag, last failover, "
                "last configuration load")
async def overview(s: Store = Depends(store)) -> m.Overview:
    return await s.overview()


SSE_EVENT = {"type": "object", "required": ["event", "data"],
             "properties": {"event": {"type": "string",
                                      "enum": ["hello", "values", "timeline", "health", "overflow",
                                               "unavailable"]},
                            "data": {"type": "string", "description": "JSON"}},
             "description": "one server-sent event"}


@v1.get("/stream", response_class=StreamingResponse, tags=["timeline"],
        responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                         "description": "server-sent events: hello, values, timeline, health, overflow "
                                        "(see docs/api.md)"},
                   **AUTH, **E404, **E422, 503: _err("too many live clients ([api] stream_clients), or Redis unreachable")},
        summary="Live updates for dashboards (server-sent events): value changes, new timeline events, "
                "node health",
        description="One shared reader per api process follows the change stream and the timeline; each "
                    "client has a bounded queue and is dropped (message `overflow`) when it falls that far "
                    "behind. At most `[api] stream_clients` clients; more get 503. When the local Redis stops "
                    "answering, every stream ends (message `unavailable`) and new ones get 503.")
async def stream(request: Request,
                 rtu: list[m.StreamRtu] | None = Query(None, max_length=100,
                                                     description="RTU ids whose value changes to send (`vp`: "
                                                                 "virtual points; an unknown RTU is 404); "
                                                                 "default all"),
                 values: bool = Query(True, description="send value changes at all"),
                 duration_s: float | None = Query(None, gt=0, le=86400, allow_inf_nan=False,
                                                  description="end the stream after this long "
                                                              "(default: until the client leaves)")
                 ) -> LiveResponse:
    hub = request.app.state.hub
    await hub.store.local.ping()  # a Redis that does not answer: 503 now, not a stream of keepalives
    # an unknown RTU was taken and sent nothing, forever: a dashboard of "RTU 99" looked still, not wrong
    wanted = await hub.store.stream_rtus(rtu) if rtu else None
    peer = request.client
    client = hub.join(wanted, values, f"{peer.host}:{peer.port}" if peer else "")
    cfg = request.app.state.cfg
    return LiveResponse(hub, client, hub.messages(client, cfg.node_id, duration_s), cfg.api_stream_write_timeout_s,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@v1.get("/controls", response_model=m.ControlPage, tags=["controls"], responses=READ,
        summary="The control audit, newest first, paged")
async def controls(before: str | None = Query(None, pattern=r"^[0-9]{1,20}(-[0-9]{1,20})?$",
                                               description="only entries older than this stream id "
                                                           "(next_before)"),
                   limit: Annotated[m.Limit, Query()] = 50, s: Store = Depends(store)) -> m.ControlPage:
    return await s.controls(before, limit)


@v1.get("/controls/{ctl_id}", response_model=m.ControlRecord, tags=["controls"], responses={**READ, **E404},
        summary="One control by id, as it stands now: queued, executing, done, failed, expired or unknown, "
                "with its result")
async def control(ctl_id: Annotated[m.Int, Path(description="the control id (fep:ctl:seq)")],
                  s: Store = Depends(store)) -> m.ControlRecord:
    return await s.control(ctl_id)


HANDOVER = "/api/v1/rtus/{rtu_id}/handover"


def handover_body(lease_tick_s: float) -> dict[str, Any]:
    """The handover's request body for the OpenAPI schema (app.openapi puts it in; the route reads the body
    with body.read): a window shorter than this node's lease tick is refused, so that is its minimum."""
    schema = m.HandoverRequest.model_json_schema()
    window = schema["properties"]["window_s"]
    schema["properties"]["window_s"] = {"anyOf": [{"type": "number", "minimum": lease_tick_s, "maximum": 600},
                                                  {"type": "null"}], "description": window["description"]}
    return {"required": False, "content": {"application/json": {"schema": {
        "anyOf": [schema, {"type": "null"}], "description": "no body or null: the defaults"}}}}


@ops.post("/rtus/{rtu_id}/handover", response_model=m.HandoverResult, status_code=202,
          dependencies=[Depends(require_operator), Depends(query.known)],
          responses={200: {"model": m.HandoverResult,
                           "description": "the target holds the lease (already or moved)"},
                     **AUTH, **E404, **E422,
                     409: _err("a forwarding RTU, no holder yet, or (wait) the target did not take the "
                               "lease"),
                     413: _err(f"a body larger than {body.MAX_BYTES} bytes"),
                     415: _err("a body that is not JSON (Content-Type)"),
                     503: _err("the master Redis is unreachable, or no configuration loaded")},
          summary="Planned move of an acquisition RTU's lease to the other node",
          description="Marks a handover on the master (function `lease_handover`). The target node takes the "
                      "lease at its next lease tick only if it reaches the device within the window; "
                      "otherwise the holder keeps it. 202: pending. With `wait`, answers 200 when moved or "
                      "409 when the window passed.")
async def handover(request: Request, response: Response,
                   rtu_id: Annotated[m.Int, Path(description="T004_RTU.RTUID of an acquisition RTU")],
                   s: Store = Depends(store)) -> m.HandoverResult:
    req = await body.read(request, m.HandoverRequest)
    res = await s.handover(rtu_id, req or m.HandoverRequest())
    if res.status != "pending":
        response.status_code = 200
    return res


@prom.get("/metrics", response_class=Response, summary="Prometheus metrics of both nodes",
          responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                           "description": "Prometheus text format"}, **READ})
async def prometheus(request: Request, s: Store = Depends(store)) -> Response:
    snap, model = await s.metrics_snapshot()
    hub = request.app.state.hub
    snap.api = (request.app.state.cfg.node_id, len(hub.places), hub.dropped_total)
    body = metrics.render(snap, model, s.hb_max_age_s)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
