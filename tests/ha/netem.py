"""Degraded (not cut) links for the HA lab: random loss, one-way loss, rate limits and added delay.

This kernel has no `sch_netem` (`tc qdisc add ... netem` answers "Specified qdisc kind is unknown"), so
the impairments are built from what it has, each applied in one namespace and always removed on exit
(context managers with `finally`; a namespace deleted by the lab's teardown takes them with it too):

- `loss`: iptables `-m statistic --mode random` DROP, per direction (INPUT / OUTPUT of the namespace),
  optionally for one protocol, peer address or port. One-way loss is one direction only.
- `rate`: a `tbf` qdisc on the namespace's eth0 (egress): a slow link, queueing delay and tail drops
  once its buffer is full.
- `delay`: a TCP relay in the namespace (`python -m tests.ha.netem relay`), fed by iptables REDIRECT of the
  chosen TCP connections, holding every chunk for delay ± jitter in both directions, in order (TCP
  cannot reorder a stream; packet reordering and duplication are not reproducible without netem). The
  relay's own connections carry a firewall mark so that they are not redirected again.

Each rule is inserted and later deleted by its exact text, so removing them never touches the lab's cut
rules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.vip import delayed_pipe

RELAY_MARK = 0x6E
REPO = Path(__file__).resolve().parents[2]


def _ipt(ns: str, *args: str, table: str = "filter", check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-t", table, *args],
                          check=check, capture_output=True, text=True)


def _match(proto: str | None, peer: str | None, port: int | None, out: bool) -> list[str]:
    m: list[str] = []
    if proto:
        m += ["-p", proto]
    if peer:
        m += ["-d" if out else "-s", peer]
    if port is not None:
        m += ["--dport" if out else "--sport", str(port)]
    return m


def loss_rules(percent: float, direction: str, proto: str | None = None, peer: str | None = None,
               port: int | None = None, peer_port_both: bool = True) -> list[tuple[str, list[str]]]:
    """(chain, match) of the DROP rules for `percent` % random loss; direction 'in', 'out' or 'both'.
    With `port`: traffic to that port of `peer` (out) and from it (in); with `peer_port_both`, also the
    reverse (the peer as client of that port on this side)."""
    if direction not in ("in", "out", "both"):
        raise ValueError(direction)
    stat = ["-m", "statistic", "--mode", "random", "--probability", f"{percent / 100:.4f}"]
    rules = []
    for chain, out in (("OUTPUT", True), ("INPUT", False)):
        if direction != "both" and (direction == "out") != out:
            continue
        rules.append((chain, [*_match(proto, peer, port, out), *stat]))
        if port is not None and peer_port_both:
            rules.append((chain, [*_match(proto, peer, None, out), "--sport" if out else "--dport", str(port), *stat]))
    return rules


@contextlib.contextmanager
def loss(ns: str, percent: float, direction: str = "both", proto: str | None = None, peer: str | None = None,
         port: int | None = None) -> Iterator[None]:
    """Random loss of `percent` % of the matching packets in namespace `ns` while the block runs."""
    hooks = []
    try:
        for hook, m in loss_rules(percent, direction, proto, peer, port):
            _ipt(ns, "-I", hook, "1", *m, "-j", "DROP")
            hooks.append((hook, m))
        yield
    finally:
        for hook, m in hooks:
            _ipt(ns, "-D", hook, *m, "-j", "DROP", check=False)


@contextlib.contextmanager
def rate(ns: str, kbit: int, latency_ms: int = 400, dev: str = "eth0") -> Iterator[None]:
    """Egress of `dev` in `ns` limited to `kbit` kbit/s (tbf; queue bounded by `latency_ms`)."""
    burst = max(1600, kbit * 1000 // 8 // 50)
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                    f"{kbit}kbit", "burst", str(burst), "latency", f"{latency_ms}ms"], check=True,
                   capture_output=True, text=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False,
                       capture_output=True, text=True)


def redirect_rules(dests: list[tuple[str, int]], relay_port: int, inbound: bool) -> list[tuple[str, list[str]]]:
    """nat rules sending TCP to each (addr, port) through the relay: OUTPUT for connections this namespace
    opens, PREROUTING for connections it accepts (`inbound`); the relay's own (marked) ones excluded."""
    chain = "PREROUTING" if inbound else "OUTPUT"
    return [(chain, ["-p", "tcp", "-d", addr, "--dport", str(port), "-m", "mark", "!", "--mark", hex(RELAY_MARK),
                     "-j", "REDIRECT", "--to-ports", str(relay_port)]) for addr, port in dests]


@contextlib.contextmanager
def delay(ns: str, dests: list[tuple[str, int]], delay_ms: float, jitter_ms: float = 0.0, inbound: bool = False,
          relay_port: int = 39999, log: str | None = None) -> Iterator[None]:
    """TCP connections of `ns` to `dests` (or, `inbound`, accepted by `ns` on `dests`) delayed by
    `delay_ms` ± `jitter_ms` in each direction, for connections opened while the block runs."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # closed in finally
    relay = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.ha.netem", "relay",
                              "--port", str(relay_port), "--delay-ms", str(delay_ms), "--jitter-ms",
                              str(jitter_ms)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    rules: list[tuple[str, list[str]]] = []
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "netns", "exec", ns, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{relay_port}"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or relay.poll() is not None:
                raise RuntimeError("netem relay did not start")
            time.sleep(0.1)
        for chain, r in redirect_rules(dests, relay_port, inbound):
            _ipt(ns, "-A", chain, *r, table="nat")
            rules.append((chain, r))
        yield
    finally:
        for chain, r in rules:
            _ipt(ns, "-D", chain, *r, table="nat", check=False)
        if relay.poll() is None:
            relay.terminate()
            try:
                relay.wait(5)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(5)
        if log:
            out.close()


# --- the relay (runs inside the namespace) -------------------------------------------------------------
SO_ORIGINAL_DST = 80


async def _serve(port: int, delay_s: float, jitter_s: float) -> None:
    rng = random.Random()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:  # a connection that was not redirected (the readiness check) has no original destination
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        except OSError:
            writer.close()
            return
        dport = struct.unpack_from("!H", raw, 2)[0]
        daddr = socket.inet_ntoa(raw[4:8])
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, RELAY_MARK)
        up.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(up, (daddr, dport)), 10)
        except (TimeoutError, OSError):
            up.close()
            writer.close()
            return
        ur, uw = await asyncio.open_connection(sock=up)
        print(f"relay {writer.get_extra_info('peername')} -> {daddr}:{dport}", flush=True)
        await asyncio.gather(delayed_pipe(reader, uw, delay_s, jitter_s, rng),
                             delayed_pipe(ur, writer, delay_s, jitter_s, rng),
                             return_exceptions=True)
        for w in (writer, uw):
            w.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.ha.netem")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay", help="delaying TCP relay (REDIRECT target)")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--delay-ms", type=float, required=True)
    r.add_argument("--jitter-ms", type=float, default=0.0)
    a = ap.parse_args(argv)
    asyncio.run(_serve(a.port, a.delay_ms / 1000, a.jitter_ms / 1000))


if __name__ == "__main__":
    main()
