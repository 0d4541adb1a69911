"""em_daq: one node's acquirer and forwarder in one process, on a host without Docker.

Operators of the original run `em_daq` on each FEP node; this keeps that habit. It runs the same
`run(cfg, stop)` coroutines that `fep-acquirer` and `fep-forwarder` run in their containers, side by
side on one event loop, with one configuration and one log (`$FEPROOT/log/em_daq.log`). SIGTERM or
SIGINT stops both cleanly; if either ends with an error, the other is stopped too and em_daq exits 1,
so a supervisor (systemd) restarts the pair.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from fepha import config
from fepha.config import ConfigError, NodeConfig
from fepha.logsetup import setup as log_setup

log = logging.getLogger("em_daq")

Runner = Callable[[NodeConfig, asyncio.Event], Awaitable[None]]


def _runners() -> dict[str, Runner]:
    from fep_acquirer.app import run as run_acquirer
    from fep_forwarder.app import run as run_forwarder

    return {"acquirer": run_acquirer, "forwarder": run_forwarder}


async def run_all(cfg: NodeConfig, stop: asyncio.Event, runners: dict[str, Runner]) -> int:
    """Run every service until `stop` is set or one of them ends; returns the exit status."""
    tasks = {asyncio.create_task(fn(cfg, stop), name=f"em_daq:{name}"): name for name, fn in runners.items()}
    status = 0
    pending: set[asyncio.Task[None]] = set(tasks)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="em_daq", description=__doc__.split("\n")[0])
    ap.parse_args(argv)
    root = config.feproot()
    try:
        cfg = config.load_node(root)
        log_setup("em_daq", config.load_log(root), root)
    except ConfigError as exc:
        print(f"em_daq: {exc}", file=sys.stderr)
        return 2

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("em_daq node %s starting (master Redis %s:%s, local %s:%s)", cfg.node_id, cfg.vip, cfg.port,
                 cfg.local_host, cfg.local_port)
        status = await run_all(cfg, stop, _runners())
        log.info("em_daq node %s stopped (status %d)", cfg.node_id, status)
        return status

    return asyncio.run(_main())


if __name__ == "__main__":
    raise SystemExit(main())
