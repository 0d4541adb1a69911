"""Change detection with deadband and write compensation: which values a poll must write.

Kept apart from I/O so the rule "a point whose write failed is re-sent with its next poll, whatever its
value" is a table-tested function rather than a side effect of the Redis code. Values are
(engineering value, quality bits) per point id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Sample = tuple[int | float, int]  # (value, quality)


@dataclass
class ChangeTracker:
    """Last sample written per point (what Redis holds), plus the points whose last write failed."""

    deadband: dict[int, float] = field(default_factory=dict)
    written: dict[int, Sample] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)

    def changes(self, samples: dict[int, Sample]) -> dict[int, Sample]:
        """Samples to write: value changed beyond the deadband, quality changed, never written, or dirty."""
        out: dict[int, Sample] = {}
        written, dirty, deadband = self.written, self.dirty, self.deadband
        for pid, s in samples.items():
            last = written.get(pid)
            if last is None or pid in dirty or last[1] != s[1]:
                out[pid] = s
                continue
            db = deadband.get(pid, 0.0)
            if (abs(s[0] - last[0]) > db) if db > 0 else (s[0] != last[0]):
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
        """The write failed: re-send these points with the next poll whatever their value."""
        self.dirty.update(samples)

    def forget(self) -> None:
        """Redis lost or may have lost our data (role change, new lease): the next poll writes all."""
        self.written.clear()
