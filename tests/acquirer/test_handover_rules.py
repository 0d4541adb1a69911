"""The planned stop's rules (services/acquirer/handover.py), without a network: how long to wait for a master
Redis that failed the last tick, which leases go to the other node and which are kept until they lapse; and
the second signal (fepha.worker.Stop)."""

from __future__ import annotations

import json

import pytest

from fep_acquirer.handover import master_wait_s, peer_alive, peer_reaches, split
from fepha.worker import Stop

NOW, LIVE = 1_000_000, 3000


@pytest.mark.parametrize("tick_ok, failing_for_s, want", [
    (True, None, 0.0),       # the last tick went through: hand over at once
    (False, None, 4.0),      # unreachable, no lease call failed yet: the whole TTL
    (False, 0.5, 3.5),       # the VIP moving (or its new holder not yet promoted, refusing the lease calls):
                             # the rest of the TTL, the leases are alive on the new master
    (False, 4.0, None),      # failing for the TTL: the leases may have lapsed, exit as after a crash
    (False, 9.0, None),
])
def test_master_wait_s(tick_ok: bool, failing_for_s: float | None, want: float | None) -> None:
    assert master_wait_s(tick_ok, failing_for_s, 4.0) == want


@pytest.mark.parametrize("raw, want", [
    (None, False),                                                   # no heartbeat: not running
    ("", False),
    ("not json", False),
    (json.dumps([1]), False),
    (json.dumps({"service": "acquirer", "node": "B"}), True),
    (json.dumps({"service": "acquirer", "node": "B", "stopping": True}), False),  # stopping itself
])
def test_peer_alive(raw: str | None, want: bool) -> None:
    assert peer_alive(raw) is want


@pytest.mark.parametrize("link, want", [
    ({"valb": "1", "seen_b": str(NOW - 100)}, True),
    ({"valb": "1", "seen_b": str(NOW - LIVE)}, True),                # on the liveness limit
    ({"valb": "1", "seen_b": str(NOW - LIVE - 1)}, False),           # silent: no longer counts (link_eval)
    ({"valb": "0", "seen_b": str(NOW)}, False),                      # does not reach the device
    ({"vala": "1", "seen_a": str(NOW)}, False),                      # that is this node's own state
    ({"valb": "1"}, False),                                          # never seen
    ({"valb": "1", "seen_b": "garbage"}, False),
    ({}, False),
])
def test_peer_reaches(link: dict[str, str], want: bool) -> None:
    assert peer_reaches(link, "B", NOW, LIVE) is want


def test_split_gives_only_what_a_live_peer_reaches() -> None:
    up = {"valb": "1", "seen_b": str(NOW)}
    down = {"valb": "0", "seen_b": str(NOW)}
    assert split([1, 2, 3], [up, down, up], "B", True, NOW, LIVE) == ([1, 3], [2])
    assert split([1, 2, 3], [up, down, up], "B", False, NOW, LIVE) == ([], [1, 2, 3])
    assert split([], [], "B", True, NOW, LIVE) == ([], [])


async def test_second_signal_sets_again() -> None:
    stop = Stop()
    stop.signal()
    assert stop.is_set() and not stop.again.is_set()
    stop.signal()
    assert stop.again.is_set()
