"""fepha.leftbehind's rule, table-driven (the probe itself runs against real Redis in
tests/api/test_left_behind.py and tests/forwarder/test_runner_quality.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fepha.leftbehind import HOLDS_VIP, may_be_left_behind, sign_age, verdict

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


@pytest.mark.parametrize(("info", "age", "left"), [
    (MASTER_ALONE, 9.0, True),       # the VIP leads here, keepalived silent for 9 s: the VIP left behind
    (MASTER_ALONE, 4.0, False),      # not older than the limit (4 s)
    (MASTER_ALONE, 0.5, False),      # keepalived alive: a real master (or a split brain, both alive)
    (MASTER_ALONE, None, False),     # no sign ever written: no keepalived on this host, nothing known
    (MASTER_FOLLOWED, 9.0, False),   # the peer follows this one: it is the master
    (REPLICA, 9.0, False),           # a replica (a normal BACKUP) is never flagged
])
def test_verdict_on_a_vip_left_on_this_host(info: dict, age: float | None, left: bool) -> None:
    why = verdict(info, "a" * 40, "a" * 40, "198.18.0.10", age, 4.0)
    assert (why is not None) == left
    if left:
        assert why is not None and why.startswith(HOLDS_VIP) and "198.18.0.10" in why and "9.0 s" in why
    # the VIP leading to another Redis stays the first verdict, whatever keepalived's sign says
    other = verdict(info, "a" * 40, "b" * 40, "198.18.0.10", 0.5, 4.0)
    assert (other is not None) == may_be_left_behind(info) and not (other or "").startswith(HOLDS_VIP)


def test_sign_age(tmp_path: Path) -> None:
    f = tmp_path / "vrrp.alive"
    assert sign_age(str(f)) is None and sign_age("") is None   # never written, or not configured
    f.write_text("A MASTER\n")
    os.utime(f, (1000.0, 1000.0))
    assert sign_age(str(f), now=1007.5) == 7.5
    assert sign_age(str(f), now=990.0) == 0.0                  # a clock stepped back: never negative
