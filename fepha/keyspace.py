"""The whole Redis keyspace of fep-ha, in one module.

Every key, channel and stream name that any service reads or writes is built here and nowhere else; a
second copy of a key name elsewhere is a bug. `docs/keyspace.md` documents each key (type, writer,
readers) and must change together with this file.

Keys hold ids as decimal strings. Point ids share one namespace across acquisition points (`T011_POINT`)
and virtual points (`T036_VTPNT`), so a change record names a point without naming its table.
"""

from __future__ import annotations

PREFIX = "fep"

# --- configuration (written by `sysload init`, read by every service) ------------------------------
CFG_GEN = f"{PREFIX}:cfg:gen"
"""String: the configuration generation, incremented by every successful `sysload init`."""
CFG_META = f"{PREFIX}:cfg:meta"
"""Hash: gen, loaded_at_ms, source, sha256, rows per table of the live configuration."""
CFG_CHANGED = f"{PREFIX}:cfg:changed"
"""Pub/sub channel: the new generation, published in the same transaction that switches it."""


def cfg_table(table: str) -> str:
    """Hash: one live SEMODEL.db table, row key -> JSON object of the row's columns."""
    return f"{PREFIX}:cfg:t:{table}"


def cfg_stage(table: str) -> str:
    """Hash: a table being loaded; renamed onto `cfg_table` in the switch transaction."""
    return f"{PREFIX}:cfg:stage:{table}"


CFG_LOCK = f"{PREFIX}:cfg:lock"
"""String with TTL: held by the one `sysload init` that is loading, so two loads never interleave."""

# --- point values and changes (written by the lease holder's acquirer through Redis Functions) -----


def values(rtu: int | str) -> str:
    """Hash: point id -> value record (`fepha.points`) of one acquisition RTU's points."""
    return f"{PREFIX}:val:{rtu}"


VPOINTS = f"{PREFIX}:vp"
"""Hash: virtual point id -> value record; `val` of `vala || valb`, computed by the `link_set` function."""

CHANGES = f"{PREFIX}:chg"
"""Stream: one entry per fenced write (field `r` = RTU id or `vp`, then point id -> value record pairs),
bounded by MAXLEN ~ `CHANGES_MAXLEN`. Forwarders follow it with XREAD BLOCK on their local Redis.
One entry holds a whole poll response (up to ~1000 changes, ~25 KB), so the bound is in entries, not
changes: 20,000 entries is ~500 MB in the worst case (every point of 1000-point blocks changing every poll)
and a few MB in a normal plant; a forwarder that falls further behind reloads the full image."""
CHANGES_MAXLEN = 20_000


def link(rtu: int | str) -> str:
    """Hash: the two nodes' link states of one acquisition RTU: `vala`, `valb`, `val` (0/1) and
    `since_a`, `since_b`, `since` (ms); `seen_a`, `seen_b` (ms): each node's last report, a state not
    reported for the lease TTL decays to 0. Written only by the `link_set` / `link_refresh` functions."""
    return f"{PREFIX}:link:{rtu}"


# --- leases (load balancing, seed: "token") ------------------------------------------------------


def lease(rtu: int | str) -> str:
    """Hash: holder (node id), epoch, since_ms, expires_ms, reached_ms (holder last reached the device fully),
    answered_ms (holder last reached it at all), polled_ms (holder's last complete poll),
    handover (target node, optional), handover_until_ms. Written only by the `lease_*` functions;
    never expires by itself so the epoch survives a lapse."""
    return f"{PREFIX}:lease:{rtu}"


LEASE_EVENTS = f"{PREFIX}:lease:events"
"""Stream: one entry per change of holder (rtu, from, to, epoch, reason), MAXLEN ~ 10000."""
LEASE_EPOCHS = f"{PREFIX}:lease:epochs"
"""Hash: RTU id -> the highest lease epoch ever granted for it, written by every grant of `lease_tick` (same call);
the next grant's epoch is above it, so a lease hash deleted outright does not restart at epoch 1. Kept by
`sysload init`, also for RTUs it removes (not in `node_keys_for_rtu`): an RTU id added again counts on."""
CLOCK = f"{PREFIX}:clock"
"""Hash `hw_ms`, `gen`: the master clock's latest time seen by a lease tick and how often it was found to have
gone back (docs/ha.md "Clocks"); controls queued under another gen are never executed."""

# --- channel state (per node and RTU, for the api) ------------------------------------------------


def channel_state(rtu: int | str, node: str) -> str:
    """Hash: active (1/2), and per channel n: chn_connected, chn_since_ms, chn_error, chn_switches.
    Written by that node's acquirer when something changes."""
    return f"{PREFIX}:chan:{rtu}:{node}"


# --- heartbeats -------------------------------------------------------------------------------------


def heartbeat(service: str, node: str) -> str:
    """String with TTL: JSON {pid, host, ts_ms, gen, ...}; absent means the service is dead or cut off."""
    return f"{PREFIX}:hb:{service}:{node}"


# --- forwarder state --------------------------------------------------------------------------------


def fwd_clients(rtu: int | str, node: str) -> str:
    """Hash: connected masters of one forwarding RTU on one node: peer address -> JSON state.
    Replaced by that node's forwarder when a master connects or leaves."""
    return f"{PREFIX}:fwd:{rtu}:{node}"


def fwd_acked(rtu: int | str) -> str:
    """Hash: per SCADA master identity (its address) of one forwarding RTU, the change-stream (`fep:chg`)
    entry id up to which that master acknowledged every event: written by the forwarder serving it, read
    by either node's forwarder when the master starts there (docs/forwarder.md, resuming)."""
    return f"{PREFIX}:fwd:ack:{rtu}"


# --- controls -----------------------------------------------------------------------------------------

CTL_SEQ = f"{PREFIX}:ctl:seq"
"""String: counter for control ids."""


def control(ctl_id: int | str) -> str:
    """Hash: one control: id, rtu, point, value, origin, created_ms, deadline_ms, state, result,
    executor, epoch, instance, claimed_ms, finished_ms. Expires a day after it finished."""
    return f"{PREFIX}:ctl:{ctl_id}"


def control_queue(rtu: int | str) -> str:
    """List: ids of controls waiting for the holder of this acquisition RTU."""
    return f"{PREFIX}:ctl:q:{rtu}"


def control_wake(node: str) -> str:
    """List, short TTL: a token pushed by one node's control executor to itself when its planned stop begins,
    so that its BLPOP (on its queues and this key) returns at once instead of at its timeout; never cancelled
    mid-command, a BLPOP that popped a control returns it (`fep_acquirer.executor`)."""
    return f"{PREFIX}:ctl:wake:{node}"


def control_claims(node: str) -> str:
    """Set, expires a day after its last claim: ids of the controls one node's acquirer claimed and has not
    finished (`ctl_claim` adds, `ctl_finish` and `ctl_orphan` remove). The node's next acquirer process reads
    it as it starts, and answers `unknown` at once the claims its previous process left unfinished."""
    return f"{PREFIX}:ctl:claimed:{node}"


def control_reply(ctl_id: int | str) -> str:
    """List: the result of one control, pushed once by `ctl_finish`; the waiting forwarder BLPOPs it."""
    return f"{PREFIX}:ctl:r:{ctl_id}"


CTL_AUDIT = f"{PREFIX}:ctl:audit"
"""Stream: one entry per finished control (all fields of the control hash), MAXLEN ~ `CTL_AUDIT_MAXLEN`
(fepctl's `final`); also the loser's entries of a split brain copied before its demotion (`fepha.splitaudit`:
fields `from_split`, `split_id` added)."""
CTL_AUDIT_MAXLEN = 10_000

# --- metrics shared between processes ----------------------------------------------------------------


def metrics(service: str, node: str) -> str:
    """Hash: counters of one service on one node (name -> integer), for the api's /metrics."""
    return f"{PREFIX}:m:{service}:{node}"


def node_keys_for_rtu(rtu: int | str, nodes: tuple[str, ...] = ("A", "B")) -> list[str]:
    """Every runtime key that belongs to one RTU, so a removed RTU leaves nothing behind."""
    keys = [values(rtu), link(rtu), lease(rtu), control_queue(rtu)]
    for node in nodes:
        keys.append(channel_state(rtu, node))
        keys.append(fwd_clients(rtu, node))
    keys.append(fwd_acked(rtu))
    return keys

# --- operator timeline (fepha.events; read by the api's /api/v1/events and /api/v1/stream) ----------

EVENTS = f"{PREFIX}:events"
"""Stream: one entry per thing that happened besides lease changes (`LEASE_EVENTS`) and finished controls
(`CTL_AUDIT`): field `kind` (channel, link, config, role, master), `node`, `rtu`, `ts_ms` and a few
kind-specific fields. Bounded by MAXLEN ~ `EVENTS_MAXLEN`; written by `fepha.events` (and `link_set`)."""
EVENTS_MAXLEN = 10_000
