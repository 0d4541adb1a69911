"""IEC 104 acquisition: every event written once when connections close. Real sockets: fep-rtu104sim (the
RTU that keeps what was not acknowledged, and sends it again after the next STARTDT) and a scripted RTU on
our own link (role SERVER) for the exact orders a real RTU may send: an interrogation answer behind a newer
spontaneous event, an end of initialisation in the middle of a connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from fepha import points
from fepha.iec104 import codec as c
from fepha.iec104.link import AsduIn, Link, LinkParams, Role
from tests.acquirer.helpers import Node, load, merge, node_cfg, until
from tests.acquirer.test_iec104 import (CA, IEC_FAST, _count, _is, changes_of, holder, iec_rows, sim_system,
                                        value_of)
from tests.redisproc import free_port


def untagged(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The same RTU with its status and measured points configured (and so sent) without time tag."""
    names = {"M_SP_TB_1": "M_SP_NA_1", "M_DP_TB_1": "M_DP_NA_1", "M_ME_TF_1": "M_ME_NC_1"}
    for p in rows["T011_POINT"]:
        p["DATATYPE"] = names.get(p["DATATYPE"], p["DATATYPE"])
    return rows


def session(sim, rid: int):
    """The RTU's started connection (fep-rtu104sim's station session)."""
    return next((s for s in sim.devices[rid].station.sessions if s.active and not s.closed), None)


async def test_events_are_acknowledged_as_soon_as_written(redis_master, feproot):
    """t2 = 5 s and w = 8: an event written to Redis is acknowledged to the RTU at once (an S frame after
    the write), not after w frames or t2, so that a connection closing then leaves the RTU nothing written
    to send again."""
    timers = dict(IEC_FAST, iec104_t1_s=10.0, iec104_t2_s=5.0, iec104_t3_s=20.0)
    async with sim_system(redis_master, feproot, merge(iec_rows(5, free_port())), **timers) as (sim, nodes, r):
        await until(lambda: holder(nodes, 5), 5)
        await until(lambda: value_of(r, 5, 5001), 3)
        await until(lambda: (s := session(sim, 5)) is not None and s.link.in_flight == 0, 8)  # the GI's
        for i in range(3):
            ts = int(time.time() * 1000) - 1000 + i
            sim.set_value(5001, i % 2, ts_ms=ts)
            await until(lambda ts=ts: _ts(value_of(r, 5, 5001), ts), 3)
            t0 = time.monotonic()
            await until(lambda: session(sim, 5).link.in_flight == 0, 1.0, step=0.005)
            assert time.monotonic() - t0 < 1.0


async def _ts(coro, ts: int) -> bool:
    v = await coro
    return v is not None and v.ts_ms == ts


def drop_acks(sim, rid: int) -> Callable[[], None]:
    """The RTU stops seeing our acknowledgements (S frames lost on the way, a network cut); returns a
    function that restores them."""
    station = sim.devices[rid].station
    receive = station.receive

    def without_s(s, data, now):
        out, i = bytearray(), 0
        while i + 2 <= len(data):
            n = data[i + 1] + 2
            f = data[i:i + n]
            if not (n == 6 and f[2] & 0x03 == 0x01):
                out += f
            i += n
        return receive(s, bytes(out), now)

    station.receive = without_s
    return lambda: setattr(station, "receive", receive)


@pytest.mark.parametrize("tags", [False, True])
async def test_events_resent_after_a_cut_are_written_once(redis_master, feproot, tags):
    """Three events are written but the RTU never sees our acknowledgement (lost on the way), then the
    connection is cut. The RTU sends them again after the next STARTDT: each reaches the change stream
    once. Untagged (they carry our reception time): each equals its point's value and quality in Redis,
    no change (rules.write_mode CHANGES); time-tagged: recognised by point, value, quality and time tag
    among the newest change records."""
    rows = merge(iec_rows(5, free_port()))
    if not tags:
        untagged(rows)
    async with sim_system(redis_master, feproot, rows, sim_options={"time_tags": tags}) as (sim, nodes, r):
        await until(lambda: holder(nodes, 5), 5)
        await until(lambda: _is(value_of(r, 5, 5003), 0.0), 3)
        await until(lambda: (s := session(sim, 5)) is not None and s.link.in_flight == 0, 5)
        pids = (5001, 5002, 5003)
        before = {pid: len(await changes_of(r, pid)) for pid in pids}
        restore = drop_acks(sim, 5)
        base = int(time.time() * 1000) - 1000
        for i, (pid, v) in enumerate(((5001, 1), (5002, 1), (5003, 21.0))):
            sim.set_value(pid, v, ts_ms=base + i)
        await until(lambda: _is(value_of(r, 5, 5003), 42.0), 3)
        await until(lambda: _is(value_of(r, 5, 5002), 1), 3)
        assert session(sim, 5).link.in_flight >= 1  # written, never acknowledged at the RTU
        sent = sim.counters(5)["events_sent"]
        await sim.cut(5)
        restore()
        await sim.restore(5)
        await until(lambda: sim.counters(5)["events_sent"] >= sent + 3, 5)  # sent again after STARTDT
        await until(lambda: (s := session(sim, 5)) is not None and s.link.in_flight == 0, 5)
        await asyncio.sleep(0.3)                                           # the GI's answers too
        for pid, want in ((5001, 1), (5002, 1), (5003, 42.0)):
            recs = (await changes_of(r, pid))[before[pid]:]
            assert [(x.value, x.quality) for x in recs if x.quality == 0][:1] == [(want, 0)], recs
            # no record repeats the one before it (a quality change in between, IV while the link was
            # down then good again, is not a repeat)
            key = (lambda x: (x.value, x.quality, x.ts_ms)) if tags else (lambda x: (x.value, x.quality))
            assert all(key(a) != key(b) for a, b in zip(recs, recs[1:])), recs
