"""T004_RTU.ALLOW: which master addresses a forwarding RTU serves, one rule for every protocol.

`ALLOW` is a comma-separated list of addresses and networks (validated by `sysload check`); empty or NULL
serves everyone. Every ForwardServer checks a new connection's peer address with `Allowlist.permits`
when it accepts it (before reading any frame) and closes a refused one at once; the server logs a refused
address once and counts every refusal (`connections_refused`, docs/keyspace.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Allowlist:
    """The parsed ALLOW of one forwarding RTU."""

    MAX_LOGGED = 1000
    """Distinct refused addresses remembered for log-once; past that every refusal is still counted but
    only one more line says that further addresses are not logged (a scan must not fill the log or RAM)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(e.strip(), strict=False)
                                                   for e in entries if e.strip())
        self.logged: set[str] = set()

    def permits(self, host: str) -> bool:
        """True when `host` (a peer address as the socket gives it) may connect. IPv4-mapped IPv6
        addresses (::ffff:10.0.0.5, a dual-stack listener) count as their IPv4 address."""
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def first_refusal(self, host: str) -> str | None:
        """The line to log for a refusal of `host`, or None when it was logged already."""
        if host in self.logged:
            return None
        if len(self.logged) == self.MAX_LOGGED:
            self.logged.add(host)
            return f"connection from {host} refused (not in T004_RTU.ALLOW); further refused addresses are " \
                   "counted (connections_refused), not logged"
        if len(self.logged) > self.MAX_LOGGED:
            return None
        self.logged.add(host)
        return f"connection from {host} refused (not in T004_RTU.ALLOW {', '.join(map(str, self.networks))})"


def peer_host(peername: object) -> str:
    """The address part of a socket's peername ('?' when there is none)."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "?"


def peer_name(peername: object) -> str:
    """'address:port' of a socket's peername, as the log lines name a master ('?' when there is none)."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return "?"
