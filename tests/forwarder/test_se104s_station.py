"""Table tests of the se104s station without a network: a client Link of fepha.iec104 plays the master."""

from __future__ import annotations

import asyncio
import time
from itertools import groupby

import pytest

from fep_forwarder.base import Update
from fep_forwarder.se104s import Se104Server
from fep_forwarder.se104s.station import BUILD_AHEAD, SLICE_POINTS, Session, Station
from fepha.iec104 import codec as c
from fepha.iec104.link import STARTED, AsduIn, Event, Link, LinkParams, Role
from fepha.points import Quality, Value
from fepha.semodel.model import FWD_KIND, FwdPoint, Model, Rtu

from .se104s_fixtures import BY_ADDR as BY_ADDR_MON
from .se104s_fixtures import CA, Sink, rtu, upd

P = {"k": 4, "w": 2, "t1": 5, "t2": 1, "t3": 10}


class Pair:
    """The station with one master connection; `xfer` carries bytes both ways and returns what the master
    received (parsed ASDUs) and the controls the station wants run."""

    def __init__(self, station: Station, peer: str = "m1:5000") -> None:
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
        """STARTDT; the station is then resumed with the master's recorded position, as the transport
        does after asking Redis (here: what the station itself recorded, `st.cursors`)."""
        self.master.start(0.0)
        self.xfer()
        assert self.s.awaiting_cursor
        self.st.resume(self.s, self.st.cursors.get(self.s.identity))  # type: ignore[attr-defined]
        self.xfer()

    def send(self, asdu: bytes) -> list[object]:
        self.master.send(asdu, 0.0)
        return self.xfer()


def runs_on(sink: Sink):  # type: ignore[no-untyped-def]
    """The station's run_control (ForwardServer.run_control in the server) played by the sink alone: the
    time-tagged command's limit (`not_after_ms`) is the server's to apply (test_se104s_server)."""
    async def run_control(fwd, value, origin, timeout_ms=None, not_after_ms=None):  # type: ignore[no-untyped-def]
        return await sink.execute(fwd, value, origin, timeout_ms)
    return run_control


def station(of: Rtu | None = None, **options: object) -> Station:
    """A station (of the test RTU unless `of`) whose recorded master positions are kept in `st.cursors` and
    whose sink is `st.sink`."""
    sink, cursors = Sink(), {}
    st = Station(of or rtu(), {**P, **options}, runs_on(sink), "se104s:10:A", acked=cursors.__setitem__)
    st.sink, st.cursors = sink, cursors  # type: ignore[attr-defined]
    return st


def feed(st: Station, n0: int, batches: list[list[Update]]) -> int:
    """Batches as the runner hands them: one stream entry each, ids n0, n0 + 1, ..."""
    for i, ups in enumerate(batches):
        st.apply([Update(u.fwd, u.value, (n0 + i, 0)) for u in ups])
        st.advanced((n0 + i, 0))
    return n0 + len(batches)


def values_of(asdus: list[c.Asdu]) -> list[float]:
    return [c.decode_element(a.type_id, e)[0] for a in asdus if a.cause == c.COT_SPONT for _, e in a.objects]


def test_a_new_master_gets_end_of_initialisation_a_known_one_what_it_missed() -> None:
    st = station()
    st.advanced((1, 0))
    st.load_image([upd(1001, 1.0)])
    feed(st, 2, [[upd(1001, float(i))] for i in range(10)])
    m = Pair(st)
    m.xfer()
    assert m.got == []  # connected, not started: nothing sent
    m.start()
    assert STARTED in m.events
    assert [a.type_id for a in m.got] == [c.M_EI_NA_1]  # new: no history, it interrogates
    assert st.cursors == {"m1": (11, 0)}
    st.close(m.s, "gone")
    st.disconnect(m.s)
    n = feed(st, 12, [[upd(1001, float(i))] for i in range(100, 200)])
    st.history.prune(min(st.cursors.values()))  # the runner's once-a-second prune (ForwardServer.set_known)
    assert st.queue_depth() == 100  # what the known master has not acknowledged
    again = Pair(st, "m1:5001")
    again.start()
    assert values_of(again.got) == [float(i) for i in range(100, 200)]
    assert c.M_EI_NA_1 not in [a.type_id for a in again.got]
    assert all(a.ca == CA for a in again.got)
    assert st.counts.events_sent == 100 and st.cursors["m1"] == (n - 1, 0)


def test_a_resumed_master_gets_what_it_missed_then_the_image_as_a_background_scan() -> None:
    """Its cursor is per address: a master that keeps a connection to each node started at once gets, on
    the link that resumes, the events after the cursor (spontaneous) and then the image (cause 2, not
    events), so a value its other link's interrogation gave it and that does not change again is not
    missing on this one. A master new to the system gets end of initialisation and no scan."""
    st = station()
    st.advanced((1, 0))
    st.load_image([upd(1001, 1.0), upd(2, 1)])
    first = Pair(st, "m1:5000")
    first.start()
    assert not [a for a in first.got if a.cause == c.COT_BACKGROUND]  # new: end of initialisation only
    feed(st, 2, [[upd(1001, 7.0)]])
    first.xfer()
    second = Pair(st, "m1:5001")  # the same master's other link, started while the first one runs
    st.cursors["m1"] = (1, 0)  # its cursor from before the event
    second.start()
    assert [a.cause for a in second.got][:1] == [c.COT_SPONT] and values_of(second.got) == [7.0]
    scan = {ioa: c.decode_element(a.type_id, e)[:2] for a in second.got if a.cause == c.COT_BACKGROUND
            for ioa, e in a.objects}
    assert scan[1001] == (7.0, 0) and scan[2] == (1.0, 0)
    assert scan[1003][1] == int(Quality.IV)  # no value yet: invalid, as in an interrogation's answer
    assert 3001 not in scan  # counters only by counter interrogation
    assert st.counts.events_sent == 2  # the scan is no event: one to each link


def answers_of(asdus: list[c.Asdu], cause: int) -> dict[int, float]:
    """IOA -> value of what came with `cause`."""
    return {ioa: c.decode_element(a.type_id, e)[0] for a in asdus if a.cause == cause for ioa, e in a.objects}


def test_a_master_resumed_ahead_of_this_node_gets_its_image_once_the_node_reaches_its_cursor() -> None:
    """Its cursor (acknowledged on the other node) is past this node's stream position: the events up to
    the cursor are skipped (it has them), so an image built at once would show it this node's older values,
    as current, with nothing to correct them. The background scan and the interrogations' answers (asked
    before its position is known, as c104 does right after STARTDT, or after) wait, confirmed, until this
    node reaches the cursor."""
    st = station()
    st.advanced((1, 0))
    st.load_image([upd(1001, 1.0), upd(2, 1), upd(3001, 5)])
    st.cursors["m1"] = (3, 0)  # acknowledged on the other node, which was ahead
    m = Pair(st)
    m.master.start(0.0)
    m.xfer()
    m.send(c.interrogation(CA))  # before its position is read
    st.resume(m.s, st.cursors["m1"])
    m.send(c.counter_interrogation(CA))
    confirmed = [(c.C_IC_NA_1, c.COT_ACTCON), (c.C_CI_NA_1, c.COT_ACTCON)]
    assert [(a.type_id, a.cause) for a in m.got] == confirmed  # at once, but no value of 1.0 or 5
    feed(st, 2, [[upd(1001, 2.0), upd(3001, 6)]])  # the master has it (entry 2 <= its cursor)
    m.xfer()
    assert len(m.got) == 2  # no event it has, no image yet
    feed(st, 3, [[upd(2, 0)]])  # this node reaches the cursor
    m.xfer()
    runs = [k for k, _ in groupby(a.cause if a.type_id < 100 else (a.type_id, a.cause) for a in m.got[2:])]
    assert runs == [c.COT_INROGEN, (c.C_IC_NA_1, c.COT_ACTTERM), c.COT_BACKGROUND,  # in the order asked
                    c.COT_REQCOGEN, (c.C_CI_NA_1, c.COT_ACTTERM)] and values_of(m.got) == []
    gi, scan, ci = (answers_of(m.got, cot) for cot in (c.COT_INROGEN, c.COT_BACKGROUND, c.COT_REQCOGEN))
    assert gi[1001] == scan[1001] == 2.0 and gi[2] == scan[2] == 0.0 and ci == {3001: 6, 3002: 0}  # as of the cursor
    m.got.clear()
    feed(st, 4, [[upd(1001, 9.0)]])  # then live data
    m.xfer()
    assert [a.cause for a in m.got] == [c.COT_SPONT] and values_of(m.got) == [9.0]
    assert st.counts.events_sent == 1 and st.cursors["m1"] >= (3, 0)  # never back


def test_an_interrogation_held_for_a_master_that_stops_is_dropped_with_the_scan() -> None:
    """Held while its cursor is ahead of this node; the master sends STOPDT: no I frame may go out until
    it starts again, and an answer built now would then follow the resumed events with older values, so
    the interrogation it asked and the background scan are dropped (it interrogates again)."""
    st = station()
    st.advanced((1, 0))
    st.load_image([upd(1001, 1.0)])
    st.cursors["m1"] = (3, 0)
    m = Pair(st)
    m.start()
    m.send(c.interrogation(CA))
    assert [(a.type_id, a.cause) for a in m.got] == [(c.C_IC_NA_1, c.COT_ACTCON)]
    m.master.stop(0.0)
    m.xfer()
    assert not answers_of(m.got, c.COT_INROGEN) and not answers_of(m.got, c.COT_BACKGROUND)
    assert not m.s.held and not m.s.queue
    feed(st, 3, [[upd(1001, 2.0)]])
    m.xfer()
    assert not answers_of(m.got, c.COT_BACKGROUND) and values_of(m.got) == []  # stopped: nothing more


def test_events_split_over_frames_move_the_position_only_past_whole_entries() -> None:
    st = station()
    st.advanced((1, 0))
    st.load_image([])
    m = Pair(st)
    m.start()
    # one stream entry of 2 types: two ASDUs; the master acknowledges only the first
    feed(st, 2, [[upd(1001, 1.0), upd(1002, 2.0)], [upd(1001, 3.0)]])
    m.xfer(ack=False)
    assert m.s.link.in_flight == 4  # end of initialisation (not acknowledged yet) and three event frames
    st._on_acked(m.s, 2)  # end of initialisation and the first half of entry 2
    assert st.cursors["m1"] == (1, 0)
    st._on_acked(m.s, 1)  # entry 2 complete
    assert st.cursors["m1"] == (2, 0)


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
    # a clock sync whose time the master marked invalid (IV): not confirmed as a synchronisation
    (c.build_asdu(c.C_CS_NA_1, c.COT_ACT, CA, [(0, c.cp56(1_800_000_000_000, invalid=True))]), c.COT_ACTCON, True),
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
    assert st.sink.calls == [(121, 1.0)]  # type: ignore[attr-defined]
    assert m.send(exe) and st.selected == {}  # a second execute is a direct one: the selection is gone


def test_during_the_planned_stop_a_select_is_refused_and_queued_answers_are_counted() -> None:
    """The forwarder's drain (ForwardServer.drain): a select gets a negative ACT_CON at once (its execute
    would be refused), and `unanswered` counts the answers queued but not yet sent, not the events."""
    st = station()
    m = Pair(st)
    m.start()
    m.got.clear()
    sel = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(5001, c.encode_command(c.C_SC_NA_1, 1, select=True))])
    st.refusing = lambda: True
    assert m.send(sel) == []
    assert [(a.cause, a.negative) for a in m.got] == [(c.COT_ACTCON, True)] and st.selected == {}
    assert st.unanswered() == 0
    st.apply([upd(1001, 5.0)])  # an event: not an answer
    m.s.queue.append((0, c.mirror(c.parse_asdu(sel), c.COT_ACTCON, True), (0, 0)))
    assert st.unanswered() == 1
    m.xfer()
    assert st.unanswered() == 0 and st.sink.calls == []  # type: ignore[attr-defined]


def test_what_a_master_left_unacknowledged_reaches_its_next_connection() -> None:
    st = station()
    st.advanced((1, 0))
    st.load_image([])
    m1 = Pair(st, "m1:5000")
    m1.start()
    m1.events.clear()
    feed(st, 2, [[upd(1001 + (i % 2), float(i))] for i in range(10)])  # alternating types: one ASDU each
    m1.xfer(ack=False)  # sent (k=4 frames) but the master never acknowledges
    assert m1.s.link.in_flight == 4
    st.close(m1.s, "gone")
    st.disconnect(m1.s)
    assert st.queue_depth() == 10 and st.cursors["m1"] == (1, 0)
    m2 = Pair(st, "m1:5001")  # the same master (its address), reconnected
    m2.start()
    assert values_of(m2.got) == [float(i * 10 if i % 2 else i) for i in range(10)]  # all ten, in order


def test_a_master_that_does_not_keep_up_is_closed_and_its_queue_counted_as_dropped() -> None:
    closed: list[Session] = []
    st = Station(rtu(), {**P, "queue_max": 50}, runs_on(Sink()), "o", closed=closed.append)
    st.cursors = {}  # type: ignore[attr-defined]
    m = Pair(st)
    m.start()
    st.apply([upd(1001, float(i)) for i in range(51)])
    assert closed == [m.s] and st.counts.events_dropped == 51
    assert st.queue_depth() == 51  # its queue is gone; the history keeps them for its return


def test_a_full_history_first_forgets_what_every_known_master_acknowledged() -> None:
    st = station(buffer_max=100)
    st.make_room = lambda: st.history.prune(min(st.cursors.values()))  # ForwardServer.make_room's rule
    st.advanced((1, 0))
    st.load_image([])
    m = Pair(st)
    m.start()
    for b in range(30):  # 300 events, the master keeps up and acknowledges (w = 2)
        feed(st, 2 + 10 * b, [[upd(1001, float(10 * b + i))] for i in range(10)])
        m.xfer()
    assert values_of(m.got) == [float(i) for i in range(300)]
    assert st.counts.events_dropped == 0 and len(st.history) <= 100


def test_an_acknowledgement_forgets_at_once_what_every_known_master_has() -> None:
    """The server forgets what every known master has on each acknowledgement (`ForwardServer.record_ack`),
    not only at the once-a-second read of the recorded positions (`set_known`): pruned once a second, a
    master that keeps up left a second of events behind (10,000 at 10,000 changes/s), all dropped at once, a
    stall of milliseconds. A known master that is away keeps what it has not acknowledged, and gets it."""
    srv = Se104Server(rtu(), Model({}, "", ""), "127.0.0.1", Sink(), "A", **P)
    st = srv.station
    srv.image_at("1-0", [])
    srv.set_known({"m2": (5, 0)})  # away (served on the other node), acknowledged up to entry 5

    def started(peer: str, cursor: tuple[int, int] | None) -> Pair:
        m = Pair(st, peer)
        m.master.start(0.0)
        m.xfer()
        st.resume(m.s, cursor)  # as the transport does with the position it read
        m.xfer()
        return m

    def acked_all(m: Pair) -> None:
        m.master.tick(2.0)  # t2: the master acknowledges the frames that fell short of w as well
        m.xfer(2.0)

    m1 = started("m1:5000", None)  # new to the system: end of initialisation
    for e in range(2, 12):  # one entry, one frame at a time; m1 acknowledges every w = 2
        u = upd(1001, float(e))
        srv.apply([Update(u.fwd, u.value, (e, 0))])
        srv.advance(f"{e}-0")
        m1.xfer()
    acked_all(m1)
    assert values_of(m1.got) == [float(e) for e in range(2, 12)]
    assert srv.known_cursors() == {"m1": (11, 0), "m2": (5, 0)}
    # no set_known since: what m1 acknowledged is gone up to m2's position, what m2 has not is kept
    assert [sid for sid, _ in st.history.items] == [(e, 0) for e in range(6, 12)]
    m2 = started("m2:5000", (5, 0))
    assert values_of(m2.got) == [float(e) for e in range(6, 12)]  # resumed with what it missed
    acked_all(m2)
    assert srv.known_cursors()["m2"] == (11, 0) and len(st.history) == 0  # every known master has it all


def test_single_active_a_startdt_stops_the_started_master_and_takes_over_its_events() -> None:
    """tools/rtu104sim.py's redundancy group: one cursor for all connections, so what the stopped one
    had not acknowledged goes to the one that starts, in order, once."""
    st = station(single_active=True)
    st.advanced((1, 0))
    st.load_image([])
    m1 = Pair(st, "m1:5000")
    m1.start()
    feed(st, 2, [[upd(1001 + (i % 2), float(i))] for i in range(10)])
    m1.xfer(ack=False)  # 4 frames in flight, 6 events queued, none acknowledged
    m2 = Pair(st, "m2:5000")
    m2.start()
    assert not m1.s.active and m2.s.active
    assert values_of(m2.got) == [float(i * 10 if i % 2 else i) for i in range(10)]
    feed(st, 12, [[upd(1001, 77.0)]])
    m1.got.clear()
    m1.xfer()
    m2.xfer()
    assert m1.got == [] and values_of(m2.got)[-1] == 77.0


NT = int(Quality.NT)


@pytest.mark.parametrize("addr, prev, new, same", [
    (3001, (5, 0, 1000), (5, NT, 1000), True),     # a counter has no NT bit: the NT re-send is the same object
    (3002, (5, NT, 1000), (5, 0, 1000), True),
    (3001, (5, 0, 1000), (5, 0, 1000), True),      # the stored value sent again, unchanged
    (1002, (5, 0, 1000), (5, NT, 1000), False),    # a measurement carries NT: SCADA must see it set
    (1, (1, NT, 1000), (1, 0, 1000), False),       # and cleared
    (3001, (5, 0, 1000), (5, 0, 2000), False),     # a new timestamp: a new record
    (3001, (5, 0, 1000), (6, NT, 1000), False),    # a new value
    (1004, (200, 0, 1000), (300, 0, 1000), False), # both clipped to the maximum (coef 0.01): still a change
    (3001, (5, 0, 1000), (5, int(Quality.IV), 1000), False),  # IV is in the counter's quality
])
def test_same_object_is_what_the_type_shows_alike(addr: int, prev: tuple, new: tuple, same: bool) -> None:
    st = station()
    f = BY_ADDR_MON[addr]
    assert st.same_object((f.table, f.id), Value(*prev), Value(*new)) is same


def test_an_nt_flip_resends_measurements_but_not_counters() -> None:
    st = station()
    st.load_image([])
    feed(st, 1, [[upd(3001, 5, 0, 1000), upd(1002, 5, 0, 1000)]])
    n = len(st.history)
    feed(st, 2, [[upd(3001, 5, NT, 1000), upd(1002, 5, NT, 1000)], [upd(3001, 5, 0, 1000), upd(1002, 5, 0, 1000)]])
    assert len(st.history) - n == 2  # the measurement's NT set and cleared; the counter's re-sends dropped
    assert st.image[(BY_ADDR_MON[3001].table, BY_ADDR_MON[3001].id)].quality == 0


def test_the_position_follows_acknowledgements_that_end_inside_an_entry() -> None:
    """Each entry's events fill two APDUs (two types) and the master acknowledges every w = 2 I frames, one
    frame out of step (end of initialisation first): every acknowledgement ends inside an entry. The
    position still moves to the newest entry all of whose APDUs are acknowledged, so after a switchover
    the other node re-sends at most what is outstanding, not everything since the master started."""
    st = station()
    st.advanced((1, 0))
    st.load_image([upd(1001, 0.0), upd(2, 1)])
    m = Pair(st)
    m.start()
    assert [a.type_id for a in m.got] == [c.M_EI_NA_1] and st.cursors["m1"] == (1, 0)
    for n in range(2, 8):
        feed(st, n, [[upd(1001, float(n)), upd(2, n % 2)]])
        m.xfer()
        assert m.s.first_outstanding() == (n, 0)  # its second APDU is not acknowledged yet
        assert st.cursors["m1"] == (n - 1, 0)  # the entry before it is whole


def test_a_command_answer_goes_ahead_of_the_events_queued_for_its_master() -> None:
    """A backlog of events (a slow link) does not hold a command's ACT_CON / ACT_TERM behind it: they go out
    first, in their order, and the events after them in theirs."""
    st = station()
    m = Pair(st)
    m.start()
    (ctl,) = m.send(c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(5001, b"\x01")]))
    m.got.clear()
    feed(st, 2, [[upd(1001 if i % 2 else 1002, float(i))] for i in range(20)])  # queued, not yet pumped
    assert m.s.events_queued == 20
    asyncio.run(st.execute(ctl))  # type: ignore[arg-type]
    m.xfer()
    kinds = [(a.type_id, a.cause) for a in m.got]
    assert kinds[:2] == [(c.C_SC_NA_1, c.COT_ACTCON), (c.C_SC_NA_1, c.COT_ACTTERM)], kinds
    events = [(a.objects[0][0], a.cause) for a in m.got[2:]]
    assert events == [(1001 if i % 2 else 1002, c.COT_SPONT) for i in range(20)], events  # all, in order


@pytest.mark.parametrize("request_, answer", [
    (c.build_asdu(c.C_TS_TA_1, c.COT_ACT, CA, [(0, b"\x01\x00" + c.cp56(1_800_000_000_000))]),
     (c.C_TS_TA_1, 7, False)),
    (c.clock_sync(CA, 1_800_000_000_000), (c.C_CS_NA_1, 7, False)),
    (c.build_asdu(c.C_RP_NA_1, c.COT_ACT, CA, [(0, b"\x01")]), (c.C_RP_NA_1, 7, True)),
    (c.build_asdu(c.C_RD_NA_1, c.COT_REQ, CA, [(4242, b"")]), (c.C_RD_NA_1, 47, True)),
    (c.interrogation(CA + 1), (c.C_IC_NA_1, 46, True)),
    (c.build_asdu(47, c.COT_ACT, CA, [(5001, b"\x01")]), (47, 44, True)),  # C_RC_NA_1
], ids=["test command", "clock sync", "reset process", "read refused", "unknown CA", "unknown type"])
def test_an_answer_without_values_goes_ahead_of_the_events_queued_for_its_master(
        request_: bytes, answer: tuple[int, int, bool]) -> None:
    """As a command's: the confirmations of test, clock synchronisation and reset process and every refusal
    with cause 44 .. 47 carry no value of the process and go out before a backlog of events (lib60870's
    servers send every answer to a request from a queue of their own); before, they waited behind it."""
    st = station()
    m = Pair(st)
    m.start()
    m.got.clear()
    feed(st, 2, [[upd(1001 if i % 2 else 1002, float(i))] for i in range(20)])  # queued, not yet pumped
    m.master.send(request_, 0.0)
    st.receive(m.s, m.master.data_to_send(), 0.0)
    m.xfer()
    assert [(a.type_id, a.cause, a.negative) for a in m.got[:1]] == [answer]
    assert [a.objects[0][0] for a in m.got[1:]] == [1001 if i % 2 else 1002 for i in range(20)]


def test_a_read_answer_keeps_its_place_behind_the_events_queued_for_its_master() -> None:
    """A point's value read (cause 5) must not overtake an older event of it."""
    st = station()
    st.load_image([upd(1002, 1.0)])
    m = Pair(st)
    m.start()
    m.got.clear()
    feed(st, 2, [[upd(1002, float(i))] for i in range(20)])
    m.master.send(c.build_asdu(c.C_RD_NA_1, c.COT_REQ, CA, [(1002, b"")]), 0.0)
    st.receive(m.s, m.master.data_to_send(), 0.0)
    m.xfer()
    assert [(a.cause, len(a.objects)) for a in m.got][-1] == (c.COT_REQ, 1)
    assert sum(len(a.objects) for a in m.got if a.cause == c.COT_SPONT) == 20


def test_a_flood_of_command_answers_ahead_of_queued_events_takes_linear_time() -> None:
    """20,000 refused commands from a master while events wait for it: each answer goes ahead of the events
    (as above) without a scan of what is already ahead; before, the scan made it quadratic, and such a flood
    held the event loop (every master, every server of the process) for 6 s."""
    st = station(answers_max=10**6)
    m = Pair(st)
    m.start()
    m.got.clear()
    feed(st, 2, [[upd(1001 if i % 2 else 1002, float(i))] for i in range(20)])  # queued, not pumped
    refused = c.build_asdu(c.C_SC_NA_1, c.COT_ACT, CA, [(4999, b"\x01")])  # no such command point: cause 47
    flood = b"".join(c.i_frame(n, m.master.vr, refused) for n in range(20_000))
    t0 = time.monotonic()
    assert st.receive(m.s, flood, 0.0) == []
    assert time.monotonic() - t0 < 2.0
    assert m.s.events_queued == 20 and st.unanswered() == 20_000
    m.master.vs = 20_000  # what it sent without its link
    for _ in range(1_000):
        if len(m.got) >= 20_020:
            break
        m.xfer()
    kinds = [(a.type_id, a.cause, a.negative) for a in m.got]
    assert kinds[:20_000] == [(c.C_SC_NA_1, c.COT_UNKNOWN_IOA, True)] * 20_000
    assert [a.objects[0][0] for a in m.got[20_000:]] == [1001 if i % 2 else 1002 for i in range(20)]


def ic_answers(got: list[c.Asdu]) -> list[tuple[int, int, int, bool]]:
    """(type, qualifier, cause, negative) of every interrogation and counter interrogation mirror received."""
    return [(a.type_id, a.objects[0][1][0], a.cause, a.negative) for a in got
            if a.type_id in (c.C_IC_NA_1, c.C_CI_NA_1)]


IC, CI, CON, TERM = c.C_IC_NA_1, c.C_CI_NA_1, c.COT_ACTCON, c.COT_ACTTERM


@pytest.mark.parametrize("first, second, expected", [
    # a second station interrogation, or a group one, while the first is in progress: negative ACT_CON
    # (cause 7), queued behind the first's answer
    (c.interrogation(CA), c.interrogation(CA), [(IC, 20, CON, False), (IC, 20, TERM, False), (IC, 20, CON, True)]),
    (c.interrogation(CA), c.interrogation(CA, qoi=21),
     [(IC, 20, CON, False), (IC, 20, TERM, False), (IC, 21, CON, True)]),
    (c.interrogation(CA, qoi=22), c.interrogation(CA),
     [(IC, 22, CON, False), (IC, 22, TERM, False), (IC, 20, CON, True)]),
    (c.counter_interrogation(CA), c.counter_interrogation(CA),
     [(CI, 5, CON, False), (CI, 5, TERM, False), (CI, 5, CON, True)]),
    # a counter interrogation beside a station interrogation: each type has its own
    (c.interrogation(CA), c.counter_interrogation(CA),
     [(IC, 20, CON, False), (IC, 20, TERM, False), (CI, 5, CON, False), (CI, 5, TERM, False)]),
    # a refused interrogation is not in progress
    (c.interrogation(CA, qoi=50), c.interrogation(CA),
     [(IC, 50, CON, True), (IC, 20, CON, False), (IC, 20, TERM, False)]),
], ids=["station twice", "group during station", "station during group", "counter twice", "counter beside station",
        "after a refused one"])
def test_an_interrogation_while_the_masters_previous_one_is_in_progress_is_refused(
        first: bytes, second: bytes, expected: list[tuple[int, int, int, bool]]) -> None:
    st = station()
    st.load_image([upd(1001, 2.5)])
    m = Pair(st)
    m.start()
    m.got.clear()
    m.master.send(first, 0.0)
    m.master.send(second, 0.0)  # read together: the first's ACT_TERM is not sent yet
    m.xfer()
    assert ic_answers(m.got) == expected
    m.got.clear()
    m.send(second)  # every ACT_TERM sent: the next one is accepted
    assert ic_answers(m.got) == [(second[0], second[9], CON, False), (second[0], second[9], TERM, False)]


def test_an_interrogation_refused_while_the_answer_waits_for_the_masters_position_is_not_held() -> None:
    """Interrogations sent with the STARTDT, while the master's position is read: one is held, the others
    are refused at once (before, every one was held, then built)."""
    st = station()
    st.load_image([upd(1001, 2.5)])
    m = Pair(st)
    m.master.start(0.0)
    m.xfer()
    for _ in range(50):
        m.send(c.interrogation(CA))
    assert len(m.s.held) == 1
    st.resume(m.s, None)
    m.xfer()
    got = ic_answers(m.got)
    assert got.count((IC, 20, CON, True)) == 49 and got[-1] == (IC, 20, TERM, False), got


def big_station(n: int) -> Station:
    """A station of `n` measured values (M_ME_NC_1, IOA 10,000 on), each 1.0."""
    fwds = tuple(FwdPoint(i, "T005_ZFAI", FWD_KIND["T005_ZFAI"], 10, 100 + i, 10_000 + i, "M_ME_NC_1")
                 for i in range(n))
    st = station(Rtu(id=10, name="big", rtutype=2, protocol="se104s", listen_port=0, address=CA, forwards=fwds))
    st.load_image([Update(f, Value(1.0, 0, 1), (0, 0)) for f in fwds])
    return st


def test_an_interrogation_is_built_a_slice_at_a_time_and_never_shows_a_value_older_than_an_event() -> None:
    """A station interrogation of 2,500 points: the first slice (`SLICE_POINTS`) is queued when it is read,
    the others by `build` (the transport calls it once the event loop has served the other connections).
    Events that come between slices: of a point already answered, sent after its answer; of a point not
    answered yet, its answer carries the new value, after the event (never an older value after an event)."""
    st = big_station(2_500)
    fwds = [f for f, _ in st.monitor.values()]
    m = Pair(st)
    m.start()
    m.master.send(c.interrogation(CA), 0.0)
    m.xfer()
    assert sum(len(a.objects) for a in m.got if a.cause == c.COT_INROGEN) == SLICE_POINTS
    early, late = fwds[0], fwds[-1]  # in the first slice, in the last one
    st.apply([Update(early, Value(2.0, 0, 2), (1, 0)), Update(late, Value(3.0, 0, 3), (1, 0))])
    slices = 2
    while st.build(m.s):
        slices += 1
    assert slices == 3
    m.xfer()
    seq = [(a.cause, ioa, c.decode_element(a.type_id, e)[0])
           for a in m.got for ioa, e in a.objects if a.type_id == c.M_ME_NC_1 and ioa in (early.addr, late.addr)]
    assert seq == [(c.COT_INROGEN, early.addr, 1.0), (c.COT_SPONT, early.addr, 2.0),
                   (c.COT_SPONT, late.addr, 3.0), (c.COT_INROGEN, late.addr, 3.0)], seq
    assert sum(len(a.objects) for a in m.got if a.cause == c.COT_INROGEN) == 2_500
    assert ic_answers(m.got)[-1] == (IC, 20, TERM, False)


DCON = c.COT_DEACTCON
GI, GI22, CIG = c.interrogation(CA), c.interrogation(CA, qoi=22), c.counter_interrogation(CA)
STOP_GI, STOP_GI21, STOP_CI = (c.interrogation(CA, cause=c.COT_DEACT), c.interrogation(CA, qoi=21, cause=c.COT_DEACT),
                               c.counter_interrogation(CA, cause=c.COT_DEACT))


def interrogated(got: list[c.Asdu]) -> int:
    """Objects received with causes 20 .. 36 (station or group interrogation)."""
    return sum(len(a.objects) for a in got if c.COT_INROGEN <= a.cause <= c.COT_INROGEN + 16)


def next_interrogation_answered(st: Station, m: Pair) -> None:
    """The master's interrogation before is over: a station interrogation is accepted and answered in full
    (`big_station`'s 2,500 points)."""
    m.got.clear()
    m.send(GI)
    while st.build(m.s):
        pass
    m.xfer()
    assert ic_answers(m.got) == [(IC, 20, CON, False), (IC, 20, TERM, False)]
    assert interrogated(m.got) == 2_500


@pytest.mark.parametrize("together, expected, points", [
    # the station interrogation in progress (its first slice queued) deactivated: the slices not built are
    # not built, no ACT_TERM, a positive DEACT_CON after the answers already queued
    ([GI, STOP_GI], [(IC, 20, CON, False), (IC, 20, DCON, False)], SLICE_POINTS),
    # a counter interrogation likewise (this RTU has no counters: nothing answered either way)
    ([CIG, STOP_CI], [(CI, 5, CON, False), (CI, 5, DCON, False)], 0),
    # another qualifier than the one in progress: negative, the interrogation runs to its ACT_TERM
    ([GI, STOP_GI21], [(IC, 20, CON, False), (IC, 21, DCON, True), (IC, 20, TERM, False)], 2_500),
    ([GI22, STOP_GI], [(IC, 22, CON, False), (IC, 20, DCON, True), (IC, 22, TERM, False)], 2_500),
    # nothing of that type in progress: negative (the other type's interrogation goes on)
    ([STOP_GI], [(IC, 20, DCON, True)], 0),
    ([CIG, STOP_GI], [(CI, 5, CON, False), (IC, 20, DCON, True), (CI, 5, TERM, False)], 0),
    # the counter interrogation deactivated beside a station interrogation, which goes on
    ([GI, CIG, STOP_CI], [(IC, 20, CON, False), (CI, 5, CON, False), (CI, 5, DCON, False), (IC, 20, TERM, False)],
     2_500),
    # deactivated twice: the second finds nothing in progress
    ([GI, STOP_GI, STOP_GI], [(IC, 20, CON, False), (IC, 20, DCON, False), (IC, 20, DCON, True)], SLICE_POINTS),
    # a new interrogation before the DEACT_CON is sent is still refused, as during the answer
    ([GI, STOP_GI, GI], [(IC, 20, CON, False), (IC, 20, DCON, False), (IC, 20, CON, True)], SLICE_POINTS),
], ids=["station", "counter", "other qoi", "other group", "none", "other type", "counter beside station", "twice",
        "asked again at once"])
def test_a_deactivation_ends_the_masters_interrogation_of_that_type_and_qualifier_in_progress(
        together: list[bytes], expected: list[tuple[int, int, int, bool]], points: int) -> None:
    """Read together with the interrogation (its first slice is built when it is read, the others by
    `build`); then a station interrogation is accepted and answered in full."""
    st = big_station(2_500)
    m = Pair(st)
    m.start()
    m.got.clear()
    for a in together:
        m.master.send(a, 0.0)
    m.xfer()
    while st.build(m.s):
        pass
    m.xfer()
    assert ic_answers(m.got) == expected
    assert interrogated(m.got) == points
    assert not m.s.in_progress and not m.s.building
    next_interrogation_answered(st, m)


def test_an_interrogation_built_in_full_is_deactivated_until_its_act_term_is_sent() -> None:
    """Its answer queued in full, its ACT_TERM not sent yet: the answer stays (it is already queued), the
    ACT_TERM goes, a positive DEACT_CON comes last. Once the ACT_TERM is sent, a DEACT is too late."""
    st = station()
    st.load_image([upd(1001, 2.5), upd(2, 1)])
    m = Pair(st)
    m.start()
    m.got.clear()
    m.master.send(GI, 0.0)
    m.master.send(STOP_GI, 0.0)
    m.xfer()
    assert ic_answers(m.got) == [(IC, 20, CON, False), (IC, 20, DCON, False)]
    assert interrogated(m.got) == 8  # every status and measured point
    assert m.got[-1].cause == DCON
    m.got.clear()
    m.send(GI)
    m.send(STOP_GI)
    assert ic_answers(m.got) == [(IC, 20, CON, False), (IC, 20, TERM, False), (IC, 20, DCON, True)]


def test_an_interrogation_held_for_the_masters_position_is_deactivated_before_it_is_built() -> None:
    st = station()
    st.load_image([upd(1001, 2.5)])
    m = Pair(st)
    m.master.start(0.0)
    m.xfer()
    m.send(GI)
    m.send(STOP_GI)
    assert m.s.held == [] and m.got == []  # nothing sent before the master is resumed
    st.resume(m.s, None)
    m.xfer()
    assert ic_answers(m.got) == [(IC, 20, CON, False), (IC, 20, DCON, False)]
    assert interrogated(m.got) == 0


BACKLOG = [[upd(1001 if i % 2 else 1002, float(i))] for i in range(20)]
"""Twenty changes of two points of different types: twenty event ASDUs queued for a master (a slow link)."""


@pytest.mark.parametrize("request_, confirmed, answered", [
    (c.interrogation(CA), (IC, 20, CON, False), c.COT_INROGEN),
    (c.counter_interrogation(CA), (CI, 5, CON, False), c.COT_REQCOGEN),
    (c.interrogation(CA, qoi=19), (IC, 19, CON, True), None),
    (c.counter_interrogation(CA, qcc=5 | 0x40), (CI, 0x45, CON, True), None),  # freeze: refused
], ids=["station", "counter", "bad qoi", "freeze"])
def test_an_interrogations_act_con_goes_ahead_of_the_events_queued_its_answer_after_them(
        request_: bytes, confirmed: tuple[int, int, int, bool], answered: int | None) -> None:
    """A backlog of events (a slow link): the interrogation's ACT_CON, positive or negative, goes out first
    (a master times it out within seconds; before, it waited behind every event queued); its values and its
    ACT_TERM come after those events, so the master never gets the current image and then older events."""
    st = station()
    st.load_image([upd(1001, 2.5), upd(1002, 3.5), upd(3001, 9)])
    m = Pair(st)
    m.start()
    m.got.clear()
    feed(st, 2, BACKLOG)  # queued, not yet pumped
    m.master.send(request_, 0.0)
    st.receive(m.s, m.master.data_to_send(), 0.0)
    m.xfer()
    assert ic_answers(m.got[:1]) == [confirmed], ic_answers(m.got)
    assert [(a.cause, a.objects[0][0]) for a in m.got[1:21]] == [
        (c.COT_SPONT, 1001 if i % 2 else 1002) for i in range(20)]
    rest = m.got[21:]
    if answered is None:
        assert rest == []
        return
    assert rest and all(a.cause == answered for a in rest[:-1]), [(a.type_id, a.cause) for a in rest]
    assert ic_answers(rest[-1:]) == [(confirmed[0], confirmed[1], TERM, False)]
    values = {ioa: c.decode_element(a.type_id, e)[0] for a in rest[:-1] for ioa, e in a.objects}
    assert values[3001 if answered == c.COT_REQCOGEN else 1001] == (9 if answered == c.COT_REQCOGEN else 19.0)


@pytest.mark.parametrize("stop, refused", [(STOP_GI, (IC, 20, DCON, True)), (STOP_CI, (CI, 5, DCON, True))],
                         ids=["station", "counter"])
def test_a_deactivation_refused_with_nothing_in_progress_goes_ahead_of_the_events(
        stop: bytes, refused: tuple[int, int, int, bool]) -> None:
    """A DEACT with no interrogation of its type in progress (the master's ACT_TERM crossed it, say) is
    refused: its negative DEACT_CON ends nothing and carries no value, so it goes out ahead of a backlog of
    events, as a negative ACT_CON does (before, it waited behind every event queued)."""
    st = station()
    m = Pair(st)
    m.start()
    m.got.clear()
    feed(st, 2, BACKLOG)
    m.master.send(stop, 0.0)
    st.receive(m.s, m.master.data_to_send(), 0.0)
    m.xfer()
    assert ic_answers(m.got[:1]) == [refused], ic_answers(m.got)
    assert [(a.cause, a.objects[0][0]) for a in m.got[1:]] == [
        (c.COT_SPONT, 1001 if i % 2 else 1002) for i in range(20)]


def test_a_deactivation_refused_while_an_interrogation_is_in_progress_keeps_its_turn() -> None:
    """A DEACT of another group while the station interrogation is answered, then a second DEACT: their
    negative DEACT_CONs come in their turn, after the answer in progress and after the positive DEACT_CON of
    the first DEACT of that interrogation (ahead, they would overtake what they answer after)."""
    st = station()
    st.load_image([upd(1001, 2.5), upd(1002, 3.5)])
    m = Pair(st)
    m.start()
    m.got.clear()
    feed(st, 2, BACKLOG)
    for request_ in (GI, STOP_GI21, STOP_GI, STOP_GI):
        m.master.send(request_, 0.0)
    st.receive(m.s, m.master.data_to_send(), 0.0)
    m.xfer()
    assert ic_answers(m.got) == [(IC, 20, CON, False), (IC, 21, DCON, True), (IC, 20, DCON, False),
                                 (IC, 20, DCON, True)], ic_answers(m.got)
    assert all(a.cause == c.COT_SPONT for a in m.got[1:21])


def test_a_station_interrogation_confirmed_ahead_of_a_backlog_is_deactivated() -> None:
    """Its ACT_CON ahead of the events: the master, which now has it early, sends DEACT while the events and
    the first slice of the answer are still queued: the rest is not built, no ACT_TERM, a positive DEACT_CON
    after what was queued (every event included); the next interrogation is accepted and answered."""
    st = big_station(2_500)
    m = Pair(st)
    m.start()
    m.got.clear()
    big = [f for f, _ in st.monitor.values()][:2]
    feed(st, 1, [[Update(big[i % 2], Value(float(i), 0, 2), (0, 0))] for i in range(20)])
    m.master.send(GI, 0.0)
    st.receive(m.s, m.master.data_to_send(), 0.0)
    assert m.s.events_queued == 20
    m.got = [c.parse_asdu(e.asdu) for e in m.master.receive(st.pump(m.s, 0.0), 0.0) if isinstance(e, AsduIn)]
    assert ic_answers(m.got[:1]) == [(IC, 20, CON, False)]  # the first I frame
    m.master.send(STOP_GI, 0.0)
    m.xfer()
    while st.build(m.s):
        pass
    m.xfer()
    assert ic_answers(m.got) == [(IC, 20, CON, False), (IC, 20, DCON, False)]
    assert sum(len(a.objects) for a in m.got if a.cause == c.COT_SPONT) == 20
    assert interrogated(m.got) == SLICE_POINTS and m.got[-1].cause == DCON
    assert not m.s.in_progress and not m.s.building
    next_interrogation_answered(st, m)


def test_an_interrogation_sent_while_the_masters_position_is_read_is_confirmed_ahead_of_what_it_missed() -> None:
    """Sent with its STARTDT (as masters do), before it is resumed: its ACT_CON goes ahead of the events it
    missed, its answer after them (before, the ACT_CON waited behind the whole resumed backlog)."""
    st = station()
    st.load_image([upd(1001, 2.5)])
    st.cursors["m1"] = (1, 0)  # a known master, away while these changed
    feed(st, 2, BACKLOG)
    m = Pair(st)
    m.master.start(0.0)
    m.xfer()
    m.send(GI)
    assert m.got == []
    st.resume(m.s, st.cursors["m1"])
    m.xfer()
    causes = [a.cause for a in m.got]
    assert ic_answers(m.got[:1]) == [(IC, 20, CON, False)], causes
    assert causes[1:21] == [c.COT_SPONT] * 20, causes
    assert ic_answers(m.got) == [(IC, 20, CON, False), (IC, 20, TERM, False)], causes
    assert c.COT_SPONT not in causes[21:] and causes[21] == c.COT_INROGEN, causes  # then the scan (cause 2)


def test_the_next_slice_is_due_once_the_master_has_taken_most_of_what_is_queued() -> None:
    """`build_due` (the transport builds the next slice only then): fewer than `BUILD_AHEAD` ASDUs of image
    answers unsent. A master that takes nothing gets no more than that built ahead of it."""
    st = big_station(5_000)
    m = Pair(st)
    m.start()
    m.master.send(GI, 0.0)
    st.receive(m.s, m.master.data_to_send(), 0.0)  # nothing sent yet: ACT_CON and the first slice (34 ASDUs)
    assert m.s.image_queued < BUILD_AHEAD and st.build_due(m.s)
    st.build(m.s)
    assert m.s.image_queued >= BUILD_AHEAD and not st.build_due(m.s)
    m.xfer()  # the master takes them
    assert m.s.image_queued == 0 and st.build_due(m.s)
    while st.build_due(m.s):
        st.build(m.s)
        m.xfer()
    assert ic_answers(m.got)[-1] == (IC, 20, TERM, False) and interrogated(m.got) == 5_000


def test_the_slices_are_built_on_for_a_master_flooding_interrogations() -> None:
    """As many other answers as `BUILD_AHEAD` unsent (here the 99 refusals of the interrogations read with
    the first): the next slice is due whatever waits of the answer, or it would come after them all (and
    after those of every later request: a master flooding interrogations got none answered before
    `answers_max` closed it, `test_hostile_masters.py`)."""
    st = big_station(5_000)
    m = Pair(st)
    m.start()
    st.receive(m.s, c.i_frame(0, 0, GI), 0.0)
    st.build(m.s)
    assert m.s.image_queued >= BUILD_AHEAD and not st.build_due(m.s)
    st.receive(m.s, b"".join(c.i_frame(n, 0, GI) for n in range(1, 100)), 0.0)
    assert m.s.interrogations_refused == 99 and st.build_due(m.s)
