"""The entry point every worker command shares (fep-acquirer, fep-forwarder, em_daq).

One place for what operators and Docker rely on being the same everywhere: configuration from $FEPROOT
with a one-line error and exit 2, logging set up once, SIGTERM/SIGINT setting `stop` (so the services shut
down cleanly and leave no task behind; a second signal sets `stop.again`: the acquirer's handover or the
forwarder's drain cut short), and `--check`: exit 0 only when each service's heartbeat in the local Redis is fresh (three
heartbeat periods), the Docker health check.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fepha import config, heartbeat, redisconn
from fepha.config import ConfigError, NodeConfig
from fepha.logsetup import setup as log_setup

Runner = Callable[[NodeConfig, asyncio.Event], Coroutine[Any, Any, int | None]]


class Stop(asyncio.Event):
    """Set by the first SIGTERM/SIGINT; a second one sets `again` too (the acquirer's planned stop, which
    hands its leases over first, and the forwarder's, which answers its controls in flight first, then
    exit at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.again = asyncio.Event()

    def signal(self) -> None:
        (self.again if self.is_set() else self).set()


def check(cfg: NodeConfig, services: Sequence[str]) -> int:
    """Print one line per service; 0 when every heartbeat is fresh, else 1."""
    r = redisconn.local_sync(cfg)
    status = 0
    try:
        for service in services:
            ok, why = heartbeat.check(r, service, cfg.node_id, 3 * cfg.heartbeat_s)
            print(why)
            status |= 0 if ok else 1
    finally:
        r.close()
    return status


def main(prog: str, doc: str, services: Sequence[str], runner: Callable[[], Runner],
         argv: list[str] | None = None) -> int:
    """Parse `--check`, load the configuration, then run `runner()(cfg, stop)` until SIGTERM/SIGINT.

    `runner` is a factory so that `--check` does not import the service (a health check every few seconds
    should stay cheap).
    """
    ap = argparse.ArgumentParser(prog=prog, description=doc.strip().split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="health check: exit 0 only if this node's heartbeat in Redis is fresh")
    args = ap.parse_args(argv)
    root = config.feproot()
    try:
        cfg = config.load_node(root)
        if not args.check:
            log_setup(prog, config.load_log(root), root)
    except ConfigError as exc:
        print("\n".join(f"{prog}: {line}" for line in exc.problems), file=sys.stderr)
        return 2
    if args.check:
        return check(cfg, services)
    run = runner()
    log = logging.getLogger(prog)

    async def _main() -> int:
        stop = Stop()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.signal)
        log.info("%s node %s starting (master Redis %s:%s, local %s:%s)", prog, cfg.node_id, cfg.vip, cfg.port,
                 cfg.local_host, cfg.local_port)
        status = await run(cfg, stop) or 0
        log.info("%s node %s stopped (status %d)", prog, cfg.node_id, status)
        return status

    try:
        return asyncio.run(_main())
    except ConfigError as exc:  # found only when the service starts using it (a TLS certificate that cannot be loaded)
        print("\n".join(f"{prog}: {line}" for line in exc.problems), file=sys.stderr)
        return 2
