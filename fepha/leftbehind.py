"""A master left behind: the local Redis is a master nobody writes to any more, because the VIP (where every
service writes) leads to another Redis (docs/ha.md "keepalived stopped"; docs/forwarder.md "Quality").

keepalived moved the VIP to the peer and promoted the peer's Redis, but this node's Redis was not demoted
(keepalived was killed here, or the peer took longer than the stop script waits): two masters run side by
side and this node's copy is frozen while it still looks like the master's. Found by comparing INFO
run_id of the local Redis with that of the Redis reached through the VIP, asked only when the local Redis
is a master without an online replica (the one case where it can be left behind), at most once per
`every_s`, in a task of its own so that a VIP nobody answers never holds the caller longer than it chooses
to wait. The rule (`verdict`) is a plain function; the api and the forwarder both use `VipProbe`.

The VIP can be left behind too: keepalived killed on this host with its VRRP process and the script that
would remove the VIP (start.sh), so the VIP stays configured here while the peer takes it as well. From
this host the VIP then leads to the local Redis, as on a real master; what tells them apart is
keepalived's sign of life, the file its track script rewrites every second (`[quality] vrrp_alive_file`):
older than `vrrp_alive_max_age_s` while the VIP leads here = left behind. A file that was never written
(no keepalived on this host) says nothing, and in a split brain (link cut) both keepalived live.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

from redis import exceptions as rex

from fepha import redisconn
from fepha.config import NodeConfig


def may_be_left_behind(info: Mapping[str, Any]) -> bool:
    """From INFO replication of the local Redis: a master without an online replica (a replica follows a
    master, and a master with an online replica is the one the peer follows: neither is left behind)."""
    return info.get("role") == "master" and not any(
        isinstance(v, Mapping) and v.get("state") == "online" for k, v in info.items() if str(k).startswith("slave"))


HOLDS_VIP = "left behind as a master holding the VIP"
"""How a verdict about a VIP left on this host without keepalived begins."""


def verdict(info: Mapping[str, Any], mine: str | None, theirs: str | None, vip: str,
            vrrp_age_s: float | None = None, vrrp_max_age_s: float = 4.0) -> str | None:
    """Why the local Redis holds no current state (`info`: its INFO replication; `mine` / `theirs`: INFO
    run_id of the local Redis and of the Redis behind the VIP, None when not known; `vrrp_age_s`: age of
    keepalived's sign of life on this host, None when there is none), None when it may: a VIP that does
    not answer says nothing, and a VIP that leads to the local Redis means it is the master, unless
    keepalived here has given no sign of life for longer than `vrrp_max_age_s` (the VIP left behind)."""
    if not may_be_left_behind(info) or not mine or not theirs:
        return None
    if mine != theirs:
        return f"left behind as a master: the VIP {vip} leads to another Redis, where the services write"
    if vrrp_age_s is not None and vrrp_age_s > vrrp_max_age_s:
        return (f"{HOLDS_VIP} {vip} without keepalived: no sign of life from keepalived on this host for "
                f"{vrrp_age_s:.1f} s (the peer may hold the VIP too, its services write to its Redis)")
    return None


def sign_age(path: str, now: float | None = None) -> float | None:
    """Seconds since keepalived's track script last rewrote `path`, None when there is no such file (or
    no path): no keepalived on this host ever wrote it."""
    if not path:
        return None
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


class VipProbe:
    """Asks the Redis behind the VIP for its run_id, at most once per `every_s`, only while the local Redis
    may be left behind; `check` returns the verdict on the latest run_ids and on keepalived's sign of life
    read at that moment (a local file: its age counts from the kill, not from the next probe)."""

    def __init__(self, cfg: NodeConfig, every_s: float = 1.0) -> None:
        self.cfg, self.every_s = cfg, every_s
        self.reason: str | None = None
        """The latest verdict; one that starts with HOLDS_VIP: the VIP is on this host, keepalived gone."""
        self._vip: Any = None
        self._task: asyncio.Task[None] | None = None
        self._at = 0.0
        self._ids: tuple[str | None, str | None] = (None, None)   # run_ids of the local Redis, the VIP's

    async def check(self, local: Any, info: Mapping[str, Any], wait_s: float = 0.0) -> str | None:
        """`local`: a client of the local Redis, `info`: its INFO replication just read. Starts a probe
        when none ran for `every_s`, waits for it at most `wait_s` (0: not at all, the verdict of the
        previous probe's run_ids are used), and returns the verdict."""
        if not may_be_left_behind(info):
            self.reason, self._ids = None, (None, None)
            return None
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or (task.done() and loop.time() - self._at >= self.every_s):
            task = self._task = loop.create_task(self._probe(local), name="fep-vip-probe")
        if not task.done() and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), wait_s)
        mine, theirs = self._ids
        age = sign_age(self.cfg.quality_vrrp_alive_file) if mine and mine == theirs else None
        self.reason = verdict(info, mine, theirs, self.cfg.vip, age, self.cfg.quality_vrrp_alive_max_age_s)
        return self.reason

    async def _probe(self, local: Any) -> None:
        if self._vip is None:
            self._vip = redisconn.master_async_once(self.cfg)
        try:
            theirs = (await self._vip.info("server")).get("run_id")
            mine = (await local.info("server")).get("run_id")
        except (rex.RedisError, OSError):
            theirs = mine = None
        self._ids = (mine, theirs)
        self._at = asyncio.get_running_loop().time()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._vip is not None:
            await self._vip.aclose()


__all__ = ["HOLDS_VIP", "VipProbe", "may_be_left_behind", "sign_age", "verdict"]
