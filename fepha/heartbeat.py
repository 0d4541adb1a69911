"""Service heartbeats: a key with a TTL of three periods that the service refreshes every period.

The api's /ready and each worker's ``--check`` (a Docker health check) read it; a missing key means the
service is dead, hung or cut off from the master Redis.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any

import redis

from fepha import keyspace as ks

SERVICES = ("acquirer", "forwarder")


def lifetime_ms(period_s: float) -> int:
    """The key's TTL: three periods."""
    return int(period_s * 3000)


def lease_timers(cfg: Any) -> dict[str, int]:
    """The timers (ms) that decide a lease takeover, as the acquirer sends them to `lease_tick` and reports
    them in its heartbeat: the api forecasts a takeover by the acquirers' own (docs/api.md "Device
    reached"), not by its own configuration, which may differ."""
    return {"lease_ttl_ms": int(cfg.lease_ttl_s * 1000), "lease_tick_ms": int(cfg.lease_tick_s * 1000),
            "takeover_ms": int(cfg.takeover_s * 1000)}


def payload(service: str, node: str, gen: int, period_s: float, **extra: Any) -> str:
    """The key's JSON; `ttl_ms` (its lifetime) lets a reader whose own heartbeat_s differs judge its TTL."""
    return json.dumps({"service": service, "node": node, "pid": os.getpid(), "host": socket.gethostname(),
                       "ts_ms": int(time.time() * 1000), "gen": gen, "ttl_ms": lifetime_ms(period_s), **extra})


async def beat(r: Any, service: str, node: str, period_s: float, gen: int, **extra: Any) -> None:
    await r.set(ks.heartbeat(service, node), payload(service, node, gen, period_s, **extra),
                px=lifetime_ms(period_s))


def read_sync(r: Any, service: str, node: str) -> dict[str, Any] | None:
    raw = r.get(ks.heartbeat(service, node))
    return json.loads(raw) if raw else None


def check(r: Any, service: str, node: str, max_age_s: float) -> tuple[bool, str]:
    """(fresh, reason) for a `--check` command: fresh when the key exists, is younger than max_age_s and
    does not say `stopping`. A planned stop's last heartbeat (the acquirer's, `stopping` while it hands its
    leases over) outlives the process by up to its TTL: the container that replaces it (`docker compose
    up -d` with a new image) must not be called healthy on it before its own process has beaten. A key
    that is not a JSON object with a finite number `ts_ms` (another writer's, a garbled one) is not fresh:
    `{"ts_ms": NaN}` was "alive (nan s ago)", and no `ts_ms`, a string or a list raised (a 500 in the api)."""
    try:
        hb = read_sync(r, service, node)
    except (redis.RedisError, OSError) as exc:  # unreachable: not healthy, say why
        return False, f"redis: {exc}"
    except ValueError as exc:  # garbled
        return False, f"heartbeat of {service} on node {node} is not JSON: {exc}"
    if hb is None:
        return False, f"no heartbeat of {service} on node {node}"
    ts = hb.get("ts_ms") if isinstance(hb, dict) else None
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        what = "is not a JSON object" if not isinstance(hb, dict) else f"has no valid ts_ms ({ts!r})"
        return False, f"heartbeat of {service} on node {node} {what}: its age is unknown"
    age = time.time() - ts / 1000
    if age > max_age_s:
        return False, f"heartbeat of {service} on node {node} is {age:.1f} s old"
    if hb.get("stopping"):
        return False, f"{service} on node {node} is stopping (pid {hb.get('pid')}, {age:.1f} s ago)"
    return True, f"{service} on node {node} alive (pid {hb.get('pid')}, {age:.1f} s ago)"
