"""The rule of the role watch (fepha.rolewatch): which readings of the local Redis's role mean the VIP
moved. The watch itself is tested on real Redis processes in tests/acquirer and tests/forwarder
(test_role_watch.py)."""

import pytest

from fepha.rolewatch import role_moved


@pytest.mark.parametrize(("seen", "now", "moved"), [
    (None, "master", False),   # first look: nothing to compare with
    (None, "", False),
    ("slave", "slave", False),
    ("slave", "master", True),  # promoted: the VIP came here
    ("master", "slave", True),  # demoted: the VIP went away
    ("slave", "", False),       # local Redis not answering: no move, the service reports it
    ("master", "", False),
])
def test_role_moved(seen, now, moved):
    assert role_moved(seen, now) is moved
