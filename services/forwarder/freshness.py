"""When a forwarded value is not topical (issue 10b): the rules that set the NT quality bit.

The values a forwarder serves come from its local Redis. They are *not topical* (IEC 60870-5 NT) when:

1. the local Redis is a replica whose link to the master has been down (or the local Redis unreachable)
   longer than `replica_down_ms`: every value of this node is frozen;
2. an acquisition RTU has no live lease holder: no holder, or its lease expired more than one lease tick
   ago (the tick is the time the other node needs to take a lapsed lease over);
3. the holder has not completed a poll of the RTU for `stale_polls` poll periods plus one lease tick
   (`polled_ms` in the lease, stamped by the holder's lease tick; Modbus polls write only changes, so the
   per-RTU stamp says "still refreshed" for every point of the RTU without a write per point).

Rules 2 and 3 compare stamps on the master's clock with the local Redis's TIME: on the master's node that
is the master's clock, on the other node it is that node's clock (nodes are NTP-synchronised; an offset
of d ms shifts both rules by d ms). A lease without `polled_ms` (not written by an acquirer of this
version) is judged by rules 1 and 2 only. Virtual points carry link states whose liveness is decided in
Redis (`link_refresh`), so only rule 1 applies to them. Pure functions and a small class, table-tested;
the runner (app.py) does the I/O and sends the changes of NT as spontaneous data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fepha.points import Quality, Value

NT = int(Quality.NT)


@dataclass(frozen=True, slots=True)
class Limits:
    replica_down_ms: int
    stale_polls: int
    tick_ms: int


class ReplicaWatch:
    """How long the local Redis's data has been cut off from the master, from INFO replication.

    A master is not cut off; a replica with its link up is cut off for as long as it has heard nothing from
    its master (`master_last_io_seconds_ago`). Otherwise the start is the first observation,
    moved back by `master_link_down_since_seconds` minus one (Redis counts whole seconds) when Redis
    reports more than one second (a forwarder started while the link was already down)."""

    def __init__(self) -> None:
        self.down_since_ms: int | None = None

    def observe(self, info: Mapping[str, Any] | None, now_ms: int, asked_ms: int | None = None) -> int:
        """`info` = INFO replication of the local Redis, None when it is unreachable -> ms cut off.
        `asked_ms`: when the request that found it unreachable was sent; a first such observation counts
        from there (a hung Redis is seen only once the request's timeout has passed)."""
        if info is not None and (info.get("role") != "slave" or info.get("master_link_status") == "up"):
            self.down_since_ms = None
            # a silently broken link (packets dropped) stays "up" until repl-timeout (60 s): the time since
            # the last byte from the master says more, as the holders write every lease tick
            return max(0, _num(info.get("master_last_io_seconds_ago"))) * 1000 if info.get("role") == "slave" else 0
        if self.down_since_ms is None:
            reported = info.get("master_link_down_since_seconds") if info is not None else None
            try:
                # whole seconds of Redis's clock: 1 may mean 0.1 s, so one second is taken off
                ago = max(0, int(reported) - 1) * 1000 if reported is not None else 0
            except (TypeError, ValueError):
                ago = 0
            self.down_since_ms = now_ms - ago if info is not None or asked_ms is None else asked_ms
        return now_ms - self.down_since_ms


def _num(x: Any) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return 0


def _int(h: Mapping[str, str], k: str) -> int | None:
    try:
        return int(h[k])
    except (KeyError, TypeError, ValueError):
        return None


def rtu_reason(lease: Mapping[str, str], now_ms: int, poll_ms: int, lim: Limits) -> str | None:
    """Why an acquisition RTU's values are not topical (rules 2 and 3), None when they are."""
    holder = lease.get("holder") or ""
    if not holder:
        return "no lease holder"
    expires = _int(lease, "expires_ms") or 0
    if now_ms > expires + lim.tick_ms:
        return f"lease of {holder} lapsed {now_ms - expires} ms ago"
    polled = _int(lease, "polled_ms")
    if polled is not None and now_ms - polled > lim.stale_polls * poll_ms + lim.tick_ms:
        return f"holder {holder} has not completed a poll for {now_ms - polled} ms"
    return None


@dataclass(frozen=True)
class Staleness:
    """This node's verdict: a reason every value is NT (rule 1), and the acquisition RTUs whose values are."""

    all: str | None = None
    rtus: Mapping[int, str] = field(default_factory=dict)

    def stale(self, rtu: int | None) -> bool:
        """`rtu` = acquisition RTU of a source point, None for a virtual point."""
        return self.all is not None or (rtu is not None and rtu in self.rtus)

    def flipped(self, other: Staleness, rtus: Iterable[int | None]) -> set[int | None]:
        """The sources (RTU ids, None for virtual points) whose NT state differs between self and other."""
        return {r for r in rtus if self.stale(r) != other.stale(r)}


def judge(cut_off_ms: int, leases: Mapping[int, Mapping[str, str]], poll_ms: Mapping[int, int], now_ms: int,
          lim: Limits) -> Staleness:
    """Rules 1-3 over every routed acquisition RTU (`leases`: RTU -> its lease hash on the local Redis)."""
    every = f"local Redis cut off from the master for {cut_off_ms} ms" if cut_off_ms > lim.replica_down_ms else None
    rtus = {}
    for rid, lease in leases.items():
        why = rtu_reason(lease, now_ms, poll_ms[rid], lim)
        if why is not None:
            rtus[rid] = why
    return Staleness(every, rtus)


def overlay(v: Value, stale: bool) -> Value:
    """The value as sent: NT added while not topical (the stored value keeps its own quality)."""
    return Value(v.value, v.quality | NT, v.ts_ms) if stale and not v.quality & NT else v


__all__ = ["NT", "Limits", "ReplicaWatch", "Staleness", "judge", "overlay", "rtu_reason"]
