"""`stays` / `astays`: assert that a condition holds for a whole period (nothing happens), checked all along
and failing at the first moment it does not, instead of a fixed sleep followed by one assert (which cannot
tell "stayed" from "came back just in time")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def stays(pred: Callable[[], Any], seconds: float, what: str, interval: float = 0.05) -> None:
    """Fail as soon as `pred()` is falsy (or raises) within the next `seconds`."""
    end = time.monotonic() + seconds
    while True:
        if not pred():
            raise AssertionError(f"{what}: no longer true after {seconds - (end - time.monotonic()):.2f} s")
        if time.monotonic() >= end:
            return
        time.sleep(min(interval, max(0.0, end - time.monotonic())))


async def astays(pred: Callable[[], Any], seconds: float, what: str, interval: float = 0.02) -> None:
    """`stays` for a plain or async predicate, on the running loop."""
    end = time.monotonic() + seconds
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if not v:
            raise AssertionError(f"{what}: no longer true after {seconds - (end - time.monotonic()):.2f} s")
        if time.monotonic() >= end:
            return
        await asyncio.sleep(min(interval, max(0.0, end - time.monotonic())))
