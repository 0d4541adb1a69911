"""Table tests of the IEC 104 link layer (fepha.iec104.link): bytes and times in, frames and events out."""

from __future__ import annotations

import random

import pytest

from fepha.iec104 import codec as c
from fepha.iec104.link import STARTED, STOPPED, Acked, AsduIn, Link, LinkParams, LinkTimeout, Role

GI = c.interrogation(7)
P = LinkParams(k=3, w=2, t0=5, t1=4, t2=2, t3=10)


def frames(data: bytes) -> list[c.Frame]:
    return c.FrameReader().feed(data)


def u(code: int) -> bytes:
    return c.u_frame(code)


def started(role: Role, now: float = 0.0) -> Link:
    """A link in data transfer (as after STARTDT act / con): I frames flow only then."""
    link = Link(role, P, now=now)
    link.started = True
    return link


def test_params_defaults_options_and_limits() -> None:
    d = LinkParams()
    assert (d.k, d.w, d.t0, d.t1, d.t2, d.t3) == (12, 8, 30, 15, 10, 20)
    p = LinkParams.from_options({"k": "5", "t1": 0.5, "other": 1})
    assert (p.k, p.w, p.t1, p.t3) == (5, 8, 0.5, 20)
    for bad in ({"k": 0}, {"w": 0}, {"t1": 0}, {"k": 40000}):
        with pytest.raises(ValueError):
            LinkParams.from_options(bad)


@pytest.mark.parametrize("incoming, out, events, started", [
    ([c.STARTDT_ACT], [c.STARTDT_CON], [STARTED], True),
    ([c.STARTDT_ACT, c.STARTDT_ACT], [c.STARTDT_CON, c.STARTDT_CON], [STARTED], True),
    ([c.STOPDT_ACT], [c.STOPDT_CON], [], False),
    ([c.STARTDT_ACT, c.STOPDT_ACT], [c.STARTDT_CON, c.STOPDT_CON], [STARTED, STOPPED], False),
    ([c.STARTDT_ACT, c.STOPDT_ACT, c.STARTDT_ACT], [c.STARTDT_CON, c.STOPDT_CON, c.STARTDT_CON],
     [STARTED, STOPPED, STARTED], True),
    ([c.TESTFR_ACT], [c.TESTFR_CON], [], False),
    ([c.TESTFR_CON], [], [], False),
])
def test_server_answers_u_frames(incoming: list[int], out: list[int], events: list[object],
                                 started: bool) -> None:
    link = Link(Role.SERVER, P)
    got = link.receive(b"".join(u(x) for x in incoming), 1.0)
    assert got == events
    assert [f.code for f in frames(link.data_to_send())] == out
    assert link.started is started
    assert link.data_to_send() == b""


@pytest.mark.parametrize("role, code", [
    (Role.SERVER, c.STARTDT_CON), (Role.SERVER, c.STOPDT_CON),
    (Role.CLIENT, c.STARTDT_ACT), (Role.CLIENT, c.STOPDT_ACT),
    (Role.CLIENT, c.STARTDT_CON), (Role.CLIENT, c.STOPDT_CON),  # never asked for
])
def test_u_frames_of_the_other_role_or_unsolicited_are_protocol_errors(role: Role, code: int) -> None:
    with pytest.raises(c.ProtocolError):
        Link(role, P).receive(u(code), 0.0)


def test_client_start_stop_and_confirmations() -> None:
    link = Link(Role.CLIENT, P)
    link.start(0.0)
    assert [f.code for f in frames(link.data_to_send())] == [c.STARTDT_ACT]
    assert link.pending == c.STARTDT_ACT and not link.started
    with pytest.raises(RuntimeError):
        link.start(0.1)  # one act at a time
    with pytest.raises(c.ProtocolError):
        Link(Role.CLIENT, P).receive(u(c.STOPDT_CON), 0.0)
    assert link.receive(u(c.STARTDT_CON), 0.5) == [STARTED]
    assert link.started and link.pending is None
    link.stop(1.0)
    assert not link.started and link.pending == c.STOPDT_ACT
    assert [f.code for f in frames(link.data_to_send())] == [c.STOPDT_ACT]
    assert link.receive(u(c.STOPDT_CON), 1.5) == [STOPPED]
    with pytest.raises(RuntimeError):
        Link(Role.SERVER, P).start(0.0)


def test_client_act_not_confirmed_within_t1_times_out() -> None:
    link = Link(Role.CLIENT, P, now=10.0)
    link.start(10.0)
    assert link.next_deadline() == 14.0
    link.tick(13.9)
    with pytest.raises(LinkTimeout, match="not confirmed"):
        link.tick(14.0)


def test_received_i_frames_in_sequence_acknowledged_after_w() -> None:
    link = started(Role.CLIENT)
    ev = link.receive(c.i_frame(0, 0, GI), 0.0)
    assert ev == [AsduIn(GI, 0)] and link.vr == 1 and link.data_to_send() == b""
    ev = link.receive(c.i_frame(1, 0, GI) + c.i_frame(2, 0, GI), 0.1)
    assert ev == [AsduIn(GI, 1), AsduIn(GI, 2)]
    out = frames(link.data_to_send())  # w=2: S frame after the second I frame
    assert [(f.kind, f.nr) for f in out] == [("S", 2)]
    assert link.rx_unacked == 1
    with pytest.raises(c.ProtocolError, match="expected 3"):
        link.receive(c.i_frame(5, 0, GI), 0.2)


def test_byte_at_a_time_feeding_gives_the_same_events() -> None:
    data = u(c.STARTDT_ACT) + c.i_frame(0, 0, GI) + u(c.TESTFR_ACT) + c.i_frame(1, 0, GI)
    link = Link(Role.SERVER, P)
    events = []
    for i in range(len(data)):
        events += link.receive(data[i:i + 1], float(i))
    assert events == [STARTED, AsduIn(GI, 0), AsduIn(GI, 1)]
    assert [f.kind + str(f.code or f.nr) for f in frames(link.data_to_send())] == \
        [f"U{c.STARTDT_CON}", f"U{c.TESTFR_CON}", "S2"]


def test_k_window_acks_and_tags() -> None:
    link = started(Role.SERVER)
    for i in range(3):
        assert link.window_open
        link.send(GI, float(i), tag=f"t{i}")
    assert not link.window_open and link.in_flight == 3
    with pytest.raises(RuntimeError, match="window"):
        link.send(GI, 3.0)
    sent = frames(link.data_to_send())
    assert [(f.kind, f.ns, f.nr) for f in sent] == [("I", 0, 0), ("I", 1, 0), ("I", 2, 0)]
    assert link.receive(c.s_frame(2), 3.0) == [Acked(("t0", "t1"))]
    assert link.window_open and link.in_flight == 1
    assert link.receive(c.s_frame(2), 3.1) == []  # the same acknowledgement again: nothing new
    with pytest.raises(c.ProtocolError, match="acknowledges 5"):
        link.receive(c.s_frame(5), 3.2)


def test_an_i_frame_acknowledges_and_our_i_frame_acknowledges_theirs() -> None:
    link = started(Role.CLIENT)
    link.send(GI, 0.0, tag=1)
    link.data_to_send()
    ev = link.receive(c.i_frame(0, 1, GI), 0.5)  # their I frame carries N(R)=1
    assert ev == [Acked((1,)), AsduIn(GI, 0)]
    assert link.rx_unacked == 1
    link.send(GI, 0.6)  # carries N(R)=1: no S frame owed any more
    assert link.rx_unacked == 0
    assert frames(link.data_to_send())[0].nr == 1
    link.tick(10.0 - 6)  # t2 would have fired if the ack were still owed
    assert [f.kind for f in frames(link.data_to_send())] == []


def test_release_unacked_hands_back_tags_and_keeps_numbers_valid() -> None:
    link = started(Role.SERVER)
    for i in range(3):
        link.send(GI, 0.0, tag=i)
    link.receive(c.s_frame(1), 0.1)
    assert link.release_unacked() == [1, 2]
    assert link.release_unacked() == []
    assert link.receive(c.s_frame(3), 0.2) == [Acked(())]  # valid: the window opens, no tags left
    link.tick(100.0 - 90)  # no t1 for released frames (t3 not due: last rx at 0.2)


@pytest.mark.parametrize("sent_at, now, expired", [(0.0, 3.99, False), (0.0, 4.0, True), (1.0, 4.5, False)])
def test_t1_on_an_unacknowledged_i_frame(sent_at: float, now: float, expired: bool) -> None:
    link = started(Role.SERVER, now=sent_at)
    link.send(GI, sent_at)
    assert link.next_deadline() == sent_at + P.t1
    if expired:
        with pytest.raises(LinkTimeout, match="t1"):
            link.tick(now)
    else:
        link.tick(now)


def test_t2_sends_the_owed_acknowledgement() -> None:
    link = started(Role.SERVER)
    link.receive(c.i_frame(0, 0, GI), 1.0)
    assert link.next_deadline() == 3.0
    link.tick(2.9)
    assert link.data_to_send() == b""
    link.tick(3.0)
    assert [(f.kind, f.nr) for f in frames(link.data_to_send())] == [("S", 1)]
    link.tick(3.5)
    assert link.data_to_send() == b""


def test_t3_testfr_then_t1_without_answer_and_any_data_counts_as_answer() -> None:
    link = Link(Role.CLIENT, P, now=0.0)
    assert link.next_deadline() == 10.0
    link.tick(9.9)
    assert link.data_to_send() == b""
    link.tick(10.0)
    assert [f.code for f in frames(link.data_to_send())] == [c.TESTFR_ACT]
    assert link.next_deadline() == 14.0
    link.tick(12.0)  # not sent twice
    assert link.data_to_send() == b""
    link.receive(c.s_frame(0), 13.0)  # any frame shows the peer alive
    link.tick(14.0)
    assert link.next_deadline() == 23.0
    link.tick(23.0)
    assert [f.code for f in frames(link.data_to_send())] == [c.TESTFR_ACT]
    with pytest.raises(LinkTimeout, match="TESTFR"):
        link.tick(27.0)


def test_sequence_numbers_wrap_at_32768() -> None:
    a, b = started(Role.SERVER), started(Role.CLIENT)
    a.vs = a.ack = b.vr = b.confirmed = b.rx_acked = 32766
    for i in range(3):
        a.send(GI, 0.0, tag=i)
    assert [f.ns for f in frames(a.data_to_send())] == [32766, 32767, 0]
    b.receive(c.i_frame(32766, 0, GI) + c.i_frame(32767, 0, GI) + c.i_frame(0, 0, GI), 0.0)
    assert b.vr == 1
    assert a.receive(c.s_frame(0), 0.1) == [Acked((0, 1))]
    assert a.receive(c.s_frame(1), 0.2) == [Acked((2,))]


@pytest.mark.parametrize("seed", range(5))
def test_client_and_server_back_to_back_lose_nothing(seed: int) -> None:
    """Two links wired to each other, random k/w, random chunking: every ASDU arrives once, in order,
    every sent frame is acknowledged in the end."""
    rnd = random.Random(seed)
    p = LinkParams(k=rnd.randint(1, 12), w=rnd.randint(1, 8), t1=15, t2=0.05, t3=20)  # k < w: t2 acknowledges
    srv, cli = Link(Role.SERVER, p), Link(Role.CLIENT, p)
    cli.start(0.0)
    todo = [c.build_asdu(c.M_SP_NA_1, c.COT_SPONT, 7, [(i, b"\x01")]) for i in range(500)]
    got: list[bytes] = []
    acked: list[object] = []
    now = 0.0
    started = False
    while len(got) < len(todo) or srv.in_flight:
        now += 0.01
        while started and todo[len(acked) + srv.in_flight:] and srv.window_open:
            n = len(acked) + srv.in_flight
            srv.send(todo[n], now, tag=n)
        for src, dst, sink in ((srv, cli, got), (cli, srv, None)):
            data = src.data_to_send()
            while data:
                cut = rnd.randint(1, len(data))
                for ev in dst.receive(data[:cut], now):
                    if isinstance(ev, AsduIn) and sink is not None:
                        sink.append(ev.asdu)
                    if isinstance(ev, Acked):
                        acked.extend(ev.tags)
                    if ev == STARTED:
                        started = True
                data = data[cut:]
        cli.tick(now)
        srv.tick(now)
        assert now < 100, "stalled"
    assert got == todo
    assert acked == list(range(500))
    assert srv.started and cli.started


# --- data transfer stopped, STOPDT (IEC 60870-5-104 Ed. 2 state diagrams) ------------------------------


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_an_i_frame_while_data_transfer_is_stopped_is_a_protocol_error(role: Role) -> None:
    with pytest.raises(c.ProtocolError, match="stopped"):
        Link(role, P).receive(c.i_frame(0, 0, GI), 0.0)
    with pytest.raises(RuntimeError, match="stopped"):
        Link(role, P).send(GI, 0.0)  # and none is sent before STARTDT


def test_a_client_waiting_for_its_stopdt_con_still_takes_what_was_sent_before() -> None:
    link = started(Role.CLIENT)
    link.stop(0.0)
    assert link.receive(c.i_frame(0, 0, GI), 0.1) == [AsduIn(GI, 0)]
    assert link.receive(u(c.STOPDT_CON), 0.2) == [STOPPED]
    with pytest.raises(c.ProtocolError, match="stopped"):
        link.receive(c.i_frame(1, 0, GI), 0.3)


def test_stopdt_acknowledges_what_was_received_before_its_confirmation() -> None:
    link = Link(Role.SERVER, P)
    link.receive(u(c.STARTDT_ACT) + c.i_frame(0, 0, GI), 0.0)  # w=2: one I frame not acknowledged yet
    link.data_to_send()
    assert link.receive(u(c.STOPDT_ACT), 0.1) == [STOPPED]
    assert [(f.kind, f.nr if f.kind == "S" else f.code) for f in frames(link.data_to_send())] == \
        [("S", 1), ("U", c.STOPDT_CON)]


def test_stopdt_con_waits_until_every_sent_i_frame_is_acknowledged() -> None:
    link = started(Role.SERVER)
    for i in range(2):
        link.send(GI, 0.0, tag=i)
    link.data_to_send()
    assert link.receive(u(c.STOPDT_ACT), 1.0) == [STOPPED]
    assert link.data_to_send() == b""  # pending unconfirmed stopped: no confirmation yet
    with pytest.raises(RuntimeError, match="stopped"):
        link.send(GI, 1.0)
    assert link.next_deadline() == 1.0 + P.t1 - 1.0  # the first I frame's t1 (sent at 0) comes first
    link.receive(c.s_frame(1), 1.5)
    assert link.data_to_send() == b""
    link.receive(c.s_frame(2), 2.0)
    assert [f.code for f in frames(link.data_to_send())] == [c.STOPDT_CON]


def test_stopdt_con_pending_times_out_after_t1_or_is_moot_after_startdt() -> None:
    link = started(Role.SERVER)
    link.send(GI, 0.0)
    link.release_unacked()  # the station hands the events back when stopped: t1 of the STOPDT remains
    link.receive(u(c.STOPDT_ACT), 1.0)
    assert link.next_deadline() == 1.0 + P.t1
    with pytest.raises(LinkTimeout, match="STOPDT"):
        link.tick(1.0 + P.t1)
    again = started(Role.SERVER)
    again.send(GI, 0.0)
    again.receive(u(c.STOPDT_ACT), 1.0)
    assert again.receive(u(c.STARTDT_ACT), 1.1) == [STARTED]
    again.receive(c.s_frame(1), 1.2)
    assert [f.code for f in frames(again.data_to_send()) if f.kind == "U"] == [c.STARTDT_CON]  # no STOPDT con


def test_an_acknowledgement_going_backwards_is_a_protocol_error() -> None:
    link = started(Role.SERVER)
    for _ in range(3):
        link.send(GI, 0.0)
    link.receive(c.s_frame(2), 0.1)
    with pytest.raises(c.ProtocolError, match="acknowledges 1"):
        link.receive(c.s_frame(1), 0.2)


def held(now: float = 0.0) -> Link:
    """A client that acknowledges only what its caller confirmed (the acquirer: written to Redis)."""
    link = Link(Role.CLIENT, P, now=now, confirm_by_caller=True)
    link.started = True
    return link


def acks(link: Link) -> list[int]:
    return [f.nr for f in frames(link.data_to_send()) if f.kind in "SI"]


@pytest.mark.parametrize("received, confirmed, out", [
    (1, 0, []),         # nothing confirmed: nothing acknowledged, even past w
    (3, 0, []),
    (3, 1, []),         # 1 confirmed < w=2: waits (t2)
    (3, 2, [2]),        # w confirmed: S frame up to what is confirmed, not to what is received
    (3, 3, [3]),
])
def test_only_confirmed_frames_are_acknowledged_w(received: int, confirmed: int, out: list[int]) -> None:
    link = held()
    assert [e.ns for e in link.receive(b"".join(c.i_frame(i, 0, GI) for i in range(received)), 0.0)] == \
        list(range(received))
    assert link.data_to_send() == b""
    link.confirm(confirmed, 0.1)
    assert acks(link) == out
    assert link.rx_unacked == received - (out[-1] if out else 0)
    assert link.rx_unconfirmed == received - confirmed


def test_t2_acknowledges_only_confirmed_frames_and_does_not_spin_on_unconfirmed() -> None:
    link = held()
    link.receive(c.i_frame(0, 0, GI) + c.i_frame(1, 0, GI), 1.0)
    assert link.next_deadline() == 1.0 + P.t3  # unconfirmed frames set no t2 deadline
    link.tick(1.0 + P.t2)
    assert link.data_to_send() == b""  # t2 passed, nothing confirmed: not acknowledged
    link.confirm(1, 2.0)  # the oldest waited less than t2: not yet
    assert link.data_to_send() == b"" and link.next_deadline() == 1.0 + P.t2
    link.tick(1.0 + P.t2)
    assert acks(link) == [1]
    link.confirm(2, 3.5)  # confirmed after its t2 already passed: at once
    assert acks(link) == [2] and link.rx_unacked == 0


def test_confirm_at_once_acknowledges_without_waiting_for_w_or_t2() -> None:
    link = held()
    link.receive(c.i_frame(0, 0, GI) + c.i_frame(1, 0, GI) + c.i_frame(2, 0, GI), 1.0)
    link.confirm(1, 1.01, at_once=True)  # 1 frame < w=2, long before t2: acknowledged all the same
    assert acks(link) == [1] and link.rx_unacked == 2
    link.confirm(1, 1.02, at_once=True)  # nothing more confirmed: no S frame
    assert link.data_to_send() == b""
    link.confirm(3, 1.03, at_once=True)
    assert acks(link) == [3] and link.rx_unacked == 0 and link.next_deadline() == 1.0 + P.t3


def test_our_i_frame_carries_the_confirmed_number_and_confirm_checks_its_argument() -> None:
    link = held()
    link.receive(c.i_frame(0, 0, GI) + c.i_frame(1, 0, GI), 0.0)
    link.send(GI, 0.1)
    assert acks(link) == [0]  # N(R) 0: nothing confirmed yet
    link.confirm(1, 0.2)
    link.send(GI, 0.3)
    assert acks(link) == [1] and link.rx_unacked == 1
    link.confirm(1, 0.4)  # again: nothing changes
    with pytest.raises(ValueError, match="received"):
        link.confirm(3, 0.5)
    link.confirm(2, 0.6)
    link.tick(0.6 + P.t2)
    assert acks(link) == [2]


def test_frames_taken_while_our_stopdt_waits_stay_unacknowledged_unless_confirmed() -> None:
    link = held()
    link.stop(0.0)
    link.data_to_send()
    link.receive(c.i_frame(0, 0, GI) + c.i_frame(1, 0, GI) + c.i_frame(2, 0, GI), 0.1)
    assert link.receive(u(c.STOPDT_CON), 0.2) == [STOPPED]
    link.tick(0.1 + P.t2)
    assert link.data_to_send() == b"" and link.rx_unacked == 3  # the RTU keeps them (its t1 closes)


def test_the_acquirers_caller_confirmed_acknowledgements_wrap_at_32768() -> None:
    """The acquirer's link (confirm_by_caller) across the wrap: frames 32766, 32767, 0, 1 received,
    confirmed as written in two steps; each S frame carries the wrapped N(R), and a confirmation of a frame
    not received is refused."""
    link = held()
    link.vr = link.confirmed = link.rx_acked = 32766
    got = link.receive(b"".join(c.i_frame(ns, 0, GI) for ns in (32766, 32767, 0, 1)), 0.0)
    assert [e.ns for e in got] == [32766, 32767, 0, 1] and link.vr == 2
    link.confirm(0, 0.0, at_once=True)  # 32766 and 32767 written
    assert acks(link) == [0] and link.rx_unconfirmed == 2
    with pytest.raises(ValueError, match="received"):
        link.confirm(3, 0.0)
    link.confirm(2, 0.0, at_once=True)
    assert acks(link) == [2] and link.rx_unconfirmed == 0 and link.rx_unacked == 0
