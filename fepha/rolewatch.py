"""The watch of the local Redis's role that tells a service the VIP has just moved (docs/ha.md, link cut).

keepalived holds the VIP on the master Redis's node and promotes / demotes the local Redis with it, so a
change of the local Redis's role (ROLE's first word) means the VIP moved. Connections to the VIP opened
before the move still lead to the old master; when its node vanished without a FIN (power cut, cable),
any command on one waits out the socket timeout and redis-py's retries (seconds). A service that writes
through the VIP therefore drops its master connections when the role changes, and its next command
connects to the VIP's new place. The acquirer and the forwarder both run this one watch.

Between two readings the watch is blind: a command sent then on a pooled connection still goes to the old
master. A control must not (it would wait there until the next reading drops it, then be refused), so the
forwarder asks for a reading of its own before each control (`RoleWatch.confirm`): a move is acted on
before the control goes out.

The role alone misses the VIP leaving this node while the local Redis stays a master (keepalived killed
without the script that demotes it, or the demotion still to come: docs/ha.md "keepalived stopped"). Then
nothing here changes role, the connections to the VIP still lead nowhere, and the services found the new
master only when a command on an old connection was reset by it and redis-py's retry backoff (random, up
to 2 s) had passed, or at their next tick. So each reading also asks whether the VIP is an address of this
host (`vip_here`: a bind, no packet sent); a change of that is a move too. The new connections then wait
for the VIP's new holder to announce it (its gratuitous ARP), not for a backoff.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("fepha.rolewatch")


def role_moved(seen: str | None, now: str) -> bool:
    """True when the local Redis's role (ROLE's first word; '' when it could not be read) differs from
    the one seen before: not on the first look, not while the local Redis does not answer."""
    return seen is not None and now != "" and now != seen


def vip_moved(seen: bool | None, now: bool | None) -> bool:
    """True when the VIP came to or left this host between two readings of `vip_here` (None: not known)."""
    return seen is not None and now is not None and now != seen


def _nonlocal_bind(version: int) -> bool:
    """net.ipv{4,6}.ip_nonlocal_bind: with it set, a bind succeeds on any address and tells nothing."""
    try:
        with open(f"/proc/sys/net/ipv{version}/ip_nonlocal_bind") as f:
            return f.read().strip() != "0"
    except OSError:
        return False


def vip_here(vip: str) -> bool | None:
    """Whether `vip` is an address of this host now: a socket binds to it, or fails with EADDRNOTAVAIL.
    None when that tells nothing: `vip` not an IP address (a name), or non-local binds allowed here."""
    try:
        ip = ipaddress.ip_address(vip)
    except ValueError:
        return None
    if _nonlocal_bind(ip.version):
        return None
    with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((vip, 0))
        except OSError as exc:
            return False if exc.errno == errno.EADDRNOTAVAIL else None
    return True


class RoleWatch:
    """Reads ROLE of the local Redis every `period_s` and awaits `on_move(seen, now)` when it changed, or
    when the VIP (`vip`, '' for none) came to or left this host (`seen` == `now` then: the role did not).

    The last reading is kept in `role` (None: not read yet, '': the local Redis did not answer, the error
    in `error`) so that a service has one reader of the role, not two; whether the VIP is here in `here`."""

    def __init__(self, local: Any, period_s: float,
                 on_move: Callable[[str, str], Awaitable[None]], vip: str = "") -> None:
        self.local, self.period_s, self.on_move, self.vip = local, period_s, on_move, vip
        self.role: str | None = None
        self.error = ""
        self.seen: str | None = None  # the role the last move was judged against
        self.here: bool | None = None  # the VIP on this host at the last reading (None: not known)
        self._lock = asyncio.Lock()  # one reading and its on_move at a time: a move is acted on once
        self._checks: set[asyncio.Task[str]] = set()
        self._next: asyncio.Task[str] | None = None  # a reading asked by `confirm` that has not started yet

    async def read(self) -> str:
        """The local Redis's role now (master / slave, '' when it does not answer), kept in `role`."""
        try:
            self.role = str((await self.local.execute_command("ROLE"))[0])
        except Exception as exc:  # noqa: BLE001 - local Redis down: the service reports it its own way
            self.role, self.error = "", f"{type(exc).__name__}: {exc}"
        return self.role

    async def check(self) -> str:
        """Read the role now; when it moved since the last reading, await `on_move` before returning. One
        check at a time: a caller that waited for another's sees that one's move as already handled."""
        async with self._lock:
            if self._next is asyncio.current_task():
                self._next = None  # a reading asked from now on must start after this one
            seen, now = self.seen, await self.read()
            was, here = self.here, vip_here(self.vip) if self.vip else None
            if role_moved(seen, now):
                assert seen is not None
                log.info("local Redis role %s -> %s seen by the role watch: the VIP moved", seen, now)
                await self.on_move(seen, now)
            elif vip_moved(was, here):
                log.info("the VIP %s %s this host (local Redis %s): the master connections lead to the old "
                         "place", self.vip, "came to" if here else "left", now or "not answering")
                await self.on_move(seen or now, now or seen or "")
            self.seen = now or seen
            self.here = here if here is not None else was
            return now

    async def confirm(self, wait_s: float) -> bool:
        """A reading of the role started now, the move (if any) acted on, waited for at most `wait_s` (the
        local Redis answers ROLE in well under a millisecond; a hung one must not hold a control longer than
        the periodic watch would have). False when it did not end in time: the reading goes on (shielded,
        so a move it finds is still acted on once) and the caller proceeds as it would have without it.
        Callers that come while a reading waits for the one in progress share it (it starts after them), so
        controls sent while the local Redis hangs leave at most two readings behind, not one each."""
        task = self._next
        if task is None:
            task = self._next = asyncio.ensure_future(self.check())
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (or cancelled): read the role every `period_s`; on a change, `on_move` before
        the next read. The flag and not only the cancellation: on Python 3.11 a cancellation arriving while
        redis-py waits under its timeouts can be swallowed (seen in the forwarder's tests while its local
        Redis restarted), and the loop would then run on after its service stopped."""
        try:
            while not stop.is_set():
                await self.check()
                await asyncio.sleep(self.period_s)
        finally:
            for task in list(self._checks):  # readings still waiting on a hung local Redis
                task.cancel()


async def drop_connections(*clients: Any) -> None:
    """Close every connection of these redis-py asyncio clients, in use or idle: a command waiting on one
    fails at once, and the next command connects anew (to the VIP's new place)."""
    for client in clients:
        try:
            await client.connection_pool.disconnect(inuse_connections=True)
        except Exception as exc:  # noqa: BLE001 - closing a dead socket may fail; it is dropped anyway
            log.info("dropping master connections: %s: %s", type(exc).__name__, exc)
