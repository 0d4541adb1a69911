"""The per-process periodic work: lease ticks and link states (one round trip for all RTUs), invalidation
of lost devices, channel-state hashes, Redis role watch (full image, write mode), heartbeat, metrics.

Beside the ticks, a fast watch of the local Redis's role (`fepha.rolewatch`, every `role_watch_s`): when it
changes, the VIP has just moved (to this node: promoted; away: demoted). Commands still waiting on the old
master through the VIP wait on a peer that may have vanished without a FIN (power cut, cable): they would hang
until the socket timeout and redis-py's retries (observed: one lease tick blocked 2.8-3.7 s, ending up to 1 s
after this node's Redis was promoted). So the tick in flight is abandoned, the master connections are dropped
and a tick runs at once, on a new connection to the VIP now here (docs/ha.md, issue 13). The watch also
sees the VIP leave this node while the local Redis stays a master (fepha.rolewatch): the same then, and the
new connection reaches the VIP's new holder as soon as it announces the VIP.

While the master refuses or fails the lease ticks (a Redis behind the VIP that is still a replica: the
move is under way, its promotion comes a few ms to a second later), the next tick comes after
`role_watch_s`, not after the rest of `lease_tick_s`, for at most `lease_ttl_s` (`tick_delay`): the
holder's lease stays alive on the new master, so its first renewal there is what keeps its values current
(docs/ha.md, "The holder at a VIP move")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner, RunnerBase
from fep_acquirer.tasks import cancel_all
from fep_acquirer.writer import Writer, send_fcalls
from fepha import controls, events, heartbeat, redisconn, redisfns, rolewatch
from fepha import keyspace as ks
from fepha.config import NodeConfig
from fepha.logsetup import OnceLogger

log = logging.getLogger("acquirer")


def tick_delay(tick_s: float, elapsed_s: float, fast_s: float, failing_for_s: float | None,
               ttl_s: float) -> float:
    """Seconds until the next lease tick: the rest of `tick_s` after a tick that took `elapsed_s`; at most
    `fast_s` while the master has refused or failed the ticks for less than `ttl_s` (`failing_for_s`, None:
    the last tick went through), i.e. while this node's lease may still be alive on a master that is moving.
    Never less than 0.05 s (a master that refuses at once must not be hammered)."""
    left = tick_s - elapsed_s
    if failing_for_s is not None and failing_for_s < ttl_s:
        left = min(left, fast_s)
    return max(0.05, left)


def write_window_ms(mode: str, local_role: str, batch_window_ms: int) -> int:
    """0 (direct: each poll's call at once) or the batch window, per cfg.write_mode and the local role."""
    if mode == "direct" or (mode == "auto" and local_role == "master"):
        return 0
    return batch_window_ms


class Housekeeping:
    def __init__(self, cfg: NodeConfig, master: Any, local: Any, writer: Writer, metrics: Metrics,
                 once: OnceLogger, runners: dict[int, RtuRunner], instance: str = "") -> None:
        self.cfg, self.master, self.local, self.writer = cfg, master, local, writer
        self.metrics, self.once, self.runners = metrics, once, runners
        self.timers = heartbeat.lease_timers(cfg)  # what its lease ticks go by, reported in its heartbeat
        self.gen = 0
        self.run_id: str | None = None
        self.replid: str | None = None  # the master's replication id at the last tick (functions.lua lease_tick)
        self.master_ok = True
        self.sent_state: dict[int, dict[str, str]] = {}
        self._last_beat = 0.0
        self._last_flush = 0.0
        self.role: str | None = None  # the local Redis role last seen, for the timeline's role changes
        self.clock_gen: str | None = None  # fep:clock gen last seen (docs/ha.md "Clocks")
        self.moved = asyncio.Event()  # set by the role watch: the VIP moved, the master connections are stale
        self.gained = asyncio.Event()  # set at a lease gain: the control executor looks at that queue now
        self.roles = rolewatch.RoleWatch(local, cfg.role_watch_s, self._vip_moved, cfg.vip)  # run by app.py
        self.failing_since: float | None = None  # monotonic time of the first lease tick refused or failed
        self._side: asyncio.Task | None = None  # heartbeat and metrics, beside the ticks
        self._invalid: asyncio.Task | None = None  # IV for held RTUs not reached, beside the ticks
        self.ticker = redisconn.own_pool(master)
        """The master for the ticks' INFO and lease calls, with connections of its own (`own_pool`)."""
        self.instance = instance or controls.instance_id()
        self.presence = redisconn.own_pool(master, client_name=controls.presence_name(cfg.node_id, self.instance))
        """The master for the heartbeat, on connections named after this process (`controls.presence_name`):
        the node's next acquirer process tells by them whether the process that claimed a control is still
        alive (`controls.answer_orphans`, run on it by the executor)."""
        self.stopping = False
        """A planned stop is under way (handover.py): tick only the leases held (renew them, take none) and
        say so in the heartbeat, so that the other node hands nothing over to this one."""

    @property
    def tick_ok(self) -> bool:
        """The last lease tick went through: the master reached and its lease calls answered."""
        return self.master_ok and self.failing_since is None

    async def loop(self) -> None:
        """The ticks; the role watch (`roles.run`) runs beside it as its own task (app.py), so that stopping
        one waits for each to end (a child task stopped from a cancelled parent's finally could outlive it).
        The heartbeat, metrics and invalidation run beside the ticks (`tick`), ended with the loop."""
        try:
            while True:
                t0 = time.monotonic()
                self.moved.clear()
                await self._tick_unless_moved()
                if not self.moved.is_set():
                    now = time.monotonic()
                    failing = None if self.failing_since is None else now - self.failing_since
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.moved.wait(), tick_delay(
                            self.cfg.lease_tick_s, now - t0, self.cfg.role_watch_s, failing, self.cfg.lease_ttl_s))
                if self.moved.is_set():  # what waits on the old master fails now (the writer compensates,
                    # the executor retries); the tick reconnects
                    await rolewatch.drop_connections(self.master, self.ticker, self.presence)
        finally:
            await cancel_all(self._side, self._invalid)
            await self.ticker.aclose()
            await self.presence.aclose()

    async def _tick_unless_moved(self) -> None:
        """One tick, abandoned if the local Redis changes role meanwhile (its master commands may be
        waiting on the vanished old master; the loop drops those connections and ticks again at once)."""
        tick = asyncio.create_task(self.tick(), name="acquirer-tick")
        moved = asyncio.create_task(self.moved.wait())
        try:
            done, _ = await asyncio.wait([tick, moved], timeout=self.cfg.lease_ttl_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:  # a hung master (stopped, not closed): say so while it lasts, not only after
                self.once.problem("tick", f"lease tick waiting on the master Redis {self.cfg.vip}:{self.cfg.port} "
                                  f"for more than lease_ttl_s ({self.cfg.lease_ttl_s} s): leases lapse, values "
                                  "go NT")
                await asyncio.wait([tick, moved], return_when=asyncio.FIRST_COMPLETED)
            if tick.done():
                self.once.clear("tick")
        finally:  # also when the loop itself is cancelled (stop): neither task outlives it
            abandoned = not tick.done()
            await cancel_all(moved, tick)
        if abandoned:
            log.info("local Redis changed role during a tick: tick abandoned, master connections dropped")
            return
        if not tick.cancelled() and tick.exception() is not None:
            log.error("housekeeping tick failed", exc_info=tick.exception())

    async def _vip_moved(self, seen: str, now: str) -> None:
        """The role watch saw the local Redis change role: the loop abandons the tick in flight."""
        self.moved.set()

    async def tick(self) -> None:
        """The master's run id and the lease calls in one round trip's time (two requests in parallel, on
        connections of their own: `ticker`); heartbeat, metrics and the invalidation of devices not reached
        go out beside the ticks (`_side_work`, `_invalidate`, one of each at a time). On a slow link the
        round trips of one tick add up, and leases renewed further apart than lease_ttl_s lapse: with INFO,
        the lease calls, the invalidation, the heartbeat and the metrics one after the other, each new
        connection paying AUTH and CLIENT SETINFO first, a 0.8 s round trip between the nodes (docs/ha.md
        "Degraded links") spaced the holder's renewals more than 3 s apart."""
        await asyncio.gather(self._watch_roles(), self._leases())
        if self._side is None or self._side.done():  # one at a time: a slow link does not pile them up
            self._side = asyncio.create_task(self._side_work(), name="acquirer-heartbeat")
        if self._invalid is None or self._invalid.done():
            self._invalid = asyncio.create_task(self._invalidate(), name="acquirer-invalidate")

    async def _invalidate(self) -> None:
        """IV on the points of each held RTU whose device is not reached (written through the writer)."""
        await asyncio.gather(*(r.invalidate() for r in self.runners.values() if r.lease.held and not r.reaches()))

    async def _side_work(self) -> None:
        now = time.monotonic()
        try:
            if now - self._last_beat >= self.cfg.heartbeat_s:
                await self.beat()
                self._last_beat = now
            if now - self._last_flush >= 1.0:
                await self.metrics.flush(self.master)
                self._last_flush = now
        except Exception as exc:  # noqa: BLE001 - master unreachable: logged once, retried next tick
            self.once.problem("heartbeat", f"{type(exc).__name__}: {exc}")
            return
        self.once.clear("heartbeat")  # said when it recovers; the next outage is logged again

    async def beat(self) -> None:
        """The acquirer's heartbeat; `stopping` in it while a planned stop hands the leases over; the
        timers its lease ticks go by (the api forecasts takeovers by them). Sent on the named connection
        (`presence`), which it keeps open."""
        await heartbeat.beat(self.presence, "acquirer", self.cfg.node_id, self.cfg.heartbeat_s, self.gen,
                             rtus=len(self.runners), held=sum(1 for r in self.runners.values() if r.lease.held),
                             instance=self.instance,
                             **self.timers,
                             **({"stopping": True} if self.stopping else {}))

    def note_clock(self, gen: Any) -> None:
        """Log once when a lease tick found the master's clock behind what it had seen (fep:clock gen grew:
        an NTP step back, or a promoted master whose clock is behind): what that changes is in the WARNING."""
        if isinstance(gen, Exception):
            return
        now = "0" if gen is None else str(gen)
        if self.clock_gen is not None and now != self.clock_gen:
            log.warning("the master's clock went back (clock gen %s -> %s: an NTP step, or a master whose clock "
                        "is behind took over): controls queued before are expired, lease and link stamps ahead "
                        "of it were set back (docs/ha.md \"Clocks\")", self.clock_gen, now)
        self.clock_gen = now

    def _written(self, r: RunnerBase) -> int | None:
        """The count of this holder's writes applied under its current epoch (Writer.written), None when it
        holds nothing or has written nothing under it."""
        got = self.writer.written.get(r.rtu.id)
        return got[1] if got is not None and r.lease.held and got[0] == r.lease.epoch else None

    def apply_lease(self, r: RunnerBase, holder: str, epoch: int, granted: bool = False) -> None:
        """What a lease tick (or the planned stop's watch of the lease) says: update the runner's view, count
        and log a change, replay and write the full image with the next poll on a gain. `granted`: the tick
        granted the lease to this node now, a gain even at the epoch this node last held (epochs start at 1
        again once the lease and its high-water are gone: FLUSHALL)."""
        change = r.lease.update(holder, epoch, granted)
        if change:
            self.metrics.inc("lease_changes")
            log.info("rtu %d: lease %s (holder %s, epoch %d)", r.rtu.id, change, r.lease.holder, r.lease.epoch)
            if change == "gained":
                r.lease_gained()
                self.gained.set()

    async def _watch_roles(self) -> None:
        """Master restarted / replaced / reconnected -> holders write full images; write mode per role."""
        try:
            pipe = self.ticker.pipeline(transaction=False)
            pipe.info("server")
            pipe.info("replication")
            server, rep = await pipe.execute()
            run_id = server["run_id"]
            self.replid = rep.get("master_replid") or None  # the holder's renewals keep it (lease `replid`)
        except Exception as exc:  # noqa: BLE001 - unreachable master
            self.master_ok = False
            self.once.problem("redis", f"{type(exc).__name__}: {exc}")
            return
        if (self.run_id is not None and run_id != self.run_id) or not self.master_ok:
            log.info("master Redis changed or came back (run_id %s): writing full images", run_id)
            for r in self.runners.values():
                if r.lease.held:
                    r.full_image()
        self.run_id, self.master_ok = run_id, True
        # the role watch's last reading (every role_watch_s); read here only before its first, and waited for
        # at most role_watch_s as the watch's (`confirm`: a hung local Redis held this tick, so the next lease
        # tick and the heartbeat, for redis-py's timeouts and retries, while "lease tick waiting on the master
        # Redis" was logged). Not answering: the write mode and the timeline wait for it, but the master is
        # reached (`tick_ok`: a planned stop hands the leases over; it said "master Redis unreachable" and
        # handed nothing over)
        role = self.roles.role
        if role is None and await self.roles.confirm(self.cfg.role_watch_s):
            role = self.roles.role
        if not role:
            self.once.problem("redis", f"local Redis: {self.roles.error}" if role == "" else
                              f"local Redis {self.cfg.local_host}:{self.cfg.local_port}: its role not read within "
                              f"role_watch_s ({self.cfg.role_watch_s:g} s), hung?: the write mode and the "
                              "timeline wait for it, the lease ticks go on")
            return
        self.once.clear("redis")
        if role != self.role:
            if self.role is not None:
                log.info("local Redis role %s -> %s", self.role, role)
                try:
                    await events.add(self.master, "role", self.cfg.node_id, role=role, was=self.role)
                except Exception as exc:  # noqa: BLE001 - the timeline must not stop the role watch
                    self.once.problem("events", f"{type(exc).__name__}: {exc}")
            self.role = role
        self.writer.set_mode(write_window_ms(self.cfg.write_mode, role, self.cfg.batch_window_ms),
                             self.cfg.batch_size)

    async def _leases(self) -> None:
        runners = list(self.runners.values())
        if not runners:
            return
        ttl_ms, takeover_ms = self.timers["lease_ttl_ms"], self.timers["takeover_ms"]
        node = self.cfg.node_id
        states: dict[int, dict[str, str]] = {}
        reach = [r.reaches() for r in runners]
        # stopping (handover.py): renew what is held, bid for nothing (no lease is taken on the way out)
        ticking = [(r, ok) for r, ok in zip(runners, reach, strict=True) if r.lease.held or not self.stopping]
        # lease ticks first (their results are res[0:len(ticking)]), then the link states, the channel events
        # and states when they changed, and the master clock's gen: one round trip packed by hiredis
        # (send_fcalls), as redis-py's pipeline packs and parses 2 x RTUs calls in Python, and a second round
        # trip would space the renewals further apart on a slow link (docs/ha.md "Degraded links")
        # reach 1 (fully) for the holder over its reach window, for the other node over takeover_s
        # (lease.reaches_fully): a node that loses a poll now and then does not take over
        # the holder's count of its writes applied (write_values' answer): a record below it was rolled back
        argvs = [redisfns.lease_tick(r.rtu.id, node, ok, ttl_ms, takeover_ms, r.polled_age_ms(),
                                     partly=ok and not r.reaches_fully(None if r.lease.held else self.cfg.takeover_s),
                                     written=self._written(r), replid=self.replid).argv
                 for r, ok in ticking]
        argvs += [redisfns.link_set(r.rtu.id, node, ok, [v.id for v in r.rtu.vpoints], live_ms=ttl_ms).argv
                  for r, ok in zip(runners, reach, strict=True)]
        tail: list[tuple[str, ...]] = []  # channel switches and states: rare
        for r in runners:
            for sw in r.switched:
                tail.append(events.command("channel", node, r.rtu.id, **sw))
            r.switched = []
            st = r.switcher.state()
            if st != self.sent_state.get(r.rtu.id):
                states[r.rtu.id] = st
                tail.append(("HSET", ks.channel_state(r.rtu.id, node), *(x for kv in st.items() for x in kv)))
        tail.append(("HGET", ks.CLOCK, "gen"))  # last: the master clock's gen, which the ticks just checked
        try:
            res = await send_fcalls(self.ticker, argvs, tail)
            self.note_clock(res[-1])
        except Exception as exc:  # noqa: BLE001 - master unreachable: the lease lapses after its TTL
            self.master_ok = False
            self.failing_since = self.failing_since or time.monotonic()
            self.once.problem("lease", f"{type(exc).__name__}: {exc}")
            return
        failed = [tick for tick in res[:len(ticking)] if isinstance(tick, Exception)]
        if failed:  # e.g. "Function not found" in a Redis that lost its data: once, not twice a tick
            self.failing_since = self.failing_since or time.monotonic()
            self.once.problem("lease", str(failed[0]))
        else:
            self.failing_since = None
            self.once.clear("lease")
        for (r, _), tick in zip(ticking, res, strict=False):
            if not isinstance(tick, Exception):
                self.apply_lease(r, str(tick[0] or ""), int(tick[1]), granted=int(tick[2]) == 1)
                if len(tick) > 3 and int(tick[3]) == 1 and r.lease.held:
                    r.resync()
        if not any(isinstance(x, Exception) for x in res[len(ticking):]):
            self.sent_state.update(states)
