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


def reaches_fully(now: float, last_ok: float | None, last_bad: float | None, window_s: float) -> bool:
    """Reached, and no poll within the window failed or left a block unanswered. What the lease compares
    (`lease_tick`'s reach 1 vs 2): a holder whose polls fail now and then (every other one) or that never
    gets an answer for one block stops stamping `reached_ms`, so a standby that reaches the device fully
    takes over after `takeover_s`, and cannot be taken back by the partial node."""
    return reaches(now, last_ok, window_s) and (last_bad is None or now - last_bad > window_s)


@dataclass
class LeaseView:
    """What this node knows of one RTU's lease after its last tick."""

    node: str
    holder: str = ""
    epoch: int = 0

    @property
    def held(self) -> bool:
        return self.holder == self.node

    def update(self, holder: str, epoch: int) -> str | None:
        """Apply a tick result; returns 'gained' or 'lost' when this node's holding changed."""
        was = self.held and self.epoch
        self.holder, self.epoch = holder or "", int(epoch)
        if self.held and (not was or was != self.epoch):
            return "gained"
        if was and not self.held:
            return "lost"
        return None

    def fenced_out(self, holder: str, epoch: int) -> str | None:
        """A fenced write was rejected: the lease moved on; same answer as a tick showing it."""
        return self.update(holder, epoch)
