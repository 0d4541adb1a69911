"""Table tests of the se104s station without a network: a client Link of fepha.iec104 plays the master."""

from __future__ import annotations

import asyncio

import pytest
from fep_forwarder.se104s.station import Session, Station

from fepha.iec104 import codec as c
from fepha.iec104.link import STARTED, AsduIn, Event, Link, LinkParams, Role
from fepha.points import Quality

from .se104s_fixtures import CA, Sink, rtu, upd

P = {"k": 4, "w": 2, "t1": 5, "t2": 1, "t3": 10}


class Pair:
    """The station with one master connection; `xfer` carries bytes both ways and returns what the master
    received (parsed ASDUs) and the controls the station wants run."""

    def __init__(self, station: Station, peer: str = "m1") -> None:
        self.st = station
        self.master = Link(Role.CLIENT, LinkParams.from_options(P))
        self.s: Session = station.connect(peer, 0.0)
        self.got: list[c.Asdu] = []
        self.events: list[Event] = []

    def xfer(self, now: float = 0.0, ack: bool = True) -> list[object]:
        controls: list[object] = []
        for _ in range(100):
            to_station = self.master.data_to_send()
            if to_station:
                controls += self.st.receive(self.s, to_station, now)
            to_master = self.st.pump(self.s, now)
            if not to_station and not to_master:
                break
            if ack:
                for ev in self.master.receive(to_master, now):
                    self.events.append(ev)
                    if isinstance(ev, AsduIn):
                        self.got.append(c.parse_asdu(ev.asdu))
        return controls

    def start(self) -> None:
        self.master.start(0.0)
        self.xfer()

    def send(self, asdu: bytes) -> list[object]:
        self.master.send(asdu, 0.0)
        return self.xfer()


def station(**options: object) -> Station:
    return Station(rtu(), {**P, **options}, Sink(), "se104s:10:A")


def test_buffered_events_and_end_of_initialisation_go_to_the_first_master_that_starts() -> None:
    st = station()
    st.load_image([upd(1001, 1.0)])
    st.apply([upd(1001, float(i)) for i in range(100)])
    m = Pair(st)
    m.xfer()
    assert m.got == [] and st.queue_depth() == 101  # connected, not started: nothing sent
    m.start()
    assert STARTED in m.events
    assert m.got[0].type_id == c.M_EI_NA_1
    values = [c.decode_element(a.type_id, e)[0] for a in m.got[1:] for _, e in a.objects]
    assert values == [float(i) for i in range(100)]
    assert all(a.cause == c.COT_SPONT and a.ca == CA for a in m.got[1:])
    assert st.counts["events_sent"] == 100 and st.queue_depth() == 0


def test_general_interrogation_answers_status_and_measured_points_with_invalid_for_unknown() -> None:
    st = station()
    st.load_image([upd(1001, 2.5), upd(2, 1)])
    m = Pair(st)
    m.start()
    m.got.clear()
    m.send(c.interrogation(CA))
    causes = [(a.type_id, a.cause) for a in m.got]
    assert causes[0] == (c.C_IC_NA_1, c.COT_ACTCON) and causes[-1] == (c.C_IC_NA_1, c.COT_ACTTERM)
    objs = {ioa: c.decode_element(a.type_id, e) for a in m.got[1:-1] for ioa, e in a.objects}
    assert objs[1001][:2] == (2.5, 0) and objs[2][:2] == (1.0, 0)
    assert objs[1003][1] == int(Quality.IV)  # no value yet
    assert 3001 not in objs  # counters only by counter interrogation


@pytest.mark.parametrize("asdu, cause, negative", [
    (c.interrogation(CA + 1), c.COT_UNKNOWN_CA, True),
    (c.interrogation(CA, qoi=50), c.COT_ACTCON, True),
    (c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(4242, b"\x01")]), c.COT_UNKNOWN_IOA, True),
    (c.build_asdu(c.C_SC_NA_1, c.COT_SPONT, CA, [(5001, b"\x01")]), c.COT_UNKNOWN_COT, True),
    (c.build_asdu(c.C_DC_NA_1, c.COT_ACT, CA, [(5002, b"\x03")]), c.COT_ACTCON, True),  # DCS 3
    (c.build_asdu(c.C_SE_NC_1, c.COT_ACT, CA, [(5001, c.encode_command(c.C_SE_NC_1, 1.0))]),
     c.COT_UNKNOWN_TYPE, True),
    (c.clock_sync(CA, 1_800_000_000_000), c.COT_ACTCON, False),
])
def test_refusals_and_answers(asdu: bytes, cause: int, negative: bool) -> None:
    m = Pair(station())
    m.start()
    m.got.clear()
    assert m.send(asdu) == []
    assert [(a.cause, a.negative) for a in m.got] == [(cause, negative)]


def test_select_then_execute_runs_one_control_with_positive_con_and_term() -> None:
    st = station()
    m = Pair(st)
    m.start()
    m.got.clear()
    sel = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(5001, c.encode_command(c.C_SC_NA_1, 1, select=True))])
    exe = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(5001, c.encode_command(c.C_SC_NA_1, 1))])
    assert m.send(sel) == []
    assert [(a.cause, a.negative) for a in m.got] == [(c.COT_ACTCON, False)]
    m.got.clear()
    controls = m.send(exe)
    assert len(controls) == 1 and m.got == []  # nothing before the device answered
    asyncio.run(st.execute(controls[0]))  # type: ignore[arg-type]
    m.xfer()
    assert [(a.cause, a.negative) for a in m.got] == [(c.COT_ACTCON, False), (c.COT_ACTTERM, False)]
    assert st.controls.calls == [(121, 1.0)]  # type: ignore[attr-defined]
    assert m.send(exe) and st.selected == {}  # a second execute is a direct one: the selection is gone


def test_stop_hands_unacknowledged_events_back_to_the_buffer_for_the_next_master() -> None:
    st = station()
    m1 = Pair(st, "m1")
    m1.start()
    m1.events.clear()
    st.apply([upd(1001 + (i % 2), float(i)) for i in range(10)])  # alternating types: one ASDU each
    m1.xfer(ack=False)  # sent (k=4 frames) but the master never acknowledges
    assert m1.s.link.in_flight == 4
    st.close(m1.s, "gone")
    st.disconnect(m1.s)
    assert st.queue_depth() == 10
    m2 = Pair(st, "m2")
    m2.start()
    values = [c.decode_element(a.type_id, e)[0] for a in m2.got for _, e in a.objects]
    assert values == [float(i * 10 if i % 2 else i) for i in range(10)]  # all ten (1002: COEF 10), in order


def test_a_master_that_does_not_keep_up_is_closed_and_its_queue_counted_as_dropped() -> None:
    closed: list[Session] = []
    st = Station(rtu(), {**P, "queue_max": 50}, Sink(), "o", closed=closed.append)
    m = Pair(st)
    m.start()
    st.apply([upd(1001, float(i)) for i in range(51)])
    assert closed == [m.s] and st.counts["events_dropped"] == 51
    assert st.queue_depth() == 0
