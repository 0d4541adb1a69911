"""Debug-only latency trace of the forwarder's path, for bench/forward.py `--trace`: with
`FEP_TRACE_FORWARDER=<file>` (not a [forwarder] setting) the process records, in memory, when each change-stream read was issued and
returned (with each entry's id and first value), when each se104s write went to the socket (with the
entries of the values in it), every garbage collection and every event loop callback that ran longer than
SLOW_S, and writes them to that file (JSON) at exit.

Off (the default) `TRACE` is None: the hot path pays one `is not None` test per read and per write.
Times are `time.monotonic()` (CLOCK_MONOTONIC: system wide, comparable with the bench's).
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fepha import points

ENV = "FEP_TRACE_FORWARDER"
SLOW_S = 0.0005


def gc_timer(spans: list[tuple[float, float, int]]) -> Callable[[str, Mapping[str, Any]], None]:
    """A `gc.callbacks` hook appending (start, end, generation) of every collection to `spans` (the trace's,
    and bench/forward.py's own)."""
    start = [0.0]

    def hook(phase: str, info: Mapping[str, Any]) -> None:
        if phase == "start":
            start[0] = time.monotonic()
        else:
            spans.append((start[0], time.monotonic(), int(info.get("generation", -1))))
    return hook


class Trace:
    def __init__(self, path: str) -> None:
        self.path = path
        self.reads: list[tuple[float, float, list[tuple[str, float | None]]]] = []
        self.writes: list[tuple[float, list[list[Any]], int]] = []
        self.gcs: list[tuple[float, float, int]] = []
        self.slow: list[tuple[float, float, str]] = []
        self._sent: list[Any] = []
        gc.callbacks.append(gc_timer(self.gcs))
        atexit.register(self.dump)
        run, slow = asyncio.events.Handle._run, self.slow

        def timed(handle: asyncio.events.Handle) -> None:
            t = time.monotonic()
            run(handle)
            if (end := time.monotonic()) - t > SLOW_S:
                cb: Any = getattr(handle, "_callback", None)  # what ran, named only when slow
                task = getattr(cb, "__self__", None)
                coro: Any = task.get_coro() if isinstance(task, asyncio.Task) else None
                name = getattr(coro, "__qualname__", None) or repr(cb)[:80]
                slow.append((t, end, name))
        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]

    def read(self, called: float, entries: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        """A stream read issued at `called` returned (now) these entries."""
        now = time.monotonic()
        out = []
        for eid, fields in entries:
            first = next((rec for pid, rec in fields.items() if pid != "r"), None)
            try:
                out.append((eid, None if first is None else points.decode(first).value))
            except ValueError:
                out.append((eid, None))
        self.reads.append((called, now, out))

    def sent(self, items: Iterable[Any]) -> None:
        """The events of one I frame were put in the link (their write follows: `wrote`)."""
        self._sent.extend(it[2] for it in items)

    def wrote(self, left: int) -> None:
        """What `sent` collected went to the socket now; `left`: events still queued (k window closed)."""
        runs: list[list[Any]] = []
        for sid in self._sent:
            if runs and runs[-1][0] == sid:
                runs[-1][1] += 1
            else:
                runs.append([sid, 1])
        self._sent = []
        self.writes.append((time.monotonic(), runs, left))

    def dump(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump({"reads": self.reads, "writes": self.writes, "gcs": self.gcs, "slow": self.slow}, f)


TRACE: Trace | None = Trace(os.environ[ENV]) if os.environ.get(ENV) else None
