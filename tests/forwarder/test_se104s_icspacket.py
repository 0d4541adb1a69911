"""se104s against an IEC 104 master that shares no code with lib60870 or with our stack: icspacket 0.3.1's
pure-Python controlling station (`icspacket.proto.iec104`, written from IEC 60870-5-101/104). It decodes
every ASDU se104s sends with its own codec, runs its own APCI machine (k, w, t1 … t3, sequence numbers) and
checks the answers as a master would.

icspacket's blocking calls match an answer by cause 7 (ACT_CON) only, so a negative mirror with cause 44 …
47 (IEC 60870-5-101 7.2.3) is read here from its ASDU stream, not from those calls."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import pytest

from fepha.iec104 import codec as c
from fepha.points import Quality
from tests.prereq import require

from .se104s_fixtures import CA, Sink, in_thread, now_ms, se104_server, until, upd
from .test_se104s_server import full_image

try:
    from icspacket.proto.iec104 import const as ic
    from icspacket.proto.iec104.asdu import ASDU, ASDU_Header
    from icspacket.proto.iec104.connection import IEC104_Connection
    from icspacket.proto.iec104.master import IEC104_Master
    from icspacket.proto.iec104.objects import information as io
    from icspacket.proto.iec104.objects.coding import InformationObject
    from icspacket.proto.iec104.objects.elements import CP56Time2a
    MISSING: str | None = None
except ImportError as exc:
    MISSING = f"icspacket (independent IEC 104 master) is not installed: {exc}"


C_RC_NA_1 = 47  # regulating step command: se104s does not support it


@pytest.fixture(autouse=True)
def _icspacket() -> None:
    require(MISSING, "the icspacket IEC 104 master")


class Peer:
    """An icspacket master and every ASDU it received, in order (what its blocking calls passed over
    included)."""

    def __init__(self, port: int, **link: Any) -> None:
        self.seen: list[Any] = []
        self.m = IEC104_Master(IEC104_Connection(**{"t1": 5, "t2": 0.2, "t3": 20, **link}),
                               on_unsolicited=self.seen.append)
        self.m.connect(("127.0.0.1", port))  # STARTDT act, waits for STARTDT con

    def send(self, type_id: int, element: Any, ioa: int = 0, cause: int = 6, ca: int = CA,
             test: bool = False) -> None:
        a = ASDU(header=ASDU_Header(type_id=type_id, common_address=ca))
        a.header.cot.cause = cause
        a.header.cot.test = test
        self.m.connection.send_data(a.build([InformationObject(ioa=ioa, element=element)]))

    def until(self, pred: Callable[[Any], bool], timeout: float = 3.0) -> Any:
        """The first ASDU (already seen or arriving within `timeout`) for which `pred` holds."""
        end = time.monotonic() + timeout
        i = 0
        while True:
            while i < len(self.seen):
                if pred(self.seen[i]):
                    return self.seen.pop(i)
                i += 1
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such ASDU; seen {[describe(a) for a in self.seen]}")
            try:
                self.seen.append(self.m.read_next(left))
            except TimeoutError:
                pass

    def answer(self, type_id: int, cause: int, ioa: int | None = None) -> Any:
        return self.until(lambda a: a.header.type_id == type_id and a.header.cot.cause == cause
                          and (ioa is None or a.decode_objects()[0].ioa == ioa))

    def close(self) -> bool:
        """STOPDT act, then the socket closed; True when STOPDT con came (within icspacket's t1) and
        icspacket saw no protocol error."""
        conn = self.m.connection
        self.m.close()
        return bool(conn._IEC104_Connection__stopdt_confirmed.is_set()  # type: ignore[attr-defined]
                    and conn._IEC104_Connection__fail_reason is None)  # type: ignore[attr-defined]


def on_loop(fn: Callable[..., Any], *args: Any) -> Callable[[], object]:
    """`fn(*args)` to be run on the running event loop from the peer's thread (the server is not
    thread-safe)."""
    loop = asyncio.get_running_loop()
    return lambda: loop.call_soon_threadsafe(fn, *args)


def describe(a: Any) -> tuple[int, int, bool, list[int]]:
    return (int(a.header.type_id), a.header.cot.cause, a.header.cot.negative, [o.ioa for o in a.decode_objects()])


def objects(asdus: list[Any]) -> dict[int, tuple[int, int, Any]]:
    """IOA -> (type id, cause, element) of the monitoring objects among `asdus`."""
    return {o.ioa: (int(a.header.type_id), a.header.cot.cause, o.element)
            for a in asdus if a.header.type_id < 45 for o in a.decode_objects()}


def stamp_ms(ts: Any) -> int:
    """A CP56Time2a as icspacket decodes it, in ms since the epoch (UTC), with its day of week checked."""
    dt = ts.to_datetime().replace(tzinfo=datetime.UTC)
    assert ts.day_of_week == dt.isoweekday() and not ts.invalid and not ts.summer_time
    return int(dt.timestamp() * 1000)


async def test_interrogations_clock_sync_read_and_spontaneous_events_as_icspacket_decodes_them() -> None:
    async with se104_server() as srv:
        t = now_ms() - 5000
        srv.load_image(full_image(t))
        ev = now_ms() - 1234
        apply_events = on_loop(srv.apply, [upd(1, 0, 0, ev), upd(1002, 13.5, int(Quality.NT), ev)])

        def run() -> None:
            p = Peer(srv.port)
            try:
                assert p.answer(c.M_EI_NA_1, c.COT_INIT)  # end of initialisation to a master new to the system
                gi = list(p.m.general_interrogation(CA, timeout=3))
                assert (gi[0].header.cot.cause, gi[-1].header.cot.cause) == (7, 10)
                got = objects(gi)
                assert sorted(got) == [1, 2, 3, 4, 1001, 1002, 1003, 1004]
                assert {cause for _, cause, _ in got.values()} == {20}
                assert got[1001][2].value == pytest.approx(230.5) and got[1002][2].value == pytest.approx(125.0)
                assert got[1003][2].value == -200 and got[1004][2].value == 16384  # scaled; normalised 0.5
                assert got[1][2].status.spi and got[2][2].status.iv and got[3][2].status.dpi == 2
                assert got[4][2].status.nt and got[4][0] == c.M_DP_TB_1
                assert stamp_ms(got[1][2].timestamp) == t and stamp_ms(got[1002][2].timestamp) == t

                g1 = objects(list(p.m.general_interrogation(CA, ic.QOI.GROUP_1, timeout=3)))
                assert sorted(g1) == [1, 2, 3, 4] and {cause for _, cause, _ in g1.values()} == {21}
                g2 = objects(list(p.m.general_interrogation(CA, ic.QOI.GROUP_2, timeout=3)))
                assert sorted(g2) == [1001, 1002, 1003, 1004] and {cause for _, cause, _ in g2.values()} == {22}

                ci = list(p.m.counter_interrogation(CA, timeout=3))
                counters = objects(ci)
                assert {k: (v[0], v[1], v[2].value.value) for k, v in counters.items()} == {
                    3001: (c.M_IT_TB_1, 37, 123456), 3002: (c.M_IT_NA_1, 37, 7)}
                assert ci[-1].header.cot.cause == 10

                when = datetime.datetime.now(datetime.UTC).replace(microsecond=123000)
                cs = p.m.clock_sync(CA, when, timeout=3).decode_objects()[0].element.timestamp
                assert cs.to_datetime() == when.replace(tzinfo=None)  # the time received, confirmed

                rd = p.m.read(CA, 1003, timeout=3)
                assert (int(rd.header.type_id), rd.header.cot.cause) == (c.M_ME_NB_1, 5)

                apply_events()
                sp = objects([p.answer(c.M_SP_TB_1, c.COT_SPONT), p.answer(c.M_ME_TF_1, c.COT_SPONT)])
                assert not sp[1][2].status.spi and stamp_ms(sp[1][2].timestamp) == ev
                assert sp[1002][2].value == pytest.approx(135.0) and sp[1002][2].quality.nt
                assert stamp_ms(sp[1002][2].timestamp) == ev
            finally:
                closed = p.close()
            assert closed  # STOPDT act answered by STOPDT con

        await in_thread(run)
        assert srv.counters()["events_sent"] >= 2


def command(type_id: int, value: Any, select: bool, when: datetime.datetime | None = None) -> Any:
    """The information element of a process command, as icspacket builds it."""
    from icspacket.proto.iec104.objects.elements import DCO, QOS, SCO
    tag = {"timestamp": CP56Time2a.from_datetime(when or datetime.datetime.now(datetime.UTC))}
    qos = QOS(se=select, ql=0)
    return {
        c.C_SC_NA_1: lambda: io.SingleCommand(command=SCO(se=select, qu=0, scs=bool(value))),
        c.C_DC_NA_1: lambda: io.DoubleCommand(command=DCO(se=select, qu=0, dcs=value)),
        c.C_SE_NA_1: lambda: io.SetpointCommandNormalized(value=value, qualifier=qos),
        c.C_SE_NB_1: lambda: io.SetpointCommandScaled(value=value, qualifier=qos),
        c.C_SE_NC_1: lambda: io.SetpointCommandShort(value=value, qualifier=qos),
        c.C_SC_TA_1: lambda: io.SingleCommandWithCP56Time2a(command=SCO(se=select, qu=0, scs=bool(value)), **tag),
        c.C_DC_TA_1: lambda: io.DoubleCommandWithCP56Time2a(command=DCO(se=select, qu=0, dcs=value), **tag),
        c.C_SE_TA_1: lambda: io.SetpointCommandNormalizedWithCP56Time2a(value=value, qualifier=qos, **tag),
        c.C_SE_TB_1: lambda: io.SetpointCommandScaledWithCP56Time2a(value=value, qualifier=qos, **tag),
        c.C_SE_TC_1: lambda: io.SetpointCommandShortWithCP56Time2a(value=value, qualifier=qos, **tag),
    }[type_id]()


# (type sent, IOA, value on the wire, source value the device gets: COEF of the test RTU applied)
COMMANDS = [
    (c.C_SC_NA_1, 5001, 1, 1.0), (c.C_DC_NA_1, 5002, 1, 0.0), (c.C_SC_TA_1, 5003, 1, 1.0),
    (c.C_DC_TA_1, 5004, 2, 1.0), (c.C_SE_NA_1, 6001, 8192, 25.0), (c.C_SE_NB_1, 6002, -300, -30.0),
    (c.C_SE_NC_1, 6003, 12.5, 12.5), (c.C_SE_TA_1, 6004, 16384, 50.0), (c.C_SE_TB_1, 6005, 7, 7.0),
    (c.C_SE_TC_1, 6006, -1.5, -1.5),
]


async def test_every_command_type_direct_and_select_before_operate_runs_once_each() -> None:
    sink = Sink()
    async with se104_server(sink) as srv:
        def run() -> None:
            p = Peer(srv.port)
            try:
                for type_id, ioa, value, _ in COMMANDS:
                    for select in (False, True):
                        if select:
                            p.send(type_id, command(type_id, value, True), ioa)
                            con = p.answer(type_id, c.COT_ACTCON, ioa)
                            assert not con.header.cot.negative and con.decode_objects()[0].element
                        p.send(type_id, command(type_id, value, False), ioa)
                        con = p.answer(type_id, c.COT_ACTCON, ioa)
                        assert not con.header.cot.negative, (type_id, select)
                        assert p.answer(type_id, c.COT_ACTTERM, ioa)  # after the positive ACT_CON
                p.m.read(CA, 1001, timeout=3)  # a round trip later: no other confirmation or termination came
                assert [describe(a) for a in p.seen if 45 <= a.header.type_id < 70] == []
            finally:
                p.close()

        await in_thread(run)
        want = [(100 + {5001: 21, 5002: 22, 5003: 23, 5004: 24, 6001: 25, 6002: 26, 6003: 27, 6004: 28,
                        6005: 29, 6006: 30}[ioa], pytest.approx(v)) for _, ioa, _, v in COMMANDS for _ in (0, 1)]
        assert [(src, pytest.approx(v)) for src, v in sink.calls] == want
        assert srv.counters()["controls_ok"] == len(COMMANDS) * 2


async def test_negative_mirrors_44_to_47_test_bit_and_stale_time_tag_run_nothing() -> None:
    sink = Sink()
    async with se104_server(sink, command_max_age_ms=5000) as srv:
        def run() -> None:
            p = Peer(srv.port)
            try:
                def mirror(type_id: int, element: Any, ioa: int, cause: int = 6, ca: int = CA,
                           test: bool = False) -> tuple[int, bool, bool, int, int]:
                    p.send(type_id, element, ioa, cause, ca, test)
                    a = p.until(lambda a: int(a.header.type_id) == type_id and a.header.cot.cause != c.COT_ACTTERM)
                    return a.header.cot.cause, a.header.cot.negative, a.header.cot.test, a.header.common_address, \
                        a.decode_objects()[0].ioa

                sc = command(c.C_SC_NA_1, 1, False)
                from icspacket.proto.iec104.objects.elements import RCO
                assert mirror(C_RC_NA_1, io.StepCommand(command=RCO(se=False, qu=0, rcs=2)), 5001) == \
                    (44, True, False, CA, 5001)  # regulating step command: not supported, unknown type
                assert mirror(c.C_SC_NA_1, sc, 5001, cause=3) == (45, True, False, CA, 5001)  # spontaneous cmd
                assert mirror(c.C_SC_NA_1, sc, 5001, ca=CA + 1) == (46, True, False, CA + 1, 5001)
                assert mirror(c.C_SC_NA_1, sc, 5999) == (47, True, False, CA, 5999)
                assert mirror(c.C_SC_NA_1, sc, 5001, test=True) == (7, True, True, CA, 5001)  # test bit
                old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=30)
                assert mirror(c.C_SC_TA_1, command(c.C_SC_TA_1, 1, False, old), 5003) == (7, True, False, CA, 5003)
                assert mirror(c.C_DC_NA_1, command(c.C_DC_NA_1, 0, False), 5002) == (7, True, False, CA, 5002)
                # C_TS_NA_1 (IEC 60870-5-101 only), as icspacket's test_command sends it: unknown type
                assert mirror(c.C_TS_NA_1, io.TestCommand(), 0) == (44, True, False, CA, 0)
            finally:
                p.close()

        await in_thread(run)
        assert sink.calls == []


async def test_link_windows_and_timers_with_icspacket() -> None:
    """se104s with k = 2 against a master that acknowledges only every 8 frames (w) or after its t2: the
    window stalls and icspacket's t2 acknowledgement moves it on, nothing lost or reordered. Idle, each side's
    t3 TESTFR act is confirmed by the other (icspacket drops the link when its own is not, within t1)."""
    async with se104_server(k=2, w=1, t3=0.3) as srv:
        srv.load_image([upd(2, 0), upd(1001, 0.0)])
        events = on_loop(srv.apply, [u for i in range(1, 11) for u in (upd(2, i % 2), upd(1001, float(i)))])

        def run() -> None:
            p = Peer(srv.port, t1=2, t2=0.2, t3=0.4, k=12, w=8)
            try:
                events()
                got = [p.answer(t, c.COT_SPONT) for _ in range(10) for t in (c.M_SP_NA_1, c.M_ME_NC_1)]
                assert [a.decode_objects()[0].element.value for a in got[1::2]] == [float(i) for i in range(1, 11)]
                time.sleep(1.5)  # several t3 periods each way, nothing to send
                assert p.m.connection.is_connected()
                p.m.read(CA, 1001, timeout=2)  # the link still carries data
            finally:
                p.close()

        await in_thread(run)
        assert next(iter(srv.clients().values()), {"unacked": 0})["unacked"] == 0


async def test_sequence_numbers_past_32767_wrap_for_an_independent_master() -> None:
    """32,800 I frames (alternating types: one object per ASDU): se104s's N(S) and icspacket's N(R)
    wrap modulo 32768; icspacket checks every N(S), acknowledges every w frames, and the values after the
    wrap are the ones sent."""
    n = 32_800
    async with se104_server() as srv:
        srv.load_image([upd(2, 1), upd(1001, -1.0)])
        events = on_loop(srv.apply, [upd(2, (i // 2) % 2) if i % 2 else upd(1001, float(i)) for i in range(n)])

        def run() -> None:
            p = Peer(srv.port)
            try:
                p.answer(c.M_EI_NA_1, c.COT_INIT)
                events()
                raw = [p.m.connection.recv_data_timeout(5) for _ in range(n)]  # one ASDU per event
                assert p.m.connection.recv_sequence == (n + 1) % 32768  # M_EI_NA_1 was N(S) 0
                tail = [ASDU.from_bytes(a).decode_objects()[0].element for a in raw[-2:]]
                assert tail[0].value == pytest.approx(float(n - 2)) and tail[1].status.spi == bool((n // 2 - 1) % 2)
                p.m.read(CA, 1001, timeout=3)  # and the link goes on both ways
            finally:
                p.close()

        await in_thread(run)


async def test_originator_broadcast_test_command_deactivation_and_two_started_masters() -> None:
    async with se104_server() as srv:
        srv.load_image(full_image())
        events = on_loop(srv.apply, [upd(1001, 77.0)])

        def run() -> None:
            p, q = Peer(srv.port), Peer(srv.port)
            try:
                # station interrogation to the broadcast address from originator 5: answered with our own
                # address, the originator mirrored in the confirmation, every answer and the termination
                a = ASDU(header=ASDU_Header(type_id=c.C_IC_NA_1, common_address=c.BROADCAST_CA,
                                            originator_address=5))
                a.header.cot.cause = c.COT_ACT
                p.m.connection.send_data(a.build([InformationObject(ioa=0, element=io.InterrogationCommand(
                    qualifier=ic.QOI.STATION))]))
                term = p.answer(c.C_IC_NA_1, c.COT_ACTTERM)
                answers = [x for x in p.seen if x.header.cot.cause in (c.COT_ACTCON, c.COT_INROGEN)]
                assert len(answers) == 9 and not term.header.cot.negative
                assert {(x.header.originator_address, x.header.common_address) for x in [*answers, term]} == {(5, CA)}
                # test command with time tag: confirmed with the test pattern and time received
                sent = io.TestCommandWithCP56Time2a(fbp=0x1234, timestamp=CP56Time2a.from_datetime(
                    datetime.datetime.now(datetime.UTC)))
                p.send(c.C_TS_TA_1, sent, 0)
                con = p.answer(c.C_TS_TA_1, c.COT_ACTCON)
                assert not con.header.cot.negative and con.decode_objects()[0].element == sent
                # deactivation of a selection that is not there: negative DEACT_CON; of one that is: positive
                p.send(c.C_SC_NA_1, command(c.C_SC_NA_1, 1, True), 5001, cause=c.COT_DEACT)
                assert p.answer(c.C_SC_NA_1, c.COT_DEACTCON).header.cot.negative
                p.send(c.C_SC_NA_1, command(c.C_SC_NA_1, 1, True), 5001)
                assert not p.answer(c.C_SC_NA_1, c.COT_ACTCON).header.cot.negative
                p.send(c.C_SC_NA_1, command(c.C_SC_NA_1, 1, True), 5001, cause=c.COT_DEACT)
                assert not p.answer(c.C_SC_NA_1, c.COT_DEACTCON).header.cot.negative
                # a counter is not read by C_RD (IEC 60870-5-101: integrated totals take no cause 5): 47
                p.send(c.C_RD_NA_1, io.ReadCommand(), 3001, cause=c.COT_REQ)
                assert p.answer(c.C_RD_NA_1, c.COT_UNKNOWN_IOA).header.cot.negative
                # each started master gets every event
                events()
                for m in (p, q):
                    assert m.answer(c.M_ME_NC_1, c.COT_SPONT).decode_objects()[0].element.value == 77.0
            finally:
                closed = p.close(), q.close()
            assert closed == (True, True)

        await in_thread(run)



async def test_a_master_that_does_not_acknowledge_within_t1_is_closed() -> None:
    """icspacket told to acknowledge only after 1,000 frames or 60 s: se104s (t1 = 0.5 s) closes that
    connection once its I frames wait longer than t1 for an acknowledgement (IEC 60870-5-104 5.2)."""
    from icspacket.core.connection import ConnectionClosedError

    async with se104_server(t1=0.5, t2=0.1) as srv:
        srv.load_image(full_image())

        def run() -> float:
            p = Peer(srv.port, t1=120, t2=60, t3=120, k=1000, w=1000)
            try:
                p.send(c.C_IC_NA_1, io.InterrogationCommand(qualifier=ic.QOI.STATION))
                start = time.monotonic()
                with pytest.raises(ConnectionClosedError):
                    while time.monotonic() - start < 5:
                        p.m.read_next(5)
                return time.monotonic() - start
            finally:
                p.m.connection._close_socket()

        took = await in_thread(run)
        assert 0.4 <= took < 3.0
        # closed, and gone from the client list once its unread last bytes are flushed or reset (<= 1 s)
        await until(lambda: srv.clients() == {}, 2.0, "the closed master gone from the client list")


async def test_stopdt_and_startdt_on_one_connection() -> None:
    """STOPDT act mid-connection (sent with icspacket's APCI codec; its API closes after STOPDT): STOPDT
    con once icspacket acknowledged what was in flight, no I frame while stopped, data again after STARTDT."""
    from icspacket.proto.iec104.apci import APCI

    async with se104_server() as srv:
        srv.load_image(full_image())
        first, during, second = (on_loop(srv.apply, [upd(1001, v)]) for v in (1.0, 2.0, 3.0))

        def run() -> None:
            p = Peer(srv.port, t2=0.1)
            conn = p.m.connection
            stopped = conn._IEC104_Connection__stopdt_confirmed  # type: ignore[attr-defined]
            try:
                p.answer(c.M_EI_NA_1, c.COT_INIT)
                first()
                assert p.answer(c.M_ME_NC_1, c.COT_SPONT).decode_objects()[0].element.value == 1.0
                conn._send_apci(APCI.stopdt_act())
                assert stopped.wait(3)
                during()
                with pytest.raises(AssertionError, match="no such ASDU"):
                    p.until(lambda a: a.header.type_id == c.M_ME_NC_1, timeout=0.5)
                conn._send_apci(APCI.startdt_act())
                # started again (this fixture keeps no positions: a master new to the system each time, so
                # end of initialisation, and what changed while it was stopped is for its interrogation)
                p.answer(c.M_EI_NA_1, c.COT_INIT)
                second()
                assert p.until(lambda a: a.header.type_id == c.M_ME_NC_1 and
                               a.decode_objects()[0].element.value == 3.0)
            finally:
                assert p.close()

        await in_thread(run)
