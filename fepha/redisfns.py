"""Calls of the Redis Functions in `functions.lua` (and any other `*.lua` library of this package).

Each wrapper returns a `Call` (function name, keys, args) built from plain values, so the same call runs on
a sync client, an async client or a pipeline: ``await r.fcall(*call.argv)``. The key names come from
`fepha.keyspace`; the Lua code never builds a key itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fepha import keyspace as ks

LIBRARIES = ("functions.lua", "controls.lua")
_VERSION = re.compile(r"FEPHA_LIBRARY_VERSION:\s*(\d+)")


def library_sources() -> list[str]:
    out = []
    for name in LIBRARIES:
        f = resources.files("fepha").joinpath(name)
        if f.is_file():
            out.append(f.read_text())
    return out


def load_sync(r: Any) -> None:
    """Load (or replace) every library on a master; a no-op cost when already loaded."""
    for src in library_sources():
        r.function_load(src, replace=True)


async def load_async(r: Any) -> None:
    for src in library_sources():
        await r.function_load(src, replace=True)


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]

    @property
    def argv(self) -> tuple[Any, ...]:
        return (self.name, len(self.keys), *self.keys, *self.args)


def lease_tick(rtu: int, node: str, reaches: bool, ttl_ms: int, takeover_ms: int) -> Call:
    """-> [holder, epoch, changed]"""
    return Call("lease_tick", (ks.lease(rtu), ks.LEASE_EVENTS),
                (rtu, node, 1 if reaches else 0, int(ttl_ms), int(takeover_ms)))


def lease_handover(rtu: int, target: str, window_ms: int) -> Call:
    """-> [holder, epoch, 'pending'|'already'|'none']"""
    return Call("lease_handover", (ks.lease(rtu),), (target, int(window_ms)))


def write_values(rtu: int, node: str, epoch: int, pairs: Sequence[str] | Iterable[str],
                 maxlen: int = ks.CHANGES_MAXLEN) -> Call:
    """Fenced write; `pairs` is flat: pid, record, pid, record... -> [1, n] or [0, holder, epoch]"""
    return Call("write_values", (ks.lease(rtu), ks.values(rtu), ks.CHANGES),
                (node, int(epoch), int(maxlen), rtu, *pairs))


def link_set(rtu: int, node: str, state: bool, vpids: Sequence[int],
             maxlen: int = ks.CHANGES_MAXLEN) -> Call:
    """-> [vala, valb, val]"""
    return Call("link_set", (ks.link(rtu), ks.VPOINTS, ks.CHANGES, ks.EVENTS),
                (node, 1 if state else 0, int(maxlen), *vpids))
