
"""IEC 104 acquisition against c104's server (lib60870) as the field RTU, a real Redis, nodes A and B with
shortened timers: STARTDT only by the holder, GI, spontaneous events with the RTU's time tag and quality,
commands (direct and select before operate), takeover with events during it, malformed frames."""

# no `from __future__ import annotations`: c104 checks the callbacks' annotations as objects

import asyncio
import contextlib
import datetime as dtm
import logging
import time
from pathlib import Path
from typing import Any, Self

import c104
import pytest
import redis.asyncio as aredis

from fep_forwarder import app as fwd_app
from fep_tools.rtu104sim import Rtu104Sim
from fepha import controls, points
from fepha import keyspace as ks
from fepha.config import NodeConfig
from fepha.iec104 import codec as c
from fepha.semodel import db
from tests.acquirer.helpers import Node, load, merge, node_cfg, until
from tests.forwarder.se104s_fixtures import c104_master
from tests.forwarder.se104s_fixtures import until as fwd_until
from tests.redisproc import free_port

CA = 7
IEC_FAST = dict(iec104_t1_s=1.0, iec104_t2_s=0.2, iec104_t3_s=0.5, iec104_t0_s=1.0, iec104_ci_period_s=60.0)


def iec_rows(rid: int, port: int, gi_ms: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """An iec104 RTU on 127.0.0.1:`port`, common address CA: a single point (IOA 100), a double point
    (101), a float measurement (200, SCALE 2), a counter (300), an SBO single command (1000), a direct
    float set-point (1100), one virtual point."""
    def pt(pid: int, kind: str, ioa: int, typ: str, scale: float | None = None, mode: str | None = None):
        return dict(PNTID=pid, RTUID=rid, KIND=kind, NAME=f"p{pid}", AREA=None, ADDRESS=ioa, DATATYPE=typ,
                    BYTEORDER=None, WORDORDER=None, BITINDEX=None, SCALE=scale, OFFSET=None, DEADBAND=None,
                    CTLMODE=mode)
    b = rid * 1000
    return {
        "T004_RTU": [dict(RTUID=rid, NAME=f"iec{rid}", RTUTYPE=0, PROTOCOL="iec104", POLLMS=gi_ms,
                          TIMEOUTMS=None, LISTENPORT=None, ADDRESS=None, ALLOW=None)],
        "T010_CHANNEL": [dict(RTUID=rid, CHANNO=1, HOST="127.0.0.1", PORT=port, UNITID=CA)],
        "T011_POINT": [pt(b + 1, "DI", 100, "M_SP_TB_1"), pt(b + 2, "DI", 101, "M_DP_TB_1"),
                       pt(b + 3, "AI", 200, "M_ME_TF_1", scale=2.0), pt(b + 4, "ACC", 300, "M_IT_NA_1"),
                       pt(b + 5, "DO", 1000, "C_SC_NA_1", mode="sbo"), pt(b + 6, "AO", 1100, "C_SE_NC_1")],
        "T036_VTPNT": [dict(VPID=b + 999, RTUID=rid, NAME=f"link{rid}")],
    }


class Rtu:
    """c104.Server as the field RTU: the points of iec_rows, commands recorded."""

    def __init__(self, port: int) -> None:
        self.server = c104.Server(ip="127.0.0.1", port=port, tick_rate_ms=50, select_timeout_ms=2000,
                                  max_connections=2)
        st = self.server.add_station(common_address=CA)
        self.sp = st.add_point(io_address=100, type=c104.Type.M_SP_TB_1)
        self.dp = st.add_point(io_address=101, type=c104.Type.M_DP_TB_1)
        self.me = st.add_point(io_address=200, type=c104.Type.M_ME_TF_1)
        self.it = st.add_point(io_address=300, type=c104.Type.M_IT_NA_1)
        self.sc = st.add_point(io_address=1000, type=c104.Type.C_SC_NA_1,
                               command_mode=c104.CommandMode.SELECT_AND_EXECUTE)
        self.se = st.add_point(io_address=1100, type=c104.Type.C_SE_NC_1)
        self.commands: list[tuple[int, Any]] = []
        self.refuse = False
        for p in (self.sc, self.se):
            p.on_receive(self._on_command)

    def _on_command(self, point: c104.Point, previous_info: c104.Information,
                    message: c104.IncomingMessage) -> c104.ResponseState:
        if self.refuse:
            return c104.ResponseState.FAILURE
        self.commands.append((point.io_address, point.value))
        return c104.ResponseState.SUCCESS

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def event(self, point: c104.Point, info: c104.Information) -> None:
        point.info = info
        point.transmit(cause=c104.Cot.SPONTANEOUS)


def ms_of(t: dtm.datetime) -> int:
    """Epoch ms of a time tag c104 reports (naive datetimes are UTC)."""
    return round((t if t.tzinfo else t.replace(tzinfo=dtm.UTC)).timestamp() * 1000)


def when(ms: int) -> dtm.datetime:
    return dtm.datetime.fromtimestamp(ms / 1000, tz=dtm.UTC)


async def value_of(r, rtu: int, pid: int) -> points.Value | None:
    raw = await r.hget(ks.values(rtu), str(pid))
    return points.decode(raw) if raw else None


async def changes_of(r, pid: int) -> list[points.Value]:
    """Every record of point `pid` in the change stream, in order."""
    out = []
    for _, fields in await r.xrange(ks.CHANGES):
        if str(pid) in fields:
            out.append(points.decode(fields[str(pid)]))
    return out


def holder(nodes: dict[str, Node], rid: int) -> str | None:
    held = [n for n, node in nodes.items() if rid in node.acq.runners and node.acq.runners[rid].lease.held]
    return held[0] if len(held) == 1 else None


async def test_gi_spontaneous_time_tags_quality_and_only_the_holder_started(redis_master, feproot):
    port = free_port()
    load(redis_master, merge(iec_rows(5, port)))
    with Rtu(port) as rtu:
        rtu.sp.value, rtu.me.value, rtu.it.value = True, 10.5, 1234
        nodes = {n: Node(node_cfg(feproot, redis_master, n, **IEC_FAST)) for n in "AB"}
        r = nodes["A"].master
        try:
            h = await until(lambda: holder(nodes, 5), 5)
            # the GI after STARTDT brings every point (SCALE applied), good quality
            await until(lambda: _is(value_of(r, 5, 5003), 21.0), 5)
            await until(lambda: _is(value_of(r, 5, 5001), 1), 3)
            await until(lambda: _is(value_of(r, 5, 5004), 1234), 3)     # counter interrogation
            # both nodes connected, only the holder started data transfer
            await until(lambda: rtu.server.open_connection_count == 2, 3)
            assert rtu.server.active_connection_count == 1
            standby = nodes["B" if h == "A" else "A"].acq.runners[5]
            assert standby.link is not None and not standby.link.started and standby.reaches()
            # both nodes report reaching it at their next lease tick (a late tick may decay one for a moment)
            for f in ("vala", "valb", "val"):
                await until(lambda f=f: _field(r, ks.link(5), f, "1"), 5)
            # a spontaneous event: its time tag (an hour ago) becomes the value's timestamp
            tag = (int(time.time()) - 3600) * 1000 + 123
            rtu.event(rtu.sp, c104.SingleInfo(on=False, recorded_at=when(tag)))
            v = await until(lambda: _is(value_of(r, 5, 5001), 0), 3)
            assert v.ts_ms == tag
            # quality bits carried as sent (substituted + not topical)
            rtu.event(rtu.me, c104.ShortInfo(actual=3.0, quality=c104.Quality.Substituted | c104.Quality.NonTopical,
                                             recorded_at=when(tag + 1000)))
            v = await until(lambda: _val(value_of(r, 5, 5003), 6.0), 3)
            assert v.quality == int(points.Quality.SB | points.Quality.NT) and v.ts_ms == tag + 1000
            # double point: ON -> 1, intermediate -> IV
            rtu.event(rtu.dp, c104.DoubleInfo(state=c104.Double.ON, recorded_at=when(tag + 2000)))
            await until(lambda: _is(value_of(r, 5, 5002), 1), 3)
            rtu.event(rtu.dp, c104.DoubleInfo(state=c104.Double.INTERMEDIATE, recorded_at=when(tag + 3000)))
            v = await until(lambda: _val(value_of(r, 5, 5002), 0), 3)
            assert v.quality & points.Quality.IV
            # each spontaneous event is a change record, even one that repeats the value
            rtu.event(rtu.sp, c104.SingleInfo(on=False, recorded_at=when(tag + 4000)))
            await until(lambda: _count(changes_of(r, 5001), 3), 3)
            recs = await changes_of(r, 5001)     # the GI's 1, then both events with their own time tags
            assert [(x.value, x.ts_ms) for x in recs[1:]] == [(0, tag), (0, tag + 4000)], recs
            assert recs[0].value == 1
        finally:
            for n in nodes.values():
                await n.stop()


async def test_counters_read_after_every_startdt_from_c104_without_a_ci_period(redis_master, feproot):
    """c104's server (lib60870) as the RTU, ci_period_s 0: its counter (IOA 300), which its GI answer does not
    carry, is read after the first STARTDT and again after the RTU restarted (a new connection), by the
    counter interrogation that follows the GI. Before, none was sent: the counter stayed without a value."""
    port = free_port()
    load(redis_master, merge(iec_rows(5, port)))
    with Rtu(port) as rtu:
        rtu.it.value = 1234
        a = Node(node_cfg(feproot, redis_master, "A", **{**IEC_FAST, "iec104_ci_period_s": 0.0}))
        r = a.master
        try:
            await until(lambda: _is(value_of(r, 5, 5003), 0.0), 5)    # the GI's answers are in
            await until(lambda: _is(value_of(r, 5, 5004), 1234), 3)
            rtu.server.stop()                                          # the RTU restarts
            rtu.it.value = 1300
            rtu.server.start()
            await until(lambda: _is(value_of(r, 5, 5004), 1300), 6)
        finally:
            await a.stop()


async def test_device_clock_ahead_gives_reception_time_logged_once_per_rtu(redis_master, feproot, caplog):
    """An RTU whose clock is 3 h ahead (local summer time for UTC): its tags would give values that seem to
    come from the future (SCADA's sequence of events out of order, a later right tag older than the value
    held); the reception time replaces them, said once for the RTU, not per point or event, and cleared
    when a right tag comes; a tag two days back (buffered during an outage) is the event's own time."""
    caplog.set_level(logging.INFO, logger="acquirer")  # "recovered" is logged at INFO
    async with held_by_a(redis_master, feproot) as (rtu, r):
        await until(lambda: _is(value_of(r, 5, 5003), 0.0), 5)      # the GI's answers are in
        ahead = int(time.time() * 1000) + 3 * 3_600_000
        before = int(time.time() * 1000)
        rtu.event(rtu.sp, c104.SingleInfo(on=True, recorded_at=when(ahead)))
        rtu.event(rtu.dp, c104.DoubleInfo(state=c104.Double.ON, recorded_at=when(ahead + 10)))
        rtu.event(rtu.me, c104.ShortInfo(actual=4.0, recorded_at=when(ahead + 20)))
        sp = await until(lambda: _is(value_of(r, 5, 5001), 1), 3)
        dp = await until(lambda: _is(value_of(r, 5, 5002), 1), 3)
        me = await until(lambda: _is(value_of(r, 5, 5003), 8.0), 3)
        after = int(time.time() * 1000)
        assert all(before <= v.ts_ms <= after for v in (sp, dp, me)), (before, sp, dp, me, after)
        said = [m for m in caplog.messages if "clock ahead" in m]
        assert len(said) == 1, said             # three events of three points: said once
        assert "3.0 h ahead" in said[0] and "reception time used" in said[0], said
        old = int(time.time() * 1000) - 2 * 86_400_000           # buffered two days: kept
        rtu.event(rtu.sp, c104.SingleInfo(on=False, recorded_at=when(old)))
        v = await until(lambda: _is(value_of(r, 5, 5001), 0), 3)
        assert v.ts_ms == old
        assert [m for m in caplog.messages if "clock ahead" in m][1:] == ["rtu 5 clock ahead: recovered"]


async def test_commands_direct_and_select_before_operate(redis_master, feproot):
    async with held_by_a(redis_master, feproot) as (rtu, r):
        res = await controls.execute(r, 5, 5005, 1, "test", 3000)       # SBO single command
        assert res.ok, res
        res = await controls.execute(r, 5, 5006, 12.5, "test", 3000)    # direct set-point
        assert res.ok, res
        assert rtu.commands == [(1000, True), (1100, 12.5)]
        rtu.refuse = True                                                # negative ACT_CON: failed
        res = await controls.execute(r, 5, 5006, 1.0, "test", 3000)
        assert res.state == controls.FAILED and "negative" in res.reason, res
        rtu.refuse = False
        res = await controls.execute(r, 5, 5005, 7, "test", 3000)       # not 0/1: nothing sent
        assert res.state == controls.FAILED and "0 or 1" in res.reason
        ctl = await controls.submit(r, 5, 5006, 99, "test", 0)          # expired: never sent
        assert (await controls.wait(r, ctl, 500)).state == controls.EXPIRED
        assert rtu.commands == [(1000, True), (1100, 12.5)]
        audit = await r.xrange(ks.CTL_AUDIT)
        assert len(audit) >= 4


async def _is(coro, want):
    v = await coro
    return v if v is not None and v.value == want and v.quality == 0 else None


async def _val(coro, want):
    v = await coro
    return v if v is not None and v.value == want else None


async def _iv(coro) -> bool:
    v = await coro
    return v is not None and bool(v.quality & points.Quality.IV)


async def _field(r, key, field, want) -> bool:
    return (await r.hget(key, field)) == want


async def _count(coro, n):
    return len(await coro) >= n


@contextlib.asynccontextmanager
async def held_by_a(redis_master, feproot):
    """c104's server as RTU 5 (`iec_rows`), acquirer A its holder with data transfer started: (rtu, the
    master Redis client)."""
    port = free_port()
    load(redis_master, merge(iec_rows(5, port)))
    with Rtu(port) as rtu:
        a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
        try:
            await until(lambda: holder({"A": a}, 5) and a.acq.runners[5].link.started, 5)
            yield rtu, a.master
        finally:
            await a.stop()


@contextlib.asynccontextmanager
async def sim_system(redis_master, feproot, rows: dict[str, list[dict[str, Any]]],
                     sim_options: dict[str, Any] | None = None, **cfg: Any):
    """fep-rtu104sim (with `sim_options`) serving `rows`' IEC 104 RTUs, acquirers A and B (IEC_FAST timers
    plus `cfg`) and a Redis client of the test's own: (sim, nodes, r). Stops what is still running."""
    sim = Rtu104Sim.from_model(load(redis_master, rows), **(sim_options or {}))
    await sim.start()
    nodes = {n: Node(node_cfg(feproot, redis_master, n, **{**IEC_FAST, **cfg})) for n in "AB"}
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    try:
        yield sim, nodes, r
    finally:
        for n in nodes.values():
            if not n.task.done():
                await n.stop()
        await r.aclose()
        await sim.stop()


@pytest.mark.parametrize("stop_handover_s", [0, 2.0], ids=["lapse", "handover"])
async def test_takeover_with_events_during_it_loses_none(redis_master, feproot, stop_handover_s):
    """Against fep-rtu104sim (a device that buffers for its redundancy group, as the standard's RTUs do):
    the holder stops, its lease lapses after the TTL (stop_handover_s 0, as after a crash) or is handed
    over at once (the planned stop), the RTU keeps reporting meanwhile. The new holder's STARTDT makes the
    RTU send what it kept, including what the old holder had not acknowledged: every event reaches the
    change stream, in order, with its own time tag."""
    async with sim_system(redis_master, feproot, merge(iec_rows(5, free_port())),
                          stop_handover_s=stop_handover_s) as (sim, nodes, r):
        h = await until(lambda: holder(nodes, 5), 5)
        await until(lambda: len(sim.connections(5)) == 2, 3)
        await until(lambda: value_of(r, 5, 5001), 3)
        base = (int(time.time()) - 60) * 1000
        sent: list[int] = []

        async def report(n: int, gap_s: float) -> None:
            for _ in range(n):
                ts = base + len(sent)
                sim.set_value(5001, len(sent) % 2, ts_ms=ts)
                sent.append(ts)
                await asyncio.sleep(gap_s)

        await report(5, 0.02)                        # before: through the old holder
        unchanged = {pid: len(await changes_of(r, pid)) for pid in (5002, 5003)}
        stopping = asyncio.create_task(nodes[h].stop())
        await report(40, 0.03)                       # during: the lease lapses (TTL 0.6 s) or is handed over
        await stopping
        other = "B" if h == "A" else "A"
        await until(lambda: holder({other: nodes[other]}, 5), 5)
        moved = (await r.xrevrange(ks.LEASE_EVENTS, count=1))[0][1]
        assert (moved["to"], moved["reason"]) == (other, "handover" if stop_handover_s else "lapsed"), moved
        await report(5, 0.02)                        # after: through the new holder
        with contextlib.suppress(AssertionError):
            await until(lambda: _count(changes_of(r, 5001), len(sent) + 1), 5)
        got = [x.ts_ms for x in await changes_of(r, 5001) if base <= x.ts_ms < base + 1000]
        assert sorted(set(got)) == sent, str([t - base for t in got]) + f" of {len(sent)}"   # none lost
        # in order, each once: what the old holder had received but not yet acknowledged (up to w I frames)
        # the RTU sends again after the new STARTDT; the new holder recognises what was written already
        assert got == sent, str([t - base for t in got])
        dropped = nodes[other].acq.metrics.total["duplicates_dropped"]
        assert dropped <= 8, dropped
        # the new holder's GI answers are written only where they differ from Redis (full image: none here)
        assert nodes[other].acq.metrics.total["full_images"] >= 1
        assert {pid: len(await changes_of(r, pid)) for pid in unchanged} == unchanged


async def test_malformed_frame_closes_that_connection_only_and_unknown_ioa_logged_once(
        redis_master, feproot, caplog):
    good, bad = free_port(), free_port()
    load(redis_master, merge(iec_rows(5, good), iec_rows(6, bad)))
    frames: list[bytes] = []

    async def broken_rtu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Confirms STARTDT, then sends a frame with a bad start octet."""
        data = await reader.read(6)
        frames.append(data)
        if data[2:3] == b"\x07":
            writer.write(bytes((0x68, 4, 0x0B, 0, 0, 0)) + b"\x99\x04\x01\x00\x00\x00")
        await writer.drain()
        await reader.read(100)
        writer.close()

    srv = await asyncio.start_server(broken_rtu, "127.0.0.1", bad)
    with Rtu(good) as rtu:
        rtu.server.get_station(CA).add_point(io_address=4242, type=c104.Type.M_SP_NA_1)  # not configured
        rtu.server.get_station(CA).add_point(io_address=4243, type=c104.Type.M_ST_NA_1)  # a type not read
        a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
        r = a.master
        try:
            await until(lambda: holder({"A": a}, 5) and holder({"A": a}, 6), 5)
            await until(lambda: _is(value_of(r, 5, 5003), 0.0), 5)
            await until(lambda: len(frames) >= 2, 5)          # reconnected after closing the bad one
            assert a.acq.runners[5].link is not None and a.acq.runners[5].link.started
            for i in range(3):                                  # the good RTU is unaffected
                rtu.event(rtu.me, c104.ShortInfo(actual=float(i + 1)))
                await until(lambda i=i: _val(value_of(r, 5, 5003), 2.0 * (i + 1)), 3)
            err = (await r.hgetall(ks.channel_state(6, "A")))["ch1_error"]
            assert "malformed" in err, err
            rtu.server.get_station(CA).get_point(4242).transmit(cause=c104.Cot.SPONTANEOUS)
            rtu.server.get_station(CA).get_point(4242).transmit(cause=c104.Cot.SPONTANEOUS)
            await asyncio.sleep(0.3)
            unknown = [m for m in caplog.messages if "IOA 4242" in m]
            assert len(unknown) == 1, unknown
            for _ in range(2):  # step position (M_ST_NA_1): said once, not dropped without a word
                rtu.server.get_station(CA).get_point(4243).transmit(cause=c104.Cot.SPONTANEOUS)
            await asyncio.sleep(0.3)
            unread = [m for m in caplog.messages if "ioa 4243 type 5:" in m]
            assert len(unread) == 1 and "not a type the acquirer reads" in unread[0], unread
        finally:
            await a.stop()
            srv.close()
            await srv.wait_closed()


def sample_104_rows(feproot: Path, rtu_port: int, scada_port: int) -> dict[str, list[dict[str, Any]]]:
    """The sample's IEC 104 RTU (3, channel 1 only, on `rtu_port`) and its se104s RTU (10, on
    `scada_port`) forwarding only RTU 3's points."""
    rows, problems = db.read_rows(feproot / "db" / "SEMODEL.db")
    assert not problems
    rows["T004_RTU"] = [dict(r, LISTENPORT=scada_port) if r["RTUID"] == 10 else r
                        for r in rows["T004_RTU"] if r["RTUID"] in (3, 10)]
    rows["T010_CHANNEL"] = [dict(r, PORT=rtu_port) for r in rows["T010_CHANNEL"] if (r["RTUID"], r["CHANNO"]) == (3, 1)]
    rows["T011_POINT"] = [r for r in rows["T011_POINT"] if r["RTUID"] == 3]
    rows["T036_VTPNT"] = [r for r in rows["T036_VTPNT"] if r["RTUID"] == 3]
    srcs = {r["PNTID"] for r in rows["T011_POINT"]} | {r["VPID"] for r in rows["T036_VTPNT"]}
    for t in ("T005_ZFAI", "T006_ZFDI", "T007_ZFACC", "T008_ZFDO", "T009_ZFAO"):
        rows[t] = [r for r in rows[t] if r["RTUID"] == 10 and r["SRCID"] in srcs]
    return rows


async def test_device_time_tag_reaches_the_scada_master_unchanged(redis_master, feproot):
    """RTU (c104 server) -> acquirer -> Redis -> se104s -> SCADA master (c104 client): the breaker event's
    CP56Time2a arrives at the master as the RTU stamped it, not as the time we heard of it; a command from
    the master reaches the RTU as a select-before-operate command."""
    rtu_port, scada_port = free_port(), free_port()
    load(redis_master, sample_104_rows(feproot, rtu_port, scada_port))
    srv = c104.Server(ip="127.0.0.1", port=rtu_port, tick_rate_ms=50, max_connections=2)
    st = srv.add_station(common_address=3)
    breaker = st.add_point(io_address=100, type=c104.Type.M_SP_TB_1)
    volts = st.add_point(io_address=200, type=c104.Type.M_ME_TF_1)
    cmd = st.add_point(io_address=1000, type=c104.Type.C_SC_NA_1, command_mode=c104.CommandMode.SELECT_AND_EXECUTE)
    got_cmd: list[bool] = []

    def on_cmd(point: c104.Point, previous_info: c104.Information,
               message: c104.IncomingMessage) -> c104.ResponseState:
        got_cmd.append(bool(point.value))
        return c104.ResponseState.SUCCESS

    cmd.on_receive(on_cmd)
    srv.start()
    a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
    stop = asyncio.Event()
    fwd = asyncio.create_task(fwd_app.run(NodeConfig(
        node_id="A", vip=redis_master.host, port=redis_master.port, local_host=redis_master.host,
        local_port=redis_master.port, bind="127.0.0.1", heartbeat_s=0.5, control_timeout_s=3.0), stop))
    try:
        await until(lambda: holder({"A": a}, 3) and a.acq.runners[3].link.started, 5)
        async with c104_master(scada_port, points={6: c104.Type.M_SP_TB_1, 1005: c104.Type.M_ME_TF_1,
                                                   5002: c104.Type.C_SC_NA_1}, ca=1) as m:
            tag = (int(time.time()) - 7200) * 1000 + 250           # two hours ago, to the millisecond
            breaker.info = c104.SingleInfo(on=True, recorded_at=when(tag))
            breaker.transmit(cause=c104.Cot.SPONTANEOUS)
            volts.info = c104.ShortInfo(actual=231.5, recorded_at=when(tag + 5))
            volts.transmit(cause=c104.Cot.SPONTANEOUS)

            def at_master(ioa: int, value: Any) -> list[Any]:
                return [x for x in m.values("SPONTANEOUS") if x.ioa == ioa and x.value == value]
            await fwd_until(lambda: at_master(6, True) and at_master(1005, 231.5), 5, "events at the master")
            sp, me = at_master(6, True)[-1], at_master(1005, 231.5)[-1]
            assert ms_of(sp.recorded_at) == tag and ms_of(me.recorded_at) == tag + 5
            ok = await m.command(5002, c104.SingleCmd(on=True))     # master -> se104s -> acquirer -> RTU
            assert ok and got_cmd == [True]
    finally:
        stop.set()
        await asyncio.wait_for(fwd, 10)
        await a.stop()
        srv.stop()


async def test_lease_moves_stopdt_clock_sync_periodic_gi_and_channel_switch(redis_master, feproot):
    """Against fep-rtu104sim on two channels: clock sync then GI after STARTDT, GI again every POLLMS; a
    holder whose lease is taken (the other node forced in Redis) sends STOPDT and the new holder STARTDT;
    a cut channel 1 makes the holder switch to channel 2 after channel_switch_s, and the lease stays."""
    port = free_port()
    rows = merge(iec_rows(5, port, gi_ms=1000))
    rows["T010_CHANNEL"].append(dict(RTUID=5, CHANNO=2, HOST="127.0.0.2", PORT=port, UNITID=CA))
    async with sim_system(redis_master, feproot, rows, iec104_clock_sync_s=60.0) as (sim, nodes, r):
        h = await until(lambda: holder(nodes, 5), 5)
        await until(lambda: sum(x["started"] for x in sim.connections(5)) == 1 and len(sim.connections(5)) == 2, 3)
        await until(lambda: sim.log.clock_syncs, 3)
        t0 = time.time()
        await until(lambda: abs(sim.devices[5].clock_ms() / 1000 - t0) < 1.0, 3)    # the RTU's clock set
        runner, sent = nodes[h].acq.runners[5], []
        send = runner._send
        runner._send = lambda link, asdu: (sent.append(asdu[0]), send(link, asdu))[1]  # type ids sent
        await asyncio.sleep(2.3)                                                  # POLLMS 1000: periodic GI
        assert 2 <= sent.count(100) <= 3, sent
        # the lease moves (as if the holder's ticks had been refused): STOPDT by the old, STARTDT by the new
        other = "B" if h == "A" else "A"
        await r.hset(ks.lease(5), mapping={"holder": other, "epoch": "7"})
        await until(lambda: holder({other: nodes[other]}, 5) and not nodes[h].acq.runners[5].lease.held, 3)
        await until(lambda: nodes[other].acq.runners[5].link.started and not nodes[h].acq.runners[5].link.started, 3)
        assert sum(x["started"] for x in sim.connections(5)) == 1
        sim.set_value(5001, 1, ts_ms=1_790_000_000_000)
        await until(lambda: _val(value_of(r, 5, 5001), 1), 3)
        # channel 1 cut: both nodes go to channel 2, the holder keeps its lease
        epoch = (await r.hgetall(ks.lease(5)))["epoch"]
        await sim.cut(5, 1)
        await until(lambda: _field(r, ks.channel_state(5, other), "active", "2"), 5)
        await until(lambda: nodes[other].acq.runners[5].link.started, 5)
        sim.set_value(5001, 0, ts_ms=1_790_000_001_000)
        await until(lambda: _val(value_of(r, 5, 5001), 0), 5)
        assert (await r.hgetall(ks.lease(5)))["epoch"] == epoch
        # both channels cut: nobody reaches the RTU, the holder writes its points invalid, the link goes 0
        await sim.cut(5, 2)
        await until(lambda: _iv(value_of(r, 5, 5003)), 5)
        await until(lambda: _field(r, ks.link(5), "val", "0"), 5)
        assert (await value_of(r, 5, 5001)).value == 0          # the last value, marked invalid


@pytest.mark.parametrize("forget_acked", [False, True])
async def test_redis_unreachable_during_events_loses_none(redis_master, feproot, forget_acked):
    """The master Redis stops answering (CLIENT PAUSE) while the RTU reports: the holder's writes fail,
    it closes its connection without acknowledging what it could not write, and the RTU sends those
    events again after the next STARTDT (the same holder's or the other node's): none lost, none twice.
    Also with the RTU as lib60870's redundancy group (`forget_acked`)."""
    async with sim_system(redis_master, feproot, merge(iec_rows(5, free_port())),
                          sim_options={"forget_acked": forget_acked}) as (sim, nodes, r):
        await until(lambda: holder(nodes, 5), 5)
        await until(lambda: value_of(r, 5, 5001), 3)
        base = (int(time.time()) - 60) * 1000
        sent: list[int] = []
        for i in range(60):
            if i == 10:
                await r.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            sim.set_value(5001, i % 2, ts_ms=base + i)
            sent.append(base + i)
            await asyncio.sleep(0.03)
        with contextlib.suppress(AssertionError):
            await until(lambda: _count(changes_of(r, 5001), len(sent) + 1), 8)
        got = [x.ts_ms for x in await changes_of(r, 5001) if base <= x.ts_ms < base + 1000]
        assert sorted(set(got)) == sent, str([t - base for t in got]) + f" of {len(sent)}"   # none lost
        assert got == sent, str([t - base for t in got])                                     # none twice
        assert sum(n.acq.metrics.total["write_errors"] for n in nodes.values()) >= 1          # it did fail


async def test_events_after_our_stopdt_are_not_acknowledged_and_reach_the_new_holder(redis_master, feproot):
    """fep-rtu104sim as lib60870's redundancy group (`forget_acked`: what a stopped connection acknowledges
    is gone from the RTU). The lease moves while the RTU reports: the events the RTU sent just before it saw
    the old holder's STOPDT act are neither written by it (it may not) nor acknowledged (it closes that
    connection), so the RTU sends them to the new holder after its STARTDT: none lost, none twice."""
    async with sim_system(redis_master, feproot, merge(iec_rows(5, free_port())),
                          sim_options={"forget_acked": True}) as (sim, nodes, r):
        await until(lambda: holder(nodes, 5), 5)
        await until(lambda: len(sim.connections(5)) == 2, 3)
        await until(lambda: value_of(r, 5, 5001), 3)
        dev = sim.devices[5]
        base = (int(time.time()) - 60) * 1000
        sent: list[int] = []
        receive = dev.station.receive

        def receive_reporting(s, data, now):  # events on the wire just before the RTU reads our STOPDT act
            if c.u_frame(c.STOPDT_ACT) in data and s.active and not sent:
                for i in range(10):           # one I frame each, more than w: the old rule acknowledged them
                    sim.set_value(5001, i % 2, ts_ms=base + i)
                    sent.append(base + i)
                    dev._io[s].writer.write(dev.station.pump(s, now))
            return receive(s, data, now)

        dev.station.receive = receive_reporting
        # the lease goes to a node that is not there: the holder sends STOPDT, nobody STARTDT until it lapses
        await r.hset(ks.lease(5), mapping={"holder": "C", "epoch": "7"})
        await until(lambda: sent, 3)
        await until(lambda: holder(nodes, 5), 5)
        with contextlib.suppress(AssertionError):
            await until(lambda: _count(changes_of(r, 5001), len(sent) + 1), 5)
        got = [x.ts_ms for x in await changes_of(r, 5001) if base <= x.ts_ms < base + 1000]
        assert got == sent, str([t - base for t in got]) + f" of {len(sent)}"


def test_stopdt_ends_the_open_gi_so_it_is_not_reported_unterminated():
    """A holder that loses the lease while its GI is open sends STOPDT: the RTU may never send that GI's
    ACT_TERM now, so the GI ends there (neither reported as "not terminated" t1 later, nor covering an end
    of initialisation). The lease back on the same connection: the GI after the new STARTDT is the first
    again, which an end of initialisation right after that STARTDT needs no other GI beside."""
    from fep_acquirer.iec104rtu import Iec104Runner
    from fep_acquirer.metrics import Metrics
    from fepha.iec104.link import AsduIn, Link, LinkParams, Role
    from fepha.logsetup import OnceLogger
    from fepha.semodel.model import Channel, Point, Rtu

    rtu = Rtu(id=5, name="r", rtutype=0, protocol="iec104", channels=(Channel(5, 1, "h", 2404, CA),),
              points=(Point(id=5001, rtu=5, kind="DI", name="", area="", address=100, datatype="M_SP_TB_1"),))
    run = Iec104Runner(rtu, NodeConfig(), None, Metrics("A"), OnceLogger(logging.getLogger("t")))  # type: ignore[arg-type]
    run.lease.update(run.lease.node, 1)
    now = 1000.0
    link = Link(Role.CLIENT, LinkParams(), now, confirm_by_caller=True)
    link.start(now)
    link.receive(c.u_frame(c.STARTDT_CON), now)
    run.link, run.channel = link, rtu.channels[0]
    run.schedule.started(now)
    run._drive(link, now)                                    # the GI after STARTDT
    assert run._gi.open(now)
    run.lease.update("B", 2)
    run._drive(link, now + 0.1)                              # STOPDT act
    assert link.pending is not None and not run._gi.open(now + 0.1) and not run._gi.expired(now + 100)
    # the lease comes back on the same connection: the GI after the new STARTDT is the first again
    for ev in link.receive(c.u_frame(c.STOPDT_CON), now + 0.2):
        assert not isinstance(ev, AsduIn)
    run.lease.update(run.lease.node, 3)
    run._drive(link, now + 0.3)                              # STARTDT act
    asyncio.run(run._take(link, link.receive(c.u_frame(c.STARTDT_CON), now + 0.4), now + 0.4))
    run._drive(link, now + 0.4)
    assert run._gi.open(now + 0.4) and run._gi.covers_restart(now + 0.4)
