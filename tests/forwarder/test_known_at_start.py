"""A forwarder that starts (or loads a full image) knows every master cursor recorded in Redis from that
image on, not only from its once-a-second read of them (docs/se104s.md "Resuming a master").

Found with lib60870-C's client: two masters (127.0.0.1 and 127.0.0.5) reconnecting to a fep-forwarder
restarted mid-burst. The history was read back to the older of their cursors, but until the first
once-a-second read the server knew neither: the first master to acknowledge made it forget everything up
to its own new cursor, and the second, resumed 3 ms later, was told it had been away longer than the
history (end of initialisation, its events between the two cursors never sent to it as events)."""

from __future__ import annotations

from typing import Any

import pytest

from fep_forwarder import app
from fepha import keyspace as ks
from fepha.iec104 import codec as c
from tests.iec104.rawmaster import RawMaster, raw_master

from .se104s_fixtures import until
from .test_runner import Writer, forwarder, node_cfg, setup, wait_listening  # noqa: F401 - setup is a fixture
from .test_switchover import until_cursor

SE104S, IOA = 10, 1002  # the sample's se104s RTU; IOA 1002 forwards point 102 of acquisition RTU 1


def events(m: RawMaster) -> list[float]:
    return [v for _, ioa, v, _, _ in m.values() if ioa == IOA]


def initialised(m: RawMaster) -> bool:
    return any(a.type_id == c.M_EI_NA_1 for a in m.asdus)


async def test_the_first_master_to_acknowledge_after_a_start_leaves_the_others_their_history(
        setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    proc, r, port = setup
    w = Writer(r)
    for i in range(5):
        await w.write(1, p102=float(i))
    ids = [eid for eid, _ in await r.xrange(ks.CHANGES)]
    # master .5 acknowledged up to the 2nd entry, master .1 up to the 4th, before this forwarder started
    await r.hset(ks.fwd_acked(SE104S), mapping={"127.0.0.1": ids[3], "127.0.0.5": ids[1]})

    async def not_yet(self: app.Forwarder) -> None:
        """The once-a-second read of the recorded cursors has not come yet (it comes up to 1.5 s after a
        start: its first turn runs before any server exists)."""

    monkeypatch.setattr(app.Forwarder, "_read_known_cursors", not_yet)
    async with forwarder(node_cfg(proc)):
        await wait_listening(port)
        async with raw_master(port) as first:
            await first.start()
            await until(lambda: events(first) == [4.0], what="the event after its cursor")
            await until_cursor(r, SE104S, "127.0.0.1", ids[4])  # acknowledged: its cursor moved
        async with raw_master(port, local_addr=("127.0.0.5", 0)) as second:
            await second.start()
            await until(lambda: len(events(second)) >= 3 or initialised(second), what="resumed or initialised")
            assert not initialised(second), "told it was away longer than the history"
            assert events(second)[:3] == [2.0, 3.0, 4.0]
