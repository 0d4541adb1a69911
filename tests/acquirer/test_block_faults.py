"""The acquirer's poll (RtuRunner.poll over a real DeviceLink) against a device that misbehaves per block,
on a loopback asyncio server: each Modbus exception code, a block never answered, answers late, twice or
under another transaction id. What is checked per case: which points go invalid, whether the device counts
as reached, whether the connection is kept, and that the problem is logged once (docs/acquirer.md,
"Modbus device faults")."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from fep_acquirer import mbtcp
from fep_acquirer.device import DeviceError, LinkError
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner
from fepha.config import NodeConfig
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Channel, Rtu
from tests.acquirer.helpers import free_port, until
from tests.acquirer.test_mbtcp import RecordingWriter, link_to, serve
from tests.acquirer.test_rules import pt

IV = 0x80
POINTS = tuple(pt(i + 1, "hr", 100 * i) for i in range(3))  # three blocks: hr 0, hr 100, hr 200


class Device:
    """Answers reads of hr 0 / 100 / 200 with 10 / 11 / 12 (+ `bump`), or what `script[start]` says:
    an exception code (int), "silent" (no answer), "twice" (the answer twice), "wrongtid"; echoes FC 6."""

    def __init__(self) -> None:
        self.script: dict[int, int | str] = {}
        self.bump = 0
        self.reads: list[int] = []

    def __call__(self, tid: int, unit: int, pdu: bytes):
        if pdu[0] == mbtcp.WRITE_REGISTER:
            yield mbtcp.frame(tid, unit, pdu)  # the echo
            return
        start = int.from_bytes(pdu[1:3], "big")
        self.reads.append(start)
        what = self.script.get(start)
        good = mbtcp.frame(tid, unit, b"\x03\x02" + (10 + start // 100 + self.bump).to_bytes(2, "big"))
        if isinstance(what, int):
            yield mbtcp.frame(tid, unit, bytes((0x83, what)))
        elif what == "silent":
            return
        elif what == "twice":
            yield good + good
        elif what == "wrongtid":
            yield mbtcp.frame((tid + 7) & 0xFFFF, unit, b"\x03\x02\x00\x63")
        else:
            yield good


@pytest.fixture
async def polled(caplog):
    """(device, runner, link, writer) with the lease held; the link connected to the device."""
    dev = Device()
    server, port = await serve(dev)
    rtu = Rtu(id=1, name="r", rtutype=0, protocol="modbus", points=POINTS, timeout_ms=300)
    writer = RecordingWriter()
    run = RtuRunner(rtu, NodeConfig(), writer, Metrics("A"), OnceLogger(logging.getLogger("t.blocks")))  # type: ignore[arg-type]
    run.lease.update("A", 1)
    link = link_to(port, timeout_s=0.3)
    await link.connect()
    caplog.set_level(logging.WARNING, "t.blocks")
    try:
        yield dev, run, link, writer
    finally:
        link.close()
        server.close()
        await server.wait_closed()


def qualities(run: RtuRunner) -> list[int]:
    return [run.samples[p.id][1] for p in POINTS]


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "t.blocks" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("code", [0x01, 0x02, 0x03, 0x04])
async def test_refused_block_is_invalid_the_rest_current_and_logged_once(polled, caplog, code: int) -> None:
    dev, run, link, _ = polled
    await run.poll(link)
    dev.script[100] = code
    for _ in range(3):
        await run.poll(link)
    assert qualities(run) == [0, IV, 0]
    assert run.reaches()
    assert not link.client.proto.transport.is_closing()  # type: ignore[union-attr]
    assert len(warnings(caplog)) == 1 and f"{code:#04x}" in warnings(caplog)[0]
    dev.script.clear()
    await run.poll(link)
    assert qualities(run) == [0, 0, 0]


async def test_busy_block_keeps_its_values_then_goes_invalid_past_the_reach_window(polled) -> None:
    """0x06 SERVER DEVICE BUSY asks for the request again later: the block keeps its values (they were
    current one poll ago) and is read again at the next poll; busy for longer than the reach window, its
    points go invalid. Busy at the first read (no value to keep) is invalid at once."""
    dev, run, link, writer = polled
    await run.poll(link)
    dev.script[200] = 0x06
    dev.bump = 5
    writer.calls.clear()
    await run.poll(link)
    assert qualities(run) == [0, 0, 0] and run.samples[POINTS[2].id][0] == 12  # kept, not the new 17
    assert writer.calls == [{POINTS[0].id: (15.0, 0), POINTS[1].id: (16.0, 0)}]
    assert run.reaches() and dev.reads[-1] == 200  # asked again at this poll
    run.window_s = 0.2
    await asyncio.sleep(0.25)
    await run.poll(link)
    assert qualities(run) == [0, 0, IV]
    dev.script.clear()
    await run.poll(link)
    assert qualities(run) == [0, 0, 0] and run.samples[POINTS[2].id][0] == 17
    run._answers = [None] * len(run.blocks)  # as after a reconnect
    dev.script[0] = 0x06
    await run.poll(link)
    assert qualities(run)[0] == IV


@pytest.mark.parametrize("fault", [0x0B, "silent", "wrongtid"])
async def test_block_not_answered_after_an_answered_one(polled, caplog, fault) -> None:
    """A block not answered (timeout, an answer under another tid, a gateway's 0x0B) after a block that was:
    that block invalid, the others current, the device reached, the connection kept, logged once. The
    same as the poll's first request: LinkError (not reached), found within one timeout."""
    dev, run, link, _ = polled
    dev.script[100] = fault
    for _ in range(2):
        await run.poll(link)
    assert qualities(run) == [0, IV, 0]
    assert run.reaches()
    assert not link.client.proto.transport.is_closing()  # type: ignore[union-attr]
    assert len(warnings(caplog)) == 1
    dev.script = {0: fault}
    t0 = time.monotonic()
    with pytest.raises(LinkError):
        await run.poll(link)
    assert time.monotonic() - t0 < 0.6


async def test_two_blocks_in_a_row_not_answered_is_a_link_error(polled) -> None:
    dev, run, link, _ = polled
    dev.script.update({100: "silent", 200: "silent"})
    t0 = time.monotonic()
    with pytest.raises(LinkError, match="timeout"):
        await run.poll(link)
    assert 0.55 < time.monotonic() - t0 < 1.0  # two timeouts, not more
    assert run.last_ok is None


async def test_answer_twice_or_late_is_dropped(polled) -> None:
    """An answer sent twice: the copy (the previous transaction id by then) is dropped, the next block's
    answer is taken; nothing is mixed up over several polls."""
    dev, run, link, _ = polled
    dev.script[0] = "twice"
    for bump in (0, 1, 2):
        dev.bump = bump
        await run.poll(link)
        assert [run.samples[p.id] for p in POINTS] == [(10 + bump, 0), (11 + bump, 0), (12 + bump, 0)]


@pytest.mark.parametrize("after", [1, 2, 0])
async def test_device_closing_after_each_answer(after: int) -> None:
    """A device that closes the connection after each answer (or two; or an idle timeout between polls):
    the connection is opened again at once and the poll completes, every point current; a device that
    closes before answering anything is not reached (LinkError), after one new attempt."""
    conns: list[int] = []
    server, port = await serve(Device(), per_connection=after, conns=conns)
    rtu = Rtu(id=1, name="r", rtutype=0, protocol="modbus", points=POINTS, timeout_ms=300)
    run = RtuRunner(rtu, NodeConfig(), RecordingWriter(), Metrics("A"), OnceLogger(logging.getLogger("t")))  # type: ignore[arg-type]
    run.lease.update("A", 1)
    link = link_to(port, timeout_s=0.3)
    try:
        await link.connect()
        for _ in range(2):
            if after == 0:
                with pytest.raises(LinkError, match="closed"):
                    await run.poll(link)
                continue
            await run.poll(link)
            assert [run.samples[p.id] for p in POINTS] == [(10, 0), (11, 0), (12, 0)]
            assert run.reaches()
        if after:
            await asyncio.sleep(0.05)  # the close has arrived: nothing sent yet, so opened again and written
            await link.write(pt(9, "hr", 5), 3.0)
        assert len(conns) == {1: 7, 2: 4, 0: 3}[after]
    finally:
        link.close()
        server.close()
        await server.wait_closed()


async def test_write_lost_with_its_connection_is_not_sent_again() -> None:
    """A control write whose connection is lost before its answer may have been applied: LinkError (the
    executor reports it failed), never sent a second time; a write to a connection already closed (nothing
    sent) goes out once on a new one."""
    seen: list[bytes] = []

    def drop(tid: int, unit: int, pdu: bytes):
        seen.append(pdu)
        raise ConnectionError
        yield b""

    server, port = await serve(drop)
    link = link_to(port, timeout_s=0.3)
    try:
        await link.connect()
        with pytest.raises(LinkError, match="closed"):
            await link.write(pt(9, "hr", 5), 3.0)
        assert seen == [mbtcp.write_register_pdu(5, 3)] and link.reopened == 0
    finally:
        link.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("code", [0x02, 0x04, 0x06])
async def test_write_answered_with_an_exception_fails_and_is_sent_once(code: int) -> None:
    seen: list[bytes] = []

    def refuse(tid: int, unit: int, pdu: bytes):
        seen.append(pdu)
        yield mbtcp.frame(tid, unit, bytes((pdu[0] | 0x80, code)))

    server, port = await serve(refuse)
    link = link_to(port, timeout_s=0.3)
    try:
        await link.connect()
        with pytest.raises(DeviceError, match=f"{code:#04x}"):
            await link.write(pt(9, "hr", 5), 3.0)
        assert seen == [mbtcp.write_register_pdu(5, 3)]
    finally:
        link.close()
        server.close()
        await server.wait_closed()


async def test_tshark_finds_nothing_wrong_in_our_requests(tmp_path) -> None:
    """The acquirer's client (reads of every area, FC 5/6/16 writes) against a real Modbus server (the
    forwarder's modbus_trains), through tshark's Modbus/TCP dissector: no malformed packet, no expert
    warning or error on any request or answer."""
    from fep_acquirer.plan import plan_reads
    from fep_forwarder.modbus_trains import ModbusTrainsServer
    from tests.forwarder.mbt_fixtures import IMAGE, ScriptedSink, rtu
    from tests.forwarder.test_modbus_trains_server import captured, tshark

    srv = ModbusTrainsServer(rtu(), None, "127.0.0.1", ScriptedSink(), "A")
    await srv.start()
    srv.load_image(IMAGE)
    pts = [pt(1, "ir", 0, "float32"), pt(2, "ir", 3), pt(3, "di", 0, "bool"), pt(4, "di", 1, "bool"),
           pt(5, "co", 0, "bool"), pt(6, "hr", 0), pt(7, "hr", 1, "float32")]
    link = link_to(srv.port, timeout_s=1.0)
    link.client.unit = 1
    try:
        async with captured(srv.port, tmp_path / "acq.pcap"):
            await link.connect()
            got = await link.read_all(plan_reads(pts))
            assert not any(isinstance(g, Exception) for g in got), got
            await link.write(pts[4], 1.0)
            await link.write(pts[5], 12.0)
            await link.write(pts[6], 1.5)
            link.close()
        out = await tshark(tmp_path / "acq.pcap", srv.port)
    finally:
        link.close()
        await srv.stop()
    assert out.count("Modbus/TCP") >= 2 * (len(got) + 3)
    assert "Malformed" not in out and "Expert Info (Error" not in out and "Expert Info (Warning" not in out
    assert "Exception" not in out


async def test_a_channel_leaving_a_block_unanswered_is_switched_for_one_that_answers_all(caplog) -> None:
    """Channel 1's device keeps the connection open and answers blocks hr 0 and hr 200 but never hr 100;
    channel 2's answers every block. Before: hr 100 stayed invalid for good on channel 1, the device
    "reached", no switch ever. Now: channel 1 has not worked since its first incomplete poll, so the
    runner switches after channel_switch_s; hr 100 is invalid meanwhile, then current; the holder does not
    count as reaching fully meanwhile (the lease's reach 2, docs/acquirer.md)."""
    bad, good = Device(), Device()
    bad.script[100] = "silent"
    servers = [await serve(d) for d in (bad, good)]
    rtu = Rtu(id=1, name="r", rtutype=0, protocol="modbus", points=POINTS, timeout_ms=100, poll_ms=100,
              channels=tuple(Channel(rtu=1, no=n, host="127.0.0.1", port=port, unit=7)
                             for n, (_, port) in enumerate(servers, 1)))
    cfg = NodeConfig(channel_switch_s=0.8, reconnect_min_s=0.05, reconnect_max_s=0.2)
    run = RtuRunner(rtu, cfg, RecordingWriter(), Metrics("A"), OnceLogger(logging.getLogger("t.blocks")))  # type: ignore[arg-type]
    run.lease.update("A", 1)
    run.start()
    try:
        t0 = time.monotonic()
        while not bad.reads:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)
        assert run.switcher.active == 1 and qualities(run) == [0, IV, 0]
        assert run.reaches() and not run.reaches_fully()
        while run.switcher.active == 1:
            assert time.monotonic() - t0 < 2.0, "never switched to channel 2"
            await asyncio.sleep(0.02)
        assert time.monotonic() - t0 >= 0.8
        while qualities(run) != [0, 0, 0]:
            assert time.monotonic() - t0 < 2.5
            await asyncio.sleep(0.02)
        assert good.reads and "no complete poll" in run.switcher.info[1].last_error
        await asyncio.sleep(run.window_s + 0.05)
        assert run.reaches_fully()
    finally:
        await run.stop()
        for server, _ in servers:
            server.close()
            await server.wait_closed()


class GatedWriter(RecordingWriter):
    """Records each write (with its records' times) and answers only when `gate` is set: a slow master."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.times: list[dict[int, int]] = []

    async def write(self, rtu: int, epoch: int, pairs: list[str]):
        from fepha import points as fpt
        self.times.append({int(pid): fpt.decode(rec).ts_ms for pid, rec in zip(pairs[::2], pairs[1::2], strict=True)})
        await self.gate.wait()
        return await super().write(rtu, epoch, pairs)


async def test_polls_go_on_while_a_write_waits_and_their_writes_follow_in_order(polled) -> None:
    """The poll loop's poll (wait=False) queues its write and returns: while the master does not answer,
    polls go on; their writes follow in order once it does, merged where no waiting change would be lost
    (each record with the time of the poll that read it), split where a point changed again. Meanwhile
    the lease's polled age is that of the newest poll whose values are all written."""
    dev, run, link, _ = polled
    w = run.writer = GatedWriter()
    w.gate.set()
    await run.poll(link)                                   # everything written once
    w.gate.clear()
    w.calls.clear()
    w.times.clear()
    dev.bump = 1
    await run.poll(link, wait=False)                       # 11, 12, 13: in flight, not answered
    t_first = run.last_ok
    await asyncio.sleep(0.05)
    await run.poll(link, wait=False)                       # nothing changed: merged into nothing waiting
    dev.script[200] = 0x02                                 # hr 200 refused: its point invalid
    await run.poll(link, wait=False)
    ts_third = run.polled_ts_ms
    dev.script.clear()
    dev.bump = 2
    await run.poll(link, wait=False)                       # all change again: hr 0 and hr 100 would be lost
    assert [len(b.samples) for b in run._pending] == [1, 3]  # hr 200 invalid; then all three
    assert run.polled_age_ms() >= 50 and run.polled_age_ms() >= int((time.monotonic() - t_first) * 1000) - 5
    w.gate.set()
    await run.flush()
    ids = [p.id for p in POINTS]
    assert w.calls == [{ids[0]: (11.0, 0), ids[1]: (12.0, 0), ids[2]: (13.0, 0)},
                       {ids[2]: (13.0, IV)},
                       {ids[0]: (12.0, 0), ids[1]: (13.0, 0), ids[2]: (14.0, 0)}]
    assert w.times[1] == {ids[2]: ts_third}
    assert 0 <= run.polled_age_ms() < 50


async def test_a_partial_channel_is_taken_back_at_once_when_the_other_is_dead() -> None:
    """Channel 1 leaves hr 100 unanswered, channel 2 refuses connections: after the switch the runner goes
    back to channel 1 at channel 2's first failure, so hr 0 and hr 200 are read again within a poll or
    two, not after channel_switch_s without any value."""
    bad = Device()
    bad.script[100] = "silent"
    server, port = await serve(bad)
    rtu = Rtu(id=1, name="r", rtutype=0, protocol="modbus", points=POINTS, timeout_ms=100, poll_ms=100,
              channels=(Channel(rtu=1, no=1, host="127.0.0.1", port=port, unit=7),
                        Channel(rtu=1, no=2, host="127.0.0.1", port=free_port(), unit=7)))
    cfg = NodeConfig(channel_switch_s=0.6, reconnect_min_s=0.05, reconnect_max_s=0.2)
    run = RtuRunner(rtu, cfg, RecordingWriter(), Metrics("A"), OnceLogger(logging.getLogger("t.blocks")))  # type: ignore[arg-type]
    run.lease.update("A", 1)
    run.start()
    try:
        await until(lambda: run.switcher.info[2].switches == 1, 3)
        t_switch, reads = time.monotonic(), len(bad.reads)
        await until(lambda: run.switcher.active == 1 and len(bad.reads) > reads, 1)
        assert time.monotonic() - t_switch < 0.3
        assert run.switcher.info[1].switches == 1 and qualities(run) == [0, IV, 0]
    finally:
        await run.stop()
        server.close()
        await server.wait_closed()


async def test_waiting_writes_are_bounded_the_newest_poll_merged_past_the_bound(polled) -> None:
    """A point that changes at every poll while the master does not answer: each poll waits as a write of
    its own up to PENDING_MAX, then the newest polls are merged into the last one (only the latest value
    of each point then, as while Redis is unreachable); the writes follow in order once it answers."""
    from fep_acquirer.rtu import PENDING_MAX

    dev, run, link, _ = polled
    w = run.writer = GatedWriter()
    w.gate.set()
    await run.poll(link)
    w.gate.clear()
    w.calls.clear()
    for bump in range(1, PENDING_MAX + 4):
        dev.bump = bump
        await run.poll(link, wait=False)
    assert len(run._pending) == PENDING_MAX  # the first in flight, not waiting
    w.gate.set()
    await run.flush()
    firsts = [c[POINTS[0].id][0] for c in w.calls]
    assert firsts == [10 + b for b in range(1, PENDING_MAX + 1)] + [10 + PENDING_MAX + 3]
