"""Pure rules of following the change stream: entry ids, gap detection, entry -> Updates.

Kept apart from the Redis I/O in `app.py` so the rules are table-tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fepha import points
from fepha.semodel.model import FwdPoint, Model

from .base import Update
from .resume import parse_id

MONITOR_KINDS = ("AI", "DI", "ACC")


def demoted(error: str) -> bool:
    """Whether an error answered to the stream read (`XREAD BLOCK` on the local Redis) is the local Redis
    turning replica under it: REPLICAOF unblocks every blocked client with `UNBLOCKED ... (master ->
    replica?)`. Not a lost connection: the runner then asks `kept_stream` whether to read on."""
    return error.startswith("UNBLOCKED")


def kept_stream(replication: Mapping[str, Any], last_read: Mapping[str, str] | None,
                now: Mapping[str, str] | None) -> bool | None:
    """After `demoted`: whether the local Redis, now a replica, kept the stream read so far, so that reading
    on from the last entry read misses nothing. `replication`: its INFO replication; `last_read`: the
    fields of the last entry read (None: none, or not known); `now`: that entry as the replica has it now
    (None: gone). None while its sync is not done yet (ask again). A partial resync (the rolling upgrade's
    second step: the new master has everything this node wrote) keeps the entry and appends the new
    master's; a full one (a split brain healed, docs/ha.md scenario 7) replaces the stream, and the entry
    this node wrote alone is gone: reload the full image, as after an outage. Reloading at every demotion
    sent the masters connected to this node only each point's latest value, so a change made on the new
    master between the last entry read and the image never reached them (docs/forwarder.md)."""
    if replication.get("master_link_status") != "up" or str(replication.get("master_sync_in_progress")) == "1":
        return None
    return last_read is not None and now is not None and dict(now) == dict(last_read)


def trimmed_past(consumed: int, entries_added: int, length: int) -> bool:
    """True when an entry after the ones already consumed may have been trimmed away.

    `consumed` counts the stream's entries up to the last one read (from XINFO `entries-added` at the
    full image, plus every entry read since); XINFO STREAM after a read gives `entries-added` and `length`.
    The stream is trimmed from its head, so its oldest `entries_added - length` entries are gone; if that
    reaches past what we consumed, we missed some. (`max-deleted-entry-id` does not help: trimming does
    not update it.) Conservative: entries trimmed just after we read them also count."""
    return entries_added - length > consumed


@dataclass
class Routing:
    """Which forwarding points (of running servers) a source point id feeds."""

    by_src: dict[int, list[FwdPoint]] = field(default_factory=dict)
    src_rtu: dict[int, int] = field(default_factory=dict)
    """Routed source point -> the acquisition RTU it is configured on (virtual points: none)."""

    @classmethod
    def of(cls, model: Model, rtus: Iterable[int]) -> Routing:
        r = cls()
        for rid in rtus:
            rtu = model.rtus.get(rid)
            if rtu is None:
                continue
            for f in rtu.forwards:
                if f.kind in MONITOR_KINDS:
                    r.by_src.setdefault(f.src, []).append(f)
        pts, vps = model.points, model.vpoints
        r.src_rtu = {src: pts[src].rtu for src in r.by_src if src in pts and src not in vps}
        return r

    def updates(self, pairs: Iterable[tuple[str, str]], bad: list[str] | None = None,
                sid: tuple[int, int] = (0, 0), source: str | None = None) -> dict[int, list[Update]]:
        """Point id -> record pairs (one stream entry, whose id is `sid`, or an image hash) -> Updates per
        forwarding RTU, in order. Malformed records and non-numeric ids are skipped and reported in `bad`.
        `source` (the entry's `r`, or the RTU whose values hash it is) leaves out the points configured on
        another acquisition RTU: a point a reload moved keeps, in its old RTU's hash, the value its old device
        gave it, and an acquirer not yet reloaded may still write it there; taken, that value was served for
        the point (from whichever hash was read last, at every full image) until it changed on its new RTU."""
        out: dict[int, list[Update]] = {}
        for pid, rec in pairs:
            try:
                src = int(pid)
            except ValueError:
                if bad is not None and pid != "r":
                    bad.append(f"point id {pid!r}")
                continue
            fwds = self.by_src.get(src)
            if not fwds:
                continue
            if source is not None and (rtu := self.src_rtu.get(src)) is not None and str(rtu) != source:
                continue
            try:
                v = points.decode(rec)
            except ValueError as exc:
                if bad is not None:
                    bad.append(str(exc))
                continue
            for f in fwds:
                out.setdefault(f.rtu, []).append(Update(f, v, sid))
        return out


def entry_pairs(fields: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    """The point id -> record pairs of one stream entry (field `r` names the source, not a point)."""
    return ((k, v) for k, v in fields.items() if k != "r")


def merge(into: dict[int, list[Update]], more: Mapping[int, Sequence[Update]]) -> None:
    for rid, ups in more.items():
        into.setdefault(rid, []).extend(ups)


def image_keys(model: Model, routing: Routing) -> list[int]:
    """Acquisition RTUs whose value hashes hold a routed source point (virtual points: the vp hash)."""
    rtus = {model.points[src].rtu for src in routing.by_src if src in model.points}
    return sorted(rtus)


def lag_ms(entry_id: str, now_ms: int) -> int:
    return max(0, now_ms - parse_id(entry_id)[0])


__all__ = ["Routing", "entry_pairs", "image_keys", "lag_ms", "merge", "parse_id", "trimmed_past"]
