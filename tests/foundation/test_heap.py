"""fepha.heap.settle: what a configuration loaded is frozen out of the collector's full passes, and what an
earlier settle froze is collected once it is garbage (a replaced configuration is not kept for good)."""

from __future__ import annotations

import gc
import weakref

from fepha import heap


class Node:
    """A configuration's object with a cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_settle_freezes_the_live_and_collects_what_an_earlier_settle_froze() -> None:
    try:
        old = Node()
        gone = weakref.ref(old)
        heap.settle()
        assert gc.get_freeze_count() > 0
        live = Node()
        heap.settle()
        assert gc.get_freeze_count() > 0
        assert gone() is not None  # still referenced: frozen, not collected
        del old
        gc.collect()
        assert gone() is not None  # frozen: a full pass does not see it (the point of freezing)
        heap.settle()  # the next configuration: the replaced one is collected now
        assert gone() is None
        assert live.me is live
    finally:
        gc.unfreeze()


def test_a_full_pass_after_settle_walks_only_what_came_after() -> None:
    try:
        kept = [Node() for _ in range(20_000)]
        heap.settle()
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        assert sum(1 for o in gc.get_objects() if isinstance(o, Node)) == 0  # none left for a pass to walk
        more = [Node() for _ in range(10)]
        assert sum(1 for o in gc.get_objects() if isinstance(o, Node)) == len(more)
    finally:
        gc.unfreeze()
