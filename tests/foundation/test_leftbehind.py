"""fepha.leftbehind's rule, table-driven (the probe itself runs against real Redis in
tests/api/test_left_behind.py and tests/forwarder/test_runner_quality.py)."""

from __future__ import annotations

import pytest

from fepha.leftbehind import may_be_left_behind, verdict

MASTER_ALONE = {"role": "master", "connected_slaves": 0}
MASTER_FOLLOWED = {"role": "master", "connected_slaves": 1,
                   "slave0": {"ip": "198.18.0.2", "port": 6379, "state": "online", "offset": 1, "lag": 0}}
MASTER_SYNCING = {"role": "master", "connected_slaves": 1,
                  "slave0": {"ip": "198.18.0.2", "port": 6379, "state": "wait_bgsave", "offset": 0, "lag": 0}}
REPLICA = {"role": "slave", "master_link_status": "up"}


@pytest.mark.parametrize(("info", "mine", "theirs", "left"), [
    (MASTER_ALONE, "a" * 40, "b" * 40, True),      # the VIP leads to another Redis
    (MASTER_ALONE, "a" * 40, "a" * 40, False),     # the VIP leads here: this is the master
    (MASTER_ALONE, "a" * 40, None, False),         # the VIP does not answer: says nothing
    (MASTER_ALONE, None, "b" * 40, False),         # the local run_id unknown
    (MASTER_SYNCING, "a" * 40, "b" * 40, True),    # a replica not yet online does not make it the master
    (MASTER_FOLLOWED, "a" * 40, "b" * 40, False),  # the peer follows this one: it is the master
    (REPLICA, "a" * 40, "b" * 40, False),          # a replica is rule 1's business
])
def test_verdict(info: dict, mine: str | None, theirs: str | None, left: bool) -> None:
    why = verdict(info, mine, theirs, "198.18.0.10")
    assert (why is not None) == left
    assert may_be_left_behind(info) == (info is MASTER_ALONE or info is MASTER_SYNCING)
    if left:
        assert why is not None and "198.18.0.10" in why and why.startswith("left behind as a master")
