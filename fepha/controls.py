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


async def claim(master: Any, rtu: int, node: str, epoch: int, ctl_id: int) -> Claimed | None:
    res = await master.fcall(*claim_call(rtu, node, epoch, ctl_id).argv)
    if int(res[0]) != 1:
        return None
    return Claimed(ctl_id, int(res[1]), float(res[2]), int(res[3]))


async def finish(master: Any, ctl_id: int, ok: bool, result: str) -> bool:
    return int(await master.fcall(*finish_call(ctl_id, ok, result).argv)) == 1
