"""Table tests of the degraded-link helpers' rules (tests/ha/netem.py, tests/vip.py), without a network."""

from __future__ import annotations

import random

import pytest

from tests.ha.netem import RELAY_MARK, loss_rules, redirect_rules
from tests.vip import due_times

STAT = ["-m", "statistic", "--mode", "random", "--probability", "0.3000"]


@pytest.mark.parametrize("direction, kw, expected", [
    ("in", dict(proto="vrrp", peer="198.18.0.1"), [("INPUT", ["-p", "vrrp", "-s", "198.18.0.1", *STAT])]),
    ("out", {}, [("OUTPUT", STAT)]),
    ("both", dict(proto="tcp", peer="198.18.0.1", port=6379), [
        ("OUTPUT", ["-p", "tcp", "-d", "198.18.0.1", "--dport", "6379", *STAT]),
        ("OUTPUT", ["-p", "tcp", "-d", "198.18.0.1", "--sport", "6379", *STAT]),
        ("INPUT", ["-p", "tcp", "-s", "198.18.0.1", "--sport", "6379", *STAT]),
        ("INPUT", ["-p", "tcp", "-s", "198.18.0.1", "--dport", "6379", *STAT])]),
])
def test_loss_rules(direction: str, kw: dict, expected: list) -> None:
    assert loss_rules(30, direction, **kw) == expected


def test_loss_direction_is_checked() -> None:
    with pytest.raises(ValueError):
        loss_rules(10, "sideways")


def test_redirect_rules_spare_the_relays_own_connections() -> None:
    (chain, rule), = redirect_rules([("198.18.0.10", 6379)], 39999, inbound=False)
    assert chain == "OUTPUT" and rule[-2:] == ["--to-ports", "39999"]
    assert rule[rule.index("--mark") - 1] == "!" and rule[rule.index("--mark") + 1] == hex(RELAY_MARK)
    assert redirect_rules([("198.18.0.1", 2404)], 39999, inbound=True)[0][0] == "PREROUTING"


def test_delayed_chunks_keep_their_order() -> None:
    """Jitter may not reorder a TCP stream: a chunk never goes before the one ahead of it."""
    due = due_times([0.0, 0.01, 0.02, 1.0], 0.4, 0.2, random.Random(7))
    assert due == sorted(due) and all(d >= t + 0.2 for d, t in zip(due, [0.0, 0.01, 0.02, 1.0], strict=True))
    assert due_times([0.0, 1.0], 0.5, 0.0, random.Random(1)) == [0.5, 1.5]
