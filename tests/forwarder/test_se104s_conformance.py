"""se104s against IEC 60870-5-104 / -101 rules a conforming master relies on and c104 never exercises:
data transfer states, broadcast and originator addresses, the station-wide commands (read, test, reset
process, counter interrogation qualifiers, deactivation), the T bit, and which types answer which cause.
Table tests on the station, a client Link of fepha.iec104 as the master (see test_se104s_station.py)."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from fep_forwarder.base import ControlOutcome
from fepha.iec104 import codec as c
from fepha.iec104.link import Stopped

from .se104s_fixtures import CA, upd
from .test_se104s_station import Pair, station

OA = 9  # the master's originator address


def answers(m: Pair) -> list[tuple[int, int, bool, int]]:
    """(type, cause, negative, ca) of what the master got, then forgotten."""
    out = [(a.type_id, a.cause, a.negative, a.ca) for a in m.got]
    m.got.clear()
    return out


def started_pair(**options: object) -> Pair:
    st = station(**options)
    st.load_image([upd(1, 1, 0, 1_700_000_000_000), upd(1002, 2.5, 0, 1_700_000_000_000),
                   upd(3001, 42, 0, 1_700_000_000_000)])
    m = Pair(st)
    m.start()
    m.got.clear()
    return m


def cmd(type_id: int, ioa: int, elem: bytes, cause: int = c.COT_ACT, ca: int = CA, oa: int = 0) -> bytes:
    return c.build_asdu(type_id, cause, ca, [(ioa, elem)], oa)


# --- data transfer states --------------------------------------------------------------------------


def test_an_i_frame_before_startdt_closes_the_connection_and_nothing_is_answered() -> None:
    st = station()
    s = st.connect("m1:5000", 0.0)
    with pytest.raises(c.ProtocolError, match="stopped"):
        st.receive(s, c.i_frame(0, 0, c.interrogation(CA)), 0.0)
    assert st.pump(s, 0.0) == b""


def test_an_answer_ready_after_stopdt_waits_for_the_next_startdt() -> None:
    m = started_pair()
    controls = m.send(cmd(c.C_SC_NA_1, 5001, b"\x01"))
    assert len(controls) == 1
    m.master.stop(0.0)
    m.xfer()
    assert any(isinstance(e, Stopped) for e in m.events)
    asyncio.run(m.st.execute(controls[0]))  # type: ignore[arg-type]  # the device answered after STOPDT
    assert m.st.pump(m.s, 0.0) == b""  # no I frame while stopped
    m.master.start(0.0)
    m.xfer()
    m.st.resume(m.s, m.st.cursors.get(m.s.identity))  # type: ignore[attr-defined]
    m.xfer()
    assert [(t, cause, neg) for t, cause, neg, _ in answers(m) if t == c.C_SC_NA_1] == \
        [(c.C_SC_NA_1, c.COT_ACTCON, False), (c.C_SC_NA_1, c.COT_ACTTERM, False)]


# --- addresses -------------------------------------------------------------------------------------


def test_broadcast_address_only_for_station_wide_commands_answered_with_our_address() -> None:
    m = started_pair()
    m.send(c.interrogation(c.BROADCAST_CA))
    got = answers(m)
    assert got[0] == (c.C_IC_NA_1, c.COT_ACTCON, False, CA) and got[-1] == (c.C_IC_NA_1, c.COT_ACTTERM, False, CA)
    assert {ca for *_, ca in got} == {CA}
    m.send(c.clock_sync(c.BROADCAST_CA, int(time.time() * 1000)))
    assert answers(m) == [(c.C_CS_NA_1, c.COT_ACTCON, False, CA)]
    for asdu in (cmd(c.C_SC_NA_1, 5001, b"\x01", ca=c.BROADCAST_CA),  # a command is never broadcast
                 cmd(c.C_RD_NA_1, 1, b"", cause=c.COT_REQ, ca=c.BROADCAST_CA),
                 cmd(c.C_TS_TA_1, 0, b"\x34\x12" + c.cp56(int(time.time() * 1000)), ca=c.BROADCAST_CA)):
        assert m.send(asdu) == []
        (_, cause, neg, ca), = answers(m)
        assert (cause, neg, ca) == (c.COT_UNKNOWN_CA, True, c.BROADCAST_CA)
    assert m.st.sink.calls == []  # type: ignore[attr-defined]


def test_originator_address_is_mirrored_in_every_answer_to_a_master() -> None:
    m = started_pair()
    m.send(c.build_asdu(c.C_IC_NA_1, c.COT_ACT, CA, [(0, b"\x14")], OA))
    m.send(c.build_asdu(c.C_CI_NA_1, c.COT_ACT, CA, [(0, b"\x05")], OA))
    m.send(cmd(c.C_RD_NA_1, 1, b"", cause=c.COT_REQ, oa=OA))
    assert m.got and {a.oa for a in m.got} == {OA}


@pytest.mark.parametrize("type_id, elem", [
    (c.C_IC_NA_1, b"\x14"), (c.C_CI_NA_1, b"\x05"), (c.C_CS_NA_1, c.cp56(1_800_000_000_000)),
    (c.C_TS_TA_1, b"\x01\x00" + c.cp56(1_800_000_000_000)), (c.C_RP_NA_1, b"\x01"),
])
def test_station_wide_commands_take_information_object_address_0_only(type_id: int, elem: bytes) -> None:
    m = started_pair()
    m.send(cmd(type_id, 1, elem))
    assert answers(m) == [(type_id, c.COT_UNKNOWN_IOA, True, CA)]


# --- types and causes ------------------------------------------------------------------------------


def test_interrogated_data_in_the_configured_type_by_default() -> None:
    """By default the configured (time-tagged) type answers an interrogation too: a master that keeps one
    type per IOA (c104) would drop the other form."""
    m = started_pair()
    m.send(c.interrogation(CA))
    types = {(ioa, a.cause): a.type_id for a in m.got for ioa, _ in a.objects if a.type_id < 45}
    assert types[(1, c.COT_INROGEN)] == c.M_SP_TB_1 and types[(1002, c.COT_INROGEN)] == c.M_ME_TF_1


def test_interrogated_data_without_time_tag_spontaneous_and_counters_with_it() -> None:
    """untagged_answers: IEC 60870-5-101's table of causes per type: M_SP_TB_1 / M_ME_TF_1 only for
    spontaneous and requested data; an interrogation answers M_SP_NA_1 / M_ME_NC_1; M_IT_TB_1 may answer a
    counter interrogation (cause 37)."""
    m = started_pair(untagged_answers=True)
    m.send(c.interrogation(CA))
    m.send(c.counter_interrogation(CA))
    types = {(ioa, a.cause): a.type_id for a in m.got for ioa, _ in a.objects if a.type_id < 45}
    assert types[(1, c.COT_INROGEN)] == c.M_SP_NA_1 and types[(1002, c.COT_INROGEN)] == c.M_ME_NC_1
    assert types[(3001, c.COT_REQCOGEN)] == c.M_IT_TB_1
    m.got.clear()
    m.st.apply([upd(1, 0), upd(1002, 3.0)])
    m.xfer()
    assert {(a.type_id, a.cause) for a in m.got} == {(c.M_SP_TB_1, c.COT_SPONT), (c.M_ME_TF_1, c.COT_SPONT)}


def test_background_scan_without_time_tag() -> None:
    m = started_pair(untagged_answers=True)
    m.st._image_answer(m.s, ("DI", "AI"), c.COT_BACKGROUND)
    m.xfer()
    assert m.got and all(a.type_id not in c.TIME_TAGGED for a in m.got)


def test_read_command_answers_requested_data_or_unknown_address() -> None:
    m = started_pair()
    m.send(cmd(c.C_RD_NA_1, 1002, b"", cause=c.COT_REQ))
    (a,) = m.got
    assert (a.type_id, a.cause, a.negative, a.ca) == (c.M_ME_TF_1, c.COT_REQ, False, CA)  # tagged type allowed
    assert a.objects[0][0] == 1002 and c.decode_element(a.type_id, a.objects[0][1])[:2] == (25.0, 0)  # COEF 10
    m.got.clear()
    m.send(cmd(c.C_RD_NA_1, 1003, b"", cause=c.COT_REQ))  # no value yet: invalid
    assert c.decode_element(m.got[0].type_id, m.got[0].objects[0][1])[1] & 0x80
    m.got.clear()
    for ioa, cause, want in ((4242, c.COT_REQ, c.COT_UNKNOWN_IOA), (5001, c.COT_REQ, c.COT_UNKNOWN_IOA),
                             (3001, c.COT_REQ, c.COT_UNKNOWN_IOA),  # a counter: counter interrogation only
                             (1002, c.COT_ACT, c.COT_UNKNOWN_COT)):
        m.send(cmd(c.C_RD_NA_1, ioa, b"", cause=cause))
        assert answers(m) == [(c.C_RD_NA_1, want, True, CA)]


def test_test_command_with_time_tag_is_confirmed_as_sent_and_the_101_one_is_unknown() -> None:
    m = started_pair()
    elem = struct.pack("<H", 0x55AA) + c.cp56(1_800_000_000_123)
    m.send(cmd(c.C_TS_TA_1, 0, elem))
    (a,) = m.got
    assert (a.type_id, a.cause, a.negative, a.objects) == (c.C_TS_TA_1, c.COT_ACTCON, False, ((0, elem),))
    m.got.clear()
    m.send(cmd(c.C_TS_NA_1, 0, b"\xaa\x55"))
    assert answers(m) == [(c.C_TS_NA_1, c.COT_UNKNOWN_TYPE, True, CA)]


def test_reset_process_is_refused() -> None:
    m = started_pair()
    m.send(cmd(c.C_RP_NA_1, 0, b"\x01"))
    assert answers(m) == [(c.C_RP_NA_1, c.COT_ACTCON, True, CA)]
    m.send(cmd(c.C_RP_NA_1, 0, b"\x01", cause=c.COT_SPONT))
    assert answers(m) == [(c.C_RP_NA_1, c.COT_UNKNOWN_COT, True, CA)]


@pytest.mark.parametrize("qcc, want", [
    (0x05, [c.COT_ACTCON, c.COT_REQCOGEN, c.COT_ACTTERM]),  # general request, read
    (0x01, [c.COT_ACTCON, c.COT_ACTTERM]),  # group 1: no counters in it
    (0x45, [-c.COT_ACTCON]),  # freeze without reset: the FEP cannot freeze the device's counters
    (0x85, [-c.COT_ACTCON]),  # freeze with reset
    (0xC5, [-c.COT_ACTCON]),  # counter reset
    (0x00, [-c.COT_ACTCON]),  # no counter requested
])
def test_counter_interrogation_qualifiers(qcc: int, want: list[int]) -> None:
    m = started_pair()
    m.send(c.counter_interrogation(CA, qcc))
    assert list(dict.fromkeys(-a.cause if a.negative else a.cause for a in m.got)) == want  # one per cause


@pytest.mark.parametrize("type_id, elem", [(c.C_IC_NA_1, b"\x14"), (c.C_CI_NA_1, b"\x05")])
def test_deactivating_an_interrogation_that_is_already_answered(type_id: int, elem: bytes) -> None:
    m = started_pair()
    m.send(cmd(type_id, 0, elem, cause=c.COT_DEACT))
    assert answers(m) == [(type_id, c.COT_DEACTCON, True, CA)]


# --- commands --------------------------------------------------------------------------------------


def test_a_command_with_the_test_bit_is_not_executed() -> None:
    m = started_pair()
    assert m.send(cmd(c.C_SC_NA_1, 5001, b"\x01", cause=c.COT_ACT | c.TEST)) == []
    (a,) = m.got
    assert (a.cause, a.negative, bool(a.cot & c.TEST)) == (c.COT_ACTCON, True, True)
    assert m.st.sink.calls == []  # type: ignore[attr-defined]


def test_time_tagged_command_outside_its_window_is_refused_without_reaching_the_device() -> None:
    m = started_pair(command_max_age_ms=2000)
    now = int(time.time() * 1000)
    for tag in (now - 5000, now + 5000):
        assert m.send(cmd(c.C_SC_TA_1, 5003, c.encode_command(c.C_SC_TA_1, 1, ts_ms=tag))) == []
        assert answers(m) == [(c.C_SC_TA_1, c.COT_ACTCON, True, CA)]
    assert len(m.send(cmd(c.C_SC_TA_1, 5003, c.encode_command(c.C_SC_TA_1, 1, ts_ms=now)))) == 1


def test_time_tagged_command_is_run_with_its_tag_plus_the_maximum_age_as_its_limit() -> None:
    """The station hands a tagged command's wall-clock limit (tag + `command_max_age_ms`) to the server's
    run_control, which cuts the control's time to it (test_se104s_server); an untagged one has none."""
    m = started_pair(command_max_age_ms=2000)
    limits: list[int | None] = []

    async def run_control(fwd, value, origin, timeout_ms=None, not_after_ms=None):  # type: ignore[no-untyped-def]
        limits.append(not_after_ms)
        return ControlOutcome(True, "done")

    m.st.run_control = run_control  # type: ignore[method-assign]
    tag = int(time.time() * 1000) - 1500
    for elem, type_id in ((c.encode_command(c.C_SC_TA_1, 1, ts_ms=tag), c.C_SC_TA_1), (b"\x01", c.C_SC_NA_1)):
        (ctl,) = m.send(cmd(type_id, 5003 if type_id == c.C_SC_TA_1 else 5001, elem))
        asyncio.run(m.st.execute(ctl))  # type: ignore[arg-type]
    assert limits == [tag + 2000, None]


def test_time_tagged_command_whose_tag_is_marked_invalid_is_refused_without_reaching_the_device() -> None:
    """IV set in the CP56Time2a (IEC 60870-5-101 7.2.6.18): the master says its own time is not valid, so
    the command's age cannot be known and it might be older than command_max_age_ms: negative ACT_CON,
    as for a tag outside the window, even when the octets read as the current time."""
    m = started_pair(command_max_age_ms=2000)
    for type_id, ioa, value in ((c.C_SC_TA_1, 5003, 1), (c.C_DC_TA_1, 5004, 1), (c.C_SE_TC_1, 6006, 1.5)):
        elem = bytearray(c.encode_command(type_id, value, ts_ms=int(time.time() * 1000)))
        elem[-5] |= 0x80  # IV: bit 8 of the minutes octet
        assert m.send(cmd(type_id, ioa, bytes(elem))) == []
        assert answers(m) == [(type_id, c.COT_ACTCON, True, CA)]
    assert m.st.sink.calls == []  # type: ignore[attr-defined]


def test_select_on_one_address_does_not_cover_an_execute_on_another() -> None:
    """Every command point accepts a direct execute (docs/se104s.md): an execute on B after a select of A
    runs B directly and leaves A selected (for the same value only)."""
    m = started_pair()
    sel = cmd(c.C_SC_NA_1, 5001, c.encode_command(c.C_SC_NA_1, 1, select=True))
    assert m.send(sel) == [] and answers(m) == [(c.C_SC_NA_1, c.COT_ACTCON, False, CA)]
    controls = m.send(cmd(c.C_DC_NA_1, 5002, c.encode_command(c.C_DC_NA_1, 1)))
    assert [ctl.fwd.addr for ctl in controls] == [5002]  # type: ignore[attr-defined]
    assert 5001 in m.st.selected
    assert m.send(cmd(c.C_SC_NA_1, 5001, c.encode_command(c.C_SC_NA_1, 0))) == []  # not the selected value
    assert answers(m) == [(c.C_SC_NA_1, c.COT_ACTCON, True, CA)] and 5001 not in m.st.selected


# --- what each request gets (docs/se104s.md "What each request gets") -----------------------------------

DATA = "data"  # the monitoring ASDUs of an answer (any type), one entry per run of one cause
SEL = c.encode_command(c.C_SC_NA_1, 1, select=True)


def req(type_id: int, ioa: int, elem: bytes, cause: int = c.COT_ACT, ca: int = CA) -> bytes:
    """A request from originator address OA."""
    return cmd(type_id, ioa, elem, cause, ca, OA)


def got_in_order(m: Pair) -> list[tuple[object, int, bool, bool]]:
    """(type, or DATA, cause, P/N, T) of what the master got, a run of data of one cause as one entry."""
    out: list[tuple[object, int, bool, bool]] = []
    for a in m.got:
        row = (DATA if a.type_id < c.C_SC_NA_1 else a.type_id, a.cause, a.negative, bool(a.cot & c.TEST))
        if not (row[0] == DATA and out and out[-1] == row):
            out.append(row)
    return out


def pos(type_id: object, cause: int, test: bool = False) -> tuple[object, int, bool, bool]:
    return (type_id, cause, False, test)


def neg(type_id: object, cause: int, test: bool = False) -> tuple[object, int, bool, bool]:
    return (type_id, cause, True, test)


IC, CI, RD, CS, TS, RP = c.C_IC_NA_1, c.C_CI_NA_1, c.C_RD_NA_1, c.C_CS_NA_1, c.C_TS_TA_1, c.C_RP_NA_1
ACT, CON, DEACT, DCON, TERM = c.COT_ACT, c.COT_ACTCON, c.COT_DEACT, c.COT_DEACTCON, c.COT_ACTTERM
GI, GI_STOP = req(IC, 0, b"\x14"), req(IC, 0, b"\x14", DEACT)
CIG, CI_STOP = req(CI, 0, b"\x05"), req(CI, 0, b"\x05", DEACT)

# (requests, what the master gets in order): each request is answered before the next is sent, but a
# tuple's requests are read together (an interrogation is then still in progress when the next is read: its
# ACT_TERM is queued, not sent). Every answer carries our CA (a cause 46 mirror: the CA received) and the
# originator address OA.
Steps = list[bytes | tuple[bytes, ...]]


def what_each_request_gets(now: int) -> dict[str, tuple[Steps, list[tuple[object, int, bool, bool]]]]:
    """The rows, with time tags of `now` (the test's time: a command's tag must be within its window)."""
    ts_elem = b"\x34\x12" + c.cp56(now)
    sc_ta_sel = c.encode_command(c.C_SC_TA_1, 1, select=True, ts_ms=now)
    return {
        "C_IC QOI 20": ([GI], [pos(IC, CON), pos(DATA, 20), pos(IC, TERM)]),
        "C_IC QOI 21 (group 1: status)": ([req(IC, 0, b"\x15")], [pos(IC, CON), pos(DATA, 21), pos(IC, TERM)]),
        "C_IC QOI 22 (group 2: measured)": ([req(IC, 0, b"\x16")], [pos(IC, CON), pos(DATA, 22), pos(IC, TERM)]),
        "C_IC QOI 23 .. 36 (empty groups)": ([req(IC, 0, b"\x17"), req(IC, 0, b"\x24")],
                                             [pos(IC, CON), pos(IC, TERM)] * 2),
        "C_IC QOI 0, 19, 37": ([req(IC, 0, bytes((q,))) for q in (0, 19, 37)], [neg(IC, CON)] * 3),
        "C_IC T bit": ([req(IC, 0, b"\x14", ACT | c.TEST)], [pos(IC, CON, True), pos(DATA, 20), pos(IC, TERM, True)]),
        "C_IC broadcast CA": ([req(IC, 0, b"\x14", ca=c.BROADCAST_CA)], [pos(IC, CON), pos(DATA, 20), pos(IC, TERM)]),
        "C_IC during the previous one": ([(GI, GI)], [pos(IC, CON), pos(DATA, 20), pos(IC, TERM), neg(IC, CON)]),
        "C_IC DEACT in progress": ([(GI, GI_STOP)], [pos(IC, CON), pos(DATA, 20), pos(IC, DCON)]),
        "C_IC DEACT of another QOI": ([(GI, req(IC, 0, b"\x15", DEACT))],
                                      [pos(IC, CON), pos(DATA, 20), pos(IC, TERM), neg(IC, DCON)]),
        "C_IC DEACT, none in progress": ([GI_STOP], [neg(IC, DCON)]),
        "C_IC cause 5, 7": ([req(IC, 0, b"\x14", c.COT_REQ), req(IC, 0, b"\x14", CON)], [neg(IC, 45)] * 2),
        "C_IC IOA 1": ([req(IC, 1, b"\x14")], [neg(IC, 47)]),
        "C_CI RQT 5 FRZ 0": ([CIG], [pos(CI, CON), pos(DATA, 37), pos(CI, TERM)]),
        "C_CI RQT 1 .. 4 (no counters)": ([req(CI, 0, b"\x01")], [pos(CI, CON), pos(CI, TERM)]),
        "C_CI RQT 0, 6, FRZ 1 .. 3": ([req(CI, 0, bytes((q,))) for q in (0x00, 0x06, 0x45, 0x85, 0xC5)],
                                      [neg(CI, CON)] * 5),
        "C_CI broadcast CA": ([req(CI, 0, b"\x05", ca=c.BROADCAST_CA)], [pos(CI, CON), pos(DATA, 37), pos(CI, TERM)]),
        "C_CI DEACT in progress": ([(CIG, CI_STOP)], [pos(CI, CON), pos(DATA, 37), pos(CI, DCON)]),
        "C_CI DEACT, none in progress": ([CI_STOP], [neg(CI, DCON)]),
        "C_CI cause 3": ([req(CI, 0, b"\x05", c.COT_SPONT)], [neg(CI, 45)]),
        "C_RD status or measured point": ([req(RD, 1, b"", c.COT_REQ), req(RD, 1002, b"", c.COT_REQ)],
                                          [pos(DATA, c.COT_REQ)]),
        "C_RD T bit (data without T)": ([req(RD, 1002, b"", c.COT_REQ | c.TEST)], [pos(DATA, c.COT_REQ)]),
        "C_RD counter, command, unknown, 0": ([req(RD, a, b"", c.COT_REQ) for a in (3001, 5001, 4242, 0)],
                                              [neg(RD, 47)] * 4),
        "C_RD cause 6": ([req(RD, 1002, b"")], [neg(RD, 45)]),
        "C_RD broadcast CA": ([req(RD, 1002, b"", c.COT_REQ, c.BROADCAST_CA)], [neg(RD, 46)]),
        "C_CS": ([req(CS, 0, c.cp56(now))], [pos(CS, CON)]),
        "C_CS broadcast CA": ([req(CS, 0, c.cp56(now), ca=c.BROADCAST_CA)], [pos(CS, CON)]),
        "C_CS time invalid (IV) or impossible": ([req(CS, 0, c.cp56(now, invalid=True)),
                                                  req(CS, 0, b"\x00\x00\x00\x00\x1f\x0d\x63")], [neg(CS, CON)] * 2),
        "C_CS DEACT, cause 3": ([req(CS, 0, c.cp56(now), DEACT), req(CS, 0, c.cp56(now), c.COT_SPONT)],
                                [neg(CS, 45)] * 2),
        "C_CS IOA 1": ([req(CS, 1, c.cp56(now))], [neg(CS, 47)]),
        "C_TS_TA_1": ([req(TS, 0, ts_elem)], [pos(TS, CON)]),
        "C_TS_TA_1 DEACT": ([req(TS, 0, ts_elem, DEACT)], [neg(TS, 45)]),
        "C_TS_TA_1 broadcast CA": ([req(TS, 0, ts_elem, ca=c.BROADCAST_CA)], [neg(TS, 46)]),
        "C_TS_NA_1 (101 only)": ([req(c.C_TS_NA_1, 0, b"\xaa\x55")], [neg(c.C_TS_NA_1, 44)]),
        "C_RP QRP 1, 2": ([req(RP, 0, b"\x01"), req(RP, 0, b"\x02")], [neg(RP, CON)] * 2),
        "C_RP broadcast CA": ([req(RP, 0, b"\x01", ca=c.BROADCAST_CA)], [neg(RP, CON)]),
        "C_RP DEACT": ([req(RP, 0, b"\x01", DEACT)], [neg(RP, 45)]),
        "C_SC direct execute": ([req(c.C_SC_NA_1, 5001, b"\x01")], [pos(c.C_SC_NA_1, CON), pos(c.C_SC_NA_1, TERM)]),
        "C_SE_NC refused by the device": ([req(c.C_SE_NC_1, 6003, c.encode_command(c.C_SE_NC_1, 99.0))],
                                          [neg(c.C_SE_NC_1, CON)]),
        "C_SC select, execute": ([req(c.C_SC_NA_1, 5001, SEL), req(c.C_SC_NA_1, 5001, b"\x01")],
                                 [pos(c.C_SC_NA_1, CON), pos(c.C_SC_NA_1, CON), pos(c.C_SC_NA_1, TERM)]),
        "C_SC select, execute of another value": ([req(c.C_SC_NA_1, 5001, SEL), req(c.C_SC_NA_1, 5001, b"\x00")],
                                                  [pos(c.C_SC_NA_1, CON), neg(c.C_SC_NA_1, CON)]),
        "C_SC select, DEACT, DEACT": ([req(c.C_SC_NA_1, 5001, SEL)] + [req(c.C_SC_NA_1, 5001, SEL, DEACT)] * 2,
                                      [pos(c.C_SC_NA_1, CON), pos(c.C_SC_NA_1, DCON), neg(c.C_SC_NA_1, DCON)]),
        "C_SC_TA_1 select, DEACT": ([req(c.C_SC_TA_1, 5003, sc_ta_sel), req(c.C_SC_TA_1, 5003, sc_ta_sel, DEACT)],
                                    [pos(c.C_SC_TA_1, CON), pos(c.C_SC_TA_1, DCON)]),
        "C_SC_TA_1 tag out of its window": ([req(c.C_SC_TA_1, 5003, c.encode_command(c.C_SC_TA_1, 1,
                                                                                   ts_ms=now - 60_000))],
                                            [neg(c.C_SC_TA_1, CON)]),
        "C_DC DCS 0": ([req(c.C_DC_NA_1, 5002, b"\x00")], [neg(c.C_DC_NA_1, CON)]),
        "C_SC T bit": ([req(c.C_SC_NA_1, 5001, b"\x01", ACT | c.TEST)], [neg(c.C_SC_NA_1, CON, True)]),
        "C_SC cause 3, 7": ([req(c.C_SC_NA_1, 5001, b"\x01", c.COT_SPONT), req(c.C_SC_NA_1, 5001, b"\x01", CON)],
                            [neg(c.C_SC_NA_1, 45)] * 2),
        "C_SC unknown IOA, a monitored point's": ([req(c.C_SC_NA_1, 9999, b"\x01"), req(c.C_SC_NA_1, 1, b"\x01")],
                                                  [neg(c.C_SC_NA_1, 47)] * 2),
        "C_SC on a double command point": ([req(c.C_SC_NA_1, 5002, b"\x01")], [neg(c.C_SC_NA_1, 44)]),
        "C_SC broadcast CA": ([req(c.C_SC_NA_1, 5001, b"\x01", ca=c.BROADCAST_CA)], [neg(c.C_SC_NA_1, 46)]),
        "C_SC other CA": ([req(c.C_SC_NA_1, 5001, b"\x01", ca=CA + 1)], [neg(c.C_SC_NA_1, 46)]),
        "C_IC other CA": ([req(IC, 0, b"\x14", ca=CA + 1)], [neg(IC, 46)]),
        "unknown types": ([req(t, 5001, b"\x01") for t in (47, 51, 106, 113, 200)]
                          + [req(c.M_SP_NA_1, 1, b"\x01", c.COT_SPONT)],
                          [neg(t, 44) for t in (47, 51, 106, 113, 200, DATA)]),
        "unknown type, other CA": ([req(200, 1, b"\x01", ca=CA + 1)], [neg(200, 46)]),
    }


@pytest.mark.parametrize("name", list(what_each_request_gets(0)))
def test_what_each_request_gets(name: str) -> None:
    """Each request of the control direction and what a master gets for it, in order (the table of
    docs/se104s.md), with the requests of a row read together (an interrogation is then still in progress
    when the next one is read: its ACT_TERM is queued, not sent)."""
    steps, want = what_each_request_gets(int(time.time() * 1000))[name]
    m = started_pair()
    for step in steps:
        for asdu in step if isinstance(step, tuple) else (step,):
            m.master.send(asdu, 0.0)
        for ctl in m.xfer():
            asyncio.run(m.st.execute(ctl))  # type: ignore[arg-type]
        m.xfer()
    assert got_in_order(m) == want
    cas = {c.parse_asdu(a).ca for step in steps for a in (step if isinstance(step, tuple) else (step,))}
    assert all(a.ca in cas - {CA} if a.cause == c.COT_UNKNOWN_CA else a.ca == CA for a in m.got)
    assert {a.oa for a in m.got} == {OA}
