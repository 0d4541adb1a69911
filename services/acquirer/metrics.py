"""Acquirer counters, flushed to keyspace.metrics('acquirer', node) once a second in one pipeline."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fepha import keyspace as ks

NAMES = ("changes_written", "write_errors", "compensations", "full_images", "lease_changes",
         "channel_switches", "polls", "poll_errors", "controls_executed", "controls_failed",
         "controls_refused", "controls_read_back",
         "duplicates_dropped", "writes_duplicate", "changes_not_kept")


class Metrics:
    def __init__(self, node: str) -> None:
        self.key = ks.metrics("acquirer", node)
        self.pending: Counter[str] = Counter()
        self.total: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        self.pending[name] += n
        self.total[name] += n

    async def flush(self, r: Any) -> None:
        """HINCRBY the pending counts; kept for the next flush when Redis is unreachable (raises)."""
        if not self.pending:
            return
        batch, self.pending = self.pending, Counter()
        try:
            pipe = r.pipeline(transaction=False)
            for name, n in batch.items():
                pipe.hincrby(self.key, name, n)
            await pipe.execute()
        except Exception:
            self.pending.update(batch)
            raise
