"""Rules of resuming a master from its stream cursor (fep_forwarder.resume): table tests, no network."""

from __future__ import annotations

import pytest

from fep_forwarder.resume import History, acked_cursor, parse_cursors, parse_id, prune_floor, sid_text

A, B, C, D = (1, 0), (2, 0), (2, 1), (3, 0)


@pytest.mark.parametrize(("prev", "last", "first", "pos", "want"), [
    ((0, 0), None, None, D, D),  # nothing outstanding: everything up to the position
    ((0, 0), A, B, D, A),  # acked through entry A, B outstanding
    ((0, 0), B, B, D, (0, 0)),  # entry B only partly acknowledged (its events span two APDUs)
    (A, B, B, D, A),
    (C, A, B, D, C),  # never moves back
    (D, None, None, C, D),  # a position behind the cursor (this node's stream lags): stays
])
def test_acked_cursor(prev, last, first, pos, want) -> None:
    assert acked_cursor(prev, last, first, pos) == want


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
