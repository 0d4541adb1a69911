"""The operator timeline: one small helper every writer uses to add an entry to `keyspace.EVENTS`.

Lease changes and finished controls are decided inside Redis Functions and already recorded there
(`keyspace.LEASE_EVENTS`, `keyspace.CTL_AUDIT`); link changes are recorded by the `link_set` function
itself. Everything else that an operator needs in a timeline is written with `add` by the process that
sees it happen: channel switches (acquirer), configuration loads (loader), Redis role changes (acquirer),
masters connecting and leaving (forwarder). The api merges the three streams (`fep_api.state`).

An entry is a flat hash of strings: `kind`, `node` (A/B, or empty), `rtu` (or empty), `ts_ms` (the
writer's wall clock) and kind-specific fields. The stream is bounded (MAXLEN ~ EVENTS_MAXLEN), so it is
a recent history, not an archive: at a few events a minute it holds days.
"""

from __future__ import annotations

import time
from typing import Any

from fepha import keyspace as ks

KINDS = ("lease", "channel", "link", "config", "control", "role", "master")
"""Every timeline kind. `lease` and `control` come from their own streams, `link` from `link_set`."""


def fields(kind: str, node: str | None = None, rtu: int | None = None, ts_ms: int | None = None,
           **detail: Any) -> dict[str, str]:
    """The entry for one event; None details are left out."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    out = {"kind": kind, "node": node or "", "rtu": "" if rtu is None else str(rtu),
           "ts_ms": str(int(time.time() * 1000) if ts_ms is None else ts_ms)}
    out.update({k: str(v) for k, v in detail.items() if v is not None})
    return out


def command(kind: str, node: str | None = None, rtu: int | None = None, **detail: Any) -> tuple[str, ...]:
    """The XADD of one event as a raw command, for a caller that packs its commands itself (the acquirer's
    lease tick sends its channel events in its one round trip: `writer.send_fcalls`)."""
    pairs = fields(kind, node, rtu, **detail).items()
    return ("XADD", ks.EVENTS, "MAXLEN", "~", str(ks.EVENTS_MAXLEN), "*", *(x for kv in pairs for x in kv))


def add(r: Any, kind: str, node: str | None = None, rtu: int | None = None, **detail: Any) -> Any:
    """XADD one event on `r` (a client, sync or async, or a pipeline: queued with the writer's other
    commands, so the event goes out with the state change it describes). Returns what `xadd` returns."""
    return r.xadd(ks.EVENTS, fields(kind, node, rtu, **detail), maxlen=ks.EVENTS_MAXLEN, approximate=True)
