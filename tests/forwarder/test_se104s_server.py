"""se104s against a real IEC 104 peer: c104 2.2.1's client (lib60870-C), plus raw sockets for the frames a
conforming client never sends."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Self

import c104
import pytest

from fep_forwarder.base import Update
from fep_forwarder.se104s import Se104Server
from fepha.iec104 import codec as c
from fepha.points import Quality
from tests.c104wire import i_frames
from tests.iec104.rawmaster import raw_master

from .se104s_fixtures import (
    CA,
    Sink,
    c104_master,
    deactivate_on_act_con,
    in_thread,
    measured_server,
    now_ms,
    se104_server,
    station_frames,
    until,
    upd,
)
from .tls_cert import self_signed_server_context


def full_image(t: int | None = None) -> list:
    """The test image, every value stamped `t` (default: five seconds ago)."""
    t = now_ms() - 5000 if t is None else t
    return [upd(1001, 230.5, 0, t), upd(1002, 12.5, 0, t), upd(1003, -20, 0, t), upd(1004, 50, 0, t),
            upd(1, 1, 0, t), upd(2, 0, int(Quality.IV), t), upd(3, 1, 0, t), upd(4, 0, int(Quality.NT), t),
            upd(3001, 123456, 0, t), upd(3002, 7, 0, t)]


async def test_interrogation_spontaneous_data_and_end_of_initialisation() -> None:
    async with se104_server() as srv:
        stamp = now_ms() - 5000
        srv.load_image(full_image(stamp))
        async with c104_master(srv.port) as m:  # Init.ALL: STARTDT, station interrogation, clock sync
            assert m.inits  # M_EI_NA_1 reached the first master that started
            await until(lambda: len({r.ioa for r in m.values("INTERROGATED_BY_STATION")}) >= 8, what="GI answers")
            gi = {r.ioa: r for r in m.values("INTERROGATED_BY_STATION")}
            assert sorted(gi) == [1, 2, 3, 4, 1001, 1002, 1003, 1004]  # counters only by counter interrogation
            assert gi[1001].value == pytest.approx(230.5)
            assert gi[1002].value == pytest.approx(125.0)  # COEF 10
            assert int(gi[1003].value) == -200  # M_ME_NB_1 scaled, COEF 10
            assert float(gi[1004].value) == pytest.approx(0.5)  # normalised, COEF 0.01
            assert gi[1].value is True and gi[2].quality.is_good() is False
            assert c104.Quality.Invalid in gi[2].quality
            assert gi[3].value == c104.Double.ON and c104.Quality.NonTopical in gi[4].quality
            assert gi[1].recorded_at is not None  # interrogated data in the configured type (M_SP_TB_1)

            assert await m.interrogate(CA, c104.Rqt.GENERAL, counter=True)
            ci = {r.ioa: r for r in m.values("REQUESTED_BY_GENERAL_COUNTER")}
            assert int(ci[3001].value) == 123456 and int(ci[3002].value) == 7

            srv.apply([upd(1001, 231.0), upd(2, 1), upd(1003, 5000, int(Quality.NT)), upd(1, 0, 0, stamp)])
            await until(lambda: len(m.values("SPONTANEOUS")) >= 4, what="spontaneous data")
            sp = {r.ioa: r for r in m.values("SPONTANEOUS")}
            # a spontaneous M_SP_TB_1 carries the value's own stamp (CP56Time2a, to the millisecond), not the
            # time it was sent: compared with the stamp given, not with the clock, which a slow connect moves on
            assert sp[1].recorded_at is not None and abs(sp[1].recorded_at.timestamp() * 1000 - stamp) <= 1
            assert sp[1001].value == pytest.approx(231.0) and sp[2].value is True
            assert int(sp[1003].value) == 32767 and c104.Quality.Overflow in sp[1003].quality  # 50000 clamped
            assert c104.Quality.NonTopical in sp[1003].quality
            assert srv.counters()["events_sent"] >= 3
            assert next(iter(srv.clients().values()))["active"] is True


async def test_many_values_are_packed_and_all_arrive_in_order() -> None:
    async with se104_server() as srv:
        srv.load_image(full_image())
        async with c104_master(srv.port) as m:
            n = 3000
            for i in range(n):
                srv.apply([upd(1001, float(i))])
            await until(lambda: len(m.values("SPONTANEOUS")) >= n, 20, "3000 values")
            assert [r.value for r in m.values("SPONTANEOUS")] == [float(i) for i in range(n)]
            # 30 short floats fit in one ASDU: far fewer frames than values
            assert srv.counters()["events_sent"] == n
            assert srv.clients()[next(iter(srv.clients()))]["sent"] == n


@pytest.mark.parametrize("addr, info, source_value", [
    (5001, c104.SingleCmd(on=True), 1.0),
    (5002, c104.DoubleCmd(state=c104.Double.OFF), 0.0),
    (5003, c104.SingleCmd(on=True), 1.0),  # C_SC_TA_1: time tag from the client's clock
    (5004, c104.DoubleCmd(state=c104.Double.ON), 1.0),
    (6001, c104.NormalizedCmd(target=c104.NormalizedFloat(0.25)), 25.0),  # COEF 0.01: source = 0.25 / 0.01
    (6002, c104.ScaledCmd(target=c104.Int16(-300)), -30.0),  # COEF 10
    (6003, c104.ShortCmd(target=12.5), 12.5),
    (6004, c104.NormalizedCmd(target=c104.NormalizedFloat(0.5)), 50.0),
    (6005, c104.ScaledCmd(target=c104.Int16(7)), 7.0),
    (6006, c104.ShortCmd(target=-1.5), -1.5),
])
async def test_each_command_type_direct_and_select_before_operate(addr: int, info: object,
                                                                  source_value: float) -> None:
    sink = Sink()
    async with se104_server(sink) as srv, c104_master(srv.port) as m:
        assert await m.command(addr, info)
        assert await m.command(addr, info, select=True)
        src = 100 + {5001: 21, 5002: 22, 5003: 23, 5004: 24, 6001: 25, 6002: 26, 6003: 27, 6004: 28, 6005: 29,
                     6006: 30}[addr]
        assert [(p, pytest.approx(v)) for p, v in sink.calls] == [(src, source_value)] * 2
        assert srv.counters()["controls_ok"] == 2


async def test_negative_confirmations() -> None:
    sink = Sink()
    async with se104_server(sink, command_max_age_ms=5000) as srv, c104_master(srv.port) as m:
        # the device refuses the write (source value 99): negative ACT_CON, direct and after a select
        assert not await m.command(6003, c104.ShortCmd(target=99.0))
        assert not await m.command(6003, c104.ShortCmd(target=99.0), select=True)
        # a time-tagged command older than command_max_age_ms is refused without reaching the device
        old = datetime.datetime.now() - datetime.timedelta(seconds=30)
        assert not await m.command(5003, c104.SingleCmd(on=True, recorded_at=old))
        # a command on an address that is not a command point
        p = m.station.add_point(io_address=5999, type=c104.Type.C_SC_NA_1)
        p.value = True
        assert not await in_thread(p.transmit, c104.Cot.ACTIVATION)
        assert [v for _, v in sink.calls] == [99.0, 99.0]
        assert srv.counters()["controls"] == 2 and srv.counters()["controls_ok"] == 0


def feed(srv: Se104Server, n0: int, batches: list[list[Update]]) -> int:
    """Hand `batches` to the server as the runner does: one stream entry each (ids n0, n0+1, ...)."""
    for i, ups in enumerate(batches):
        srv.apply([Update(u.fwd, u.value, (n0 + i, 0)) for u in ups])
        srv.advance(f"{n0 + i}-0")
    return n0 + len(batches)


async def test_events_kept_for_a_known_master_reach_it_in_order_when_it_returns() -> None:
    """A master that was served once is known (its acknowledged position is recorded): what it misses
    while away reaches it, in order, when it starts again, with no end of initialisation."""
    async with se104_server() as srv:
        srv.advance("1-0")
        srv.load_image(full_image())
        async with c104_master(srv.port) as m:
            assert m.inits  # new to the system: end of initialisation, then it interrogates
            await until(lambda: srv.known_cursors(), what="its position recorded")
        n = feed(srv, 2, [[upd(1001, float(i)), upd(2, i % 2)] for i in range(500)])
        assert srv.queue_depth() == 1000
        async with c104_master(srv.port) as m:
            await until(lambda: len(m.values("SPONTANEOUS")) >= 1000, 10, "missed events")
            sp = m.values("SPONTANEOUS")
            assert [r.value for r in sp if r.ioa == 1001] == [float(i) for i in range(500)]
            assert [r.value for r in sp if r.ioa == 2] == [bool(i % 2) for i in range(500)]
            assert not m.inits  # resumed, not a new start
            await until(lambda: srv.known_cursors()["127.0.0.1"] == (n - 1, 0), what="all acknowledged")
        assert srv.counters()["events_buffered"] == 1000 and srv.counters()["events_dropped"] == 0


async def test_a_master_resumed_ahead_of_the_server_gets_its_image_once_the_server_reaches_it() -> None:
    """The master's cursor (acknowledged on the other node) is ahead of this server's stream: the events up
    to it are skipped (it has them), and the background scan and the answers to interrogations (the one
    c104 sends right after STARTDT, a counter interrogation) wait until the server reaches the cursor, so
    they never show the master older values than those it had."""
    async with se104_server() as srv:
        srv.advance("1-0")
        srv.load_image(full_image())

        async def recorded(rtu: int, identity: str) -> tuple[int, int]:
            return (3, 0)

        srv.cursor_source = recorded
        async with c104_master(srv.port) as m:  # Init.ALL: STARTDT, then at once an interrogation
            await until(lambda: srv.known_cursors(), what="resumed")
            feed(srv, 2, [[upd(1001, 300.5), upd(3001, 123457)]])  # the master has it (entry 2 <= its cursor)
            m.conn.counter_interrogation(CA, wait_for_response=False)
            await asyncio.sleep(0.5)
            assert m.values() == []  # no answer or scan with 1001 = 230.5 or 3001 = 123456, no event it has
            feed(srv, 3, [[upd(2, 1)]])  # the server reaches the cursor
            await until(lambda: len({r.ioa for r in m.values("BACKGROUND_SCAN")}) == 8, what="background scan")
            await until(lambda: m.values("REQUESTED_BY_GENERAL_COUNTER"), what="counter interrogation")
            for cause in ("INTERROGATED_BY_STATION", "BACKGROUND_SCAN"):  # status and measured values
                got = {r.ioa: r.value for r in m.values(cause)}
                assert got[1001] == pytest.approx(300.5) and got[2] is True and got[1002] == pytest.approx(125.0)
            assert int(m.values("REQUESTED_BY_GENERAL_COUNTER")[0].value) == 123457
            assert m.values("SPONTANEOUS") == [] and not m.inits
            feed(srv, 4, [[upd(1001, 9.0)]])  # then live data
            await until(lambda: m.values("SPONTANEOUS"), what="live event")
            assert [r.value for r in m.values("SPONTANEOUS")] == [pytest.approx(9.0)]
            assert [r.cot for r in m.values()][-1] == "SPONTANEOUS"


async def test_a_new_master_gets_end_of_initialisation_and_its_interrogation_not_history() -> None:
    async with se104_server() as srv:
        srv.advance("1-0")
        srv.load_image(full_image())
        feed(srv, 2, [[upd(1001, float(i))] for i in range(50)])
        async with c104_master(srv.port) as m:
            await until(lambda: m.values("INTERROGATED_BY_STATION"), what="interrogation")
            await asyncio.sleep(0.3)
            assert m.inits and m.values("SPONTANEOUS") == []
            assert {r.ioa: r.value for r in m.values("INTERROGATED_BY_STATION")}[1001] == pytest.approx(49.0)


async def test_a_master_away_longer_than_the_history_interrogates() -> None:
    async with se104_server(buffer_max=100) as srv:
        srv.advance("1-0")
        srv.load_image(full_image())
        async with c104_master(srv.port):
            await until(lambda: srv.known_cursors(), what="its position recorded")
        feed(srv, 2, [[upd(1001, float(i))] for i in range(300)])
        assert srv.counters()["events_dropped"] == 200
        async with c104_master(srv.port) as m:
            await until(lambda: m.values("INTERROGATED_BY_STATION"), what="interrogation")
            await asyncio.sleep(0.3)
            assert m.inits and m.values("SPONTANEOUS") == []  # no partial history: the image instead
            assert {r.ioa: r.value for r in m.values("INTERROGATED_BY_STATION")}[1001] == pytest.approx(299.0)


async def test_two_masters_both_get_spontaneous_data() -> None:
    async with se104_server() as srv:
        srv.load_image(full_image())
        async with c104_master(srv.port) as m1, c104_master(srv.port) as m2:
            srv.apply([upd(1002, 3.0)])
            await until(lambda: m1.values("SPONTANEOUS") and m2.values("SPONTANEOUS"), what="both masters")
            assert len(srv.clients()) == 2


class RawMaster:
    """A minimal master on a plain socket, for frames and timings a conforming client never produces."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = c.FrameReader()
        self.vr = 0  # I frames received
        self.vs = 0  # I frames sent

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.s.close()

    def send_u(self, code: int) -> None:
        self.s.sendall(c.u_frame(code))

    def send_asdu(self, asdu: bytes) -> None:
        self.s.sendall(c.i_frame(self.vs, self.vr, asdu))
        self.vs += 1

    def ack(self) -> None:
        self.s.sendall(c.s_frame(self.vr))

    def read(self, n: int, timeout: float = 5.0) -> list[c.Frame]:
        """Up to n frames, fewer when nothing more arrives within `timeout`."""
        out: list[c.Frame] = []
        self.s.settimeout(timeout)
        while len(out) < n:
            try:
                data = self.s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            got = self.reader.feed(data)
            self.vr += sum(1 for f in got if f.kind == "I")
            out += got
        return out


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02\x03",  # wrong start octet
    bytes.fromhex("680408000000"),  # unknown U function
    c.i_frame(5, 0, c.build_asdu(c.C_IC_NA_1, c.COT_ACT, CA, [(0, b"\x14")])),  # wrong send sequence number
    bytes.fromhex("680e00000000") + bytes([c.M_SP_NA_1, 3, 3, 0, CA, 0]) + c.ioa(1) + b"\x01",  # 3 objects, 1 sent
    bytes.fromhex("68fe") + bytes(254),  # APDU length 254 > 253
    bytes.fromhex("6803010000"),  # APDU length 3 < 4
    c.s_frame(5),  # acknowledges I frames never sent
    c.i_frame(0, 0, c.interrogation(CA)),  # an I frame before STARTDT
])
async def test_malformed_frame_closes_only_that_connection(garbage: bytes) -> None:
    async with se104_server() as srv:
        srv.load_image(full_image())
        async with c104_master(srv.port) as m:
            def bad() -> bytes:
                with RawMaster(srv.port) as raw:
                    raw.s.sendall(garbage)
                    return raw.s.recv(100)  # b"" when the server closes it
            assert await in_thread(bad) == b""
            srv.apply([upd(1001, 42.0)])
            await until(lambda: any(r.value == 42.0 for r in m.values("SPONTANEOUS")), what="data after the bad peer")
            assert len(srv.clients()) == 1


@pytest.mark.parametrize("turns", range(8))
async def test_a_master_leaving_as_the_server_stops_logs_no_error(turns: int, caplog: pytest.LogCaptureFixture) -> None:
    """A master that closes its connection `turns` loop iterations before the server stops: the server's
    stop cancelled that connection's handler in the middle of its own clean-up, the handler task ended
    cancelled and asyncio's streams logged it as an error with a traceback (one of these did)."""
    async with se104_server() as srv:
        srv.load_image(full_image())
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(c.u_frame(c.STARTDT_ACT))
        await asyncio.wait_for(reader.readexactly(6 + 6 + 10), 3)  # STARTDT con, end of initialisation
        writer.close()
        for _ in range(turns):
            await asyncio.sleep(0)
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors


async def test_a_connection_whose_sender_fails_is_closed_not_left_deaf(caplog: pytest.LogCaptureFixture) -> None:
    """What a connection's sender task cannot send (an answer it fails to frame: a mirror larger than an APDU
    did) closes that connection, logged; before, the sender died, and the master, whose TESTFR the reader
    still answered, got no data nor answers any more. The other master is served on."""
    async with se104_server() as srv:
        srv.load_image(full_image())
        pump = srv.station.pump
        async with raw_master(srv.port) as ok, raw_master(srv.port) as bad:
            await ok.start()
            await bad.start()
            port = bad.writer.get_extra_info("sockname")[1]

            def failing(s: object, now: float) -> bytes:
                if s.peer.endswith(f":{port}"):  # type: ignore[attr-defined]
                    raise ValueError("cannot frame this")
                return pump(s, now)  # type: ignore[arg-type]
            srv.station.pump = failing  # type: ignore[method-assign]
            srv.apply([upd(1001, 42.0)])
            await until(lambda: bad.closed, 3, "the failing connection closed")
            await until(lambda: (CA, 1001, 42.0) in [v[:3] for v in ok.values()], 3, "data at the other master")
            assert not ok.closed
    assert any(r.levelno == logging.ERROR and "sending failed" in r.getMessage() for r in caplog.records)


async def test_raw_master_window_stopdt_select_timeout_and_unknown_type() -> None:
    """Protocol details checked octet by octet: k window, S acknowledgement, STOPDT, TESTFR, the select
    timeout, unknown type and common address."""
    sink = Sink()
    async with se104_server(sink, k=4, select_timeout_s=0.2) as srv:
        def session() -> dict[str, object]:
            res: dict[str, object] = {}
            with RawMaster(srv.port) as m:
                m.send_u(c.STARTDT_ACT)
                f = m.read(2)  # STARTDT con, end of initialisation
                res["start"] = (f[0].kind, f[0].code, c.parse_asdu(f[1].asdu).type_id)
                m.send_u(c.TESTFR_ACT)
                res["test"] = m.read(1)[0].code
                srv_loop.call_soon_threadsafe(srv.apply, [upd(1001, float(i)) for i in range(200)] +
                                              [upd(2, 1)] + [upd(1001, 1.0)] * 100)
                # k=4: the EI frame is unacknowledged, so only 3 more I frames arrive until we acknowledge
                res["window"] = len(m.read(10, timeout=0.5))
                m.ack()
                res["after_ack"] = len(m.read(10, timeout=0.5))
                m.ack()
                m.send_u(c.STOPDT_ACT)
                rest = m.read(20, timeout=0.5)  # STOPDT con only once what was in flight is acknowledged
                m.ack()
                rest += m.read(20, timeout=0.5)
                res["stop"] = [f.code for f in rest if f.kind == "U"]
                m.send_u(c.STARTDT_ACT)  # I frames only in data transfer: a stopped link is closed by one
                m.read(1000, timeout=0.5)  # STARTDT con, then what a resumed master gets (scan, events)
                m.ack()
                # commands: select, wait past the select timeout, execute -> refused
                sel = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(5001, c.encode_command(c.C_SC_NA_1, 1, True))])
                ex = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(5001, c.encode_command(c.C_SC_NA_1, 1))])
                unk = c.build_asdu(c.C_TS_NA_1, c.COT_ACT, CA, [(0, b"\xaa\x55")])  # not of IEC 104
                bad_ca = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA + 1, [(5001, b"\x01")])
                m.send_asdu(sel)
                res["select"] = [c.parse_asdu(x.asdu) for x in m.read(1)]
                time.sleep(0.3)
                m.send_asdu(ex)
                m.send_asdu(unk)
                m.send_asdu(bad_ca)
                res["answers"] = [c.parse_asdu(x.asdu) for x in m.read(3) if x.kind == "I"]
            return res

        srv_loop = asyncio.get_running_loop()
        res = await in_thread(session)
    assert res["start"] == ("U", c.STARTDT_CON, c.M_EI_NA_1)
    assert res["test"] == c.TESTFR_CON
    assert res["window"] == 3
    assert res["after_ack"] == 4
    assert c.STOPDT_CON in res["stop"]  # type: ignore[operator]
    sel = res["select"][0]  # type: ignore[index]
    assert (sel.cause, sel.negative) == (c.COT_ACTCON, False)
    ex, unk, bad_ca = res["answers"]  # type: ignore[misc]
    assert (ex.cause, ex.negative) == (c.COT_ACTCON, True)  # select timed out
    assert (unk.cause, unk.negative) == (c.COT_UNKNOWN_TYPE, True)
    assert (bad_ca.cause, bad_ca.negative) == (c.COT_UNKNOWN_CA, True)
    assert sink.calls == []


async def test_slow_master_overflowing_its_queue_is_closed_and_drops_counted() -> None:
    async with se104_server(k=2, queue_max=50) as srv:
        def session() -> None:
            with RawMaster(srv.port) as m:
                m.send_u(c.STARTDT_ACT)
                m.read(2)
                srv_loop.call_soon_threadsafe(srv.apply, [upd(1001 + (i % 2), float(i)) for i in range(200)])
                while m.read(100, timeout=5):  # never acknowledges: the queue fills, the server closes us
                    pass

        srv_loop = asyncio.get_running_loop()
        await in_thread(session)
        await until(lambda: not srv.clients(), what="connection closed")
        assert srv.counters()["events_dropped"] > 0


async def test_group_interrogation_returns_its_group_only() -> None:
    async with se104_server() as srv:
        srv.load_image(full_image())
        async with c104_master(srv.port, init=c104.Init.NONE, wait_open=False) as m:
            await until(lambda: m.conn.is_connected, what="connected")
            assert await in_thread(m.conn.unmute)
            assert await m.interrogate(CA, c104.Qoi.GROUP_1)
            assert await m.interrogate(CA, c104.Qoi.GROUP_2)
            assert await m.interrogate(CA, c104.Qoi.GROUP_5)
            g1 = sorted(r.ioa for r in m.values("INTERROGATED_BY_GROUP_1"))
            g2 = sorted(r.ioa for r in m.values("INTERROGATED_BY_GROUP_2"))
            assert (g1, g2) == ([1, 2, 3, 4], [1001, 1002, 1003, 1004])
            assert not m.values("INTERROGATED_BY_GROUP_5")


async def test_tls_connection(tmp_path: Path) -> None:
    """The same protocol inside TLS (stdlib ssl); a plain-TCP peer gets nothing and is dropped."""
    sctx, cert = await self_signed_server_context(tmp_path)
    async with se104_server(tls=sctx) as srv:
        srv.load_image(full_image())
        cctx = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=cctx)
        writer.write(c.u_frame(c.STARTDT_ACT))
        fr = c.FrameReader()
        frames: list[c.Frame] = []
        while len(frames) < 2:
            frames += fr.feed(await asyncio.wait_for(reader.read(4096), 5))
        assert frames[0].code == c.STARTDT_CON and c.parse_asdu(frames[1].asdu).type_id == c.M_EI_NA_1
        assert next(iter(srv.clients().values()))["tls"] is True
        writer.close()
        await writer.wait_closed()
        def plain() -> bytes:
            with RawMaster(srv.port) as m:
                m.send_u(c.STARTDT_ACT)
                try:
                    return m.s.recv(100)
                except OSError:
                    return b""
        answer = await in_thread(plain)
        assert not answer.startswith(b"\x68")  # the TLS layer rejects it: never an IEC 104 answer
        assert not any(v["active"] for v in srv.clients().values())


async def test_t3_sends_testfr_and_t1_closes_a_silent_master() -> None:
    async with se104_server(t1=0.4, t2=0.2, t3=0.2) as srv:
        def session() -> tuple[list[int], bool, float]:
            with RawMaster(srv.port) as m:
                m.send_u(c.STARTDT_ACT)
                m.read(2)  # STARTDT con + end of initialisation, which we never acknowledge
                t0 = time.monotonic()
                frames = m.read(10, timeout=2.0)  # TESTFR act after t3, then closed after t1
                return [f.code for f in frames if f.kind == "U"], m.s.recv(10) == b"", time.monotonic() - t0
        codes, closed, took = await in_thread(session)
        assert c.TESTFR_ACT in codes and closed and took < 1.5
        await until(lambda: not srv.clients(), what="connection gone")


async def test_s_frame_after_t2_while_a_control_is_running() -> None:
    """A command whose device write takes longer than t2: the server acknowledges it with an S frame after
    t2, then confirms it with ACT_CON and ACT_TERM."""
    async with se104_server(Sink(delay_s=0.6), t2=0.2) as srv:
        def session() -> list[tuple[str, float]]:
            with RawMaster(srv.port) as m:
                m.send_u(c.STARTDT_ACT)
                m.read(2)
                m.ack()
                t0 = time.monotonic()
                m.send_asdu(c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(5001, c.encode_command(c.C_SC_NA_1, 1))]))
                out = []
                while len(out) < 3:
                    for f in m.read(1, timeout=2.0) or [c.Frame("timeout")] * 3:
                        kind = f.kind if f.kind != "I" else str(c.parse_asdu(f.asdu).cause)
                        out.append((kind, time.monotonic() - t0))
                return out
        got = await in_thread(session)
    assert [k for k, _ in got] == ["S", str(c.COT_ACTCON), str(c.COT_ACTTERM)]
    assert 0.15 < got[0][1] < 0.5 and got[1][1] >= 0.55


async def test_impossible_time_tags_get_negative_answers_not_a_closed_connection() -> None:
    sink = Sink()
    async with se104_server(sink) as srv:
        def session() -> list[tuple[int, int, bool]]:
            with RawMaster(srv.port) as m:
                m.send_u(c.STARTDT_ACT)
                m.read(2)
                m.send_asdu(c.build_asdu(c.C_SC_TA_1, c.COT_ACT, CA, [(5003, b"\x01" + bytes(7))]))
                m.send_asdu(c.build_asdu(c.C_CS_NA_1, c.COT_ACT, CA, [(0, bytes(7))]))
                m.send_asdu(c.build_asdu(c.C_DC_NA_1, c.COT_ACT, CA, [(5002, b"\x03")]))  # DCS 3: not allowed
                out = [c.parse_asdu(f.asdu) for f in m.read(3) if f.kind == "I"]
                return [(a.type_id, a.cause, a.negative) for a in out]
        got = await in_thread(session)
    assert got == [(c.C_SC_TA_1, c.COT_ACTCON, True), (c.C_CS_NA_1, c.COT_ACTCON, True),
                   (c.C_DC_NA_1, c.COT_ACTCON, True)]
    assert sink.calls == []


async def test_a_control_gets_no_more_time_than_its_wall_clock_limit_leaves() -> None:
    """run_control with `not_after_ms` (a time-tagged command's tag + command_max_age_ms): the sink gets
    what is left before it, not the full control timeout; past it the control is answered `expired`
    without reaching the device."""
    seen: list[int | None] = []

    class Recording(Sink):
        async def execute(self, fwd, value, origin, timeout_ms=None):  # type: ignore[no-untyped-def]
            seen.append(timeout_ms)
            return await super().execute(fwd, value, origin, timeout_ms)

    sink = Recording()
    async with se104_server(sink, control_timeout_ms=5000) as srv:
        fwd = next(f for f in srv.rtu.forwards if f.kind == "DO")
        ok = await srv.run_control(fwd, 1, "test", not_after_ms=int(time.time() * 1000) + 400)
        assert ok.ok and len(seen) == 1 and 0 < seen[0] <= 400, seen  # type: ignore[operator]
        assert (await srv.run_control(fwd, 1, "test")).ok and seen[1] == 5000
        late = await srv.run_control(fwd, 1, "test", not_after_ms=int(time.time() * 1000) - 1)
        assert (late.ok, late.state, len(sink.calls)) == (False, "expired", 2)


async def test_a_master_deactivates_its_station_interrogation_on_the_act_con_then_gets_one_in_full() -> None:
    """A master on our own codec sends DEACT the moment it reads the ACT_CON of its station interrogation
    of a 5,000-point RTU (c104 cannot: its DEACT leaves after its acknowledgements, test below): positive
    DEACT_CON, no ACT_TERM, fewer than the 5,000 points (the answer is built as the master takes it,
    `BUILD_AHEAD`: here the 3 slices built before its first acknowledgement, which the DEACT goes with). A
    station interrogation after the DEACT_CON is accepted and answered in full. Before, the DEACT got a
    negative DEACT_CON and every point came, then the ACT_TERM; with the DEACT handled but the slices built
    back to back, every point came too (5 slices queued before the DEACT was read)."""
    async with measured_server(5_000) as srv, raw_master(srv.port) as m:
        await m.start()
        await until(lambda: m.asdus, what="end of initialisation")
        m.mute_after = deactivate_on_act_con(m.link)
        m.send(c.interrogation(CA))
        ends = lambda: [(a.cause, a.negative) for a in m.asdus if a.type_id == c.C_IC_NA_1]
        await until(lambda: (c.COT_DEACTCON, False) in ends(), what="DEACT_CON")
        await asyncio.sleep(0.3)  # an ACT_TERM or more values would come now
        assert ends() == [(c.COT_ACTCON, False), (c.COT_DEACTCON, False)]
        assert 0 < len(m.values(c.COT_INROGEN)) < 5_000, len(m.values(c.COT_INROGEN))
        m.mute_after = None
        m.asdus.clear()
        m.send(c.interrogation(CA))
        await until(lambda: (c.COT_ACTTERM, False) in ends(), what="the next interrogation's ACT_TERM")
        assert ends() == [(c.COT_ACTCON, False), (c.COT_ACTTERM, False)]
        assert sorted(ioa for _, ioa, *_ in m.values(c.COT_INROGEN)) == list(range(10_000, 15_000))
    assert m.error is None


async def test_a_c104_master_deactivates_its_station_interrogation() -> None:
    """c104 2.2.1 (lib60870-C) as the master, a 20,000-point RTU: its DEACT (`interrogation` with cause
    DEACTIVATION), sent once the ACT_CON is on the wire, ends the interrogation: positive DEACT_CON, no
    ACT_TERM, not every point; its next station interrogation is answered in full. c104's own call cannot
    tell: it takes any first answer but an ACT_CON for a failure (it returns False on the positive
    DEACT_CON), so the outcome is read from the frames, as `Master.interrogate` does."""
    async with measured_server(20_000) as srv, c104_master(srv.port, init=c104.Init.NONE, wait_open=False,
                                                           points={}) as m:
        await until(lambda: m.conn.is_connected, what="connected")
        assert await in_thread(m.conn.unmute)
        seen = len(m.trace)

        def answers() -> list[tuple[str, int, bool]]:
            return [(d, cause, neg) for d, t, cause, neg, _ in station_frames(m.trace[seen:]) if t == c.C_IC_NA_1]

        def points() -> int:
            return sum(len(a.objects) for d, a in i_frames(m.trace[seen:]) if d == "<<" and a.cause == c.COT_INROGEN)

        assert await in_thread(lambda: m.conn.interrogation(CA, wait_for_response=False))
        await until(lambda: ("<<", c.COT_ACTCON, False) in answers(), what="ACT_CON")
        assert await in_thread(lambda: m.conn.interrogation(CA, cause=c104.Cot.DEACTIVATION, wait_for_response=False))
        await until(lambda: ("<<", c.COT_DEACTCON, False) in answers(), what="DEACT_CON")
        await asyncio.sleep(0.3)  # an ACT_TERM or more values would come now
        assert answers() == [(">>", c.COT_ACT, False), ("<<", c.COT_ACTCON, False), (">>", c.COT_DEACT, False),
                             ("<<", c.COT_DEACTCON, False)]
        assert 0 < points() < 20_000, points()
        seen = len(m.trace)
        assert await in_thread(lambda: m.conn.interrogation(CA, wait_for_response=False))
        await until(lambda: ("<<", c.COT_ACTTERM, False) in answers(), 20, "the next interrogation's ACT_TERM")
        assert answers() == [(">>", c.COT_ACT, False), ("<<", c.COT_ACTCON, False), ("<<", c.COT_ACTTERM, False)]
        assert points() == 20_000
