"""Control executor: pops this node's held RTUs' control queues on the master, claims each control in
Lua (fenced by the lease epoch, refused after its deadline), writes the device, reports the outcome.

At most once: the claim moves the control to `executing` atomically; a node that lost the lease puts it
back (in Lua) for the new holder. Only the lease holder's executor ever writes to a device.

The outcome of a control whose device write was made is sent again while the master cannot take it
(`finish_surely`): at a VIP move the connection it went out on is dropped or reset, and the Redis the VIP
leads to may not be promoted yet (READONLY). Sent once, it was lost there, the control stayed `executing`
and the audit said `unknown` at its deadline although the device had been written. `ctl_finish` acts only
on an executing control, so a second one after one that landed changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis import exceptions as rex

from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner
from fep_acquirer.tasks import cancel_all
from fepha import controls
from fepha import keyspace as ks
from fepha.logsetup import OnceLogger

log = logging.getLogger("acquirer")
FINISH_RETRY_S = 0.1
"""Pause between two sends of a control's outcome the master could not take."""
FINISH_GRACE_S = 2.0
"""How long after the control's deadline its outcome is still sent again (the forwarder waiting for it
abandons it at the deadline; an outcome that lands after that is still recorded: `ctl_finish` on a control
answered `unknown` puts its outcome in its hash and the audit, with `answered` = unknown)."""


async def finish_surely(master: Any, ctl_id: int, ok: bool, result: str, until: float, node: str = "") -> None:
    """`controls.finish`, sent again every FINISH_RETRY_S while the master cannot take it (connection
    dropped, reset or timed out; READONLY: the VIP leads to a Redis not yet promoted), until `until`
    (monotonic); then the error is raised. `node`: the executor's."""
    while True:
        try:
            if await controls.finish(master, ctl_id, ok, result, node) == controls.FINISHED_LATE:
                log.warning("control %d: %s (%s) recorded after its forwarder had answered unknown at the "
                            "deadline", ctl_id, "done" if ok else "failed", result)
            return
        except (rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError, OSError) as exc:
            if time.monotonic() >= until:
                raise
            log.info("control %d: outcome not taken by the master (%s: %s), sent again", ctl_id,
                     type(exc).__name__, exc)
            await asyncio.sleep(FINISH_RETRY_S)


WAKE_TTL_MS = 5000
"""How long a wake token (`ks.control_wake`) the executor did not pop itself stays: one pushed as the executor
was running a control, not in its BLPOP, wakes only a new executor of the same node started within that
time, which then takes one turn of its loop more."""


async def _wake_at(stopping: asyncio.Event, master: Any, node: str, gained: asyncio.Event) -> None:
    """Once `stopping` is set: wake the executor's idle wait (`gained`) and its BLPOP (a token pushed to the
    key it also blocks on). A failure (master unreachable) is left to the BLPOP, which fails too."""
    await stopping.wait()
    gained.set()
    key = ks.control_wake(node)
    with contextlib.suppress(Exception):
        pipe = master.pipeline(transaction=False)
        pipe.lpush(key, "stop")
        pipe.pexpire(key, WAKE_TTL_MS)
        await pipe.execute()


LATE = "not written: the deadline passed before the claim's answer came back from the master (slow link)"
DEADLINE = "no answer from the device before the control's deadline"


async def answer_orphans(presence: Any, node: str, instance: str, once: OnceLogger) -> bool:
    """`controls.answer_orphans` on the process's named connection to the master (`presence`); True when
    done (or not possible: the master does not show the names), False when to be tried again (the master
    unreachable)."""
    try:
        answered = await controls.answer_orphans(presence, node, instance)
    except rex.ResponseError as exc:  # refused (CLIENT LIST not allowed, no ctl_orphan): the deadline, as before
        log.warning("controls: the claims of this node's earlier acquirer processes not looked at (the master "
                    "refused: %s): any left unfinished is answered unknown at its deadline", exc)
        return True
    except Exception as exc:  # noqa: BLE001 - master unreachable: tried again at the next turn
        once.problem("orphans", f"claims of earlier processes not looked at yet: {type(exc).__name__}: {exc}")
        return False
    once.clear("orphans")
    if answered is None:
        log.warning("controls: the master does not show this process's connection name (%s): the claims of this "
                    "node's earlier acquirer processes are left to their deadline",
                    controls.presence_name(node, instance))
    elif answered:
        log.warning("control %s: claimed by an earlier acquirer process of this node, which ended before it "
                    "answered: answered unknown (%s)", ", ".join(map(str, answered)), controls.RESTARTED)
    return True


async def execute_loop(master: Any, node: str, runners: dict[int, RtuRunner], metrics: Metrics,
                       once: OnceLogger, stopping: asyncio.Event, block_s: float = 0.5,
                       gained: asyncio.Event | None = None, instance: str = "", presence: Any = None) -> None:
    """Runs until `stopping` is set (checked between short BLPOPs). Holding nothing, it waits for `gained`
    (set by the housekeeping at a lease gain) or `block_s`: the controls queued for a node that has just taken
    a lease over (after a failover) wait no longer.

    When `stopping` is set, neither wait is sat out (`_wake_at`): the idle one is woken, and the BLPOP gets a
    token on this node's wake key (`ks.control_wake`), which it blocks on with its queues. It is not cancelled
    instead: Redis may have popped a control by then, whose id would be lost with the unread reply (the
    control left `queued` in no queue until a forwarder's `ctl_requeue`); so a control the BLPOP returned is
    run as always. A planned stop used to wait for the BLPOP's timeout (up to `block_s`: 0.5 s, 2.0 s seen in
    CI under load).

    `instance` (`controls.instance_id`) is written with each claim. With `presence` (a client of the master
    whose connections are named `controls.presence_name(node, instance)`), the claims an earlier process of
    this node left unfinished are answered `unknown` first (`answer_orphans`), tried again at each turn until
    the master has answered."""
    gained = gained or asyncio.Event()
    guard = controls.ReplicaGuard()  # when the master dropped its replica, seen between controls too
    waker = asyncio.create_task(_wake_at(stopping, master, node, gained), name="acquirer-controls-wake")
    try:
        await _execute(master, node, runners, metrics, once, stopping, block_s, gained, guard, instance, presence)
    finally:
        await cancel_all(waker)


async def _execute(master: Any, node: str, runners: dict[int, RtuRunner], metrics: Metrics, once: OnceLogger,
                   stopping: asyncio.Event, block_s: float, gained: asyncio.Event,
                   guard: controls.ReplicaGuard, instance: str, presence: Any) -> None:
    wake = ks.control_wake(node)
    orphans_due = bool(instance) and presence is not None
    while not stopping.is_set():
        gained.clear()
        if orphans_due:
            orphans_due = not await answer_orphans(presence, node, instance, once)
        held = {ks.control_queue(r.rtu.id): r for r in runners.values() if r.lease.held}
        if not held:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gained.wait(), block_s)
            continue
        try:
            got = await master.blpop([*held, wake], timeout=block_s)
        except Exception as exc:  # noqa: BLE001 - master unreachable; retried
            once.problem("controls", f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):  # retried after block_s, unless the stop begins
                await asyncio.wait_for(stopping.wait(), block_s)
            continue
        once.clear("controls")
        if got and got[0] == wake:  # the stop began (or a token left by an earlier one: one turn more)
            continue
        if not got:
            with contextlib.suppress(Exception):  # the next BLPOP reports a master that does not answer
                await controls.observe(master, guard)
            continue
        runner = held[got[0]]
        try:
            await run_one(master, node, runner, int(got[1]), metrics, once, guard, instance)
        except Exception as exc:  # noqa: BLE001 - master unreachable mid-control; the next one is taken up
            # the control is left as it was (queued or executing, never written twice): the forwarder
            # waiting for it abandons it at its deadline
            once.problem("controls", f"control {got[1]}: {type(exc).__name__}: {exc}")


def failure(exc: BaseException, past_deadline: bool) -> str:
    """A failed write's reason, as logged and recorded: its message; for one without (the deadline's
    TimeoutError, which used to be logged as `failed: ` and recorded as `TimeoutError`), what happened."""
    if str(exc):
        return str(exc)
    if past_deadline:
        return DEADLINE
    return type(exc).__name__


async def run_one(master: Any, node: str, runner: RtuRunner, ctl_id: int, metrics: Metrics,
                  once: OnceLogger | None = None, guard: controls.ReplicaGuard | None = None,
                  instance: str = "") -> None:
    guard = guard or controls.ReplicaGuard()
    claimed = await controls.claim(master, runner.rtu.id, node, runner.lease.epoch, ctl_id, guard=guard,
                                   instance=instance)
    if guard.refused:
        metrics.inc("controls_refused")
        if once:  # one line while it lasts; every refusal and its reason is in fep:ctl:audit
            once.problem("replication", "controls refused: their claim cannot be made sure to reach the "
                                        "replica (standby's Redis lagging, hung or cut off)")
        return
    if claimed is None:
        return
    if once:
        once.clear("replication")
    left_s = claimed.deadline - time.monotonic()
    until = time.monotonic() + max(0.0, left_s) + FINISH_GRACE_S
    if left_s <= 0:  # the claim's answer came back after the deadline (a slow link): never written late
        metrics.inc("controls_failed")
        log.warning("control %d (rtu %d point %d) %s", ctl_id, runner.rtu.id, claimed.point, LATE)
        await finish_surely(master, ctl_id, False, LATE, until, node)
        return
    deadline = time.monotonic() + left_s
    try:
        how = await asyncio.wait_for(runner.write_point(claimed.point, claimed.value, deadline=deadline), left_s)
    except Exception as exc:  # noqa: BLE001 - any failure is the control's answer, not ours
        metrics.inc("controls_failed")
        why = failure(exc, time.monotonic() >= deadline)
        log.warning("control %d (rtu %d point %d) failed: %s", ctl_id, runner.rtu.id, claimed.point, why)
        await finish_surely(master, ctl_id, False, why, until, node)
        return
    metrics.inc("controls_executed")
    await finish_surely(master, ctl_id, True, how or "written", until, node)
