"""The garbage collector's policy of the long-running services: what a configuration loads lives until the
next one, so it is frozen out of the collector's full passes.

CPython's full collection (generation 2) walks every tracked object, and it runs on its own whenever a
quarter more objects have survived into the old generation: in the forwarder, with 1,000 points and its
modules, 11 to 23 ms on this project's 2-core machine, once or twice in the seconds after a configuration and
its image are loaded (bench/forward.py: a pass inside the latency window made that run's maximum 13 ms
and moved its p99). The configuration, the image and the code are the bulk of those objects and live on;
`settle()` collects once and then freezes what is left (`gc.freeze`), so later passes walk only what came
after. Young collections are untouched (they are cheap and free the per-value garbage).
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once a configuration is applied (and its image loaded). What an earlier `settle()` froze is
    unfrozen first, so that a replaced configuration's cycles are collected, not kept for good: frozen
    objects are never collected (refcounting still frees the acyclic ones). Costs one full collection."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
