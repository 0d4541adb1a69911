"""Controls through the master Redis: submitted by any forwarder, executed by the lease holder's acquirer.

The state machine lives in `controls.lua` (atomic, at most once, deadline checked on the master's clock).
This module is the one client of it: `submit` + `wait` for forwarders, `claim` + `finish` for the
acquirer's executor. `wait` always ends with a definite result: done, failed, expired or unknown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fepha import keyspace as ks
from fepha.redisfns import Call

DONE, FAILED, EXPIRED, UNKNOWN = "done", "failed", "expired", "unknown"


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


def submit_call(ctl_id: int, rtu: int, point: int, value: float, origin: str, timeout_ms: int) -> Call:
    return Call("ctl_submit", (ks.control(ctl_id), ks.control_queue(rtu)),
                (ctl_id, rtu, point, repr(float(value)), origin, int(timeout_ms)))


def claim_call(rtu: int, node: str, epoch: int, ctl_id: int) -> Call:
    return Call("ctl_claim", (ks.lease(rtu), ks.control(ctl_id), ks.control_queue(rtu),
                              ks.control_reply(ctl_id), ks.CTL_AUDIT), (node, int(epoch), ctl_id))


def finish_call(ctl_id: int, ok: bool, result: str) -> Call:
    return Call("ctl_finish", (ks.control(ctl_id), ks.control_reply(ctl_id), ks.CTL_AUDIT),
                (1 if ok else 0, result))


def abandon_call(ctl_id: int) -> Call:
    return Call("ctl_abandon", (ks.control(ctl_id), ks.control_reply(ctl_id), ks.CTL_AUDIT), ())


def time_tag_too_old(tag_ms: int, now_ms: int, max_age_ms: int) -> bool:
    """A time-tagged command (IEC 104 C_xx_TA_1) older than max_age_ms, or from the future by more than
    that, is rejected without being queued."""
    return abs(now_ms - tag_ms) > max_age_ms


def parse_reply(ctl_id: int, raw: str) -> Result:
    state, _, reason = raw.partition("|")
    return Result(ctl_id, state, reason)


async def submit(master: Any, rtu: int, point: int, value: float, origin: str, timeout_ms: int) -> int:
    """Queue a control for the holder of acquisition RTU `rtu`; returns its id."""
    ctl_id = int(await master.incr(ks.CTL_SEQ))
    await master.fcall(*submit_call(ctl_id, rtu, point, value, origin, timeout_ms).argv)
    return ctl_id


async def wait(master: Any, ctl_id: int, timeout_ms: int) -> Result:
    """Wait for the result; past the deadline, abandon it so it can never run late."""
    end = time.monotonic() + timeout_ms / 1000 + 0.5
    while True:
        left = end - time.monotonic()
        if left > 0:
            got = await master.blpop([ks.control_reply(ctl_id)], timeout=max(0.05, min(left, 1.0)))
            if got:
                return parse_reply(ctl_id, got[1])
            continue
        state = await master.fcall(*abandon_call(ctl_id).argv)
        got = await master.lpop(ks.control_reply(ctl_id))
        if got:
            return parse_reply(ctl_id, got)
        if state in (EXPIRED, UNKNOWN):
            return Result(ctl_id, state, "deadline passed")
        # the master's clock is behind ours: try again shortly
        end = time.monotonic() + 0.2


async def execute(master: Any, rtu: int, point: int, value: float, origin: str, timeout_ms: int) -> Result:
    """submit + wait, for a forwarder."""
    ctl_id = await submit(master, rtu, point, value, origin, timeout_ms)
    return await wait(master, ctl_id, timeout_ms)


NOT_REPLICATED = "refused: the claim did not reach the replica in time (replication lagging)"


async def claim(master: Any, rtu: int, node: str, epoch: int, ctl_id: int,
                replica_wait_ms: int = 1500) -> Claimed | None:
    """Claim a popped control; None when it must not be executed (not holder, expired, refused).

    Replication barrier: the pop and the claim must be on the replica before the device is written.
    Otherwise, if this master died right after the write, the replica promoted in its place would still
    hold the control as queued and the new holder would execute it a second time before its deadline.
    So the claim is followed by WAIT on the same connection; if a replica is attached but has not
    acknowledged within `replica_wait_ms`, the control is answered failed instead of executed. With no
    replica attached (the peer is down) there is no one to take over with stale data: it is executed.
    The wait is normally well under a millisecond; only right after a replica's (re)sync, until its first
    acknowledgement (Redis replicas acknowledge once a second), can it take up to about one second.
    """
    replicated = int((await master.info("replication")).get("connected_slaves", 0)) > 0
    pipe = master.pipeline(transaction=False)  # WAIT counts the writes of its own connection: one pipeline
    pipe.fcall(*claim_call(rtu, node, epoch, ctl_id).argv)
    if replicated:  # WAIT with no replica attached would always sit out its whole timeout
        pipe.wait(1, replica_wait_ms)
        pipe.info("replication")
    out = await pipe.execute()
    res = out[0]
    if int(res[0]) != 1:
        return None
    if replicated and int(out[1]) < 1 and int(out[2].get("connected_slaves", 0)) > 0:
        await finish(master, ctl_id, False, NOT_REPLICATED)
        return None
    return Claimed(ctl_id, int(res[1]), float(res[2]), int(res[3]))


async def finish(master: Any, ctl_id: int, ok: bool, result: str) -> bool:
    return int(await master.fcall(*finish_call(ctl_id, ok, result).argv)) == 1
