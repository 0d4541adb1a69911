"""Stopping asyncio tasks reliably on Python 3.11.

There, `asyncio.wait_for` (used inside pymodbus and in our own loops) can swallow a cancellation that
coincides with the awaited result: the task carries on as if never cancelled and a plain
`task.cancel(); await task` waits forever (seen under load with 10 ms polls). So the cancel is repeated
until the task is done, and long-running loops also check a stop flag of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Task | None, step_s: float = 0.5) -> None:
    """Cancel `task` (again every `step_s` while it runs on) and wait for it; its outcome is discarded."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=step_s)
    if task is not None and not task.cancelled():
        task.exception()  # mark retrieved: failures are logged by the task itself


async def cancel_all(*tasks: asyncio.Task | None) -> None:
    """`cancel_and_wait` for several tasks at once, which all end before this returns, even when the caller
    is cancelled meanwhile (the cancellation is raised once they have ended). Each is cancelled before the
    first await: gathering `cancel_and_wait` coroutines alone runs them as new tasks, and a cancellation of
    the caller in the same loop iteration (a stop arriving as a tick ends) cancelled those before their
    first step, so a task was never cancelled and outlived its owner (a pending Event.wait after a test);
    and a caller re-cancelled by its own `cancel_and_wait` while it waited gave up on a task whose Redis call
    swallowed the first cancel (a housekeeping tick left running)."""
    for t in tasks:
        if t is not None:
            t.cancel()
    waiting = asyncio.gather(*(cancel_and_wait(t) for t in tasks))
    cancelled = False
    while not waiting.done():
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def unless_set(event: asyncio.Event, aw: Awaitable[T]) -> T | None:
    """`aw`'s result (or its exception), or None as soon as `event` is set first: `aw` is then cancelled
    and waited for (`cancel_and_wait`), so nothing of it outlives the call. For a read a stop must not wait
    on: a command to a hung or killed Redis is answered only after redis-py's socket timeouts and its
    retries' backoff (with its default policy, up to 4 timeouts plus 2 + 4 + 8 s)."""
    work = asyncio.ensure_future(aw)
    setter = asyncio.ensure_future(event.wait())
    finished = False
    try:
        await asyncio.wait([work, setter], return_when=asyncio.FIRST_COMPLETED)
        finished = work.done()
    finally:  # also when the caller is cancelled: neither outlives it (a cancelled `aw`'s outcome is discarded)
        await cancel_all(setter, None if finished else work)
    return work.result() if finished else None
