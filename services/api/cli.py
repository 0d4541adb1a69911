"""`fep-api`: the status service of one node, on `[api] bind`:`[api] port` of fep-ha.cfg."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import uvicorn

from fep_api import headlimit
from fepha import config
from fepha.config import ConfigError
from fepha.listen import listeners
from fepha.logsetup import setup as log_setup

STOP_S = 2  # seconds (uvicorn takes an int)
"""After SIGTERM, requests still open this long later (live dashboards on /api/v1/stream never end by
themselves) are cut; browsers reconnect to the other node or when the api is back."""


def server_config(app: Any, host: str, port: int, head_timeout_s: float) -> uvicorn.Config:
    """How `fep-api` runs its app: no access log, the lifespan on, streams cut STOP_S after SIGTERM, a
    request head over 16 kB answered 414/431 and one not whole within `head_timeout_s` 408 (`headlimit`)."""
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=STOP_S, http=headlimit.Protocol.with_timeout(head_timeout_s))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fep-api", description="fep-ha status api, health checks and dashboard")
    p.add_argument("--bind", type=config.cli_arg("api_bind"), help="override [api] bind")
    p.add_argument("--port", type=config.cli_arg("api_port"), help="override [api] port")
    args = p.parse_args(argv)
    try:
        cfg = config.load_node()
        log_setup("fep-api", config.load_log())
    except ConfigError as exc:
        print("\n".join(f"fep-api: {line}" for line in exc.problems), file=sys.stderr)
        return 2
    from fep_api.app import create_app

    host, port = args.bind or cfg.api_bind, args.port or cfg.api_port
    try:  # our listening sockets (every address of the host): they refuse connections cleanly when the process
        # is out of descriptors
        socks = listeners(host, port, "api")
    except OSError as exc:
        print(f"fep-api: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    server = uvicorn.Server(server_config(create_app(cfg), host, port, cfg.api_head_timeout_s))
    # uvicorn raises the signal again once its graceful shutdown is done, for the handler that was in place
    # before: with the default one the process ended killed by SIGTERM (status 143), not with 0 as every other
    # service after a clean stop. Handlers that do nothing take that second delivery.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[*socks])  # handles SIGTERM/SIGINT: stops accepting, finishes requests, runs the lifespan's close
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
