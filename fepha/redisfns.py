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


def lease_tick(rtu: int, node: str, reaches: bool, ttl_ms: int, takeover_ms: int,
               polled_age_ms: int | None = None, partly: bool = False, written: int | None = None,
               replid: str | None = None) -> Call:
    """-> [holder, epoch, changed] ([holder, epoch, 0, 1] to the holder renewing a record marked rolled back:
    see `lease_tick` in functions.lua). `polled_age_ms`: ms since
    this node's last complete poll of the device (-1: none yet); the holder's is recorded as the lease's
    `polled_ms` (None: not recorded). `partly`: it reaches the device, not fully (sent as reach 2: see
    `lease_tick` in functions.lua). `written`: the holder's count of its writes applied under its epoch
    (`write_values`' answer), which a record rolled back is below; `replid`: the master's replication id as
    this node last read it, kept by the holder's renewals (both need `polled_age_ms`)."""
    extra: tuple[Any, ...] = () if polled_age_ms is None else (int(polled_age_ms),)
    if extra and (written is not None or replid):
        extra += ("" if written is None else int(written), replid or "")
    reach = (2 if partly else 1) if reaches else 0
    return Call("lease_tick", (ks.lease(rtu), ks.LEASE_EVENTS, ks.CLOCK, ks.LEASE_EPOCHS),
                (rtu, node, reach, int(ttl_ms), int(takeover_ms), *extra))


def lease_handover(rtu: int, target: str, window_ms: int) -> Call:
    """-> [holder, epoch, 'pending'|'already'|'none']"""
    return Call("lease_handover", (ks.lease(rtu),), (target, int(window_ms)))


def write_values(rtu: int, node: str, epoch: int, pairs: Sequence[str] | Iterable[str],
                 maxlen: int = ks.CHANGES_MAXLEN, wid: tuple[str, int] | None = None) -> Call:
    """Fenced write; `pairs` is flat: pid, record, pid, record... -> [1, n, wn], [2, 0, wn] (`wid`, the writer's
    (token, sequence), applied already) or [0, holder, epoch]; `wn` counts the writes applied under the lease
    record (`lease_tick`'s `written`). Without `wid` it is applied every time."""
    tok, seq = wid or ("", 0)
    return Call("write_values", (ks.lease(rtu), ks.values(rtu), ks.CHANGES),
                (node, int(epoch), int(maxlen), rtu, tok, int(seq), *pairs))


def write_target(call: Call) -> tuple[int, int]:
    """(rtu, epoch) of a `write_values` call, read back from its arguments (whose layout is this module's)."""
    return int(call.args[3]), int(call.args[1])


def lease_synced(rtu: int, node: str, epoch: int) -> Call:
    """-> 1 when the lease's `rolled_back_ms` was cleared: the holder (`node` at `epoch`) has written again what
    the rolled-back data set held older than its own writes; 0 otherwise."""
    return Call("lease_synced", (ks.lease(rtu),), (node, int(epoch)))


LINK_LIVE_MS = 3000
"""Default of `live_ms` (the lease TTL's default): a node's link state older than this no longer counts."""


def link_set(rtu: int, node: str, state: bool, vpids: Sequence[int],
             maxlen: int = ks.CHANGES_MAXLEN, live_ms: int = LINK_LIVE_MS) -> Call:
    """-> [vala, valb, val]; states not reported for `live_ms` (either node's) are decayed to 0."""
    return Call("link_set", (ks.link(rtu), ks.VPOINTS, ks.CHANGES, ks.EVENTS),
                (node, 1 if state else 0, int(maxlen), int(live_ms), *vpids))


def link_refresh(rtu: int, vpids: Sequence[int], live_ms: int = LINK_LIVE_MS,
                 maxlen: int = ks.CHANGES_MAXLEN) -> Call:
    """Re-evaluate a link without a report (any live process, on the master) -> [vala, valb, val],
    or ['', '', ''] when no node ever reported it."""
    return Call("link_refresh", (ks.link(rtu), ks.VPOINTS, ks.CHANGES, ks.EVENTS),
                (int(maxlen), int(live_ms), *vpids))
