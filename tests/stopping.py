"""`timed_stop`: set a service's stop event and time how long its task takes to end, failing past a bound."""

from __future__ import annotations

import asyncio
import time


async def timed_stop(stop: asyncio.Event, task: asyncio.Task[None], at_most_s: float, why: str) -> float:
    """Set `stop`, wait for `task` (at most `at_most_s` + 0.5 s) and return the seconds it took; fail when it
    still runs or took `at_most_s` or more (`why`: the condition under test), raise what the task raised."""
    t0 = time.monotonic()
    stop.set()
    await asyncio.wait([task], timeout=at_most_s + 0.5)
    took = time.monotonic() - t0
    assert task.done(), f"the stop still waits {took:.2f} s after it began ({why})"
    assert took < at_most_s, f"the stop took {took:.2f} s ({why})"
    task.result()
    print(f"stopped in {took:.3f} s ({why})")
    return took
