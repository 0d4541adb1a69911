"""Change detection with deadband and write compensation: which values a poll must write.

Kept apart from I/O so the rules are table-tested functions rather than side effects of the Redis code:
a write that failed or timed out is kept and re-sent as it was, first, with its own write sequence
(`ResendQueue`); past the queue's bound, or once the lease it was made under is no longer held, its
points are re-sent with their next poll whatever their value (`ChangeTracker.failed`: only their current
value reaches Redis). Values are (engineering value, quality bits) per point id.
"""

from __future__ import annotations

from collections import ChainMap, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from fepha import points as pt

Sample = tuple[int | float, int]  # (value, quality)


def differs(last: Sample, s: Sample, deadband: float) -> bool:
    """The change rule: quality changed, or value moved beyond the deadband (any move without one)."""
    if last[1] != s[1]:
        return True
    return (abs(s[0] - last[0]) > deadband) if deadband > 0 else (s[0] != last[0])


@dataclass
class ChangeTracker:
    """Last sample written per point (what Redis holds), plus the points whose last write failed."""

    deadband: dict[int, float] = field(default_factory=dict)
    written: dict[int, Sample] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)

    def changes(self, samples: dict[int, Sample], ahead: dict[int, Sample] | None = None) -> dict[int, Sample]:
        """Samples to write: value changed beyond the deadband, quality changed, never written, or dirty.
        `ahead`: what writes sent before this one in the same round trip carry (rtu.py sends the polls'
        waiting writes together, in order), judged as if written; a dirty point among them is re-sent by
        them, not again by this one."""
        out: dict[int, Sample] = {}
        written: Mapping[int, Sample] = self.written
        dirty, deadband = self.dirty, self.deadband
        if ahead:
            written, dirty = ChainMap(ahead, self.written), dirty.difference(ahead)
        for pid, s in samples.items():
            last = written.get(pid)
            if last == s:  # the common case (most points do not change): no rule to apply unless dirty
                if dirty and pid in dirty:
                    out[pid] = s
                continue
            if last is None or pid in dirty or differs(last, s, deadband.get(pid, 0.0)):
                out[pid] = s
        return out

    def committed(self, samples: dict[int, Sample]) -> int:
        """The write of these samples succeeded; returns how many were compensations (re-sends)."""
        resent = len(self.dirty.intersection(samples)) if self.dirty else 0
        self.written.update(samples)
        if resent:
            self.dirty.difference_update(samples)
        return resent

    def failed(self, samples: dict[int, Sample]) -> None:
        """The write failed and is not kept (`ResendQueue`): re-send these points with the next poll
        whatever their value."""
        self.dirty.update(samples)

    def forget(self) -> None:
        """Redis lost or may have lost our data (role change, new lease): the next poll writes all."""
        self.written.clear()

    def seed(self, held: dict[int, Sample]) -> None:
        """What the master Redis holds (read once after `forget`) becomes what was written: the next poll
        writes only the points missing there or whose value (beyond the deadband) or quality differs, and
        the dirty ones. A new holder or a replaced master thus does not send every unchanged value to the
        masters again as a change (bench/failover.py counted those as duplicates, docs/ha.md)."""
        self.written = dict(held)


OK, FENCED, FAILED = "ok", "fenced", "failed"
"""A write's outcome (`ResendQueue.settle`)."""


@dataclass(eq=False, slots=True)
class Kept:
    """One write as sent: its write sequence, the lease epoch it was made under, the samples it carries
    and its `write_values` pairs (each record with its poll's time)."""

    seq: int
    epoch: int
    changes: dict[int, Sample]
    pairs: list[str]


@dataclass
class ResendQueue:
    """The writes of one RTU that failed or timed out, re-sent as they were, in order, before any newer one.

    A write that timed out may have been applied anyway: it is re-sent with the same sequence, which
    `write_values` recognises (the lease's `wtok`/`wseq`), so it never makes a second stream record.
    Every write gets the next sequence (`next_seq`), kept or not, so the master's check is by order: a
    kept write re-sent after a later one was applied is not applied either (it would write older values
    over newer ones). Bounded by `max_changes` (samples over the kept writes): a failed write that does
    not fit is not kept (`keep` is False) and the caller falls back to the seed's rule
    (`ChangeTracker.failed`). A write is re-sent only under the epoch it was made under (`due`): one of a
    lease no longer held is never written (fenced anyway) but dropped, its points then re-sent by the rule."""

    max_changes: int = 5000
    kept: deque[Kept] = field(default_factory=deque)
    size: int = 0
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def due(self, epoch: int) -> tuple[list[Kept], list[Kept]]:
        """(the kept writes to send first, in order; those dropped: made under another epoch)."""
        if not self.kept:
            return [], []
        if all(k.epoch == epoch for k in self.kept):
            return list(self.kept), []
        dropped = [k for k in self.kept if k.epoch != epoch]
        self.kept = deque(k for k in self.kept if k.epoch == epoch)
        self.size = sum(len(k.changes) for k in self.kept)
        return list(self.kept), dropped

    def keep(self, w: Kept) -> bool:
        """`w` failed (sent first time or again): kept, in order, unless it would pass the bound (False)."""
        if any(k is w for k in self.kept):
            return True
        if self.size + len(w.changes) > self.max_changes:
            return False
        self.kept.append(w)
        self.size += len(w.changes)
        return True

    def done(self, w: Kept) -> None:
        """`w` is in Redis (written now or before): no longer kept."""
        for i, k in enumerate(self.kept):
            if k is w:
                del self.kept[i]
                self.size -= len(w.changes)
                return

    def drop(self) -> list[Kept]:
        """Every kept write (the lease is lost): none is re-sent."""
        out = list(self.kept)
        self.kept.clear()
        self.size = 0
        return out

    def settle(self, w: Kept, outcome: str) -> list[Kept]:
        """One write's outcome, applied in send order: OK (in Redis: applied now, or before when the master
        answers it was a duplicate), FENCED (the lease is lost: nothing kept is re-sent) or FAILED (an
        error or a time-out: kept, if it fits). Returns the writes neither in Redis nor kept: their points
        go by the seed's rule (`ChangeTracker.failed`)."""
        if outcome == OK:
            self.done(w)
            return []
        if outcome == FENCED:
            out = self.drop()
            return out if any(k is w for k in out) else [*out, w]
        return [] if self.keep(w) else [w]


Replay = list[dict[int, tuple[Sample, int]]]  # batches of point id -> (sample, ts_ms)


@dataclass(frozen=True, slots=True)
class AtGain:
    """What a new holder writes at the lease gain itself instead of with its next poll."""

    replay: bool  # the standby log's replay (then the tracker takes what Redis holds: `_sync`)
    image: bool  # the full image from the last poll's samples, with that poll's time (after the replay)


def at_lease_gain(poll_age_ms: int, poll_ms: int, stale_ms: int, reaches: bool) -> AtGain:
    """The rule for a Modbus holder that has just gained a lease, given the age of its last complete poll
    (-1: none), its poll period, how old a poll may be before its RTU's values are not current ([quality]
    stale_polls periods, docs/forwarder.md) and whether it reaches the device now.

    The replay needs no poll: it is what the standby saw, each change with the time it was seen. But each
    point's last replayed change then stands in Redis as its current value, good quality, until the next
    poll: so it goes out now only while that poll is within the staleness rule and the device is reached (a lease
    taken without reaching the device gets its points written invalid by the housekeeping instead). The
    image from the last poll's samples goes out now only when that poll is younger than one poll period
    (as current as any value shown between two polls); an older poll's image waits for the next poll."""
    if poll_age_ms < 0 or not reaches or poll_age_ms > stale_ms:
        return AtGain(replay=False, image=False)
    return AtGain(replay=True, image=poll_age_ms < poll_ms)


def held_in_redis(raw: Mapping[str, str]) -> dict[int, tuple[Sample, int]]:
    """A value hash as read from Redis: point id -> ((value, quality), ts_ms); unreadable records are left
    out (so they are written again)."""
    out: dict[int, tuple[Sample, int]] = {}
    for pid, rec in raw.items():
        try:
            v = pt.decode(rec)
            out[int(pid)] = ((v.value, v.quality), v.ts_ms)
        except ValueError:
            continue
    return out


def after_replay(current: dict[int, tuple[Sample, int]], batches: Replay) -> dict[int, tuple[Sample, int]]:
    """What Redis holds once the replay's batches are written: each point's last replayed (sample, ts_ms)
    over `current` (a new dict; `current` is left as it was)."""
    out = dict(current)
    for batch in batches:
        out.update(batch)
    return out


@dataclass
class StandbyLog:
    """What a standby node saw change on its device, kept for the moment it takes the lease over.

    Between the holder's last write and the takeover (the lease TTL after a node loss, the takeover time
    after a device loss) nobody writes, but the standby polls all the same. On gaining the lease it
    replays what it saw after each point's value in Redis, in order and with the original timestamps,
    so that a DI that changed and changed back inside that gap still reaches the masters.
    """

    window_ms: int
    max_entries: int = 100_000
    deadband: dict[int, float] = field(default_factory=dict)
    last: dict[int, Sample] = field(default_factory=dict)
    entries: deque[tuple[int, int, Sample]] = field(default_factory=deque)

    def observe(self, samples: dict[int, Sample], ts_ms: int) -> None:
        """A poll while not holding the lease: log the changes (the first sample is only a baseline)."""
        last, db = self.last, self.deadband
        for pid, s in samples.items():
            prev = last.get(pid)
            if prev is None or differs(prev, s, db.get(pid, 0.0)):
                last[pid] = s
                if prev is not None:
                    self.entries.append((ts_ms, pid, s))
        cutoff = ts_ms - self.window_ms
        while self.entries and (self.entries[0][0] < cutoff or len(self.entries) > self.max_entries):
            self.entries.popleft()

    def holding(self, samples: dict[int, Sample], replay_due: bool = False) -> None:
        """A poll while holding the lease: nothing to log, but the baseline follows the device. `samples`
        may hold only the points that changed since the previous poll (rtu.py), as may `observe`'s. The log
        is dropped unless its replay is still due (`replay_due`: the lease was just gained and the replay,
        which reads and clears it, has not read it yet): the first poll after a gain comes before the
        replay when the replay waits for that poll (`at_lease_gain`) or for the master's values it reads
        first, and clearing the log then lost every change the standby had seen since the former holder's
        last write (docs/acquirer.md "Lease rules")."""
        self.last.update(samples)
        if self.entries and not replay_due:
            self.entries.clear()

    def replay(self, current: dict[int, tuple[Sample, int]]) -> Replay:
        """Batches to write before the full image, given each point's (sample, ts_ms) in Redis.

        Per point: the logged changes newer than its Redis value, without the leading ones equal to it
        (the former holder already wrote those; the standby only saw them a poll later). Batches keep
        the global time order and hold each point at most once (one stream entry cannot carry a point
        twice). Clears the log.

        A point invalid in Redis (IV: the former holder did not read it, its last value kept) is replayed
        from after the standby's last logged change to that value at or before the IV record: the
        holder wrote nothing it read after that one, so the changes the standby saw between it and the
        IV record were never written (a holder reading its device in part, then taken over: they were
        skipped as older than the IV record, and lost; docs/ha.md "Degraded links"). A value that came
        back to that one before the IV record (a DI flipped and back) is taken from its last return: the
        flips before it are not replayed. The last value not in the log (seen before the log's window, or
        missed by the standby's polls): only what is newer than the IV record, as for a valid point.
        """
        batches: Replay = []
        batch: dict[int, tuple[Sample, int]] = {}
        started: set[int] = set()
        cutoff = {pid: ts for pid, (_, ts) in current.items()}
        for ts, pid, s in self.entries:
            cur = current.get(pid)
            if cur is not None and cur[0][1] & pt.Quality.IV and ts <= cur[1] \
                    and not differs((cur[0][0], s[1]), s, self.deadband.get(pid, 0.0)):
                cutoff[pid] = ts   # the holder's last value: replay what came after it
        for ts, pid, s in self.entries:
            cur = current.get(pid)
            if cur is not None and ts <= cutoff[pid]:
                continue
            if pid not in started:
                if cur is not None and not differs(cur[0], s, self.deadband.get(pid, 0.0)):
                    continue
                started.add(pid)
            if pid in batch:
                batches.append(batch)
                batch = {}
            batch[pid] = (s, ts)
        if batch:
            batches.append(batch)
        self.entries.clear()
        return batches
