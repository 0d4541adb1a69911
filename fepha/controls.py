"""Controls through the master Redis: submitted by any forwarder, executed by the lease holder's acquirer.

The state machine lives in `controls.lua` (atomic, at most once, deadline checked on the master's clock).
This module is the one client of it: `submit` + `wait` for forwarders, `claim` + `finish` for the
acquirer's executor, `answer_orphans` for a new acquirer process (the claims its node's previous one left). `wait` always ends with a definite result: done, failed, expired or unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fepha import keyspace as ks
from fepha.redisfns import Call

DONE, FAILED, EXPIRED, UNKNOWN = "done", "failed", "expired", "unknown"
MISSING = "missing"
"""ctl_abandon's answer for a control the master does not hold (the VIP moved to a Redis that never got it)."""
LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
"""A read of the reply that failed on the link (connection dropped as the VIP moved, a lossy link's timeout):
reading runs nothing, so the wait reads again."""
REREAD_S = 0.1
LATE_S = 0.5
"""`wait` reads a control's result until this long past its deadline before it abandons it (the executor
finishes a control claimed just before the deadline a little after it)."""


@dataclass(frozen=True, slots=True)
class Result:
    id: int
    state: str  # done, failed, expired, unknown
    reason: str

    @property
    def ok(self) -> bool:
        return self.state == DONE


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    point: int
    value: float
    remaining_ms: int
    deadline: float = 0.0
    """The deadline on this process's monotonic clock, counted from when the claim was sent: the master ran
    the claim after that, so this is never later than its deadline however slow the link (counted from the
    answer's arrival it was late by the answer's trip and the replication wait)."""


def submit_call(ctl_id: int, rtu: int, point: int, value: float, origin: str, timeout_ms: int) -> Call:
    return Call("ctl_submit", (ks.control(ctl_id), ks.control_queue(rtu), ks.CLOCK),
                (ctl_id, rtu, point, repr(float(value)), origin, int(timeout_ms)))


def claim_call(rtu: int, node: str, epoch: int, ctl_id: int, instance: str = "") -> Call:
    """`instance`: the claiming process (`instance_id`); with it the claim is written in the node's set of
    claims, where the node's next process finds it if this one never finishes it (`answer_orphans`)."""
    return Call("ctl_claim", (ks.lease(rtu), ks.control(ctl_id), ks.control_queue(rtu),
                              ks.control_reply(ctl_id), ks.CTL_AUDIT, ks.CLOCK, ks.control_claims(node)),
                (node, int(epoch), ctl_id, instance))


def finish_call(ctl_id: int, ok: bool, result: str, node: str = "") -> Call:
    """`node`: the executor's, whose set of claims the control leaves."""
    claimed = (ks.control_claims(node),) if node else ()
    return Call("ctl_finish", (ks.control(ctl_id), ks.control_reply(ctl_id), ks.CTL_AUDIT, *claimed),
                (1 if ok else 0, result, *((ctl_id,) if node else ())))


RESTARTED = ("the acquirer that claimed it was restarted before it answered; the device may or may not have "
             "run it")
"""ctl_orphan's result: the claim of an acquirer process that is gone, found by the node's next process."""


def orphan_call(ctl_id: int, node: str, instance: str, result: str = RESTARTED) -> Call:
    return Call("ctl_orphan", (ks.control(ctl_id), ks.control_reply(ctl_id), ks.CTL_AUDIT, ks.control_claims(node)),
                (ctl_id, node, instance, result))


def requeue_call(ctl_id: int, rtu: int, after_ms: int = 1000) -> Call:
    return Call("ctl_requeue", (ks.control(ctl_id), ks.control_queue(rtu)), (ctl_id, after_ms))


def expire_call(ctl_id: int) -> Call:
    return Call("ctl_expire", (ks.control(ctl_id), ks.control_reply(ctl_id), ks.CTL_AUDIT), ())


def abandon_call(ctl_id: int) -> Call:
    return Call("ctl_abandon", (ks.control(ctl_id), ks.control_reply(ctl_id), ks.CTL_AUDIT, ks.CLOCK), ())


def time_tag_too_old(tag_ms: int, now_ms: int, max_age_ms: int) -> bool:
    """A time-tagged command (IEC 104 C_xx_TA_1) older than max_age_ms, or from the future by more than
    that, is rejected without being queued."""
    return abs(now_ms - tag_ms) > max_age_ms


def time_left_ms(timeout_ms: int | None, not_after_ms: int | None, now_ms: int) -> int | None:
    """The time a control may still take: its timeout, cut to what is left before `not_after_ms` (a
    time-tagged command: its tag + `command_max_age_ms`, a wall-clock limit), None when neither bounds it.
    A tagged command accepted at 9.5 s of a 10 s age limit must not get the full control timeout from its
    receipt (it would run up to 14.5 s after its tag): 0 or less means too late to run."""
    if not_after_ms is None:
        return timeout_ms
    left = not_after_ms - now_ms
    return left if timeout_ms is None else min(timeout_ms, left)


def parse_reply(ctl_id: int, raw: str) -> Result:
    state, _, reason = raw.partition("|")
    return Result(ctl_id, state, reason)


async def submit(master: Any, rtu: int, point: int, value: float, origin: str, timeout_ms: int) -> int:
    """Queue a control for the holder of acquisition RTU `rtu`; returns its id."""
    ctl_id = int(await master.incr(ks.CTL_SEQ))
    await master.fcall(*submit_call(ctl_id, rtu, point, value, origin, timeout_ms).argv)
    return ctl_id


async def wait(master: Any, ctl_id: int, timeout_ms: int, rtu: int | None = None,
               since: float | None = None) -> Result:
    """Wait for the result; at the deadline, expire it if still queued, so it can never run late.

    The deadline is `timeout_ms` after `since` (this process's monotonic clock when the submit was sent;
    default: now), independent of any Redis host's clock. At it `ctl_expire` ends a control still queued
    (`expired`, never claimed after it) whatever the master's clock says: a master whose clock is behind
    the one that set the control's deadline_ms would otherwise let it be claimed until its own clock got
    there (docs/ha.md "Clocks"). A control already executing is left to its executor until LATE_S past the
    deadline, then abandoned (`ctl_abandon`: `unknown`, judged on the master's clock).

    With `rtu` (the queue it was submitted to), each second without a result puts it back in its queue if an
    executor popped it and never claimed it (`ctl_requeue`: the answer to that BLPOP was lost), so the
    holder runs it before the deadline instead of it expiring there.

    The control is already queued: a read that fails on the link (the role watch dropped the connection
    as the VIP moved, or a lossy link timed it out) is read again on a new connection, wherever the VIP
    now leads, until the deadline. Reading a reply runs nothing, so a control that ran is confirmed as
    done instead of answered unknown while its result is there to read. Past the deadline a failure is
    raised to the caller (unknown); the expiry, if it could not be sent, is then left to the master's
    clock."""
    due = (time.monotonic() if since is None else since) + timeout_ms / 1000
    end = due + LATE_S
    expired_sent = False
    while True:
        now = time.monotonic()
        left = end - now
        try:
            if not expired_sent and now >= due:
                with contextlib.suppress(ResponseError):  # a library from before ctl_expire: as before
                    await master.fcall(*expire_call(ctl_id).argv)
                expired_sent = True  # a queued control's reply is there now: read below
            if left > 0:
                block = min(left, 1.0) if expired_sent else min(due - now, 1.0)
                got = await master.blpop([ks.control_reply(ctl_id)], timeout=max(0.01, block))
                if got:
                    return parse_reply(ctl_id, got[1])
                if rtu is not None and time.monotonic() < due:
                    with contextlib.suppress(ResponseError):  # a library from before ctl_requeue: as before
                        await master.fcall(*requeue_call(ctl_id, rtu).argv)
                continue
            state = await master.fcall(*abandon_call(ctl_id).argv)
            got = await master.lpop(ks.control_reply(ctl_id))
        except LINK_ERRORS:
            if time.monotonic() >= end:
                raise
            await asyncio.sleep(REREAD_S)
            continue
        if got:
            return parse_reply(ctl_id, got)
        if state in (EXPIRED, UNKNOWN):
            return Result(ctl_id, state, "deadline passed")
        if state == MISSING:  # gone: its key expired, the master lost its data, or the VIP moved to one without it
            return Result(ctl_id, UNKNOWN, "the master Redis no longer holds this control")
        if state in (DONE, FAILED):  # final: its reply read by a read whose answer was lost, or expired early
            # by a master clock ahead (docs/ha.md "Clocks")
            return Result(ctl_id, state, str(await master.hget(ks.control(ctl_id), "result") or ""))
        # executing, and the master's clock is behind ours (or a library from before ctl_expire: queued):
        # try again shortly
        end = time.monotonic() + 0.2


async def execute(master: Any, rtu: int, point: int, value: float, origin: str, timeout_ms: int) -> Result:
    """submit + wait, for a forwarder; the deadline counts from when the submit was sent."""
    sent = time.monotonic()
    ctl_id = await submit(master, rtu, point, value, origin, timeout_ms)
    return await wait(master, ctl_id, timeout_ms, rtu, since=sent)


NOT_REPLICATED = "refused: the claim did not reach the replica in time (replication lagging)"
REPLICA_SILENT = "refused: the replica has not acknowledged for {lag} s (standby's Redis hung, slow or cut off)"
REPLICA_DROPPED = ("refused: queued before the master dropped its silent replica, which may still hold it "
                   "queued")
REPLICA_SILENT_S = 3
"""A replica acknowledges its master's stream once a second (REPLCONF ACK); INFO's `lag` (whole seconds
since the last one) reads 0-2 for a live replica. From this lag on, it is not waited for."""

WAIT, RUN, REFUSE = "wait", "run", "refuse"


def barrier(info: dict[str, Any], silent_s: int = REPLICA_SILENT_S) -> tuple[str, int]:
    """What a claim does about replication, from the master's INFO replication -> (action, lag in s).

    RUN: no replica attached. WAIT: wait for a replica's acknowledgement. REFUSE: every attached replica
    is streaming (`online`) and has been silent for `silent_s` or more: WAIT would sit out its whole
    timeout, so the control is refused at once. A replica still in its initial sync is waited for (it
    acknowledges once the sync is done)."""
    if int(info.get("connected_slaves", 0) or 0) <= 0:
        return RUN, 0
    replicas = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit() and isinstance(v, dict)]
    if not replicas or any(r.get("state") != "online" for r in replicas):
        return WAIT, 0
    lag = min(int(r.get("lag", 0) or 0) for r in replicas)
    return (REFUSE if lag >= silent_s else WAIT), lag


class ReplicaGuard:
    """What one executor has seen of its master's replicas: when the master dropped its last one.

    A replica the master drops (silent for `repl-timeout`) may hold, in its copy or its socket buffer,
    controls queued before the drop; executed here without a barrier, they could be executed again by that
    replica's node if this master died and it were promoted before their deadline. So a control created
    before the drop was seen is refused; one created after it cannot be in the dropped replica's copy (it
    gets it, if ever, through a resync that carries the claim too) and runs. The drop time is the first
    observation (master clock) with no replica attached after one with a replica, by the same master
    (`master_replid`: a promoted replica starts a new history, and controls queued there before its
    promotion were never claimed anywhere). An executor that has never seen a replica attached to this
    master knows of no drop. `refused` holds the reason of the last claim refused for replication."""

    def __init__(self) -> None:
        self.replid: str | None = None
        self.attached = False
        self.dropped_ms: int | None = None
        self.refused = ""

    def observe(self, info: dict[str, Any], now_ms: int) -> None:
        attached = int(info.get("connected_slaves", 0) or 0) > 0
        replid = info.get("master_replid")
        if replid != self.replid:
            self.replid, self.dropped_ms = replid, None
        elif attached:
            self.dropped_ms = None  # (re)attached: later claims wait for it again
        elif self.attached and self.dropped_ms is None:
            self.dropped_ms = now_ms
        self.attached = attached

    def at_risk(self, created_ms: int) -> bool:
        return self.dropped_ms is not None and created_ms <= self.dropped_ms


async def observe(master: Any, guard: ReplicaGuard) -> dict[str, Any]:
    """INFO replication and TIME of the master, fed to `guard`; returns the INFO."""
    pipe = master.pipeline(transaction=False)
    pipe.info("replication")
    pipe.time()
    info, (sec, usec) = await pipe.execute()
    guard.observe(info, int(sec) * 1000 + int(usec) // 1000)
    return info


async def claim(master: Any, rtu: int, node: str, epoch: int, ctl_id: int,
                replica_wait_ms: int = 1500, guard: ReplicaGuard | None = None, instance: str = "") -> Claimed | None:
    """Claim a popped control; None when it must not be executed (not holder, expired, refused; a refusal
    for replication is answered failed and its reason left in `guard.refused`).

    Replication barrier: the pop and the claim must be on the replica before the device is written.
    Otherwise, if this master died right after the write, the replica promoted in its place would still
    hold the control as queued and the new holder would execute it a second time before its deadline.
    So the claim is followed by WAIT on the same connection; if a replica is attached but has not
    acknowledged within `replica_wait_ms`, the control is answered failed instead of executed. A replica
    attached but silent for REPLICA_SILENT_S or more (hung, cut off: the master keeps it attached until
    `repl-timeout`) is not waited for: the control is refused at once (`barrier`), so a standby's trouble
    costs no control a wait, nor the queue behind it a delay. With no replica attached (the peer is down,
    or the master dropped it at `repl-timeout`) there is no one to take over with stale data: it is
    executed, unless `guard` saw the master drop its replica after the control was created (above).
    The wait is normally well under a millisecond; only right after a replica's (re)sync, until its first
    acknowledgement (Redis replicas acknowledge once a second), can it take up to about one second.
    `instance`: the claiming process (`claim_call`).
    """
    guard = guard or ReplicaGuard()
    guard.refused = ""
    action, lag = barrier(await observe(master, guard))
    pipe = master.pipeline(transaction=False)  # WAIT counts the writes of its own connection: one pipeline
    pipe.fcall(*claim_call(rtu, node, epoch, ctl_id, instance).argv)
    if action == WAIT:  # WAIT with no replica attached would always sit out its whole timeout
        pipe.wait(1, replica_wait_ms)
        pipe.info("replication")
    sent = time.monotonic()
    out = await pipe.execute()
    res = out[0]
    if int(res[0]) != 1:
        return None
    if action == REFUSE:
        guard.refused = REPLICA_SILENT.format(lag=lag)
    elif action == WAIT and int(out[1]) < 1 and int(out[2].get("connected_slaves", 0)) > 0:
        guard.refused = NOT_REPLICATED
    elif action == RUN and guard.at_risk(int(res[4]) if len(res) > 4 else 0):  # 0: an older library
        guard.refused = REPLICA_DROPPED
    if guard.refused:
        await finish(master, ctl_id, False, guard.refused, node)
        return None
    return Claimed(ctl_id, int(res[1]), float(res[2]), int(res[3]), sent + int(res[3]) / 1000)


FINISHED, FINISHED_LATE = 1, 2
"""ctl_finish's answers when it recorded the outcome: in time, or after the control was answered `unknown`."""


async def finish(master: Any, ctl_id: int, ok: bool, result: str, node: str = "") -> int:
    """The executor's outcome: FINISHED, FINISHED_LATE, or 0 (not executing: one already taken). `node`: the
    executor's (`finish_call`)."""
    return int(await master.fcall(*finish_call(ctl_id, ok, result, node).argv))


PRESENCE_PREFIX = "fep-acquirer"


def instance_id() -> str:
    """This process's name among the acquirer processes of its node, past and present: its pid, for the
    operator, and a random part (a restarted container's process often gets the same pid)."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def presence_name(node: str, instance: str) -> str:
    """The Redis client name (CLIENT SETNAME) of an acquirer process's connection to the master that says it
    is alive (`answer_orphans`): a process that is gone has no connection left (the kernel closes them
    at its end, SIGKILL included)."""
    return f"{PRESENCE_PREFIX}:{node}:{instance}"


async def live_instances(r: Any, node: str) -> set[str]:
    """The acquirer processes of `node` that have a connection to this Redis under `presence_name`."""
    prefix = presence_name(node, "")
    return {str(c["name"])[len(prefix):] for c in await r.client_list(_type="normal")
            if str(c.get("name", "")).startswith(prefix)}


async def answer_orphans(r: Any, node: str, instance: str) -> list[int] | None:
    """Answer `unknown` at once (`ctl_orphan`) the controls still `executing` for `node` whose claiming
    process is gone from the master: the claims an earlier process of this node (killed, or stopped
    before it finished them) left. Run by a new acquirer process (`instance`) as it starts, on its named
    connection (`presence_name`), so that this process is among those CLIENT LIST shows; if it is not (the
    names are not shown), nothing is judged: None. A claim of a process that is still connected (two
    acquirers of one node by mistake) or of a process from before instances were written is left to its
    executor, or to the deadline. Returns the ids answered."""
    ids = sorted(await r.smembers(ks.control_claims(node)), key=int)
    if not ids:
        return []
    live = await live_instances(r, node)
    if instance not in live:
        return None
    pipe = r.pipeline(transaction=False)
    for ctl_id in ids:
        pipe.hmget(ks.control(ctl_id), "state", "executor", "instance")
    answered = []
    for ctl_id, (state, executor, inst) in zip(ids, await pipe.execute(), strict=True):
        if state == "executing" and (executor != node or not inst or inst in live):
            continue
        # gone, or no longer executing (its id left in the set: abandoned at the deadline): checked again and
        # ended there, atomically (its executor's finish or the forwarder's abandon may come first)
        if await r.fcall(*orphan_call(int(ctl_id), node, inst or "").argv) == UNKNOWN:
            answered.append(int(ctl_id))
    return answered
