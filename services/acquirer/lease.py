"""Lease decisions on the node's side: when a node "reaches" its device, and what a tick result means.

The lease itself is decided in Redis (`lease_tick` in fepha/functions.lua, on the master's clock); this
module only turns local observations into the `reaches` flag and the tick's answer into actions.
"""

from __future__ import annotations

from dataclasses import dataclass


def reach_window_s(poll_s: float, timeout_s: float, tick_s: float) -> float:
    """How old the last good answer may be for the device to count as reached: two polls plus one
    timeout, and never less than two lease ticks (so a slow poll period does not flap the lease)."""
    return max(2 * poll_s + timeout_s, 2 * tick_s)


def reaches(now: float, last_ok: float | None, window_s: float) -> bool:
    """A poll reached the device (answered, completely or in part) within the window."""
    return last_ok is not None and now - last_ok <= window_s


def reaches_fully(now: float, last_ok: float | None, last_bad: float | None, window_s: float,
                  clean_s: float | None = None) -> bool:
    """Reached, and no poll within `clean_s` (default: the reach window) failed or left a block
    unanswered. What the lease compares (`lease_tick`'s reach 1 vs 2): the holder judged over its reach
    window, the other node over `takeover_s`, so a holder whose polls fail now and then (every other
    one) or that never gets an answer for one block is taken over by a node that has read everything for
    `takeover_s`, and two nodes that both lose a poll now and then never move the lease."""
    clean = window_s if clean_s is None else clean_s
    return reaches(now, last_ok, window_s) and (last_bad is None or now - last_bad > clean)


@dataclass
class LeaseView:
    """What this node knows of one RTU's lease after its last tick."""

    node: str
    holder: str = ""
    epoch: int = 0

    @property
    def held(self) -> bool:
        return self.holder == self.node

    def update(self, holder: str, epoch: int, granted: bool = False) -> str | None:
        """Apply a tick result; returns 'gained' or 'lost' when this node's holding changed. `granted`: the
        tick granted it to this node now (a gain also at the epoch it held before: an epoch repeats once the
        lease and its high-water are gone, FLUSHALL)."""
        was = self.held and self.epoch
        self.holder, self.epoch = holder or "", int(epoch)
        if self.held and (not was or was != self.epoch or granted):
            return "gained"
        if was and not self.held:
            return "lost"
        return None

    def fenced_out(self, holder: str, epoch: int) -> str | None:
        """A fenced write was rejected: the lease moved on; same answer as a tick showing it."""
        return self.update(holder, epoch)
