"""Stopping asyncio tasks reliably on Python 3.11.

There, `asyncio.wait_for` (used inside pymodbus and in our own loops) can swallow a cancellation that
coincides with the awaited result: the task carries on as if never cancelled and a plain
`task.cancel(); await task` waits forever (seen under load with 10 ms polls). So the cancel is repeated
until the task is done, and long-running loops also check a stop flag of their own.
"""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task | None, step_s: float = 0.5) -> None:
    """Cancel `task` (again every `step_s` while it runs on) and wait for it; its outcome is discarded."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=step_s)
    if task is not None and not task.cancelled():
        task.exception()  # mark retrieved: failures are logged by the task itself
