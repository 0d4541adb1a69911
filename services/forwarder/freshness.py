"""When a forwarded value is not topical (issue 10b): the rules that set the NT quality bit.

The values a forwarder serves come from its local Redis. They are *not topical* (IEC 60870-5 NT) when:

1. the local Redis is a replica whose link to the master has been down (or the local Redis unreachable)
   longer than `replica_down_ms`, or a master left behind (`fepha.leftbehind`, added by the runner): every
   value of this node is frozen;
2. an acquisition RTU has no live lease holder: no holder, or its lease expired more than one lease tick
   ago (the tick is the time the other node needs to take a lapsed lease over);
3. the holder has not completed a poll of the RTU for `stale_polls` poll periods plus one lease tick
   (`polled_ms` in the lease, stamped by the holder's lease tick; Modbus polls write only changes, so the
   per-RTU stamp says "still refreshed" for every point of the RTU without a write per point);
4. the RTU's values were rolled back: the lease's `rolled_back_ms`, stamped by the holder's tick when the record
   is older than a write the holder saw applied (Redis restarted from an older copy), until the holder has
   written them again (docs/keyspace.md "A data set rolled back"); and before the holder's first tick
   after a restart, its lease renewed under another replication id than the local Redis's (`replid`).

Rules 2 and 3 compare stamps on the master's clock with the local Redis's TIME: on the master's node that
is the master's clock, on the other node it is that node's clock (nodes are NTP-synchronised; an offset
of d ms shifts both rules by d ms). A lease without `polled_ms` (not written by an acquirer of this
version) is judged by rules 1 and 2 only. Virtual points carry link states whose liveness is decided in
Redis (`link_refresh`), so only rule 1 applies to them. Pure functions and a small class, table-tested;
the runner (app.py) does the I/O and sends the changes of NT as spontaneous data. The rules of one RTU and
of the replica link (`rtu_reason`, `ReplicaWatch`) are in `fepha.freshness`, shared with the api.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fepha.freshness import NT, Limits, ReplicaWatch, overlay, rtu_reason


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


def judge(cut_off_ms: int, leases: Mapping[int, Mapping[str, str]], poll_ms: Mapping[int, int | None], now_ms: int,
          lim: Limits, ids: frozenset[str] = frozenset()) -> Staleness:
    """Rules 1-4 over every routed acquisition RTU (`leases`: RTU -> its lease hash on the local Redis;
    `poll_ms`: RTU -> its POLLMS, None for `lim.poll_ms`; `ids`: the local Redis's replication ids, `replids`)."""
    every = f"local Redis cut off from the master for {cut_off_ms} ms" if cut_off_ms > lim.replica_down_ms else None
    rtus = {}
    for rid, lease in leases.items():
        why = rtu_reason(lease, now_ms, poll_ms[rid], lim, ids)
        if why is not None:
            rtus[rid] = why
    return Staleness(every, rtus)


__all__ = ["NT", "Limits", "ReplicaWatch", "Staleness", "judge", "overlay", "rtu_reason"]
