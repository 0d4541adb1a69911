"""Several Modbus TCP requests in flight (T004_RTU.INFLIGHT > 1, mbtcp._Pipelined): the sequencing as
table tests without a network, then the client and DeviceLink against loopback devices that answer in
order, out of order, or not at all. One in flight must stay what it was (byte for byte, one at a time)."""

from __future__ import annotations

import asyncio

import pytest

from fep_acquirer import mbtcp
from fep_acquirer.device import DeviceLink, NoAnswer
from fep_acquirer.plan import plan_reads
from fepha.semodel.model import Channel, Point

from .test_mbtcp import _Wire, serve

UNIT = 7
PDUS = [mbtcp.read_pdu("hr", 100 * i, 1) for i in range(5)]


def ans(i: int) -> bytes:
    """The answer PDU to PDUS[i]: one register holding i."""
    return b"\x03\x02\x00" + bytes([i])


def start(pdus=PDUS, window: int = 3, stop=None, timeout_s: float = 5.0):
    proto = mbtcp._Pipelined(UNIT, timeout_s, window)
    wire = _Wire()
    proto.connection_made(wire)  # type: ignore[arg-type]
    fut = asyncio.get_running_loop().create_future()
    proto.start(mbtcp._Sequence(pdus, fut, stop))
    return proto, wire, fut


def frames(first_tid: int, pdus) -> bytes:
    return b"".join(mbtcp.frame(first_tid + k, UNIT, p) for k, p in enumerate(pdus))


async def test_window_filled_in_one_write_and_answers_matched_out_of_order() -> None:
    proto, wire, fut = start()
    assert wire.sent == [frames(1, PDUS[:3])]  # three outstanding, one segment
    proto.data_received(mbtcp.frame(2, UNIT, ans(1)))  # the second answered first: kept aside, one more goes
    assert wire.sent[1:] == [frames(4, PDUS[3:4])] and not fut.done()
    proto.data_received(mbtcp.frame(1, UNIT, ans(0)))
    assert wire.sent[2:] == [frames(5, PDUS[4:])]
    proto.data_received(mbtcp.frame(5, UNIT, ans(4)) + mbtcp.frame(3, UNIT, ans(2)))
    assert not fut.done()
    proto.data_received(mbtcp.frame(4, UNIT, ans(3)))
    assert fut.result() == [b"\x00" + bytes([i]) for i in range(5)]
    assert proto.seq is None
    proto._close()


async def test_late_unknown_and_repeated_answers_are_dropped() -> None:
    proto, wire, fut = start(PDUS[:2], window=2)
    proto.data_received(mbtcp.frame(2, UNIT, ans(1)))
    proto.data_received(mbtcp.frame(2, UNIT, b"\x03\x02\x00\x63"))  # the same transaction again
    proto.data_received(mbtcp.frame(0, UNIT, b"\x03\x02\x00\x63"))  # before the sequence
    proto.data_received(mbtcp.frame(3, UNIT, b"\x03\x02\x00\x63"))  # never sent
    assert not fut.done()
    proto.data_received(mbtcp.frame(1, UNIT, ans(0)))
    assert fut.result() == [b"\x00\x00", b"\x00\x01"]
    # the next sequence's transaction ids follow on: an answer of the previous one is not taken
    fut2 = asyncio.get_running_loop().create_future()
    proto.start(mbtcp._Sequence(PDUS[:1], fut2, None))
    assert wire.sent[-1] == frames(3, PDUS[:1])
    proto.data_received(mbtcp.frame(2, UNIT, b"\x03\x02\x00\x63") + mbtcp.frame(3, UNIT, ans(0)))
    assert fut2.result() == [b"\x00\x00"]
    proto._close()


@pytest.mark.parametrize("why", ["exception", "stop"])
async def test_an_exception_answer_or_stop_sends_nothing_more_but_awaits_what_was_sent(why: str) -> None:
    stopping = [False]
    proto, wire, fut = start(window=2, stop=lambda: stopping[0])
    if why == "exception":
        proto.data_received(mbtcp.frame(1, UNIT, b"\x83\x02"))
    else:
        stopping[0] = True
        proto.data_received(mbtcp.frame(1, UNIT, ans(0)))
    assert wire.sent == [frames(1, PDUS[:2])] and not fut.done()
    proto.data_received(mbtcp.frame(2, UNIT, ans(1)))
    got = fut.result()
    assert got[1:] == [b"\x00\x01"] and len(wire.sent) == 1
    assert isinstance(got[0], mbtcp.ExceptionAnswer) if why == "exception" else got[0] == b"\x00\x00"
    proto._close()


async def test_a_lost_connection_reports_only_the_answers_before_the_first_missing_one() -> None:
    proto, _, fut = start()
    proto.data_received(mbtcp.frame(1, UNIT, ans(0)) + mbtcp.frame(3, UNIT, ans(2)))  # the second is missing
    proto.connection_lost(None)
    with pytest.raises(mbtcp.SequenceLost) as lost:
        fut.result()
    assert lost.value.answers == [b"\x00\x00"]


async def test_malformed_answer_closes_the_connection() -> None:
    proto, _, fut = start()
    proto.data_received(mbtcp.frame(2, UNIT, b"\x03\x04\x00\x01\x00\x02"))  # byte count for another read
    with pytest.raises(mbtcp.Malformed):
        fut.result()
    proto2, _, fut2 = start()
    proto2.data_received(mbtcp.frame(3, UNIT + 1, ans(2)))
    with pytest.raises(mbtcp.Malformed, match="unit id 8"):
        fut2.result()


async def test_each_request_times_out_from_its_own_send() -> None:
    """The oldest request not answered fails the sequence at its own deadline; the answers after it are
    not returned in its place."""
    loop = asyncio.get_running_loop()
    proto, _, fut = start(window=2, timeout_s=0.3)
    t0 = loop.time()
    await asyncio.sleep(0.2)
    proto.data_received(mbtcp.frame(1, UNIT, ans(0)))  # the third goes out now, 0.2 s after the second
    proto.data_received(mbtcp.frame(3, UNIT, ans(2)))
    with pytest.raises(mbtcp.SequenceTimeout) as timeout:
        await fut
    assert 0.28 < loop.time() - t0 < 0.45  # the second's deadline, not the third's
    assert timeout.value.answers == [b"\x00\x00"]
    proto._close()


# ---- against loopback devices ----

async def serve_concurrent(delays: dict[int, float], seen: list[tuple[str, int]]) -> tuple[asyncio.Server, int]:
    """A device that serves requests concurrently: request k (1-based, per connection) is answered after
    delays.get(k, 0) seconds, so answers may go out in another order than the requests came."""
    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        k = 0

        async def answer(k: int, tid: int, unit: int, pdu: bytes) -> None:
            await asyncio.sleep(delays.get(k, 0.0))
            seen.append(("answer", tid))
            start = int.from_bytes(pdu[1:3], "big")
            writer.write(mbtcp.frame(tid, unit, b"\x03\x02" + start.to_bytes(2, "big")))

        tasks = []
        try:
            while True:
                hdr = await reader.readexactly(7)
                tid, _, length, unit = mbtcp.MBAP.unpack(hdr)
                pdu = await reader.readexactly(length - 1)
                k += 1
                seen.append(("request", tid))
                tasks.append(asyncio.ensure_future(answer(k, tid, unit, pdu)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


BLOCKS = plan_reads([Point(id=i + 1, rtu=1, kind="AI", name="", area="hr", address=100 * i, datatype="uint16")
                     for i in range(8)])
WANT = [(100 * i).to_bytes(2, "big") for i in range(8)]


def link(port: int, inflight: int, timeout_s: float = 1.0) -> DeviceLink:
    return DeviceLink(Channel(rtu=1, no=1, host="127.0.0.1", port=port, unit=UNIT), timeout_s, inflight)


async def _closing(server: asyncio.Server, dl: DeviceLink) -> None:
    dl.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("inflight", [1, 4])
async def test_requests_outstanding_never_exceed_the_setting(inflight: int) -> None:
    """A device that answers each request 50 ms after it came, whatever else it serves: with 1 in flight
    the requests go one after the other's answer, byte for byte as before; with 4 up to 4 are outstanding
    and the poll takes about a quarter of the time; answers that come out of order land in their blocks."""
    seen: list[tuple[str, int]] = []
    delays = {k: 0.05 + (0.02 if k % 2 else 0.0) for k in range(1, 9)}  # odd ones slower: out of order
    server, port = await serve_concurrent(delays, seen)
    dl = link(port, inflight)
    try:
        await dl.connect()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await dl.read_all(BLOCKS) == WANT
        took = loop.time() - t0
    finally:
        await _closing(server, dl)
    outstanding, most = set(), 0
    for what, tid in seen:
        if what == "request":
            outstanding.add(tid)
        else:
            outstanding.discard(tid)
        most = max(most, len(outstanding))
    assert most == inflight
    assert [tid for what, tid in seen if what == "request"] == list(range(1, 9))
    if inflight == 1:
        assert seen == [(w, k) for k in range(1, 9) for w in ("request", "answer")]
        assert took > 8 * 0.05
    else:
        assert [tid for what, tid in seen if what == "answer"] != list(range(1, 9))  # out of order
        assert took < 4 * 0.07 + 0.1


async def test_one_in_flight_sends_what_it_always_sent() -> None:
    """INFLIGHT 1 (NULL): the plain protocol, one frame per write, each after the previous answer."""
    assert type(mbtcp.Client("h", 1, 1, 1.0)._protocol()) is mbtcp._Protocol
    assert type(mbtcp.Client("h", 1, 1, 1.0, inflight=1)._protocol()) is mbtcp._Protocol
    proto = mbtcp.Client("h", 1, UNIT, 5.0)._protocol()
    wire = _Wire()
    proto.connection_made(wire)  # type: ignore[arg-type]
    fut = asyncio.get_running_loop().create_future()
    proto.start(mbtcp._Sequence(PDUS, fut, None))
    for i in range(5):
        assert wire.sent == [mbtcp.frame(k + 1, UNIT, PDUS[k]) for k in range(i + 1)]
        proto.data_received(mbtcp.frame(i + 1, UNIT, ans(i)))
    assert len(fut.result()) == 5
    proto._close()


async def test_a_device_that_answers_in_order_after_its_delay() -> None:
    """A single-threaded device (reads the next request only after answering one) with 4 in flight: all
    blocks read, in order."""
    server, port = await serve(lambda tid, unit, pdu: [mbtcp.frame(
        tid, unit, b"\x03\x02" + pdu[1:3])], delay_s=0.01)
    dl = link(port, 4)
    try:
        await dl.connect()
        assert await dl.read_all(BLOCKS) == WANT
        assert await dl.read_all(BLOCKS) == WANT
    finally:
        await _closing(server, dl)


async def test_a_block_not_answered_among_answered_ones_is_its_noanswer() -> None:
    """The device never answers the third request: that block is NoAnswer (after its timeout), the blocks
    after it are read again and land in their own places, not in the third's."""
    seen: list[tuple[str, int]] = []
    server, port = await serve_concurrent({3: 3600.0}, seen)
    dl = link(port, 4, timeout_s=0.3)
    try:
        await dl.connect()
        got = await dl.read_all(BLOCKS)
    finally:
        await _closing(server, dl)
    assert isinstance(got[2], NoAnswer)
    assert got[:2] + got[3:] == WANT[:2] + WANT[3:]


async def test_a_connection_lost_with_answers_after_a_missing_one() -> None:
    """The device answers the first, third and fourth requests, then closes without answering the second:
    the poll opens the connection again and reads from the second block on, every block in its place."""
    conns: list[int] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(0)
        try:
            k = 0
            while True:
                hdr = await reader.readexactly(7)
                tid, _, length, unit = mbtcp.MBAP.unpack(hdr)
                pdu = await reader.readexactly(length - 1)
                k += 1
                if len(conns) == 1 and k == 2:
                    continue
                writer.write(mbtcp.frame(tid, unit, b"\x03\x02" + pdu[1:3]))
                if len(conns) == 1 and k == 4:
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    dl = link(server.sockets[0].getsockname()[1], 4)
    try:
        await dl.connect()
        assert await dl.read_all(BLOCKS) == WANT
    finally:
        await _closing(server, dl)
    assert len(conns) == 2 and dl.reopened == 1

