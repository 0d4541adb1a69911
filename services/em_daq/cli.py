"""em_daq: one node's acquirer and forwarder in one process, on a host without Docker.

Operators of the original run `em_daq` on each FEP node; this keeps that habit. It runs the same
`run(cfg, stop)` coroutines that `fep-acquirer` and `fep-forwarder` run in their containers, side by
side on one event loop, with one configuration and one log (`$FEPROOT/log/em_daq.log`). SIGTERM or
SIGINT stops both cleanly; if either ends with an error, the other is stopped too and em_daq exits 1,
so a supervisor (systemd) restarts the pair.
"""

from __future__ import annotations

import asyncio
import logging

from fepha import worker
from fepha.config import NodeConfig

log = logging.getLogger("em_daq")

Runner = worker.Runner


def _runners() -> dict[str, Runner]:
    from fep_acquirer.app import run as run_acquirer
    from fep_forwarder.app import run as run_forwarder

    return {"acquirer": run_acquirer, "forwarder": run_forwarder}


async def run_all(cfg: NodeConfig, stop: asyncio.Event, runners: dict[str, Runner]) -> int:
    """Run every service until `stop` is set or one of them ends; returns the exit status."""
    tasks = {asyncio.create_task(fn(cfg, stop), name=f"em_daq:{name}"): name for name, fn in runners.items()}
    status = 0
    pending: set[asyncio.Task[int | None]] = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            exc = t.exception()
            if exc is not None:
                log.error("%s failed: %r; stopping the others", tasks[t], exc)
                status = 1
            elif not stop.is_set():
                log.error("%s ended by itself; stopping the others", tasks[t])
                status = 1
        stop.set()
    return status


def _runner() -> worker.Runner:
    runners = _runners()

    async def run(cfg: NodeConfig, stop: asyncio.Event) -> int:
        return await run_all(cfg, stop, runners)

    return run


def main(argv: list[str] | None = None) -> int:
    return worker.main("em_daq", __doc__, ["acquirer", "forwarder"], _runner, argv)


if __name__ == "__main__":
    raise SystemExit(main())
