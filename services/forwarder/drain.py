"""The forwarder's planned stop (SIGTERM): what a server does with the controls of its masters before it
closes their connections. Pure: the servers' I/O (`ForwardServer.drain`) asks `Drain.verdict` what to do.

From the moment the drain starts a server takes no new control: one that reaches it is answered with the
protocol's negative answer at once and never queued (`ForwardServer.run_control`, `REFUSED`). The
controls queued before it (in `fep:ctl:q:{rtu}` or running in the device) are waited for, each at most
until its own deadline (with the sink's margin: `controls.wait` expires a queued one there, abandons an
executing one LATE_S later, and answers its final state), so that every one gets its answer (IEC 104:
ACT_CON then ACT_TERM) before the connection closes, never longer than `bound_s` (`[timers] stop_drain_s`).
Once they have their outcome their answers get `ANSWER_GRACE_S` to be sent
(an IEC 104 master whose k window is full, or one that reads nothing, must not hold the stop); then the
server closes.

A configuration reload during the drain changes nothing (`reload_plan`): no server is stopped, started or
restarted, and the new configuration is not applied (the process is exiting); a server a reload would
restart would otherwise close its masters' connections with their controls in flight, and never start again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from fepha import controls

SINK_MARGIN_S = controls.LATE_S + 0.5
"""A control's sink answers at the latest this long after its deadline (`controls.wait` reads its result
until LATE_S past it, then abandons it: one more round trip). The drain waits no longer for it."""
ANSWER_GRACE_S = 1.0
"""After the last outcome, how long its answers (and the others still queued) may take to be sent."""

WAIT, CLOSE, GIVE_UP = "wait", "close", "give up"
REFUSED = "forwarder stopping"
"""The reason of a control refused during the drain (state `rejected`; sefeps sends it as is)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # WAIT, CLOSE (everything answered), GIVE_UP (closing with something unanswered)
    why: str = ""


@dataclass(slots=True)
class Drain:
    """One server's drain, started at `started` (monotonic s), bounded by `bound_s`."""

    started: float
    bound_s: float
    last_outcome: float | None = None
    """When the last control in flight got its outcome (set by `outcome`): the answers' grace runs from it."""

    def outcome(self, now: float) -> None:
        """A control in flight got its outcome (its answer is being queued)."""
        self.last_outcome = now

    def verdict(self, now: float, deadlines: Collection[float], unsent: int) -> Verdict:
        """`deadlines`: of the controls still in flight (monotonic s; the time by which their sink answers
        at the latest); `unsent`: answers queued and not yet written to their master's socket."""
        if not deadlines and not unsent:
            return Verdict(CLOSE, "every control answered")
        if now >= self.started + self.bound_s:
            return Verdict(GIVE_UP, f"stop_drain_s ({self.bound_s:g} s) ran out with {len(deadlines)} control(s) "
                                    f"in flight and {unsent} answer(s) unsent")
        if deadlines:
            if now >= max(deadlines):
                return Verdict(GIVE_UP, f"{len(deadlines)} control(s) still without an outcome past their "
                                        "deadline")
            return Verdict(WAIT)
        since = self.started if self.last_outcome is None else self.last_outcome
        if now >= since + ANSWER_GRACE_S:
            return Verdict(GIVE_UP, f"{unsent} answer(s) not taken by their master within {ANSWER_GRACE_S:g} s")
        return Verdict(WAIT)


@dataclass(frozen=True, slots=True)
class Reload:
    """What a configuration reload does to the servers (`reload_plan`)."""

    apply: bool  # False: the new configuration is not applied at all (the planned stop began)
    stop: tuple[int, ...] = ()  # RTU ids whose server is stopped: gone from the configuration, or changed
    start: tuple[int, ...] = ()  # then started: new, changed (restarted), or not running (its start had failed)


def reload_plan(running: Mapping[int, str], wanted: Mapping[int, str], stopping: bool) -> Reload:
    """`running`: the servers' RTU ids -> the signature (`Rtu.signature`) they were started with; `wanted`:
    the forwarding RTUs of the new configuration, the same way; `stopping`: the planned stop began. An
    unchanged RTU keeps its server and its masters' connections."""
    if stopping:
        return Reload(False)
    stop = tuple(rid for rid, sig in running.items() if wanted.get(rid) != sig)
    return Reload(True, stop, tuple(rid for rid in wanted if rid not in running or rid in stop))
