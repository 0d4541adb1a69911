"""Rules of resuming a master from its stream cursor (fep_forwarder.resume): table tests, no network."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fep_forwarder.resume import (
    History,
    acked_cursor,
    backfill_floor,
    backfill_from,
    parse_cursors,
    parse_id,
    prune_floor,
    sid_text,
)

A, B, C, D = (1, 0), (2, 0), (2, 1), (3, 0)


@pytest.mark.parametrize(("prev", "acked", "first", "pos", "want"), [
    ((0, 0), [], None, D, D),  # nothing outstanding: everything up to the position
    ((0, 0), [A], B, D, A),  # acked through entry A, B outstanding
    ((0, 0), [B], B, D, (0, 0)),  # entry B only partly acknowledged (its events span two messages)
    (A, [B], B, D, A),
    (C, [A], B, D, C),  # never moves back
    (D, [], None, C, D),  # a position behind the cursor (this node's stream lags): stays
    (A, [], B, D, A),  # an acknowledgement of nothing new
    # the acknowledgement ends inside an entry after completing others: the newest complete one
    (A, [B, C, C], C, D, B),
    ((0, 0), [C, A, B], C, D, B),  # in any order
])
def test_acked_cursor(prev, acked, first, pos, want) -> None:
    assert acked_cursor(prev, acked, first, pos) == want


def test_one_entry_over_several_messages() -> None:
    """Entry B's five events go in three messages of two events (B,B | B,B | B,C); the master acknowledges
    message by message. Inside B the cursor stays at A; the acknowledgement that ends inside C (after B's
    last event) moves it to B, never to C while C is outstanding; then nothing outstanding: the position."""
    sent = [[B, B], [B, B], [B, C]]
    outstanding = [sid for m in sent for sid in m] + [C]  # C's second event queued, not yet sent
    cursor = A
    wants = [A, A, B]
    for msg, want in zip(sent, wants, strict=True):
        del outstanding[:len(msg)]
        cursor = acked_cursor(cursor, msg, outstanding[0], D)
        assert cursor == want
    assert acked_cursor(cursor, [C], None, C) == C


def test_history_covers_from_its_start_and_after_what_it_dropped() -> None:
    h: History[str] = History(3)
    assert h.since(A) is None  # not started
    h.start(A)
    h.start(D)  # a later start is ignored
    for sid, x in ((B, "b1"), (B, "b2"), (C, "c")):
        assert h.append(sid, x) == 0
    assert h.since(A) == ["b1", "b2", "c"] and h.since(B) == ["c"] and h.since(C) == []
    assert h.since((0, 5)) is None  # before the server started
    assert h.append(D, "d") == 1  # b1 dropped: entry B is no longer whole
    assert h.since(A) is None and h.since(B) == ["c", "d"]
    h.prune(C)  # every known master has C
    assert list(h.items) == [(D, "d")] and h.since(B) is None and h.since(C) == ["d"]
    h.reset((4, 0))  # a full image after a stream gap
    assert len(h) == 0 and h.since(D) is None and h.since((4, 0)) == []


def _counting(op: str) -> Callable[[tuple[int, int], object], bool]:
    def compare(self: tuple[int, int], other: object) -> bool:
        Counted.n += 1
        return bool(getattr(tuple, op)(self, other))
    return compare


class Counted(tuple):
    """A sid that counts the comparisons made with it."""

    n = 0
    __lt__, __le__, __gt__, __ge__ = (_counting(op) for op in ("__lt__", "__le__", "__gt__", "__ge__"))


def test_prune_finds_its_cut_by_bisection() -> None:
    """10,000 events, two per stream entry, the oldest 100 dropped at maxlen: `prune` and `since` compare a
    few sids (bisection), not one per event dropped or skipped (pruning a second of 10,000 events one by
    one held the event loop milliseconds), and keep exactly what they kept: a floor before the first event
    kept, on an entry, between entries (its events go), after the last."""
    def history() -> History[int]:
        h: History[int] = History(9_900)
        h.start((0, 0))
        for i in range(10_000):
            h.append(Counted((1 + i // 2, 0)), i)
        assert len(h) == 9_900 and h.floor == (50, 0)  # events 0 .. 99 (entries 1 .. 50) dropped
        return h

    for floor, first, want_floor in [((2_500, 0), 5_000, (2_500, 0)),  # on entry 2,500: both its events go
                                     ((10, 0), 100, (50, 0)),  # before the first event kept: nothing goes
                                     ((2_500, 7), 5_000, (2_500, 7)),  # between entries 2,500 and 2,501
                                     ((9_999, 0), 10_000, (9_999, 0))]:  # after the last: everything goes
        h = history()
        Counted.n = 0
        h.prune(floor)
        assert Counted.n <= 20, f"prune({floor}): {Counted.n} comparisons"
        assert [it for _, it in h.items] == list(range(first, 10_000)) and h.floor == want_floor
        Counted.n = 0
        assert h.since(want_floor) == list(range(first, 10_000)) and h.since((want_floor[0] - 1, 0)) is None
        assert Counted.n <= 40, f"since after prune({floor}): {Counted.n} comparisons"
    h = history()
    assert h.since((2_500, 0)) == list(range(5_000, 10_000))  # since alone: the events after that entry


def test_prune_floor_and_cursor_text() -> None:
    assert prune_floor([C, A], D) == A and prune_floor([], D) == D
    assert parse_cursors({"10.0.0.1": "2-1", b"10.0.0.2": b"3-0", "bad": "x-y"}) == {"10.0.0.1": C, "10.0.0.2": D}
    assert parse_id(sid_text((1700000000000, 3))) == (1700000000000, 3) and parse_id("") == (0, 0)


E, F = (4, 0), (5, 0)


@pytest.mark.parametrize(("cursors", "first", "pos", "want"), [
    ([B, C], A, E, B),  # the oldest cursor behind the image: read back from there
    ([A], A, E, A),  # a cursor at the stream's first entry: everything after it is there
    ([(0, 5), C], A, E, C),  # one older than the stream's first entry: it may have lost entries, left out
    ([(0, 0)], A, E, None),  # a master without a usable cursor: nothing to read for it
    ([E, F], A, E, None),  # masters at or after the image's entry: nothing behind it to read
    ([], A, E, None),  # no known master
    ([B], None, E, None),  # no stream (empty, deleted)
])
def test_backfill_from(cursors, first, pos, want) -> None:
    assert backfill_from(cursors, first, pos) == want


@pytest.mark.parametrize(("start", "oldest", "reached", "first", "want"), [
    (A, B, True, A, A),  # read back to the start: covers from there
    (A, C, False, A, C),  # maxlen collected at entry C first: only from C
    (A, None, True, (0, 1), A),  # nothing routed to this server in the range
    (A, C, True, B, B),  # the stream's head passed the start during the read: from its first entry
    (A, C, False, D, D),
])
def test_backfill_floor(start, oldest, reached, first, want) -> None:
    assert backfill_floor(start, oldest, reached, first) == want


def test_history_filled_from_the_stream_behind_its_start() -> None:
    h: History[str] = History(4)
    assert h.fill(A, [(B, "b")]) == 0 and h.since(A) is None  # not started: nothing to fill
    h.start(D)  # the image's entry
    h.append(E, "e")  # live after it
    assert h.fill(A, [(B, "b1"), (B, "b2"), (C, "c"), (E, "late")]) == 3  # only what is not newer than D
    assert h.since(A) == ["b1", "b2", "c", "e"] and h.since(B) == ["c", "e"] and h.since((0, 9)) is None
    g: History[str] = History(3)
    g.start(D)
    g.append(D, "d")  # se104s: a value the reloaded image changed, at the image's entry
    assert g.fill(A, [(B, "b1"), (B, "b2"), (C, "c")]) == 2  # room for two: the newest, B only partly
    assert list(g.items) == [(B, "b2"), (C, "c"), (D, "d")]
    assert g.since(A) is None and g.since(B) == ["c", "d"] and g.floor == B
    full: History[str] = History(1)
    full.start(D)
    full.append(E, "e")
    assert full.fill(A, [(B, "b")]) == 0 and full.floor == D  # full: nothing behind it, floor kept
    none: History[str] = History(5)
    none.start(D)
    assert none.fill(A, []) == 0 and none.since(A) == []  # no change of its points since A: covered
