"""Connections to the two Redis a node uses: the master through the VIP (all writes) and its own local
Redis (all reads). One place builds them so timeouts and credentials are the same everywhere."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.client
import redis.client
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fepha.config import NodeConfig


def _in_redis_words(self: Any, exception: Exception, number: int, command: Any) -> None:
    """A command refused inside a pipeline raises Redis's own error, unchanged (NOREPLICAS, OOM, MISCONF,
    READONLY, "Function not found"). redis-py 6.4 rewrites it as "Command # n (<the command and its
    arguments>) of pipeline caused error: {exception.args}": in its asyncio client the reason is lost (the
    format string lacks its f), and with the arguments in it the message differs at every try, so a problem
    logged once while it lasts (`OnceLogger`) was logged again at every try. Every service builds its
    clients here, so importing this module sets it for all of them (tests/foundation/test_redisconn.py)."""


redis.client.Pipeline.annotate_exception = _in_redis_words  # type: ignore[method-assign]
aredis.client.Pipeline.annotate_exception = _in_redis_words  # type: ignore[method-assign]


def _kw(cfg: NodeConfig) -> dict[str, Any]:
    return {"password": cfg.password or None, "socket_timeout": cfg.socket_timeout_s,
            "socket_connect_timeout": cfg.socket_timeout_s, "decode_responses": True,
            "health_check_interval": 0}


def master_sync(cfg: NodeConfig) -> redis.Redis:
    return redis.Redis(host=cfg.vip, port=cfg.port, **_kw(cfg))


def local_sync(cfg: NodeConfig) -> redis.Redis:
    return redis.Redis(host=cfg.local_host, port=cfg.local_port, **_kw(cfg))


def master_async(cfg: NodeConfig, **kw: Any) -> aredis.Redis:
    return aredis.Redis(host=cfg.vip, port=cfg.port, **{**_kw(cfg), **kw})


def master_async_once(cfg: NodeConfig) -> aredis.Redis:
    """The master for commands that must reach it at most once (controls): redis-py never sends a command
    again after a timeout or a dropped connection, the caller gets the error. Its default policy would,
    and a control submit re-sent after its answer was lost queues the control again (on the same master,
    or on the promoted replica that has the first one by replication): it could run twice."""
    return master_async(cfg, retry=Retry(NoBackoff(), 0))


def local_async(cfg: NodeConfig, **kw: Any) -> aredis.Redis:
    return aredis.Redis(host=cfg.local_host, port=cfg.local_port, **{**_kw(cfg), **kw})


def resend_once() -> Retry:
    """The retry policy of an asyncio client whose commands may be sent twice (reads, lease ticks, fenced
    writes): a command whose connection drops (`CLIENT KILL`, a proxy, a Redis restarted, the role watch
    dropping connections at a VIP move) is sent again at once on a new connection, once. redis-py's default
    waits a random backoff first (0-2 s, then 0-4, 0-8 over three re-sends): a command in flight when its
    connection was killed came back 0.3-1.9 s late (the role watch's ROLE, then "role not read within
    role_watch_s, hung?"; a pub/sub message 0.2-1.9 s late; a stream read's changes held back). What fails
    then is the caller's to handle, as before. A new object per client (redis-py adds to a client's retry
    errors)."""
    return Retry(NoBackoff(), 1)


def role_of(info: dict[str, Any]) -> tuple[str, str | None]:
    """('master', None) or ('slave', 'host:port') from INFO replication."""
    role = str(info.get("role", "unknown"))
    if role == "slave":
        return role, f"{info.get('master_host')}:{info.get('master_port')}"
    return role, None


def own_pool(client: aredis.Redis, **kw: Any) -> aredis.Redis:
    """A client to the same server with the same settings (`kw` added) and a connection pool of its own: its
    connections, once made, are not taken by the other users of `client`. On a slow link a new connection
    costs two round trips (AUTH, CLIENT SETINFO) before its first command; the acquirer's lease ticks use
    their own pool so that a burst of writes at a lease gain does not make the next renewal pay them
    (docs/ha.md "Degraded links"). With `client_name` each new connection pays one more (CLIENT SETNAME)."""
    pool = client.connection_pool
    return aredis.Redis(connection_pool=type(pool)(connection_class=pool.connection_class,
                                                   **{**pool.connection_kwargs, **kw}))

