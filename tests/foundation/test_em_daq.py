"""em_daq's supervision: both services run until stop; one failing stops the other."""

from __future__ import annotations

import asyncio

from fep_em_daq.cli import run_all
from fepha.config import NodeConfig
from tests.stays import astays


async def _until_stop(cfg: NodeConfig, stop: asyncio.Event) -> None:
    await stop.wait()


async def _fails(cfg: NodeConfig, stop: asyncio.Event) -> None:
    await asyncio.sleep(0.01)
    raise RuntimeError("boom")


async def test_stop_ends_both_with_status_0() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_all(NodeConfig(), stop, {"a": _until_stop, "b": _until_stop}))
    await astays(lambda: not task.done(), 0.2, "both services keep running until stop")
    stop.set()
    assert await asyncio.wait_for(task, 2) == 0


async def test_one_failing_stops_the_other_with_status_1() -> None:
    stop = asyncio.Event()
    status = await asyncio.wait_for(run_all(NodeConfig(), stop, {"a": _until_stop, "b": _fails}), 2)
    assert status == 1 and stop.is_set()
