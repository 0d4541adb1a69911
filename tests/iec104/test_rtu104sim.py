"""The simulated IEC 104 RTU (tools/rtu104sim.py) against our raw master (fepha link, role CLIENT) and
c104's client (lib60870) as an independent controlling station."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import c104
import pytest

from fep_tools.rtu104sim import MALFORMED, Rtu104Sim, device, kind_of
from fepha.iec104 import codec as c
from tests.forwarder.se104s_fixtures import c104_master, in_thread, until
from tests.redisproc import free_port

from .rawmaster import raw_master

CA = 7
POINTS = [(100, "M_ME_NC_1"), (101, "M_ME_NB_1"), (200, "M_SP_NA_1"), (201, "M_DP_NA_1"), (300, "M_IT_NA_1"),
          (500, "C_SC_NA_1"), (501, "C_DC_NA_1"), (600, "C_SE_NC_1")]
PID = {ioa: 1000 + i for i, (ioa, _) in enumerate(POINTS)}  # point ids given by device()
C104_TYPES = {100: c104.Type.M_ME_TF_1, 101: c104.Type.M_ME_TE_1, 200: c104.Type.M_SP_TB_1,
              201: c104.Type.M_DP_TB_1, 300: c104.Type.M_IT_TB_1, 500: c104.Type.C_SC_NA_1,
              501: c104.Type.C_DC_NA_1, 600: c104.Type.C_SE_NC_1}


@contextlib.asynccontextmanager
async def simulator(**kw: Any) -> AsyncIterator[Rtu104Sim]:
    rtu = device(1, CA, [("127.0.0.1", free_port()), ("127.0.0.1", free_port())], POINTS)
    sim = Rtu104Sim([rtu], **kw)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def port(sim: Rtu104Sim, ch: int = 1) -> int:
    return sim.devices[1].endpoints[ch][1]


def test_kinds_and_plain_device_list() -> None:
    assert [kind_of(t) for _, t in POINTS] == ["AI", "AI", "DI", "DI", "ACC", "DO", "DO", "AO"]
    with pytest.raises(KeyError):
        kind_of("M_BO_NA_1")
    r = device(3, 9, [("127.0.0.1", 1)], [(5, "M_SP_NA_1")])
    assert (r.protocol, r.channels[0].unit, r.points[0].id, r.points[0].address) == ("iec104", 9, 3000, 5)
    with pytest.raises(ValueError, match="same endpoint"):
        Rtu104Sim([r, device(4, 9, [("127.0.0.1", 1)], [(5, "M_SP_NA_1")])])


async def test_redundancy_group_buffers_until_startdt_and_a_takeover_loses_nothing() -> None:
    async with simulator() as sim, raw_master(port(sim, 1)) as m1, raw_master(port(sim, 2)) as m2:
        await until(lambda: len(sim.connections(1)) == 2, what="two connections")
        t0 = int(time.time() * 1000)
        for i in range(5):
            sim.set_value(PID[100], float(i + 1))
        await asyncio.sleep(0.1)
        assert m1.asdus == [] and m2.asdus == []  # nobody started: buffered
        await m1.start()
        await until(lambda: len(m1.values()) == 5, what="buffered events")
        assert m1.asdus[0].type_id == c.M_EI_NA_1
        vals = m1.values()
        assert [v[2] for v in vals] == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert all(a.type_id == c.M_ME_TF_1 for a in m1.asdus[1:])  # time-tagged form of M_ME_NC_1
        assert all(t0 - 5 <= v[4] <= int(time.time() * 1000) for v in vals)  # CP56Time2a of the event
        await until(lambda: all(x["unacked"] == 0 for x in sim.devices[1].clients().values()), what="acks")
        m1.ack = False  # m1 stops acknowledging: what it gets stays unacknowledged at the RTU (k = 12)
        for i in range(5, 40):
            sim.set_value(PID[100 + (i % 2)], float(i + 1))  # alternating types: one ASDU per event
        await until(lambda: len(m1.values()) >= 5 + 12, what="m1 window full")
        await asyncio.sleep(0.1)
        assert len(m1.values()) == 5 + 12  # k = 12 frames in flight, then the RTU waits
        await m2.start()  # takeover: m1 is stopped, m2 gets what m1 did not acknowledge, then the rest
        await until(lambda: len(m2.values()) >= 35, what="events at m2")
        assert [v[2] for v in m2.values()] == [float(i + 1) for i in range(5, 40)]
        got1 = len(m1.values())
        sim.set_value(PID[100], 99.0)
        await until(lambda: m2.values()[-1][2] == 99.0, what="live event at m2")
        assert len(m1.values()) == got1  # the stopped connection gets nothing
        status = await sim.command_async("status")
        assert status == "ok 1/1=up:1 1/2=up:1*"


async def test_gi_counter_interrogation_clock_sync_and_rate_events_with_c104() -> None:
    async with simulator(clock_offset_ms=-3_600_000) as sim:
        sim.set_value(PID[100], 230.5)
        sim.set_value(PID[200], 1)
        sim.set_value(PID[300], 12345)
        async with c104_master(port(sim), points=C104_TYPES, ca=CA) as m:  # STARTDT, GI, clock sync
            gi = {r.ioa: r for r in m.values("INTERROGATED_BY_STATION")}
            assert sorted(gi) == [100, 101, 200, 201]
            assert gi[100].value == pytest.approx(230.5) and gi[200].value is True
            assert await in_thread(m.conn.counter_interrogation, CA)
            ci = {r.ioa: r for r in m.values("REQUESTED_BY_GENERAL_COUNTER")}
            assert int(ci[300].value) == 12345
            await until(lambda: sim.log.clock_syncs, what="clock sync")
            assert abs(sim.devices[1].clock_offset_ms) < 2000  # the device clock was an hour late
            sim.rate = 200.0
            await until(lambda: len(m.values("SPONTANEOUS")) >= 50, what="rate events")
            sim.rate = 0.0
            sp = m.values("SPONTANEOUS")
            now = time.time()
            assert {r.ioa for r in sp} >= {100, 101, 200, 201, 300}
            # the three set before the master came were buffered with the device's hour-late clock, the rate
            # events after the clock synchronisation carry the right time
            assert all(abs(r.recorded_at.timestamp() - (now - 3600)) < 5 for r in sp[:3])
            assert all(abs(r.recorded_at.timestamp() - now) < 5 for r in sp[3:])


@pytest.mark.parametrize("ioa, info, select", [
    (500, c104.SingleCmd(on=True), False),
    (501, c104.DoubleCmd(state=c104.Double.ON), True),
    (600, c104.ShortCmd(target=12.5), True),
])
async def test_commands_direct_and_select_before_operate(ioa: int, info: Any, select: bool) -> None:
    async with simulator() as sim, c104_master(port(sim), points=C104_TYPES, ca=CA) as m:
        assert await m.command(ioa, info, select=select)
        assert [(e["point"], e["ok"]) for e in sim.log.commands] == [(PID[ioa], True)]
        value = sim.log.commands[0]["value"]
        assert value == (12.5 if ioa == 600 else 1.0)
        sim.refuse(PID[ioa])
        assert not await m.command(ioa, info, select=select)  # negative ACT_CON
        assert [e["ok"] for e in sim.log.commands] == [True, False]


async def test_command_answers_on_the_wire_act_con_then_act_term() -> None:
    async with simulator() as sim, raw_master(port(sim)) as m:
        await m.start()
        sel = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(500, c.encode_command(c.C_SC_NA_1, 1, select=True))])
        exe = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(500, c.encode_command(c.C_SC_NA_1, 1))])
        m.send(sel)
        await until(lambda: [a for a in m.asdus if a.type_id == c.C_SC_NA_1], what="select con")
        m.send(exe)
        await until(lambda: len([a for a in m.asdus if a.type_id == c.C_SC_NA_1]) == 3, what="exec answers")
        answers = [(a.cause, a.negative) for a in m.asdus if a.type_id == c.C_SC_NA_1]
        assert answers == [(c.COT_ACTCON, False), (c.COT_ACTCON, False), (c.COT_ACTTERM, False)]
        assert len(sim.log.commands) == 1  # the select did not reach the "device"


async def test_malformed_frame_cut_restore_and_control_port() -> None:
    async with simulator(control=("127.0.0.1", 0)) as sim:
        r, w = await asyncio.open_connection("127.0.0.1", sim.control_port)

        async def ctl(line: str) -> str:
            w.write(line.encode() + b"\n")
            return (await r.readline()).decode().strip()

        async with raw_master(port(sim, 1)) as m:
            await m.start()
            assert await ctl("malformed 1 1") == "ok 1"
            await until(lambda: m.error is not None, what="protocol error at the master")
            assert isinstance(m.error, c.ProtocolError) and m.raw[-1].endswith(MALFORMED)
        ts = (await ctl("set 1000 7.5")).split()[1]
        assert await ctl("get 1000") == f"ok 7.5 0 {ts}"
        assert await ctl("cut 1 1") == "ok"
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port(sim, 1))
        async with raw_master(port(sim, 2)) as m2:
            await m2.start()
            await until(lambda: m2.values(), what="buffered event on channel 2")
            assert m2.values()[-1][2] == 7.5
        assert await ctl("restore 1") == "ok"
        async with raw_master(port(sim, 1)) as m3:
            await m3.start()
        assert await ctl("refuse 1005 1") == "ok" and sim.refused == {1005}
        assert await ctl("bogus") == "err unknown command 'bogus'"
        assert (await ctl("get 9")).startswith("err")
        w.close()


async def test_serves_the_sample_configurations_iec104_rtu(feproot: Path) -> None:
    sim = Rtu104Sim.from_db(feproot / "db" / "SEMODEL.db", host_map={"127.0.0.1": "127.0.0.1",
                                                                     "127.0.0.3": "127.0.0.1"})
    assert list(sim.devices) == [3]  # the Modbus RTUs are fep-plcsim's
    dev = sim.devices[3]
    assert dev.ca == 3 and set(dev.endpoints.values()) == {("127.0.0.1", 2414)}
    st = dev.station
    assert {f.addr: t for f, t in st.monitor.values()} == {100: c.M_SP_TB_1, 101: c.M_DP_TB_1, 200: c.M_ME_TF_1,
                                                            201: c.M_ME_TE_1, 300: c.M_IT_TB_1}
    assert {a: t for a, (_, t) in st.commands.items()} == {1000: c.C_SC_NA_1, 1100: c.C_SE_NC_1}
