"""IEC 104 acquisition: every event written once when connections close. Real sockets: fep-rtu104sim (the
RTU that keeps what was not acknowledged, and sends it again after the next STARTDT), c104's server
(lib60870) for untagged spontaneous objects, and a scripted RTU on our own link (role SERVER) for the exact
orders a real RTU may send: an interrogation answer behind a newer spontaneous event, an end of
initialisation in the middle of a connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from fepha.iec104 import codec as c
from fepha.iec104.link import AsduIn, Link, LinkParams, Role
from tests.acquirer.helpers import Node, load, merge, node_cfg, until
from tests.acquirer.test_iec104 import (
    CA,
    IEC_FAST,
    _count,
    _is,
    changes_of,
    holder,
    iec_rows,
    sim_system,
    value_of,
)
from tests.redisproc import free_port
from tests.stays import astays


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


async def _nothing() -> None:
    return None


def no_iv_flicker(node, rid: int) -> None:
    """The holder does not mark its points invalid while it reconnects at once (housekeeping would at its
    next tick: a quality change, after which the same value is rightly written again); the test looks at
    the re-sent events alone."""
    node.acq.runners[rid].invalidate = _nothing


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


@pytest.mark.parametrize("how", ["reconnect", "takeover"])
@pytest.mark.parametrize("tags", [False, True])
async def test_events_resent_after_a_cut_are_written_once(redis_master, feproot, tags, how):
    """Three events are written but the RTU never sees our acknowledgement (lost on the way), then the
    connection is cut (the holder reconnects) or the holder dies (the other node takes over when the lease
    lapses: stop_handover_s 0; a planned stop's STOPDT would acknowledge them, as it should). The RTU
    sends them again after the next STARTDT: each reaches the change stream once. Untagged (they carry
    our reception time): each equals its point's value and quality in Redis, no change (rules.write_mode
    CHANGES; the new holder reads the master's values first); time-tagged: recognised by point, value,
    quality and time tag among the newest change records."""
    rows = merge(iec_rows(5, free_port()))
    if not tags:
        untagged(rows)
    async with sim_system(redis_master, feproot, rows, sim_options={"time_tags": tags},
                          stop_handover_s=0) as (sim, nodes, r):
        h = await until(lambda: holder(nodes, 5), 5)
        await until(lambda: _is(value_of(r, 5, 5003), 0.0), 3)
        await until(lambda: (s := session(sim, 5)) is not None and s.link.in_flight == 0, 5)
        no_iv_flicker(nodes[h], 5)
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
        if how == "reconnect":
            await sim.cut(5)
            restore()
            await sim.restore(5)
        else:
            await nodes[h].stop()
            restore()
            other = "B" if h == "A" else "A"
            await until(lambda: holder({other: nodes[other]}, 5), 5)
            no_iv_flicker(nodes[other], 5)
        await until(lambda: sim.counters(5)["events_sent"] >= sent + 3, 5)  # sent again after STARTDT
        await until(lambda: (s := session(sim, 5)) is not None and s.link.in_flight == 0, 5)
        await asyncio.sleep(0.3)                                           # the GI's answers too
        for pid, want in ((5001, 1), (5002, 1), (5003, 42.0)):
            recs = (await changes_of(r, pid))[before[pid]:]
            assert [(x.value, x.quality) for x in recs if x.quality == 0][:1] == [(want, 0)], recs
            # no record repeats the one before it
            key = (lambda x: (x.value, x.quality, x.ts_ms)) if tags else (lambda x: (x.value, x.quality))
            assert all(key(a) != key(b) for a, b in itertools.pairwise(recs)), recs


class ScriptRtu:
    """A controlled station on our own link (role SERVER) over a real socket, answering as a test says:
    `on_gi(asdu)` sends what follows a general interrogation act (by default `answer_gi`: ACT_CON, the
    image as interrogated objects, ACT_TERM), `on_ci(asdu)` what follows a counter interrogation (by default
    `answer_ci`: ACT_CON, ACT_TERM); clock syncs are confirmed.
    `received` lists every ASDU the acquirer sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[c.Asdu] = []
        self.image: dict[int, tuple[int, float]] = {100: (c.M_SP_NA_1, 0), 200: (c.M_ME_NC_1, 0.0)}
        self.on_gi: Callable[[c.Asdu], None] = self.answer_gi
        self.on_ci: Callable[[c.Asdu], None] = self.answer_ci
        self.conn: tuple[Link, asyncio.StreamWriter] | None = None

    async def __aenter__(self) -> ScriptRtu:
        self.srv = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.srv.close()
        if self.conn is not None:
            self.conn[1].close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.srv.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(Role.SERVER, LinkParams(k=12, w=8, t1=5, t2=0.05, t3=10), time.monotonic())
        self.conn = (link, writer)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.02)
                except TimeoutError:
                    data = None
                if data == b"":
                    return
                now = time.monotonic()
                for ev in link.receive(data, now) if data else ():
                    if isinstance(ev, AsduIn):
                        self._asdu(c.parse_asdu(ev.asdu))
                link.tick(now)
                writer.write(link.data_to_send())
        finally:
            writer.close()

    def send(self, asdu: bytes) -> None:
        assert self.conn is not None
        link, writer = self.conn
        link.send(asdu, time.monotonic())
        writer.write(link.data_to_send())

    def _asdu(self, a: c.Asdu) -> None:
        self.received.append(a)
        if a.type_id == c.C_IC_NA_1:
            self.on_gi(a)
        elif a.type_id == c.C_CS_NA_1:
            self.send(c.mirror(a, c.COT_ACTCON))
        elif a.type_id == c.C_CI_NA_1:
            self.on_ci(a)

    def answer_ci(self, a: c.Asdu) -> None:
        self.send(c.mirror(a, c.COT_ACTCON))
        self.send(c.mirror(a, c.COT_ACTTERM))

    def answer_gi(self, a: c.Asdu, term: bool = True, con: bool = True) -> None:
        if con:
            self.send(c.mirror(a, c.COT_ACTCON))
        for ioa, (t, v) in self.image.items():
            self.send(c.build_asdu(t, c.COT_INROGEN, CA, [(ioa, c.element(t, v, 0, 0))]))
        if term:
            self.send(c.mirror(a, c.COT_ACTTERM))

    def sent_types(self, since: int = 0) -> list[int]:
        return [a.type_id for a in self.received[since:]]


def script_rows(port: int, gi_ms: int | None = None) -> dict[str, list[dict[str, Any]]]:
    return merge(iec_rows(5, port, gi_ms=gi_ms))


async def test_end_of_initialisation_mid_connection_brings_clock_sync_gi_and_ci(redis_master, feproot):
    """The RTU restarts its application without closing the connection and reports M_EI_NA_1 (cause 4):
    its clock, image and counters may be new, so the acquirer synchronises the clock, interrogates and
    reads the counters again (as after STARTDT; here with no periodic GI, the default)."""
    port = free_port()
    load(redis_master, script_rows(port))
    async with ScriptRtu(port) as rtu:
        a = Node(node_cfg(feproot, redis_master, "A", **{**IEC_FAST, "iec104_clock_sync_s": 60.0}))
        try:
            await until(lambda: rtu.sent_types().count(c.C_CI_NA_1) == 1, 5)
            assert rtu.sent_types()[:3] == [c.C_CS_NA_1, c.C_IC_NA_1, c.C_CI_NA_1]  # after STARTDT
            await asyncio.sleep(0.3)
            n = len(rtu.received)
            rtu.send(c.build_asdu(c.M_EI_NA_1, c.COT_INIT, CA, [(0, b"\x00")]))
            await until(lambda: len(rtu.received) >= n + 3, 3)
            assert rtu.sent_types(n) == [c.C_CS_NA_1, c.C_IC_NA_1, c.C_CI_NA_1]
        finally:
            await a.stop()


@pytest.mark.parametrize("refuse", [False, True])
async def test_counters_read_after_every_startdt_without_a_ci_period(redis_master, feproot, caplog, refuse):
    """ci_period_s 0 (no periodic counter interrogation) and an RTU with a counter (IOA 300): a CI follows
    the GI after the first STARTDT and after a reconnect (the RTU closed the connection), so the counter is
    read again at once; before, none was ever sent and the counter stayed IV after a reconnect until the RTU
    sent it by itself. An RTU that refuses the CI (negative ACT_CON) is logged once and its counter stays
    as it was (never shown good)."""
    port = free_port()
    load(redis_master, script_rows(port))
    reading = iter(range(41, 50))

    def on_ci(a: c.Asdu) -> None:
        rtu.send(c.mirror(a, c.COT_ACTCON, negative=refuse))
        if not refuse:
            rtu.send(c.build_asdu(c.M_IT_NA_1, c.COT_REQCOGEN, CA, [(300, c.element(c.M_IT_NA_1, next(reading), 0, 0))]))
            rtu.send(c.mirror(a, c.COT_ACTTERM))

    async with ScriptRtu(port) as rtu:
        rtu.on_ci = on_ci
        a = Node(node_cfg(feproot, redis_master, "A", **{**IEC_FAST, "iec104_ci_period_s": 0.0}))
        r = a.master
        try:
            await until(lambda: c.C_CI_NA_1 in rtu.sent_types(), 5)
            assert rtu.sent_types()[:2] == [c.C_IC_NA_1, c.C_CI_NA_1]  # after STARTDT: GI, then CI
            if not refuse:
                await until(lambda: _is(value_of(r, 5, 5004), 41), 3)
            n, first = len(rtu.received), rtu.conn
            rtu.conn[1].close()                                       # the RTU drops the connection
            await until(lambda: rtu.conn is not first and c.C_CI_NA_1 in rtu.sent_types(n), 5)
            assert rtu.sent_types(n)[:2] == [c.C_IC_NA_1, c.C_CI_NA_1]
            if refuse:
                async def never_good() -> bool:                           # no reading came
                    v = await value_of(r, 5, 5004)
                    return v is None or bool(v.quality & 0x80)
                await astays(never_good, 0.3, "counter 5004 not good after a refused counter interrogation")
                assert caplog.text.count("RTU refused type 101") == 1
            else:
                await until(lambda: _is(value_of(r, 5, 5004), 42), 3)  # read again, good
        finally:
            await a.stop()


async def test_end_of_initialisation_after_a_gi_never_terminated_or_during_a_later_gi_brings_a_gi(
        redis_master, feproot, caplog):
    """An RTU that confirms and answers every GI but never sends its ACT_TERM. An end of initialisation
    while the GI after STARTDT is open needs nothing more (that GI reaches the initialised station); t1
    (3 s here) after its last answer the GI is given up (logged once), and an end of initialisation then
    brings a GI again. The RTU restarts once more while that second GI is open (confirmed and answered,
    not terminated): a GI again at once, since that one was sent before the restart. Before, a GI never
    terminated stayed open for the whole connection and no end of initialisation brought a GI any more."""
    port = free_port()
    load(redis_master, script_rows(port))
    ei = c.build_asdu(c.M_EI_NA_1, c.COT_INIT, CA, [(0, b"\x01")])  # COI 1: local manual reset
    async with ScriptRtu(port) as rtu:
        gis: list[float] = []

        def on_gi(a: c.Asdu) -> None:
            gis.append(time.monotonic())
            rtu.answer_gi(a, term=False)

        rtu.on_gi = on_gi
        a = Node(node_cfg(feproot, redis_master, "A", **{**IEC_FAST, "iec104_t1_s": 3.0}))
        try:
            await until(lambda: len(gis) == 1, 5)
            await asyncio.sleep(0.3)
            rtu.send(ei)                                  # the GI after STARTDT still open: covered
            await asyncio.sleep(0.5)
            assert len(gis) == 1
            await asyncio.sleep(3.2)                      # t1 after its answers: given up
            rtu.send(ei)
            await until(lambda: len(gis) == 2, 2)
            assert "general interrogation not terminated" in caplog.text
            await asyncio.sleep(0.2)                      # confirmed and answered, open
            rtu.send(ei)
            await until(lambda: len(gis) == 3, 2)
            assert gis[2] - gis[1] < 2.5                  # at once, not after that GI was given up
            assert caplog.text.count("general interrogation not terminated") == 1
        finally:
            await a.stop()


async def test_a_periodic_gi_waits_for_the_open_one_to_end(redis_master, feproot):
    """An RTU whose GI takes longer than the GI period (POLLMS 300 ms, answers and ACT_TERM 0.8 s after the
    ACT_CON): the next GI is sent once the open one is terminated, never while it is open (an RTU refuses
    a second one, P/N 1, or answers both interleaved). Before, a GI went every period whatever was open."""
    port = free_port()
    load(redis_master, script_rows(port, gi_ms=300))
    async with ScriptRtu(port) as rtu:
        gis: list[tuple[float, bool]] = []  # (when, another GI open then)
        open_gis: list[c.Asdu] = []

        def finish(a: c.Asdu) -> None:
            open_gis.remove(a)
            rtu.answer_gi(a, con=False)     # the answers, ACT_TERM

        def on_gi(a: c.Asdu) -> None:
            gis.append((time.monotonic(), bool(open_gis)))
            open_gis.append(a)
            rtu.send(c.mirror(a, c.COT_ACTCON))
            asyncio.get_running_loop().call_later(0.8, finish, a)

        rtu.on_gi = on_gi
        a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
        try:
            await until(lambda: len(gis) >= 3, 6)
            assert not any(overlap for _, overlap in gis), gis
            assert all(b[0] - a_[0] >= 0.75 for a_, b in itertools.pairwise(gis)), gis
        finally:
            await a.stop()


async def test_gi_answer_behind_a_newer_spontaneous_event_does_not_overwrite_it(redis_master, feproot):
    """A periodic GI's snapshot of IOA 100 (OFF) comes after a spontaneous event of that point (ON, the
    device's time tag) sent while the interrogation was in progress: the point stays ON in Redis (the
    change stream's last record of it is the event), later answers are written as they change it."""
    port = free_port()
    load(redis_master, script_rows(port, gi_ms=800))
    async with ScriptRtu(port) as rtu:
        gis: list[int] = []

        def on_gi(a: c.Asdu) -> None:
            gis.append(int(time.time() * 1000))
            if len(gis) != 2:
                rtu.answer_gi(a)
                return
            rtu.send(c.mirror(a, c.COT_ACTCON))
            rtu.send(c.build_asdu(c.M_SP_TB_1, c.COT_SPONT, CA, [(100, c.element(c.M_SP_TB_1, 1, 0, gis[1]))]))
            rtu.send(c.build_asdu(c.M_SP_NA_1, c.COT_INROGEN, CA, [(100, c.element(c.M_SP_NA_1, 0, 0, 0))]))
            rtu.send(c.build_asdu(c.M_ME_NC_1, c.COT_INROGEN, CA, [(200, c.element(c.M_ME_NC_1, 3.0, 0, 0))]))
            rtu.send(c.mirror(a, c.COT_ACTTERM))
            rtu.image.update({100: (c.M_SP_NA_1, 1), 200: (c.M_ME_NC_1, 3.0)})  # the next GIs' state

        rtu.on_gi = on_gi
        a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
        r = a.master
        try:
            await until(lambda: len(gis) >= 3, 5)
            await until(lambda: _is(value_of(r, 5, 5003), 6.0), 3)   # the second GI's other answer: written
            v = await value_of(r, 5, 5001)
            assert (v.value, v.ts_ms) == (1, gis[1]), v
            recs = await changes_of(r, 5001)
            assert [(x.value, x.ts_ms) for x in recs if x.ts_ms >= gis[0]][-1] == (1, gis[1]), recs
        finally:
            await a.stop()


async def test_untagged_spontaneous_repeats_are_no_change_but_counter_readings_are(redis_master, feproot):
    """c104's server (lib60870) sends untagged spontaneous objects: one equal to its point's value and
    quality is not written (the change rule; a re-send looks exactly like it), a change is; an integrated
    total is written every time (each is a reading)."""
    import c104

    port = free_port()
    load(redis_master, untagged(merge(iec_rows(5, port))))
    server = c104.Server(ip="127.0.0.1", port=port, tick_rate_ms=50, max_connections=2)
    st = server.add_station(common_address=CA)
    sp = st.add_point(io_address=100, type=c104.Type.M_SP_NA_1)
    me = st.add_point(io_address=200, type=c104.Type.M_ME_NC_1)
    it = st.add_point(io_address=300, type=c104.Type.M_IT_NA_1)
    server.start()
    a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
    r = a.master
    try:
        await until(lambda: holder({"A": a}, 5), 5)
        await until(lambda: _is(value_of(r, 5, 5003), 0.0), 5)
        await until(lambda: value_of(r, 5, 5004), 5)          # the counter interrogation's answer
        await asyncio.sleep(0.3)
        before = {pid: len(await changes_of(r, pid)) for pid in (5001, 5003, 5004)}
        for p, values in ((sp, (True, True, False)), (me, (1.5, 1.5)), (it, (7, 7))):
            for v in values:
                p.value = v
                p.transmit(cause=c104.Cot.SPONTANEOUS)
                await asyncio.sleep(0.05)
        await until(lambda: _count(changes_of(r, 5004), before[5004] + 2), 3)
        await asyncio.sleep(0.3)
        got = {pid: [x.value for x in (await changes_of(r, pid))[before[pid]:]] for pid in before}
        assert got == {5001: [1, 0], 5003: [3.0], 5004: [7, 7]}, got
    finally:
        await a.stop()
        server.stop()


def resend_on_second_gi(rtu: ScriptRtu, frames: list[bytes]) -> list[int]:
    """The RTU answers every GI; on the second connection's it sends `frames` behind the answers (its
    queue of what it had not seen acknowledged). Returns the list of GIs received so far."""
    gis: list[int] = []

    def on_gi(a: c.Asdu) -> None:
        gis.append(len(gis))
        rtu.answer_gi(a)
        if len(gis) == 2:
            for f in frames:
                rtu.send(f)

    rtu.on_gi = on_gi
    return gis


async def started_holder(feproot, redis_master, gis: list[int]) -> Node:
    """Node A, the holder of RTU 5 with data transfer started and the first GI sent."""
    a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
    try:
        await until(lambda: len(gis) == 1 and a.acq.runners[5].link and a.acq.runners[5].link.started, 5)
    except BaseException:
        await a.stop()
        raise
    return a


async def test_resent_tagged_events_behind_the_gi_answers_are_recognised(redis_master, feproot):
    """An RTU that answers an interrogation ahead of its queue of events (lib60870: its high-priority
    queue first) re-sends, after the next STARTDT, three time-tagged events already written, behind the
    answers to the new GI: each stays once in the change stream."""
    port = free_port()
    load(redis_master, script_rows(port))
    t = int(time.time() * 1000) - 5000
    events = [c.build_asdu(c.M_SP_TB_1, c.COT_SPONT, CA, [(100, c.element(c.M_SP_TB_1, v, 0, t + i))])
              for i, v in enumerate((1, 0, 1))]
    async with ScriptRtu(port) as rtu:
        gis = resend_on_second_gi(rtu, events)
        a = await started_holder(feproot, redis_master, gis)
        r = a.master
        try:
            await asyncio.sleep(0.2)
            rtu.image[100] = (c.M_SP_NA_1, 1)
            for e in events:
                rtu.send(e)
            await until(lambda: _count(changes_of(r, 5001), 4), 3)
            assert rtu.conn is not None
            rtu.conn[1].transport.abort()   # the connection ends (say, our S frame never arrived)
            await until(lambda: len(gis) == 2, 5)
            await asyncio.sleep(0.5)
            got = [x.ts_ms - t for x in await changes_of(r, 5001) if t <= x.ts_ms <= t + 2]
            assert got == [0, 1, 2], got
        finally:
            await a.stop()


async def test_untagged_event_whose_write_reply_was_lost_is_not_written_again(redis_master, feproot):
    """The write of an untagged event reaches Redis but its reply is lost (a fault injected into the
    holder's writer): the holder closes the connection unacknowledged, the RTU sends the event again after
    the next STARTDT, and the holder, having read what the master holds, finds it is no change."""
    from fep_acquirer.writer import WriteResult

    rows = untagged(merge(iec_rows(5, free_port())))
    async with sim_system(redis_master, feproot, rows, sim_options={"time_tags": False}) as (sim, nodes, r):
        h = await until(lambda: holder(nodes, 5), 5)
        await until(lambda: _is(value_of(r, 5, 5003), 0.0), 3)
        await until(lambda: (s := session(sim, 5)) is not None and s.link.in_flight == 0, 5)
        before = len(await changes_of(r, 5001))
        no_iv_flicker(nodes[h], 5)
        w = nodes[h].acq.writer
        write, lost = w.write, []

        async def reply_lost(rtu: int, epoch: int, pairs: list[str]) -> WriteResult:
            res = await write(rtu, epoch, pairs)
            if rtu == 5 and "5001" in pairs[::2] and not lost:
                lost.append(res)
                return WriteResult(False, error="ConnectionError: reply lost (injected)")
            return res

        w.write = reply_lost
        sent = sim.counters(5)["events_sent"]
        sim.set_value(5001, 1)
        await until(lambda: lost, 3)
        assert lost[0].ok                                             # it was written
        await until(lambda: sim.counters(5)["events_sent"] >= sent + 2, 5)  # and sent again
        await until(lambda: (s := session(sim, 5)) is not None and s.link.in_flight == 0, 5)
        await asyncio.sleep(0.3)
        recs = (await changes_of(r, 5001))[before:]
        assert [(x.value, x.quality) for x in recs if x.quality == 0][:1] == [(1, 0)], recs
        assert all((a.value, a.quality) != (b.value, b.quality) for a, b in itertools.pairwise(recs)), recs


@pytest.mark.parametrize("shape", ["replaced first", "replaced last", "across frames"])
async def test_asdu_with_some_tags_replaced_sent_again_after_a_cut_is_written_once(redis_master, feproot, shape):
    """An RTU whose clock is sometimes wrong sends events of IOA 100, some tags taken, some beyond the
    tolerance (3 h ahead: the reception time replaces them), several in one ASDU (SQ = 0); the connection
    ends before it sees our acknowledgement, and after the next STARTDT it sends them again. The replaced
    objects follow the change rule, the taken ones are recognised: within one ASDU nothing is written the
    second time; a replaced object that changes the point in an earlier frame of the tail is written again
    and so is the recognised event after it. Either way the point ends on the last state the RTU sent.
    Before, a whole ASDU with a tag taken counted as tagged: its replaced objects were written again with
    the new reception time, and one ahead of a recognised event left the point on that earlier state."""
    port = free_port()
    load(redis_master, script_rows(port))
    t = int(time.time() * 1000) - 5000
    ahead = t + 5000 + 3 * 3_600_000

    def obj(v: int, ts: int) -> tuple[int, bytes]:
        return 100, c.element(c.M_SP_TB_1, v, 0, ts)

    frames = {"replaced first": [[obj(1, ahead), obj(0, t)]],
              "replaced last": [[obj(1, ahead), obj(0, t), obj(1, ahead)]],
              "across frames": [[obj(1, ahead)], [obj(0, t)]]}[shape]
    objs = [o for f in frames for o in f]
    last = objs[-1][1][0]
    asdus = [c.build_asdu(c.M_SP_TB_1, c.COT_SPONT, CA, f) for f in frames]
    async with ScriptRtu(port) as rtu:
        gis = resend_on_second_gi(rtu, asdus)
        a = await started_holder(feproot, redis_master, gis)
        r = a.master
        try:
            no_iv_flicker(a, 5)
            await asyncio.sleep(0.2)
            before = len(await changes_of(r, 5001))
            rtu.image[100] = (c.M_SP_NA_1, last)
            for f in asdus:
                rtu.send(f)
            await until(lambda: _count(changes_of(r, 5001), before + len(objs)), 3)
            first_recs = [(x.value, x.quality, x.ts_ms) for x in (await changes_of(r, 5001))[before:]]
            assert [(v, ts == t) for v, _, ts in first_recs] == [(e[0], e[-7:] != c.cp56(ahead)) for _, e in objs]
            assert rtu.conn is not None
            rtu.conn[1].transport.abort()   # the connection ends (say, our S frame never arrived)
            await until(lambda: len(gis) == 2, 5)
            await asyncio.sleep(0.5)
            recs = [(x.value, x.quality, x.ts_ms) for x in (await changes_of(r, 5001))[before:]]
            if shape == "across frames":    # the replaced one written again, then the event after it
                assert recs[:2] == first_recs and [(v, ts == t) for v, _, ts in recs[2:]] == [(1, False), (0, True)]
            else:
                assert recs == first_recs
            assert (await value_of(r, 5, 5001)).value == last
        finally:
            await a.stop()


async def test_gi_answers_later_than_t1_never_overwrite_a_newer_event(redis_master, feproot, caplog):
    """An RTU slower than t1 (1 s here; a gateway polling the devices behind it): it confirms the GI, says
    nothing more for 1.4 s (the GI is given up, logged), then reports a spontaneous event of IOA 100 (ON,
    its time tag) and only after it its snapshot of that point (OFF) and the ACT_TERM. The point stays ON:
    the late answer is still judged against the events since the GI was sent. Before, giving the GI up
    dropped that record, and the older snapshot overwrote the event."""
    port = free_port()
    load(redis_master, script_rows(port))
    async with ScriptRtu(port) as rtu:
        event_ms: list[int] = []

        def late(a: c.Asdu) -> None:
            event_ms.append(int(time.time() * 1000))
            rtu.send(c.build_asdu(c.M_SP_TB_1, c.COT_SPONT, CA, [(100, c.element(c.M_SP_TB_1, 1, 0, event_ms[0]))]))
            rtu.send(c.build_asdu(c.M_SP_NA_1, c.COT_INROGEN, CA, [(100, c.element(c.M_SP_NA_1, 0, 0, 0))]))
            rtu.send(c.build_asdu(c.M_ME_NC_1, c.COT_INROGEN, CA, [(200, c.element(c.M_ME_NC_1, 3.0, 0, 0))]))
            rtu.send(c.mirror(a, c.COT_ACTTERM))

        def on_gi(a: c.Asdu) -> None:
            rtu.send(c.mirror(a, c.COT_ACTCON))
            asyncio.get_running_loop().call_later(1.4, late, a)

        rtu.on_gi = on_gi
        a = Node(node_cfg(feproot, redis_master, "A", **IEC_FAST))
        r = a.master
        try:
            await until(lambda: _is(value_of(r, 5, 5003), 6.0), 5)   # the late GI's other answer: written
            assert "general interrogation not terminated" in caplog.text
            v = await value_of(r, 5, 5001)
            assert (v.value, v.ts_ms) == (1, event_ms[0]), v
            recs = await changes_of(r, 5001)
            assert [(x.value, x.ts_ms) for x in recs][-1] == (1, event_ms[0]), recs
        finally:
            await a.stop()
