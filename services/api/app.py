"""The api application: `create_app(cfg)` builds a FastAPI app that reads this node's local Redis.

It serves the versioned JSON API (`routes.py`), /health, /ready, /metrics and the operator dashboard
(`static/`, plain files). Failures become answers here, never a 500: an unknown id is a 404, an action
the state does not allow a 409, and a Redis outage (or no configuration loaded) a 503 with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from redis import exceptions as rex
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from fep_api import routes
from fep_api.head import HeadAsGet
from fep_api.live import TRANSPORT, Hub, TooManyClients
from fep_api.state import Conflict, NoConfig, NotFound, Store, Unprocessable
from fepha import redisconn
from fepha.config import NodeConfig
from fepha.listen import OUT_OF_FDS
from fepha.logsetup import OnceLogger

log = logging.getLogger("fep_api")
STATIC = Path(__file__).resolve().parent / "static"

DESCRIPTION = """Status of one fep-ha node, read from the node's own Redis (master or replica).

Reads are open unless `[api] open_reads = false`; operator actions need `Authorization: Bearer <token>`
with the token of `[api] token` (empty: actions disabled). Times are milliseconds since the epoch.
"""


class App(FastAPI):
    """FastAPI that puts the connection's transport in the scope (`live.TRANSPORT`) when the server's `send`
    is a method of an object holding it (uvicorn's request cycle): the live stream aborts a connection whose
    peer takes no data (a graceful close would wait for it for good); with any other server it is absent and
    such a stream ends with its response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if scope["type"] == "http" and transport is not None:
            scope[TRANSPORT] = transport
        await super().__call__(scope, receive, send)


def create_app(cfg: NodeConfig) -> FastAPI:
    """The api for the node `cfg` describes. Redis clients connect lazily; the lifespan closes them."""
    # one retry, without backoff: a dropped connection (Redis restarted) is reopened at once, and a hung
    # Redis gets its 503 after two socket timeouts (redis-py's default, three retries with backoff, answered
    # the first request after ~9 s with a 1 s timeout, past the compose health check's 4 s)
    store = Store(cfg, redisconn.local_async(cfg, retry=redisconn.resend_once()))
    hub = Hub(store, cfg.api_stream_clients, cfg.api_stream_queue, health_s=min(1.0, cfg.heartbeat_s),
              block_ms=int(min(500, cfg.socket_timeout_s * 500)))  # XREAD BLOCK within the socket timeout
    once = OnceLogger(log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await hub.aclose()
            await store.aclose()

    app = App(title="fep-ha api", version=routes.VERSION, description=DESCRIPTION, lifespan=lifespan)
    app.state.cfg = cfg
    app.state.store = store
    app.state.hub = hub

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own 404 and 405 said "Not Found" and "Method Not Allowed": say what was not found,
        what was not allowed (the answers of the routes themselves, 401/403/413/415, pass unchanged)."""
        detail, path = exc.detail, request.url.path
        path = path if len(path) <= 200 else path[:200] + "…"  # a 100 kB path is not sent back whole
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such path: {path} (the api's paths are listed at /docs)"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.method} is not allowed on {path}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error(409, str(exc))

    @app.exception_handler(Unprocessable)
    async def unprocessable(_: Request, exc: Unprocessable) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(TooManyClients)
    async def too_many(_: Request, exc: TooManyClients) -> JSONResponse:
        return error(503, str(exc))

    @app.exception_handler(NoConfig)
    async def no_config(_: Request, exc: NoConfig) -> JSONResponse:
        return error(503, str(exc))

    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        once.problem("redis", f"unreachable: {exc}")
        return error(503, f"Redis unreachable: {exc}")

    async def redis_error(_: Request, exc: Exception) -> JSONResponse:
        once.problem("redis", f"error: {exc}")
        return error(503, f"Redis error: {exc}")

    app.add_exception_handler(rex.ConnectionError, redis_down)
    app.add_exception_handler(rex.TimeoutError, redis_down)
    app.add_exception_handler(ConnectionError, redis_down)
    app.add_exception_handler(TimeoutError, redis_down)
    app.add_exception_handler(rex.RedisError, redis_error)

    async def os_error(_: Request, exc: Exception) -> JSONResponse:
        """Out of file descriptors (a file or module the request needed could not be opened): 503, as a
        Redis connection that cannot be opened is; any other OSError stays a failure of ours."""
        if isinstance(exc, OSError) and exc.errno in OUT_OF_FDS:
            once.problem("files", f"out of file descriptors: {exc}")
            return error(503, f"out of file descriptors: {exc}")
        raise exc

    app.add_exception_handler(OSError, os_error)

    @app.middleware("http")
    async def recovered(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """An outage logged once (`once`) is over when the local Redis answered again: a reply read while
        this request ran. Any answer below 500 cleared it, so while Redis was down every 405, 422, /health
        or dashboard file in between logged the outage again at its next 503."""
        replies = store.replies
        response = await call_next(request)
        if response.status_code < 500:
            if store.replies > replies:
                once.clear("redis")
            once.clear("files")
        return response

    app.include_router(routes.probes)
    app.include_router(routes.v1)
    app.include_router(routes.ops)
    app.include_router(routes.prom)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def openapi() -> dict[str, Any]:
        """The schema says what this node's configuration enforces: with `[api] open_reads` (the default)
        a read takes no token and is never 401/403, so no read lists the bearer scheme (a client, or a
        checker, that believed it would send a token nobody asks for, or expect a 401 that never comes)."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema["paths"][routes.HANDOVER]["post"]["requestBody"] = routes.handover_body(cfg.lease_tick_s)
            if cfg.api_open_reads:
                for op in (ops.get("get") for ops in schema.get("paths", {}).values()):
                    if op is not None:
                        op.pop("security", None)
                        for code in ("401", "403"):
                            op.get("responses", {}).pop(code, None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(HeadAsGet)
    return app
