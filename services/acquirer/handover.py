"""The planned stop (SIGTERM/SIGINT): hand the held leases over to the other node before exiting.

Operators stop and restart the acquirer's container for upgrades. Exiting with the leases held leaves the
RTUs without a writer until they lapse (`lease_ttl_s` + one tick): the gap of a crash. Instead the stopping
node marks a handover (`lease_handover`, the function the api's POST .../handover calls) of every lease the
other node can take, keeps polling and writing (fenced) until the other node's next tick takes it (new
epoch: any later write of ours is rejected by `write_values`, before the new holder's first write), then
exits. Bounded by `stop_handover_s`; a second signal ends the wait at once. A master Redis that failed the
last tick is waited for while the leases may still be alive on it (`master_wait_s`: the VIP moving). The
rules are plain functions (`master_wait_s`, `peer_alive`, `peer_reaches`); `hand_over` is their Redis edge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fep_acquirer.rtu import RunnerBase
from fepha import keyspace as ks
from fepha import redisfns

log = logging.getLogger("acquirer")
WATCH_S = 0.05
"""How often the stopping node reads the leases it handed over (and the other node's heartbeat)."""


def master_wait_s(tick_ok: bool, failing_for_s: float | None, ttl_s: float) -> float | None:
    """How long a stopping holder waits for the master Redis before it hands its leases over: 0 when its
    last lease tick went through (`tick_ok`); while its ticks have failed or been refused for less than
    `ttl_s` (`failing_for_s`, None: no lease call failed yet), the rest of that TTL: the master is moving
    (the VIP's holder replaced, a rolling upgrade's second step), the leases are alive on the one taking
    over (still a replica for a moment: it refuses them) and can be handed over there; None (give up: exit,
    as after a crash) once they may have lapsed. Bounded by the caller's timer."""
    if tick_ok:
        return 0.0
    left = ttl_s - (failing_for_s or 0.0)
    return left if left > 0 else None


def peer_alive(heartbeat_raw: str | None) -> bool:
    """The other node's acquirer runs and is not stopping itself (its heartbeat exists without `stopping`):
    a stopping node bids for no lease, so handing one to it would only wait out the timer."""
    if not heartbeat_raw:
        return False
    try:
        hb = json.loads(heartbeat_raw)
    except ValueError:
        return False
    return isinstance(hb, dict) and not hb.get("stopping")


def peer_reaches(link: Mapping[str, str], peer: str, now_ms: int, live_ms: int) -> bool:
    """The other node reports that it reaches the RTU's device (`fep:link:{rtu}` val_<peer> = 1) and that
    report is live (seen within `live_ms`, the rule by which link_eval decays a silent node's state)."""
    n = peer.lower()
    try:
        seen = int(link.get(f"seen_{n}") or 0)
    except ValueError:
        return False
    return link.get(f"val{n}") == "1" and now_ms - seen <= live_ms


def split(rtus: Sequence[int], links: Sequence[Mapping[str, str]], peer: str, alive: bool, now_ms: int,
          live_ms: int) -> tuple[list[int], list[int]]:
    """(RTUs to hand over, RTUs to keep until their lease lapses): a lease goes only to a live peer that
    reaches its device; handing it to one that does not would stop that RTU's data."""
    give: list[int] = []
    keep: list[int] = []
    for rid, link in zip(rtus, links, strict=True):
        (give if alive and peer_reaches(link, peer, now_ms, live_ms) else keep).append(rid)
    return give, keep


async def hand_over(master: Any, node: str, peer: str, live_ms: int, window_s: float,
                    runners: Mapping[int, RunnerBase], apply: Callable[[RunnerBase, str, int], None]) -> None:
    """Hand over every held lease the peer can take and wait until it took them all, or is no longer alive.
    The caller bounds it (timer, second signal) and handles Redis errors. `apply` updates a runner's lease
    view (the housekeeping's rule) as soon as the peer took it, so the runner stops writing at once."""
    held = {rid: r for rid, r in runners.items() if r.lease.held}
    if not held:
        return
    rids = sorted(held)
    pipe = master.pipeline(transaction=False)
    pipe.time()
    pipe.get(ks.heartbeat("acquirer", peer))
    for rid in rids:
        pipe.hgetall(ks.link(rid))
    now, hb, *links = await pipe.execute()
    alive = peer_alive(hb)
    give, keep = split(rids, links, peer, alive, int(now[0]) * 1000 + int(now[1]) // 1000, live_ms)
    if keep:
        why = (f"node {peer} does not reach their devices" if alive else
               f"node {peer}'s acquirer is not running or is stopping")
        log.warning("stopping: keeping the leases of RTU %s until they lapse (lease_ttl_s): %s, handing them "
                    "over would stop their data", ", ".join(map(str, keep)), why)
    if not give:
        return
    t0 = time.monotonic()
    pipe = master.pipeline(transaction=False)
    for rid in give:
        pipe.fcall(*redisfns.lease_handover(rid, peer, int(window_s * 1000)).argv)
    await pipe.execute()
    log.info("stopping: handing the leases of RTU %s over to node %s", ", ".join(map(str, give)), peer)
    waiting = list(give)
    while True:
        pipe = master.pipeline(transaction=False)
        for rid in waiting:
            pipe.hmget(ks.lease(rid), "holder", "epoch")
        pipe.get(ks.heartbeat("acquirer", peer))
        *leases, hb = await pipe.execute()
        for rid, (holder, epoch) in zip(list(waiting), leases, strict=True):
            if holder != node:
                apply(held[rid], holder or "", int(epoch or 0))
                waiting.remove(rid)
        if not waiting:
            log.info("stopping: node %s took the leases of RTU %s in %.2f s", peer, ", ".join(map(str, give)),
                     time.monotonic() - t0)
            return
        if not peer_alive(hb):
            log.warning("stopping: node %s's acquirer stopped before taking RTU %s: kept until they lapse", peer,
                        ", ".join(map(str, waiting)))
            return
        await asyncio.sleep(WATCH_S)
