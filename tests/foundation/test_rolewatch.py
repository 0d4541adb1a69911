"""The rule of the role watch (fepha.rolewatch): which readings of the local Redis's role mean the VIP
moved. The watch itself is tested on real Redis processes in tests/acquirer and tests/forwarder
(test_role_watch.py)."""

import asyncio

import pytest

from fepha import rolewatch
from fepha.rolewatch import role_moved, vip_here, vip_moved


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


@pytest.mark.parametrize(("seen", "now", "moved"), [
    (None, True, False),     # first look
    (True, True, False),
    (True, False, True),     # the VIP left this host (its Redis may stay a master: keepalived killed)
    (False, True, True),     # the VIP came here
    (True, None, False),     # not known now: no move
    (None, None, False),
])
def test_vip_moved(seen, now, moved):
    assert vip_moved(seen, now) is moved


def test_vip_here_by_bind_without_a_packet():
    assert vip_here("127.0.0.1") is True
    assert vip_here("192.0.2.77") is False   # TEST-NET-1: on no host here
    assert vip_here("redis-vip.example") is None   # a name: not known, never a move


class _Local:
    """ROLE of a local Redis that stays a master (keepalived killed: nothing demotes it)."""

    async def execute_command(self, *args):
        return ["master", 0, []]


def test_the_vip_leaving_while_the_role_stays_is_a_move(monkeypatch):
    """The watch must act when the VIP leaves this host although the local Redis stays a master: before,
    it read the role only and the services kept writing through connections to the VIP's old place."""
    here = {"now": True}
    monkeypatch.setattr(rolewatch, "vip_here", lambda vip: here["now"])
    moves = []

    async def on_move(seen, now):
        moves.append((seen, now))

    async def run():
        w = rolewatch.RoleWatch(_Local(), 0.1, on_move, vip="198.18.0.10")
        await w.check()
        await w.check()
        here["now"] = False
        await w.check()
        await w.check()
        here["now"] = True
        await w.check()
        return w

    w = asyncio.run(run())
    assert moves == [("master", "master"), ("master", "master")]
    assert w.here is True and w.role == "master"
