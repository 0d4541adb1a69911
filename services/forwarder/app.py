"""The forwarder's runner: configuration -> one ForwardServer per forwarding RTU, fed from the local Redis.

Reads go to the local Redis only (master or replica): the configuration snapshot, the full image and the
change stream (XREAD BLOCK, no polling). Writes (heartbeat, metrics, connected masters, controls) go to the
master. The full image is loaded on start, after every reconnect (not when the local Redis turns replica
under the stream read: `stream.demoted`) and when the stream was trimmed past the last entry read; a new
configuration generation (pub/sub `CFG_CHANGED`) restarts only the servers whose RTU changed.
docs/forwarder.md describes the whole path.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fepha import cfgstore, controls, events, heap, heartbeat, leftbehind, redisconn, redisfns, rolewatch
from fepha import keyspace as ks
from fepha.config import NodeConfig
from fepha.freshness import replids
from fepha.logsetup import OnceLogger
from fepha.points import Value
from fepha.semodel.model import FwdPoint, Model

from . import freshness
from .base import STALLS, ControlOutcome, ForwardServer, Update, server_class
from .drain import reload_plan
from .resume import Sid, backfill_floor, backfill_from, parse_cursors, sid_text
from .stream import (
    Routing,
    demoted,
    entry_pairs,
    image_keys,
    kept_stream,
    lag_ms,
    merge,
    parse_id,
    trimmed_past,
)
from .tlspolicy import TLS_CHECK_S, TlsPolicy
from .trace import TRACE

log = logging.getLogger("fep_forwarder")

SERVICE = "forwarder"
READ_COUNT = 1000  # stream entries per XREAD
TLS_PROTOCOLS = ("se104s", "sefeps")
REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)
DEMOTED_SYNC_S = 3.0
"""How long the stream read waits for the local Redis, turned replica under it, to finish its sync before it
reloads the full image instead of reading on (`_kept_stream`)."""
CONFIG_CHECK_S = 1.0
"""How often the main loop compares the configuration's stamp besides the CFG_CHANGED announcements: redis-py
reconnects and re-subscribes by itself, so a Redis restarted empty (or wiped) under the forwarder raises
nothing it would see (the acquirer compares as often)."""
T = TypeVar("T")


class _Stopped(Exception):
    """The planned stop is over as the follow loop was about to read the local Redis (`Forwarder._read`)."""


class RedisControlSink:
    """ControlSink over `fepha.controls` on the master Redis: queued for the source point's acquisition RTU,
    executed by that RTU's lease holder on either node. `master` must not re-send commands
    (`redisconn.master_async_once`): a control whose connection fails or is dropped (the VIP moved) is
    answered `unknown` at once, never submitted a second time.

    `confirm_role`, when set, is awaited before each control: a fresh reading of the local Redis's role that
    drops the master connections first if the VIP has just moved (`RoleWatch.confirm`), so that a control
    arriving after a promotion never goes out on a pooled connection to the old master."""

    def __init__(self, master: Any, model: Model, timeout_ms: int,
                 confirm_role: Callable[[], Awaitable[object]] | None = None) -> None:
        self.master = master
        self.model = model
        self.timeout_ms = timeout_ms
        self.confirm_role = confirm_role

    async def execute(self, fwd: FwdPoint, value: float, origin: str,
                      timeout_ms: int | None = None) -> ControlOutcome:
        point = self.model.points.get(fwd.src)
        if point is None:
            return ControlOutcome(False, "rejected", f"source point {fwd.src} is not an acquisition point")
        if self.confirm_role is not None:
            await self.confirm_role()
        try:
            res = await controls.execute(self.master, point.rtu, point.id, value, origin,
                                         timeout_ms or self.timeout_ms)
        except REDIS_ERRORS as exc:
            # It may or may not have been queued: the answer is unknown, never a retry.
            return ControlOutcome(False, "unknown", f"master Redis: {exc}")
        return ControlOutcome(res.ok, res.state, res.reason)


class Forwarder:
    def __init__(self, cfg: NodeConfig, stop: asyncio.Event, options: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.signal = stop  # SIGTERM/SIGINT: the planned stop (`_planned_stop`) begins
        self.stop = asyncio.Event()  # the planned stop is over: every loop ends
        self.options = {"select_timeout_s": cfg.select_timeout_s,
                        "control_timeout_ms": int(cfg.control_timeout_s * 1000),
                        "opening_max": cfg.forwarder_opening_max, **(options or {})}
        self.master = redisconn.master_async(cfg)
        self.sink = RedisControlSink(redisconn.master_async_once(cfg), Model({}, "", ""),
                                     int(cfg.control_timeout_s * 1000))
        self.tls_policy = TlsPolicy(cfg)  # [tls]: the context (`tls`), and its files taken anew (`_watch_tls`)
        self.model: Model | None = None
        self.stamp: cfgstore.Stamp = (0, "")  # of `model` (cfgstore: the generation alone repeats)
        self.cfg_gone = False  # the local Redis lost the configuration `model` came from: every value NT
        self.servers: dict[int, ForwardServer] = {}
        self.signatures: dict[int, str] = {}
        self.routing = Routing()
        self.reload = asyncio.Event()
        self.state_changed = asyncio.Event()  # a master connected or left: write the client lists now
        self.acked = asyncio.Event()  # a master's cursor moved: write it now
        self._acks_pending: dict[int, dict[str, Sid]] = {}
        # cursors of masters new to this node, known cursors; the role watch's ROLE: re-sent at once on a new
        # connection when one drops (`redisconn.resend_once`), not after redis-py's random backoff
        self.local_rw = redisconn.local_async(cfg, retry=redisconn.resend_once())
        self.roles = rolewatch.RoleWatch(self.local_rw, cfg.role_watch_s, self._vip_moved, cfg.vip)
        self.sink.confirm_role = lambda: self.roles.confirm(cfg.role_watch_s)
        self.last_id = "0-0"
        self.reading = False  # in a read of the local Redis by the follow loop (`_read`: `_until_stopped` may cancel it)
        self.last_fields: dict[str, str] | None = None  # the fields of entry last_id (`_kept_stream`)
        self.consumed = 0  # stream entries up to last_id (see stream.trimmed_past)
        self.lag = 0
        self.full_images = 0
        self.once = OnceLogger(log)
        self._counted: dict[int, dict[str, int]] = {}
        self._pending: dict[str, int] = {}
        self._clients_written: dict[int, str] = {}
        self._peers: dict[int, set[str]] = {}  # masters connected per RTU as last written (timeline)
        self._next_beat = 0.0
        self._next_known = 0.0
        # issue 10b: the source values as stored (NT is overlaid when sent), and the current verdict
        self.values: dict[int, Value] = {}
        self.staleness = freshness.Staleness()
        self.judge_now = asyncio.Event()
        self.replica = freshness.ReplicaWatch()
        self.vip_probe = leftbehind.VipProbe(cfg)  # a master left behind: every value NT (rule 1)
        self.limits = freshness.Limits.of(cfg)  # reported in the heartbeat: the api shows NT by them

    # --- main loop -------------------------------------------------------------------------------------

    def _stalled(self, seconds: float) -> None:
        """This process was stalled (SIGSTOP, starved): the verdict is as old as the stall, and a lease holder
        may have died meanwhile. Every value is NT at once, before any request read after the stall is
        handled (a master's hello or interrogation waiting in the socket), until the next check, run now,
        gives the verdict again."""
        self._set_staleness(freshness.Staleness(
            f"this forwarder was stalled for {seconds:.1f} s (stopped or starved): checking again",
            self.staleness.rtus))
        self.judge_now.set()

    async def run(self) -> None:
        STALLS.ensure_running()
        STALLS.listeners.append(self._stalled)
        tasks = [asyncio.create_task(self._housekeeping(), name="forwarder-housekeeping"),
                 asyncio.create_task(self._watch_config(), name="forwarder-cfgwatch"),
                 asyncio.create_task(self._write_cursors(), name="forwarder-cursors"),
                 asyncio.create_task(self._freshness(), name="forwarder-freshness"),
                 asyncio.create_task(self._links(), name="forwarder-links"),
                 asyncio.create_task(self.roles.run(self.stop), name="forwarder-role-watch"),
                 asyncio.create_task(self._planned_stop(), name="forwarder-planned-stop"),
                 asyncio.create_task(self._watch_tls(), name="forwarder-tls-watch")]
        backoff = self.cfg.reconnect_min_s
        try:
            while not self.stop.is_set():
                # a read whose connection drops (CLIENT KILL, a Redis restarted, maxclients) is sent again at once
                # on a new connection: redis-py's default waited a random backoff first (0-2, 0-4, 0-8 s), and
                # meanwhile no change reached a master while the freshness checks, on their own connection,
                # showed the values it held topical (0.5-7.6 s behind after a CLIENT KILL; 0.2 s now)
                local = redisconn.local_async(self.cfg, retry=redisconn.resend_once())
                try:
                    await self._until_stopped(self._follow(local))
                    backoff = self.cfg.reconnect_min_s
                except REDIS_ERRORS as exc:
                    self.once.problem("local", f"local Redis {self.cfg.local_host}:{self.cfg.local_port}: {exc}; "
                                      "reconnecting, then reloading the full image")
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                finally:
                    await local.aclose()
        finally:
            STALLS.listeners.remove(self._stalled)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for rid in list(self.servers):
                await self._stop_server(rid)
            self.acked.set()
            await self._flush_cursors()
            await self._write_state(final=True)
            await self.master.aclose()
            await self.sink.master.aclose()
            await self.local_rw.aclose()

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The servers' TLS context for their next handshakes: the policy's, new after a changed [tls] crl."""
        return self.tls_policy.context

    async def _until_stopped(self, follow: Coroutine[Any, Any, None]) -> None:
        """Run `follow` until it returns or raises. When the planned stop is over (`stop`) while it is in a read
        of the local Redis (`_read`: the blocking read of the change stream, up to half of `socket_timeout_s`,
        the configuration check, an image), that read is cancelled, so that it does not hold the exit once the
        masters' connections are closed: a hung or killed local Redis answers only after redis-py's socket
        timeouts and retries. Anywhere else (a reload starting or stopping a server) it ends by itself at its
        next look at `stop` or its next read, which does not begin (`_Stopped`)."""
        task = asyncio.ensure_future(follow)
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and self.reading:
                task.cancel()
        finally:
            stopped.cancel()
            if not task.done() and not self.stop.is_set():  # this coroutine itself was cancelled
                task.cancel()
            await asyncio.gather(task, stopped, return_exceptions=True)
        if not task.cancelled():
            with contextlib.suppress(_Stopped):
                task.result()  # its error, if any (a Redis error: the caller reconnects)

    async def _read(self, aw: Awaitable[T]) -> T:
        """Every read of the local Redis by the follow loop: one under way when the planned stop is over is
        cancelled (`_until_stopped`), one not begun yet then never begins (`_Stopped`). Before, only the
        stream's blocking read was: with the local Redis hung (SIGSTOP) during the configuration check the
        exit waited 14.5-15.2 s for redis-py's timeouts and retries (tests/forwarder/test_stop_local_hung.py)."""
        if self.stop.is_set():
            if inspect.iscoroutine(aw):
                aw.close()  # never awaited: not an error
            raise _Stopped
        self.reading = True
        try:
            return await aw
        finally:
            self.reading = False

    async def _planned_stop(self) -> None:
        """At SIGTERM/SIGINT every server drains (ForwardServer.drain, drain.py): it refuses new controls and
        waits for those in flight to be answered, at most `[timers] stop_drain_s`, while everything else
        runs on (values flow, the role watch drops a moved VIP's connections); each is then stopped, which
        closes its masters' connections, and the runner ends. A second signal ends the drain at once."""
        await self.signal.wait()
        t0 = time.monotonic()
        if self.servers and self.cfg.stop_drain_s > 0:
            log.info("planned stop: %d server(s) refuse new controls and answer those in flight, at most %g s",
                     len(self.servers), self.cfg.stop_drain_s)
            drains = asyncio.gather(*(srv.drain(self.cfg.stop_drain_s) for srv in self.servers.values()))
            again = getattr(self.signal, "again", None)  # worker.Stop's second signal
            hurry = asyncio.ensure_future(again.wait() if again is not None else asyncio.Event().wait())
            await asyncio.wait({drains, hurry}, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
            if not drains.done():
                drains.cancel()
                log.warning("planned stop: second signal, closing at once")
            await asyncio.gather(drains, hurry, return_exceptions=True)
            for rid in list(self.servers):
                await self._stop_server(rid)
            log.info("planned stop: masters' connections closed %.2f s after the signal", time.monotonic() - t0)
        self.stop.set()

    async def _vip_moved(self, seen: str, now: str) -> None:
        """The local Redis changed role, or the VIP came to or left this host: the VIP moved. Every master connection is dropped, those of
        the controls too. A command waiting on the old master (heartbeat, cursors, link refresh) is
        re-sent by redis-py on a new connection to the VIP's new place; a control whose command waited on
        one fails at once (`unknown`, never re-sent: it may have reached the old master and been
        replicated) instead of at its deadline, and the next control goes to the new master."""
        await rolewatch.drop_connections(self.master, self.sink.master)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    async def _follow(self, local: aredis.Redis) -> None:
        model, stamp = await self._read(cfgstore.read_stamped_async(local))
        while model is None and not self.stop.is_set():
            if self.model is None:
                self.once.problem("nocfg", "no configuration in Redis yet (run sysload init); waiting")
            else:  # reconnected to a Redis that lost its data: as the stamp check below says it (every value NT)
                self.cfg_gone, self.stamp = True, stamp
                self.once.problem("nocfg", f"no configuration in Redis any more (data lost?): serving generation "
                                  f"{self.model.gen} until one is loaded (sysload init)")
            self.reload.clear()
            try:
                await asyncio.wait_for(self.reload.wait(), 2.0)
            except TimeoutError:
                pass
            model, stamp = await self._read(cfgstore.read_stamped_async(local))
        if model is None:
            return
        self.once.clear("nocfg")
        self.cfg_gone = False
        if not await self._reconcile(model) and self.model is None:
            return  # the planned stop began before any configuration was served: nothing to follow
        self.stamp = stamp
        # the verdict as of this data set, not as of before the outage: a Redis restarted from an older copy holds
        # values its lease record already says are not current (lapsed, or rolled back), and the image's values
        # went out under the old verdict, topical, until the next check (up to a second later)
        await self._judge(local, probe=False)
        await self._full_image(local)  # of the configuration served (a reconnect during the planned stop)
        self.once.clear("local")
        block_ms = max(100, int(self.cfg.socket_timeout_s * 500))
        next_check = time.monotonic() + CONFIG_CHECK_S
        while not self.stop.is_set():
            if self.reload.is_set() or time.monotonic() >= next_check:
                self.reload.clear()
                next_check = time.monotonic() + CONFIG_CHECK_S
                if await self._read(cfgstore.stamp_async(local)) != self.stamp:  # not gen alone: see cfgstore
                    model, stamp = await self._read(cfgstore.read_stamped_async(local))
                    self.cfg_gone = model is None
                    if model is None:  # redis-py reconnected to a Redis that lost its data: say so
                        self.stamp = stamp  # (0, ""): the same configuration loaded again is new here
                        self.once.problem("nocfg", f"no configuration in Redis any more (data lost?): serving "
                                          f"generation {self.model.gen} until one is loaded (sysload init)")  # type: ignore[union-attr]
                    else:
                        self.once.clear("nocfg")
                        # the configuration served loaded again (`sysload init` of the same rows: same
                        # digest, a later generation): sysload touched no value, every server keeps its
                        # masters, image and history; a full image would resend every value (sefeps: an
                        # image to every master) and cut resumes short, for nothing
                        same = bool(stamp[1]) and stamp[1] == self.stamp[1] and stamp[0] > self.stamp[0]
                        applied = await self._reconcile(model)
                        self.stamp = stamp  # applied, or seen during the planned stop (logged once)
                        if applied and not same:
                            await self._full_image(local)
                continue
            called = time.monotonic()
            try:
                got = await self._read(local.xread({ks.CHANGES: self.last_id}, count=READ_COUNT, block=block_ms))
            except redis.ResponseError as exc:
                if not demoted(str(exc)) or not await self._kept_stream(local):
                    raise  # an outage, or a stream replaced by a full resync: the full image is reloaded
                log.info("local Redis turned replica under the stream read and kept the stream: reading on "
                         "from %s", self.last_id)
                continue
            if not got:
                continue
            prev, before = self.last_id, self.consumed
            entries = got[0][1]
            if TRACE is not None:
                TRACE.read(called, entries)
            self._dispatch(entries)
            self.last_id, self.last_fields = entries[-1]
            self.consumed += len(entries)
            self.lag = lag_ms(self.last_id, int(time.time() * 1000))
            # the servers' senders write what was just dispatched before the trim check's round trip: sending
            # the XINFO first (about 0.1 ms of redis-py) delayed every frame by it (bench/forward.py --trace)
            await asyncio.sleep(0)
            try:
                info = await self._read(local.xinfo_stream(ks.CHANGES))
            except redis.ResponseError:  # the stream was deleted after our read: nothing to compare
                continue
            if trimmed_past(before, int(info["entries-added"]), int(info["length"])):
                log.warning("change stream trimmed past the last entry read (%s): loading the full image", prev)
                await self._full_image(local)

    async def _kept_stream(self, local: aredis.Redis) -> bool:
        """The local Redis turned replica under the stream read (`stream.demoted`): whether, once its sync
        is done (within DEMOTED_SYNC_S, or until the runner stops), it still has the last entry read as
        read (`stream.kept_stream`)."""
        end = time.monotonic() + DEMOTED_SYNC_S
        while True:
            pipe = local.pipeline(transaction=False)
            pipe.info("replication")
            pipe.xrange(ks.CHANGES, self.last_id, self.last_id)
            info, now = await self._read(pipe.execute())
            kept = kept_stream(info, self.last_fields, now[0][1] if now else None)
            if kept is not None:
                return kept
            if time.monotonic() >= end or self.stop.is_set():  # a planned stop does not wait for the sync
                return False
            await asyncio.sleep(0.05)

    def _dispatch(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        per: dict[int, list[Any]] = {}
        bad: list[str] = []
        for eid, fields in entries:
            merge(per, self.routing.updates(entry_pairs(fields), bad, parse_id(eid), fields.get("r")))
        for rid, ups in per.items():
            srv = self.servers.get(rid)
            if srv is not None:
                srv.apply(self._overlaid(ups))
        for srv in self.servers.values():
            srv.advance(entries[-1][0])
        if bad:
            self.once.problem("bad", f"change stream: {len(bad)} unusable records skipped, e.g. {bad[0]}")

    async def _full_image(self, local: aredis.Redis) -> None:
        """Read the stream position and every routed value hash in one MULTI/EXEC, so no change falls
        between the image and the first entry followed."""
        assert self.model is not None
        rtus = image_keys(self.model, self.routing)
        rids = list(self.servers)
        pipe = local.pipeline(transaction=True)
        pipe.xrevrange(ks.CHANGES, "+", "-", count=1)
        pipe.xinfo_stream(ks.CHANGES)
        for rid in rtus:
            pipe.hgetall(ks.values(rid))
        pipe.hgetall(ks.VPOINTS)
        for rid in rids:
            pipe.hgetall(ks.fwd_acked(rid))
        res = await self._read(pipe.execute(raise_on_error=False))
        for x in res[:1] + res[2:]:
            if isinstance(x, Exception):
                raise x
        self.last_id, self.last_fields = res[0][0] if res[0] else ("0-0", None)
        info = res[1]
        self.consumed = 0 if isinstance(info, Exception) else int(info["entries-added"])  # no stream yet
        per: dict[int, list[Any]] = {}
        bad: list[str] = []
        for rid, h in zip(rtus, res[2:2 + len(rtus)], strict=True):
            merge(per, self.routing.updates(h.items(), bad, source=str(rid)))
        merge(per, self.routing.updates(res[2 + len(rtus)].items(), bad))  # virtual points
        position = parse_id(self.last_id)
        first = None if isinstance(info, Exception) or not info.get("first-entry") else parse_id(
            info["first-entry"][0])
        since: dict[int, Sid] = {}
        recorded: dict[int, dict[str, Sid]] = {}
        for rid, raw in zip(rids, res[3 + len(rtus):], strict=True):
            srv = self.servers[rid]
            recorded[rid] = parse_cursors(raw)
            if srv.history_max() > 0:
                known = dict(recorded[rid])  # as read with the image, and this server's newer ones (a reload)
                for ident, c in srv.known_cursors().items():
                    known[ident] = max(c, known.get(ident, c))
                start = backfill_from(known.values(), first, position)
                if start is not None:
                    since[rid] = start
        past = await self._read_back(local, since) if since else {}
        self.values = {}
        for rid, srv in self.servers.items():
            floor, ups = past.get(rid, (None, []))
            srv.image_at(self.last_id, self._overlaid(per.get(rid, [])), ups, floor)
            # known from now on, not from the next once-a-second read: the first master to acknowledge
            # would otherwise have the history forget what the others, not yet resumed, still need
            srv.set_known(recorded[rid])
            if floor is not None:
                log.info("forwarding RTU %d: history filled back to stream entry %s from the stream (%d changes):"
                         " masters acknowledged up to there are resumed", rid, sid_text(floor), len(ups))
        self.full_images += 1
        n = sum(len(v) for v in per.values())
        log.info("full image loaded: %d values for %d forwarding RTUs, following the stream from %s", n,
                 len(self.servers), self.last_id)
        heap.settle()  # the configuration, image and history live on: out of the collector's full passes

    async def _read_back(self, local: aredis.Redis, since: dict[int, Sid]) -> dict[int, tuple[Sid, list[Update]]]:
        """The changes of the stream entries after each server's `since` up to the image's (`last_id`), read
        newest first (XREVRANGE, READ_COUNT entries a call) until each server has its history's maxlen or the
        read reached its `since`, and routed as the live path routes them (`Routing.updates`). Per server:
        the floor its history then covers from (`resume.backfill_floor`) and its changes in stream order.
        Stored values as they were: NT is judged for what is current, not for the past."""
        want = {rid: self.servers[rid].history_max() for rid in since}
        got: dict[int, list[list[Update]]] = {rid: [] for rid in since}
        count = dict.fromkeys(since, 0)
        oldest: dict[int, Sid | None] = dict.fromkeys(since)
        reached: set[int] = set()
        open_ = set(since)
        low, hi = sid_text(min(since.values())), self.last_id
        bad: list[str] = []
        while open_:
            batch = await self._read(local.xrevrange(ks.CHANGES, hi, f"({low}", count=READ_COUNT))
            for eid, fields in batch:
                sid = parse_id(eid)
                per = self.routing.updates(entry_pairs(fields), bad, sid, fields.get("r"))
                for rid in list(open_):
                    if sid <= since[rid]:
                        reached.add(rid)
                        open_.discard(rid)
                        continue
                    ups = per.get(rid, [])
                    got[rid].append(ups)
                    count[rid] += len(ups)
                    oldest[rid] = sid
                    if count[rid] >= want[rid]:
                        open_.discard(rid)
            if len(batch) < READ_COUNT:
                reached |= open_
                break
            hi = f"({batch[-1][0]}"
        try:  # trimmed meanwhile: the entries not read yet, older than the first one now, may be gone
            info = await self._read(local.xinfo_stream(ks.CHANGES))
            first: Sid | None = parse_id(info["first-entry"][0]) if info.get("first-entry") else None
        except redis.ResponseError:
            first = None
        out: dict[int, tuple[Sid, list[Update]]] = {}
        for rid, start in since.items():
            if first is None:
                continue
            floor = backfill_floor(start, oldest[rid], rid in reached, first)
            out[rid] = (floor, [u for ups in reversed(got[rid]) for u in ups])
        return out

    # --- configuration -----------------------------------------------------------------------------------

    async def _reconcile(self, model: Model) -> bool:
        """Start, stop or restart servers so they match `model` (`drain.reload_plan`); an unchanged RTU keeps
        its server and its masters' connections. Once the planned stop began nothing changes and `model` is
        not applied: False."""
        wanted = {r.id: r for r in model.forwarding_rtus()}
        plan = reload_plan(self.signatures, {rid: r.signature() for rid, r in wanted.items()}, self.signal.is_set())
        if not plan.apply:
            log.info("configuration generation %s not applied: the forwarder is stopping", model.gen)
            return False
        for rid in plan.stop:
            await self._stop_server(rid)
        self.sink.model = model
        for rid in plan.start:
            if self.signal.is_set():  # the planned stop began meanwhile: none starts
                break
            rtu = wanted[rid]
            try:
                cls = server_class(rtu.protocol)
                srv = cls(rtu, model, self.cfg.bind, self.sink, self.cfg.node_id,
                          tls=self.tls if rtu.protocol in TLS_PROTOCOLS else None,
                          **self.protocol_options(rtu.protocol))
                srv.on_clients_changed = self.state_changed.set
                srv.on_acked = self.acked.set
                srv.cursor_source = self._cursor_of
                srv.stream_head = self._stream_head
                await srv.start()
            except (OSError, KeyError, ValueError, ImportError) as exc:
                self.once.problem(f"start:{rid}", f"forwarding RTU {rid} ({rtu.protocol}) not started: {exc!r}")
                continue
            if self.signal.is_set():  # began while it bound: it would take controls the drain does not wait for
                await srv.stop()
                break
            self.once.clear(f"start:{rid}")
            self.servers[rid] = srv
            self.signatures[rid] = rtu.signature()
        self.model = model
        self.routing = Routing.of(model, self.servers)
        log.info("configuration generation %s: %d forwarding servers", model.gen, len(self.servers))
        return True

    def protocol_options(self, protocol: str) -> dict[str, Any]:
        """A server's options: its protocol's fep-ha.cfg section ([se104s], [modbus_trains]), then the
        runner's options (which tests use to shorten timers) on top."""
        per: dict[str, Any] = self.cfg.se104s_options() if protocol == "se104s" else {}
        if protocol == "modbus_trains":
            per = {"keepalive_s": self.cfg.modbus_trains_keepalive_s}
            if self.cfg.modbus_trains_quality_unit:
                per["quality_unit"] = self.cfg.modbus_trains_quality_unit
        return {**per, **self.options}

    async def _stop_server(self, rid: int) -> None:
        srv = self.servers.pop(rid)
        self.signatures.pop(rid, None)
        await self._count(rid, srv)  # keep its last counts
        self._counted.pop(rid, None)
        await srv.stop()
        if moved := srv.take_acked():  # its masters' last cursors (they left as it stopped)
            self._acks_pending.setdefault(rid, {}).update(moved)
            self.acked.set()

    async def _watch_config(self) -> None:
        """Pub/sub on the local Redis: a message on CFG_CHANGED sets `reload`; after a reconnect `reload`
        is set too, and the main loop compares generations, so a missed message is not a missed reload."""
        backoff = self.cfg.reconnect_min_s
        while not self.stop.is_set():
            # a dropped subscription (CLIENT KILL TYPE pubsub, a proxy) is made again at once on a new
            # connection (`redisconn.resend_once`): redis-py's default waited a random backoff first, and an
            # announcement came 0.2-1.9 s late (the stamp check every CONFIG_CHECK_S bounds it at ~1 s)
            local = redisconn.local_async(self.cfg, retry=redisconn.resend_once())
            ps = local.pubsub()
            try:
                await ps.subscribe(ks.CFG_CHANGED)
                self.reload.set()
                backoff = self.cfg.reconnect_min_s
                while not self.stop.is_set():
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        log.info("configuration generation %s announced", msg.get("data"))
                        self.reload.set()
            except REDIS_ERRORS:
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)
            finally:
                await ps.aclose()
                await local.aclose()

    # --- masters' cursors (fep:fwd:ack:{rtu}; fep_forwarder.resume) -------------------------------------

    async def _cursor_of(self, rtu: int, identity: str) -> Sid | None:
        """A master's recorded cursor, from the local Redis (the master Redis's replica, or itself);
        None when it has none or Redis does not answer (the master then gets an interrogation)."""
        try:
            raw = await self.local_rw.hget(ks.fwd_acked(rtu), identity)  # type: ignore[misc]  # redis-py: sync|async union
        except REDIS_ERRORS as exc:
            self.once.problem("cursor", f"local Redis: masters' cursors unreadable ({exc}); a master that "
                              "starts now gets end of initialisation and its interrogation")
            return None
        self.once.clear("cursor")
        return parse_id(raw) if raw else None

    async def _stream_head(self) -> Sid | None:
        """The change stream's newest entry in the local Redis (what the runner reads), None when there is
        none or Redis does not answer: a resuming master then waits for nothing (ForwardServer.caught_up)."""
        try:
            last = await self.local_rw.xrevrange(ks.CHANGES, "+", "-", count=1)
        except REDIS_ERRORS:
            return None
        return parse_id(last[0][0]) if last else None

    async def _write_cursors(self) -> None:
        """Write every moved cursor to the master Redis as soon as it moved (coalesced: the writes of one
        round trip carry every move meanwhile), and what is pending at least once a second."""
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.acked.wait(), 1.0)
            except TimeoutError:
                pass
            self.acked.clear()
            await self._flush_cursors()

    async def _flush_cursors(self) -> None:
        for rid, srv in self.servers.items():
            moved = srv.take_acked()
            if moved:
                self._acks_pending.setdefault(rid, {}).update(moved)
        if not self._acks_pending:
            return
        pending, self._acks_pending = self._acks_pending, {}
        try:
            pipe = self.master.pipeline(transaction=False)
            for rid, cur in pending.items():
                pipe.hset(ks.fwd_acked(rid), mapping={k: sid_text(v) for k, v in cur.items()})
            await pipe.execute()
            self.once.clear("master cursors")
        except REDIS_ERRORS as exc:
            for rid, cur in pending.items():  # keep them (newer moves win) for the next try
                for k, v in cur.items():
                    now = self._acks_pending.setdefault(rid, {})
                    now[k] = max(v, now.get(k, v))
            # a key of its own: sharing the heartbeat's ("master"), the two messages took turns and each
            # was logged again at every turn while the master refused writes
            self.once.problem("master cursors", f"master Redis {self.cfg.vip}:{self.cfg.port}: {exc}; "
                              "masters' cursors wait for it")

    async def _read_known_cursors(self) -> None:
        """Once a second: every served RTU's recorded cursors, so a server buffers only what its known
        masters have not acknowledged."""
        if not self.servers:
            return
        try:
            pipe = self.local_rw.pipeline(transaction=False)
            rids = list(self.servers)
            for rid in rids:
                pipe.hgetall(ks.fwd_acked(rid))
            res = await pipe.execute()
        except REDIS_ERRORS:
            return  # the main loop reports the local Redis
        for rid, raw in zip(rids, res, strict=True):
            srv = self.servers.get(rid)
            if srv is not None:
                srv.set_known(parse_cursors(raw))

    # --- staleness (NT) and link liveness (issue 10) ------------------------------------------------------

    def _overlaid(self, ups: list[Update]) -> list[Update]:
        """Record the stored values and return them as sent: NT added for sources judged not topical."""
        out = []
        for u in ups:
            self.values[u.fwd.src] = u.value
            v = freshness.overlay(u.value, self.staleness.stale(self.routing.src_rtu.get(u.fwd.src)))
            out.append(u if v is u.value else Update(u.fwd, v, u.sid))
        return out

    def _set_staleness(self, new: freshness.Staleness) -> None:
        """Switch to a new verdict: the last value of every source whose NT state flipped goes out again,
        spontaneously, with NT set or cleared."""
        old, self.staleness = self.staleness, new
        flipped = old.flipped(new, set(self.routing.src_rtu.values()) | {None})
        if not flipped:
            return
        for why in {new.all} - {old.all, None}:
            log.warning("every forwarded value is not topical (NT): %s", why)
        if old.all is not None and new.all is None:
            log.info("local Redis follows the master again: NT cleared where no other rule holds")
        for rid in sorted(r for r in flipped if r is not None):
            if new.stale(rid) and rid in new.rtus:
                log.warning("values of acquisition RTU %d not topical (NT): %s", rid, new.rtus[rid])
            elif not new.stale(rid):
                log.info("values of acquisition RTU %d topical again: NT cleared", rid)
        per: dict[int, list[Update]] = {}
        at = parse_id(self.last_id)  # re-sent in order after everything handed over so far
        for src, fwds in self.routing.by_src.items():
            rtu = self.routing.src_rtu.get(src)
            v = self.values.get(src)
            if rtu not in flipped or v is None:
                continue
            v = freshness.overlay(v, new.stale(rtu))
            for f in fwds:
                per.setdefault(f.rtu, []).append(Update(f, v, at))
        for rid, ups in per.items():
            srv = self.servers.get(rid)
            if srv is not None:
                srv.apply(ups)

    async def _freshness(self) -> None:
        """Once a second (or each lease tick if shorter): judge staleness from the local Redis (INFO
        replication, TIME, leases). Its client never retries: a check that fails is an observation
        ("unreachable"), and the next check is the retry (redis-py's default, three retries with backoff,
        and the link refresh on the same hung master in the same loop, delayed NT by ~25 s on a single node
        whose Redis was stopped: tests/forwarder/test_redis_hung.py)."""
        period = min(1.0, self.cfg.lease_tick_s)
        local = redisconn.local_async(self.cfg, retry=Retry(NoBackoff(), 0))
        try:
            while not self.stop.is_set():
                self.judge_now.clear()
                await self._judge(local)
                with contextlib.suppress(TimeoutError):  # a stall (`_stalled`) asks for a check at once
                    await asyncio.wait_for(self.judge_now.wait(), period)
        finally:
            await self.vip_probe.aclose()
            await local.aclose()

    async def _links(self) -> None:
        """As often as `_freshness`: re-evaluate link liveness on the master (`link_refresh`, so the virtual
        points fall even when no acquirer is alive); its own task, so a hung master never delays a check."""
        period = min(1.0, self.cfg.lease_tick_s)
        while not self.stop.is_set():
            await self._refresh_links()
            await self._sleep(period)

    async def _judge(self, local: aredis.Redis, probe: bool = True) -> None:
        """The verdict (rules 1-4) from `local`; `probe`: the VIP probe may start a probe on `local` (not
        on the follow loop's client, which a reconnect closes: its latest verdict is used then)."""
        model = self.model
        if model is None:
            return
        rtus = sorted({r for r in self.routing.src_rtu.values() if r is not None})
        asked = int(time.time() * 1000)
        try:
            pipe = local.pipeline(transaction=False)
            pipe.info("replication")
            pipe.time()
            for rid in rtus:
                pipe.hgetall(ks.lease(rid))
            res = await pipe.execute()
        except REDIS_ERRORS:
            now = int(time.time() * 1000)  # local Redis unreachable: its data is cut off; this clock
            cut = self.replica.observe(None, now, asked)
            self._set_staleness(freshness.Staleness(
                f"local Redis unreachable for {cut} ms" if cut > self.limits.replica_down_ms else None,
                self.staleness.rtus))
            return
        now = int(res[1][0]) * 1000 + int(res[1][1]) // 1000
        cut = self.replica.observe(res[0], now)
        polls = {rid: model.rtus[rid].poll_ms for rid in rtus}
        verdict = freshness.judge(cut, dict(zip(rtus, res[2:], strict=True)), polls, now, self.limits,
                                  replids(res[0]))
        if self.cfg_gone and verdict.all is None:  # virtual points too: nothing refreshes their links now
            verdict = freshness.Staleness("no configuration in the local Redis (data lost?)", verdict.rtus)
        # a master left behind (the VIP moved, this Redis was not demoted): nothing here moves any more.
        # The probe runs in its own task, at most once a second; this check never waits for it.
        split = await self.vip_probe.check(local, res[0]) if probe else self.vip_probe.reason
        if split is not None and verdict.all is None:
            verdict = freshness.Staleness(f"local Redis {split}", verdict.rtus)
        self._set_staleness(verdict)

    async def _refresh_links(self) -> None:
        model = self.model
        if model is None:
            return
        live_ms = int(self.cfg.lease_ttl_s * 1000)
        try:
            pipe = self.master.pipeline(transaction=False)
            for r in model.acquisition_rtus():
                pipe.fcall(*redisfns.link_refresh(r.id, [v.id for v in r.vpoints], live_ms).argv)
            await pipe.execute()  # a refusal in Redis's words ("Function not found" after a data loss): redisconn
            self.once.clear("links")
        except REDIS_ERRORS as exc:
            self.once.problem("links", f"link refresh on the master: {exc}")

    async def _watch_tls(self) -> None:
        """[tls] cert, key, ca or crl changed: a new context for the next handshakes, and the sessions the new
        CRLs revoke or the new CAs no longer trust closed; the expiry of the CRLs and of the server certificate
        said (`TlsPolicy`, docs/forwarder.md "TLS")."""
        while not self.stop.is_set() and self.tls is not None:
            await self._sleep(TLS_CHECK_S)
            if self.tls_policy.refresh():
                self.tls_policy.apply(self.servers.values())

    # --- heartbeat, metrics, connected masters -------------------------------------------------------

    async def _housekeeping(self) -> None:
        period = min(1.0, self.cfg.heartbeat_s)
        while not self.stop.is_set():
            self.state_changed.clear()
            await self._write_state()
            if time.monotonic() >= self._next_known:
                self._next_known = time.monotonic() + 1.0
                await self._read_known_cursors()
            try:
                await asyncio.wait_for(self.state_changed.wait(), period)
            except TimeoutError:
                pass

    async def _count(self, rid: int, srv: ForwardServer) -> dict[str, int]:
        now = srv.counters()  # ForwardServer.counts, one Counters object per server
        before = self._counted.get(rid, {})
        self._counted[rid] = now
        for k, v in now.items():
            d = v - before.get(k, 0)
            if d:
                self._pending[k] = self._pending.get(k, 0) + d
        return now

    async def _write_state(self, final: bool = False) -> None:
        node = self.cfg.node_id
        try:
            for rid, srv in self.servers.items():
                await self._count(rid, srv)
            if self.full_images:
                self._pending["full_images"] = self._pending.get("full_images", 0) + self.full_images
                self.full_images = 0
            pending = self._pending
            pipe = self.master.pipeline(transaction=False)
            mkey = ks.metrics(SERVICE, node)
            for k, d in pending.items():
                pipe.hincrby(mkey, k, d)
            nclients = 0
            for rid, srv in self.servers.items():
                cl = {} if final else srv.clients()
                nclients += len(cl)
                text = json.dumps(cl, sort_keys=True)
                if self._clients_written.get(rid) != text:
                    pipe.delete(ks.fwd_clients(rid, node))
                    if cl:
                        pipe.hset(ks.fwd_clients(rid, node), mapping={p: json.dumps(s) for p, s in cl.items()})
                    self._clients_written[rid] = text
            for rid in [r for r in self._clients_written if r not in self.servers or final]:
                pipe.delete(ks.fwd_clients(rid, node))
                self._clients_written.pop(rid, None)
            peers = {rid: set() if final else set(srv.clients()) for rid, srv in self.servers.items()}
            for rid in set(peers) | set(self._peers):
                now_p, was_p = peers.get(rid, set()), self._peers.get(rid, set())
                for p in sorted(now_p - was_p):
                    events.add(pipe, "master", node, rid, peer=p, state="connected")
                for p in sorted(was_p - now_p):
                    events.add(pipe, "master", node, rid, peer=p, state="disconnected")
            pipe.hset(mkey, mapping={"stream_lag_ms": self.lag, "clients": nclients})
            if final:
                pipe.delete(ks.heartbeat(SERVICE, node))
            elif time.monotonic() >= self._next_beat:
                self._next_beat = time.monotonic() + self.cfg.heartbeat_s
                pipe.set(ks.heartbeat(SERVICE, node),
                         heartbeat.payload(SERVICE, node, self.model.gen if self.model else 0, self.cfg.heartbeat_s,
                                           servers=sorted(self.servers), last_id=self.last_id,
                                           tls_expiry=self.tls_policy.expiries(), **self.limits.report()),
                         px=heartbeat.lifetime_ms(self.cfg.heartbeat_s))
            await pipe.execute()
            self._peers = {rid: p for rid, p in peers.items() if p}
            self._pending = {}
            self.once.clear("master")
        except REDIS_ERRORS as exc:
            self.once.problem("master", f"master Redis {self.cfg.vip}:{self.cfg.port}: {exc}; "
                              "heartbeat and metrics wait for it")
            self._clients_written.clear()


async def run(cfg: NodeConfig, stop: asyncio.Event, options: dict[str, Any] | None = None) -> None:
    """Run the forwarder until `stop` is set. `options` are passed to every server (tests shorten timers)."""
    await Forwarder(cfg, stop, options).run()
