"""Whether a stored value is topical (IEC 60870-5 NT): the rules the forwarder applies to what it sends
SCADA and the api to what it shows (docs/forwarder.md "Quality"); pure functions and one small class.
The forwarder's verdict over all its RTUs (Staleness, judge) is in fep_forwarder.freshness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fepha.points import Quality, Value

NT = int(Quality.NT)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a value's topicality is judged by: the local Redis cut off from the master for longer than
    `replica_down_ms` (rule 1), no complete poll for `stale_polls` poll periods, and `tick_ms` (a lease
    tick) of slack on the lease's times (rules 2 and 3); `poll_ms` is the poll period of an RTU with no
    POLLMS of its own (`[timers] poll_ms`)."""

    replica_down_ms: int
    stale_polls: int
    tick_ms: int
    poll_ms: int

    FIELDS = ("replica_down_ms", "stale_polls", "lease_tick_ms", "poll_ms")
    """The names `report` gives them."""

    @classmethod
    def of(cls, cfg: Any) -> Limits:
        """The one conversion from a node's configuration: the forwarder judges by it and reports it in its
        heartbeat (`report`); the api shows NT by the limits this node's forwarder reports, its own only
        while none does (docs/api.md "Quality as served")."""
        return cls(int(cfg.replica_down_s * 1000), cfg.quality_stale_polls, int(cfg.lease_tick_s * 1000),
                   int(cfg.poll_ms))

    def report(self) -> dict[str, int]:
        """The heartbeat's fields (docs/keyspace.md `fep:hb:{service}:{node}`); `reported` reads them back."""
        return dict(zip(self.FIELDS, dataclasses.astuple(self), strict=True))

    @classmethod
    def reported(cls, got: Mapping[str, int]) -> Limits:
        """From the fields of `report` (a forwarder's heartbeat)."""
        return cls(*(got[k] for k in cls.FIELDS))


class ReplicaWatch:
    """How long the local Redis's data has been cut off from the master, from INFO replication.

    A master is not cut off; a replica with its link up is cut off for as long as it has heard nothing from
    its master (`master_last_io_seconds_ago`). Otherwise the start is the first observation,
    moved back by `master_link_down_since_seconds` minus one (Redis counts whole seconds) when Redis
    reports more than one second (a forwarder started while the link was already down), and back to the
    last byte heard when the link was seen up but silent before it went down (Redis ends a silent link at
    `repl-timeout`: the count goes on from the silence, it does not start again)."""

    def __init__(self) -> None:
        self.down_since_ms: int | None = None
        self.heard_ms: int | None = None  # when the master was last heard, as last seen on an up link

    def observe(self, info: Mapping[str, Any] | None, now_ms: int, asked_ms: int | None = None) -> int:
        """`info` = INFO replication of the local Redis, None when it is unreachable -> ms cut off.
        `asked_ms`: when the request that found it unreachable was sent; a first such observation counts
        from there (a hung Redis is seen only once the request's timeout has passed)."""
        if info is not None and (info.get("role") != "slave" or info.get("master_link_status") == "up"):
            self.down_since_ms = None
            if info.get("role") != "slave":
                self.heard_ms = None
                return 0
            # a silently broken link (packets dropped) stays "up" until repl-timeout: the time since
            # the last byte from the master says more, as the holders write every lease tick
            silent_ms = max(0, _num(info.get("master_last_io_seconds_ago"))) * 1000
            self.heard_ms = now_ms - silent_ms if silent_ms else None  # only a silence is carried over
            return silent_ms
        if self.down_since_ms is None:
            reported = info.get("master_link_down_since_seconds") if info is not None else None
            try:
                # whole seconds of Redis's clock: 1 may mean 0.1 s, so one second is taken off
                ago = max(0, int(reported) - 1) * 1000 if reported is not None else 0
            except (TypeError, ValueError):
                ago = 0
            self.down_since_ms = now_ms - ago if info is not None or asked_ms is None else asked_ms
            if self.heard_ms is not None:
                self.down_since_ms = min(self.down_since_ms, self.heard_ms)
            self.heard_ms = None
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


def replids(info: Mapping[str, Any] | None) -> frozenset[str]:
    """The replication ids under which a lease renewed by the holder belongs to the local Redis's copy (INFO
    replication: `master_replid`, and `master_replid2`, the one a promoted replica took over)."""
    if info is None:
        return frozenset()
    return frozenset(v for k in ("master_replid", "master_replid2")
                     if isinstance(v := info.get(k), str) and v.strip("0"))


def rtu_reason(lease: Mapping[str, str], now_ms: int, poll_ms: int | None, lim: Limits,
               ids: frozenset[str] = frozenset()) -> str | None:
    """Why an acquisition RTU's values are not topical (rules 2 and 3, and a data set rolled back: the lease's
    `rolled_back_ms`, written by `lease_tick` in functions.lua), None when they are. `poll_ms`: the
    RTU's own POLLMS, None for `lim.poll_ms` (the default of the node judging); `ids`: `replids` of the local
    Redis (empty: not judged), which a lease's `replid` must be among. A lease whose
    `polled_ms` or `since_ms` (never later than the writer's clock) lies more than one tick ahead of
    `now_ms` was written by a clock ahead of this one: its expiry cannot be trusted either."""
    holder = lease.get("holder") or ""
    if not holder:
        return "no lease holder"
    if holder not in ("A", "B"):  # another writer's key: no acquirer renews it or writes under it
        return f"lease held by {holder!r}, which is no node: nobody acquires these values"
    expires = _int(lease, "expires_ms")
    if expires is None:  # was "lapsed <the epoch's age> ms ago"
        return f"lease of {holder} has no readable expiry (expires_ms {lease.get('expires_ms')!r}): it renews nothing"
    if now_ms > expires + lim.tick_ms:
        return f"lease of {holder} lapsed {now_ms - expires} ms ago"
    ahead = max(_int(lease, "polled_ms") or 0, _int(lease, "since_ms") or 0) - now_ms
    if ahead > lim.tick_ms:  # docs/ha.md "Clocks": stamps a clock ahead of this Redis's wrote
        return (f"lease of {holder} stamped {ahead} ms ahead of this Redis's clock: written by a clock ahead "
                f"of it, the holder's liveness cannot be judged")
    rid = lease.get("replid")
    if ids and rid and rid not in ids:  # functions.lua lease_tick: renewed under another copy of the data set
        return (f"lease of {holder} not renewed since this copy of the data set was loaded (Redis restarted or "
                f"synced anew): its values may be older than {holder}'s writes")
    if lease.get("rolled_back_ms"):  # lease_tick's mark: the record is older than a write the holder saw applied
        return (f"values older than the last write of holder {holder}: the data set was rolled back (Redis "
                f"restarted from an older copy, or writes lost); not current until {holder} writes them again")
    polled = _int(lease, "polled_ms")
    if polled is not None and now_ms - polled > lim.stale_polls * (poll_ms or lim.poll_ms) + lim.tick_ms:
        return f"holder {holder} has not completed a poll for {now_ms - polled} ms"
    return None


def overlay(v: Value, stale: bool) -> Value:
    """The value as sent: NT added while not topical (the stored value keeps its own quality)."""
    return Value(v.value, v.quality | NT, v.ts_ms) if stale and not v.quality & NT else v


__all__ = ["NT", "Limits", "ReplicaWatch", "overlay", "replids", "rtu_reason"]
