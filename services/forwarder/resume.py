"""Where each SCADA master stands in the change stream, so that it resumes on either node: pure rules.

Every event a forwarding server sends comes from one `fep:chg` entry, and both nodes' forwarders read the
same replicated stream, so an entry id ("sid", as a `(ms, seq)` tuple) means the same thing on A and B.
Per master identity (its IP address) the serving forwarder records in the master Redis the sid up to
which the master acknowledged every event (`fep:fwd:ack:{rtu}`, docs/keyspace.md). When the master starts
on a node, that node sends it the events after its cursor from its own `History`, then live data; a master
without a cursor (new to the system), or whose cursor the history no longer covers, gets end of
initialisation and its general interrogation instead (docs/forwarder.md, "Resuming a master").

No I/O here: the servers and the runner call these with what they hold, and table tests drive them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any, Generic, TypeVar

Sid = tuple[int, int]
T = TypeVar("T")

ZERO: Sid = (0, 0)
_sid = itemgetter(0)


def parse_id(entry_id: str | None) -> Sid:
    """'1700000000000-3' -> (1700000000000, 3); None or '' -> (0, 0). ValueError when malformed."""
    if not entry_id:
        return (0, 0)
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))


def sid_text(sid: Sid) -> str:
    return f"{sid[0]}-{sid[1]}"


def acked_cursor(prev: Sid, acked: Iterable[Sid], first_outstanding: Sid | None, position: Sid) -> Sid:
    """A master's new cursor after an acknowledgement.

    `acked`: the sids of the events (or image) this acknowledgement covers, in any order; `first_outstanding`:
    sid of the oldest event sent or queued to it and not acknowledged (None: nothing outstanding);
    `position`: the newest stream entry the server has been given. Nothing outstanding: every event up to
    `position` is acknowledged. Otherwise the cursor moves to the newest acknowledged entry older than the
    first outstanding one: one entry's events can span several messages (APDUs, ev frames), so an
    acknowledgement can end inside an entry, which is then still partly outstanding and must not be passed;
    the entries before it are whole. (Taking the newest acknowledged entry, and nothing when it is still
    outstanding, kept the cursor still on every acknowledgement that ended inside an entry, and a
    switchover re-sent everything since the master started.) Never moves back."""
    if first_outstanding is None:
        return max(prev, position)
    done = max((s for s in acked if s < first_outstanding), default=None)
    return prev if done is None else max(prev, done)


class History(Generic[T]):
    """A server's recent events with the sid of the entry each came from, in stream order.

    It keeps what some known master has not acknowledged: `prune(floor)` drops what every known master has
    (the "no master started" buffer of IEC 104 holds exactly this), and `maxlen` bounds it (oldest
    dropped). `floor` is the newest sid the history does NOT fully cover: a cursor older than it cannot be
    resumed from (its events were dropped, or came before this server started).

    The sids never decrease (events are appended in stream order, `fill` puts older ones in front), so
    `prune` and `since` find their cut by bisection and drop or copy with one slice (10,000 events pruned
    one by one in Python took 2.3 ms, 1.3 ms so, most of it freeing them). The events are kept in a list
    from `_head` on; those before it (dropped by `append` at maxlen, one per event) are deleted `COMPACT`
    at a time, not with one list shift per event."""

    COMPACT = 1024

    def __init__(self, maxlen: int) -> None:
        self._buf: list[tuple[Sid, T]] = []
        self._head = 0
        self.maxlen = maxlen
        self.floor: Sid = ZERO
        self.started = False

    @property
    def items(self) -> list[tuple[Sid, T]]:
        """The events kept, oldest first (a copy)."""
        return self._buf[self._head:]

    def start(self, position: Sid) -> None:
        """The first image: nothing before `position` is here (a later call is ignored)."""
        if not self.started:
            self.started = True
            self.floor = position

    def reset(self, position: Sid) -> None:
        """A new full image after a stream gap: events before it may be missing."""
        self._buf.clear()
        self._head = 0
        self.floor = max(self.floor, position)

    def append(self, sid: Sid, item: T) -> int:
        """Add one event (`sid` not older than the last one's); returns how many old ones were dropped to
        stay within maxlen."""
        self._buf.append((sid, item))
        dropped = len(self) - self.maxlen
        if dropped <= 0:
            return 0
        self._head += dropped
        # an entry partly dropped is not covered any more
        self.floor = max(self.floor, self._buf[self._head - 1][0])
        if self._head >= self.COMPACT:
            del self._buf[:self._head]
            self._head = 0
        return dropped

    def prune(self, floor: Sid) -> None:
        """Forget events every known master acknowledged (sid <= floor)."""
        cut = bisect_right(self._buf, floor, lo=self._head, key=_sid)
        if cut > self._head:
            del self._buf[:cut]
            self._head = 0
        self.floor = max(self.floor, floor)

    def fill(self, floor: Sid, items: Iterable[tuple[Sid, T]]) -> int:
        """Events from before the history's start, read back from the change stream (`backfill_from`): put
        in front of what it holds, and the floor lowered to `floor` (the entry they follow), as if this
        server had been running since. `items` in stream order, none newer than the history's floor; only
        the newest that fit within maxlen are kept, and the floor is then the newest entry dropped (as in
        `append`). Returns how many were kept."""
        room = self.maxlen - len(self)
        new = [it for it in items if it[0] <= self.floor]
        if room <= 0 or not self.started:
            return 0
        if len(new) > room:
            floor = max(floor, new[-room - 1][0])
            new = new[-room:]
        self._buf[:self._head] = new
        self._head = 0
        self.floor = min(self.floor, floor)
        return len(new)

    def covers(self, cursor: Sid) -> bool:
        return self.started and cursor >= self.floor

    def since(self, cursor: Sid) -> list[T] | None:
        """The events after `cursor`, in order; None when the history does not cover it."""
        if not self.covers(cursor):
            return None
        return [it for _, it in self._buf[bisect_right(self._buf, cursor, lo=self._head, key=_sid):]]

    def __len__(self) -> int:
        return len(self._buf) - self._head


def prune_floor(known: Iterable[Sid], position: Sid) -> Sid:
    """What the history may forget: everything the least advanced known master acknowledged; with no
    known master, everything up to `position` (a master new to the system gets no history)."""
    return min(known, default=position)


def backfill_from(cursors: Iterable[Sid], first: Sid | None, position: Sid) -> Sid | None:
    """Where a server whose history starts at stream entry `position` (its image's) reads the change stream
    back from, to cover its known masters' `cursors`: the oldest cursor behind `position` whose following
    entries the stream still holds all of (`first`: the stream's first entry; the stream is trimmed from its
    head, so a cursor at or after it has everything after it there, and one before it may have lost some).
    None: nothing to read (no such cursor). A cursor the stream no longer covers stays uncovered: that
    master gets end of initialisation and its interrogation (sefeps: a full image), as before."""
    if first is None:
        return None
    usable = [c for c in cursors if first <= c < position]
    return min(usable, default=None)


def backfill_floor(start: Sid, oldest_read: Sid | None, reached: bool, first: Sid) -> Sid:
    """The floor of a history filled from the stream back to `start`, read newest first: `start` when the
    read got back to it (`reached`); otherwise (the history's maxlen was collected first) the oldest entry
    read, whose events may be only partly kept. `first`: the stream's first entry after the read: when it
    passed `start`, the head was trimmed during the read, and only the entries from `first` on are surely
    all there."""
    floor = start if reached or oldest_read is None else max(start, oldest_read)
    return max(floor, first)


def parse_cursors(raw: Mapping[Any, Any]) -> dict[str, Sid]:
    """HGETALL of `fep:fwd:ack:{rtu}` -> identity -> sid; unusable values are left out."""
    out: dict[str, Sid] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        text = v.decode() if isinstance(v, bytes) else str(v)
        try:
            out[key] = parse_id(text)
        except ValueError:
            continue
    return out


__all__ = ["ZERO", "History", "Sid", "acked_cursor", "backfill_floor", "backfill_from", "parse_cursors", "parse_id",
           "prune_floor", "sid_text"]
