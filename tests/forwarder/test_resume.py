"""Rules of resuming a master from its stream cursor (fep_forwarder.resume): table tests, no network."""

from __future__ import annotations

import pytest

from fep_forwarder.resume import History, acked_cursor, parse_cursors, parse_id, prune_floor, sid_text

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


def test_prune_floor_and_cursor_text() -> None:
    assert prune_floor([C, A], D) == A and prune_floor([], D) == D
    assert parse_cursors({"10.0.0.1": "2-1", b"10.0.0.2": b"3-0", "bad": "x-y"}) == {"10.0.0.1": C, "10.0.0.2": D}
    assert parse_id(sid_text((1700000000000, 3))) == (1700000000000, 3) and parse_id("") == (0, 0)
