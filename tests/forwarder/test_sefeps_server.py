"""sefeps server against the reference client (fep_tools.sefeps_client) and raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fep_forwarder.base import ControlOutcome, Update, server_class
from fep_forwarder.sefeps import SefepsServer, codec
from fep_forwarder.tlspolicy import tls_context
from fep_tools.sefeps_client import SefepsClient, SefepsError
from fepha.config import NodeConfig
from fepha.points import Value
from fepha.semodel.model import FWD_KIND, FwdPoint, Model, Rtu
from tests.forwarder.ctl_helpers import redis_controls
from tests.forwarder.tls_cert import make_cert, self_signed_server_context
from tests.stays import astays


def fp(zfid: int, table: str, addr: int, coef: float = 1.0) -> FwdPoint:
    return FwdPoint(zfid, table, FWD_KIND[table], 12, 100 + zfid, addr, None, coef)


FWD = {f.addr: f for f in (fp(1, "T005_ZFAI", 1), fp(2, "T005_ZFAI", 2, 10.0), fp(3, "T006_ZFDI", 10),
                           fp(4, "T007_ZFACC", 20), fp(5, "T008_ZFDO", 30), fp(6, "T009_ZFAO", 40, 0.5))}
RTU = Rtu(id=12, name="sefeps test", rtutype=2, protocol="sefeps", listen_port=0, forwards=tuple(FWD.values()))


def upd(addr: int, value: float, q: int = 0, ts: int = 1000) -> Update:
    return Update(FWD[addr], Value(value, q, ts))


@dataclasses.dataclass
class Sink:
    calls: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    block: asyncio.Event | None = None

    async def execute(self, fwd, value, origin, timeout_ms=None):
        self.calls.append((fwd.addr, value))
        if self.block is not None:
            await self.block.wait()
        if value == 99:
            return ControlOutcome(False, "failed", "device refused")
        return ControlOutcome(True, "done", "written")


@contextlib.asynccontextmanager
async def sefeps_server(rtu: Rtu = RTU, model: Model | None = None, sink: Any = None, node: str = "A",
                        **options: Any) -> AsyncIterator[SefepsServer]:
    """Our server on a free port of 127.0.0.1 (a recording Sink unless `sink`), stopped on exit."""
    srv = SefepsServer(rtu, model, "127.0.0.1", Sink() if sink is None else sink, node, **options)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@contextlib.asynccontextmanager
async def sefeps_client(port: int, **options: Any) -> AsyncIterator[SefepsClient]:
    """A reference client for 127.0.0.1:`port`, not yet connected; closed on exit."""
    c = SefepsClient("127.0.0.1", port, **options)
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def scripted_server(serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                          ) -> AsyncIterator[SefepsClient]:
    """An in-test asyncio server running `serve` and a reference client for it; both closed on exit."""
    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        async with sefeps_client(srv.sockets[0].getsockname()[1]) as c:
            yield c
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.fixture
async def server():
    async with sefeps_server(heartbeat_s=5) as srv:
        srv.load_image([upd(1, 1.5), upd(2, 2.0), upd(10, 1), upd(20, 100)])
        yield srv


@pytest.fixture
async def client(server):
    async with sefeps_client(server.port, name="t1") as c:
        yield c


def test_lookup_by_protocol():
    assert server_class("sefeps") is SefepsServer


async def test_hello_image_and_changes(server, client):
    w = await client.connect()
    assert (w["version"], w["rtu"], w["node"], w["hb_s"]) == (1, 12, "A", 5)
    assert w["points"] == [[1, "AI"], [2, "AI"], [10, "DI"], [20, "ACC"], [30, "DO"], [40, "AO"]]
    img = await client.wait_image()
    assert img == {1: (1.5, 0, 1000), 2: (20.0, 0, 1000), 10: (1, 0, 1000), 20: (100, 0, 1000)}
    seq0 = client.seq
    server.apply([upd(1, 1.75, ts=2000), upd(10, 0, 0x80, ts=2001)])
    server.apply([upd(2, -1.0, ts=2002)])
    got = [await client.next_change() for _ in range(3)]
    assert got == [(seq0 + 1, 1, 1.75, 0, 2000), (seq0 + 2, 10, 0, 0x80, 2001), (seq0 + 3, 2, -10.0, 0, 2002)]
    info = list(server.clients().values())
    assert len(info) == 1 and info[0]["name"] == "t1" and info[0]["state"] == "open"
    assert server.counts.events_sent == 3 and server.queue_depth() == 0


async def test_no_common_version_is_refused(server):
    c = SefepsClient("127.0.0.1", server.port, versions=(2, 3))
    with pytest.raises(SefepsError, match="version"):
        await c.connect()


async def test_commands(server, client):
    await client.connect()
    assert await client.command(40, 10.0) == {"t": "res", "id": 1, "ok": True, "state": "done", "reason": "written"}
    r = await client.command(40, 49.5)
    assert (r["ok"], r["state"], r["reason"]) == (False, "failed", "device refused")
    r = await client.command(1, 1)
    assert (r["ok"], r["state"], r["reason"]) == (False, "rejected", "not a command point")
    r = await client.command(77, 1)
    assert (r["ok"], r["state"], r["reason"]) == (False, "rejected", "unknown point")
    assert (await client.command(30, 1))["ok"] and (await client.command(30, 0))["ok"]
    for bad in (2, 0.5, -1):  # a DO is a switch: anything but 0 or 1 never reaches the device
        r = await client.command(30, bad)
        assert (r["ok"], r["state"], r["reason"]) == (False, "rejected", "a DO takes 0 or 1")
    assert server.controls.calls == [(40, 20.0), (40, 99.0), (30, 1), (30, 0)]  # AO value / COEF 0.5
    assert (server.counts.controls, server.counts.controls_ok) == (4, 3)


def test_every_reject_reason_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "sefeps.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `rejected`"))
    assert all(f"`{r}`" in row for r in codec.REJECT_REASONS), row


async def test_deeply_nested_json_gets_an_err_and_a_log_line(server, caplog):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(codec.encode(codec.hello()))
    body = b"[" * 5000 + b"]" * 5000
    writer.write(struct.pack(">I", len(body)) + body)
    with caplog.at_level("INFO", logger="fep.forwarder.sefeps"):
        frames = await read_frames(reader, "EOF")
    assert frames[-1] == {"t": "EOF"}
    assert frames[-2] == {"t": "err", "code": "frame", "msg": "JSON nested too deeply"}
    assert any("JSON nested too deeply" in r.getMessage() for r in caplog.records)
    writer.close()


async def test_points_without_a_value_are_in_the_image_marked_invalid():
    async with sefeps_server() as srv, sefeps_client(srv.port) as c:
        srv.load_image([upd(1, 7.0)])
        await c.connect()
        img = await c.wait_image()
        assert img == {1: (7.0, 0, 1000), 2: (None, 0x80, 0), 10: (None, 0x80, 0), 20: (None, 0x80, 0)}


async def test_commands_through_redis(redis_master):
    rtu_of = {f.src: 7 for f in FWD.values()}
    async with (redis_controls(redis_master, rtu_of, executor_rtus=(7,)) as (sink, execs),
                sefeps_server(sink=sink, node="B") as srv, sefeps_client(srv.port) as c):
        await c.connect()
        r1, r2 = await asyncio.gather(c.command(30, 1), c.command(40, 49.5))
        assert (r1["ok"], r1["state"]) == (True, "done")
        assert (r2["ok"], r2["state"], r2["reason"]) == (False, "failed", "device refused the write")
        assert sorted(execs[0].executed) == sorted([(FWD[30].src, 1.0), (FWD[40].src, 99.0)])


async def test_resume_after_reconnect_replays_missed_events(server, client):
    await client.connect()
    await client.wait_image()
    server.apply([upd(1, 2.0)])
    await client.next_change()
    await client.close()
    server.apply([upd(1, 3.0), upd(2, 4.0), upd(20, 101)])
    await client.connect(resume=True)
    got = [await client.next_change() for _ in range(3)]
    assert [(a, v) for _, a, v, _, _ in got] == [(1, 3.0), (2, 40.0), (20, 101)]
    assert client.images == 1 and client.image[1] == (3.0, 0, 1000)
    server.apply([upd(1, 5.0)])
    assert (await client.next_change())[2] == 5.0


async def test_resume_too_old_gets_full_image():
    async with sefeps_server(replay_max=3) as srv, sefeps_client(srv.port) as c:
        srv.load_image([upd(1, 0.0)])
        await c.connect()
        await c.wait_image()
        await c.close()
        srv.apply([upd(1, float(i)) for i in range(1, 6)])  # 5 events, only 3 kept
        await c.connect(resume=True)
        await c.wait_image()
        assert c.images == 2 and c.image[1][0] == 5.0 and c.seq == srv.seq
        c2 = SefepsClient("127.0.0.1", srv.port)
        c2.session, c2.seq = "another-server-session", 1
        await c2.connect(resume=True)  # a resume from another session also gets an image
        await c2.wait_image()
        await c2.close()


def supd(addr: int, value: float, ms: int) -> Update:
    """An update from change-stream entry `ms`-0 (what masters' cursors count)."""
    return dataclasses.replace(upd(addr, value), sid=(ms, 0))


async def until_cursor(srv: SefepsServer, identity: str, sid: tuple[int, int], timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while srv.known_cursors().get(identity, (0, 0)) < sid:
        assert asyncio.get_running_loop().time() < end, f"cursor of {identity}: {srv.known_cursors()}"
        await asyncio.sleep(0.02)


async def test_a_master_resumed_from_its_cursor_gets_what_it_missed_then_the_image():
    """The cursor is per address: a master with two links (one to each node, or two processes on one host)
    whose second link resumes from the cursor its first link advanced gets, after the events after that
    cursor, a full image, so a value the first link got and that does not change again is not missing on
    the second one. The resumed events count as events, the image does not."""
    async with sefeps_server() as srv, sefeps_client(srv.port) as first, sefeps_client(srv.port) as second:
        srv.advance("1-0")
        srv.load_image([upd(1, 1.0), upd(2, 2.0)])
        await first.connect()
        await first.wait_image()
        srv.apply([supd(2, 5.0, 2)])  # never changes again
        srv.advance("2-0")
        assert (await first.next_change())[1:3] == (2, 50.0)
        await until_cursor(srv, "127.0.0.1", (2, 0))  # the first link acknowledged it
        first.acks = False
        srv.apply([supd(1, 3.0, 3)])  # the first link gets it, does not acknowledge it
        srv.advance("3-0")
        assert (await first.next_change())[1:3] == (1, 3.0)
        second.session, second.seq = "a-session-of-the-other-node", 40  # its own image, from elsewhere
        second.image = {1: (1.0, 0, 1000), 2: (2.0, 0, 1000)}
        w = await second.connect(resume=True)
        assert w["seq"] == srv.seq - 1  # resumed after entry 2-0
        assert (await second.next_change())[:3] == (srv.seq, 1, 3.0)  # what it missed, as an event
        await asyncio.wait_for(_until(lambda: second.images == 1), 5)
        assert second.image[2] == (50.0, 0, 1000) and second.image[1] == (3.0, 0, 1000)  # then the image
        assert second.seq == srv.seq and second.changes.empty()
        assert srv.counts.events_sent == 3  # two to the first link, one to the second; the image is none
        srv.apply([supd(1, 4.0, 4)])  # then live data, on both links
        srv.advance("4-0")
        assert (await second.next_change())[2] == 4.0 and (await first.next_change())[2] == 4.0


async def test_a_master_resumed_ahead_of_this_node_gets_the_image_once_the_node_reaches_its_cursor():
    """Its cursor (acknowledged on the other node) is past what this node's stream has given it: the events
    up to the cursor are skipped (it has them), and the image waits until this node reaches the cursor; an
    image sent at once would take the master back to older values that no event then corrects."""
    async with sefeps_server() as srv, sefeps_client(srv.port) as c:
        srv.advance("1-0")
        srv.load_image([upd(1, 1.0), upd(2, 2.0)])

        async def recorded(rtu: int, identity: str) -> tuple[int, int]:
            return (3, 0)

        srv.cursor_source = recorded
        c.session, c.seq = "a-session-of-the-other-node", 40
        w = await c.connect(resume=True)
        assert w["seq"] == srv.seq
        srv.apply([supd(1, 2.0, 2)])
        srv.advance("2-0")
        await astays(lambda: c.images == 0 and c.changes.empty(), 0.3, "nothing before the node reaches 3-0")
        srv.apply([supd(2, 5.0, 3)])
        srv.advance("3-0")
        await asyncio.wait_for(_until(lambda: c.images == 1), 5)
        assert c.image[1] == (2.0, 0, 1000) and c.image[2] == (50.0, 0, 1000) and c.seq == srv.seq
        srv.apply([supd(1, 9.0, 4)])
        srv.advance("4-0")
        assert (await c.next_change())[:3] == (srv.seq, 1, 9.0)
        assert c.changes.empty() and srv.counts.events_sent == 1


async def test_a_master_resumed_on_a_node_that_has_not_read_the_stream_up_to_its_head_gets_every_change():
    """The master's cursor is 3-0; this node was handed entries up to 3-0, but the stream already holds 4-0
    to 13-0 (written while the master was away, not yet read by this node's runner). They must reach the
    master as events, in order, once each, then the image. The runner hands them over at the first turn
    after the server asked for the stream's head or, on the code before (which did not ask), after the
    welcome was written: the events were then queued after the hello's (empty) resumed ones, and the image
    due next dropped them, holding only the newest value (the sefeps master of test_switchover.py, 1 run in
    13 to 35, when the runner's loop ran as a task of its own)."""
    async with sefeps_server() as srv, sefeps_client(srv.port) as c:
        srv.advance("3-0")
        srv.load_image([upd(1, 3.0), upd(2, 2.0)])
        asked = asyncio.Event()

        async def recorded(rtu: int, identity: str) -> tuple[int, int]:
            return (3, 0)

        async def head() -> tuple[int, int]:
            asked.set()
            return (13, 0)

        def welcomed() -> bool:
            return any(conn.state == "open" and not conn.out for conn in srv.conns)

        async def runner() -> None:
            while not (asked.is_set() or welcomed()):
                await asyncio.sleep(0)
            srv.apply([supd(1, float(ms), ms) for ms in range(4, 14)])
            srv.advance("13-0")

        srv.cursor_source, srv.stream_head = recorded, head
        reads = asyncio.create_task(asyncio.wait_for(runner(), 2))
        c.session, c.seq = "a-session-of-the-other-node", 40
        w = await c.connect(resume=True)
        await reads
        await asyncio.wait_for(_until(lambda: c.images == 1), 2)
        got = []
        while not c.changes.empty():
            got.append((await c.next_change())[:3])
        assert got == [(w["seq"] + i, 1, float(3 + i)) for i in range(1, 11)]
        assert c.image[1] == (13.0, 0, 1000) and c.seq == srv.seq


@pytest.mark.parametrize(("head", "moves", "caught"), [
    (None, False, True),  # no head readable (Redis down, no stream): no wait, as before
    ((3, 0), False, True),  # already there
    ((5, 0), True, True),  # reached while waiting
    ((9, 0), True, False),  # not reached within the bound: resumed anyway, logged
])
async def test_caught_up_waits_for_the_stream_head_at_most_its_bound(head, moves, caught, caplog):
    async with sefeps_server() as srv:
        srv.advance("3-0")

        async def stream_head() -> tuple[int, int] | None:
            if moves:
                asyncio.get_running_loop().call_later(0.05, srv.advance, "5-0")
            return head

        srv.stream_head = stream_head
        t0 = asyncio.get_running_loop().time()
        assert await srv.caught_up("10.0.0.9", 0.2) is caught
        took = asyncio.get_running_loop().time() - t0
        assert took < 0.15 if caught else took >= 0.2
        assert ("resumes before this node read the change stream up to 9-0" in caplog.text) is (not caught)


async def test_a_restarted_server_resumes_a_master_from_the_history_read_back_from_the_stream():
    """A server (re)started at entry 5-0 whose history the runner filled back from the stream to a master's
    cursor 2-0 (ForwardServer.image_at with `past`): that master, from another session, gets the changes
    after its cursor as events, in order, then the image, then live events numbered on; one whose cursor
    is older than what was read back gets the image only."""
    async with sefeps_server() as srv, sefeps_client(srv.port) as c, sefeps_client(srv.port) as old:
        cursors = {"127.0.0.1": (2, 0)}

        async def recorded(rtu: int, identity: str) -> tuple[int, int]:
            return cursors[identity]

        srv.cursor_source = recorded
        srv.image_at("5-0", [upd(1, 3.0), upd(2, 4.0)],
                     [supd(1, 2.5, 3), supd(2, 4.0, 4), supd(1, 3.0, 5)], since=(2, 0))
        cursors["127.0.0.1"] = (1, 0)  # behind the history read back: an image, no events
        old.session, old.seq, old.acks = "the-session-before-the-restart", 40, False  # moves no cursor
        w = await old.connect(resume=True)
        await asyncio.wait_for(_until(lambda: old.images == 1), 5)
        assert "seq" not in w and old.changes.empty() and old.image[1] == (3.0, 0, 1000)
        cursors["127.0.0.1"] = (2, 0)
        c.session, c.seq = "the-session-before-the-restart", 40
        w = await c.connect(resume=True)
        got = [(await c.next_change())[:3] for _ in range(3)]
        assert got == [(w["seq"] + 1, 1, 2.5), (w["seq"] + 2, 2, 40.0), (w["seq"] + 3, 1, 3.0)]
        await asyncio.wait_for(_until(lambda: c.images == 1), 5)
        assert c.seq == srv.seq == w["seq"] + 3 and c.changes.empty()  # the image as of the newest
        srv.apply([supd(2, 5.0, 6)])
        srv.advance("6-0")
        assert (await c.next_change())[:3] == (w["seq"] + 4, 2, 50.0)  # live, numbered on after them


async def _until(pred: Callable[[], Any]) -> None:
    while not pred():
        await asyncio.sleep(0.02)


async def test_resume_within_a_session_repeats_nothing_twice(server, client):
    await client.connect()
    await client.wait_image()
    server.apply([upd(1, float(i)) for i in range(10, 15)])
    got = [await client.next_change() for _ in range(5)]
    last = got[-1][0]
    client.seq = last - 3  # pretend the last 3 were lost
    client.send_resume()
    again = [await client.next_change() for _ in range(3)]
    assert [s for s, *_ in again] == [last - 2, last - 1, last]
    assert client.changes.empty()


async def test_client_detects_a_gap_and_asks_to_resume():
    """An in-test server that skips seqs: the reference client must send resume from its last seq."""
    seen: list[dict] = []
    done = asyncio.Event()

    async def serve(reader, writer):
        dec = codec.Decoder(codec.CLIENT_MESSAGES)
        writer.write(codec.encode(codec.welcome(1, "S", 1, "A", 5, [[1, "AI"]])))
        writer.write(codec.encode(codec.image_messages(5, [[1, 0, 0, 0]], 10)[0]))
        writer.write(codec.encode({"t": "ev", "seq": 6, "points": [[1, 6, 0, 0]]}))
        writer.write(codec.encode({"t": "ev", "seq": 9, "points": [[1, 9, 0, 0]]}))
        writer.write(codec.encode({"t": "ev", "seq": 10, "points": [[1, 10, 0, 0]]}))  # no second resume
        while not done.is_set():
            data = await reader.read(4096)
            if not data:
                break
            for m in dec.feed(data):
                seen.append(m)
                if m["t"] == "resume":
                    done.set()
        writer.close()

    async with scripted_server(serve) as c:
        await c.connect()
        await asyncio.wait_for(done.wait(), 5)
        assert seen[-1] == {"t": "resume", "session": "S", "seq": 6} and c.gaps == 1
        assert c.image[1][0] == 6 and c.seq == 6
        await astays(lambda: c.gaps == 1, 0.2, "no second gap")


async def read_frames(reader: asyncio.StreamReader, until: str, timeout: float = 5.0) -> list[dict]:
    dec = codec.Decoder(codec.SERVER_MESSAGES)
    out: list[dict] = []
    while True:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        if not data:
            out.append({"t": "EOF"})
            return out
        out += dec.feed(data)
        if any(m["t"] == until for m in out):
            return out


async def test_heartbeat_timeout_closes_a_silent_master():
    async with sefeps_server(heartbeat_s=0.3) as srv, sefeps_client(srv.port) as good:
        await good.connect()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(codec.encode(codec.hello()))
        frames = await read_frames(reader, "EOF", timeout=3)
        types = [m["t"] for m in frames]
        assert types[:2] == ["welcome", "image"] and "hb" in types
        assert frames[-2] == {"t": "err", "code": "timeout", "msg": "nothing received for 0.9 s"}
        writer.close()
        assert not good.closed.is_set()  # the reference client heartbeats, so it stays
        assert len(srv.clients()) == 1


async def test_client_closes_on_a_silent_server():
    """A server that welcomes and then says nothing: the client gives up after 3 heartbeat periods."""
    async def serve(reader, writer):
        writer.write(codec.encode(codec.welcome(1, "S", 1, "A", 0.2, [])))
        while await reader.read(1 << 16):  # read the client's heartbeats, answer nothing
            pass
        writer.close()

    async with scripted_server(serve) as c:
        await c.connect()
        await asyncio.wait_for(c.closed.wait(), 3)
        assert "nothing received" in c.close_reason


@pytest.mark.parametrize("garbage,code", [
    (b"\x00\x00\x00\x05hello", "frame"),
    (struct.pack(">I", 1 << 30), "frame"),
    (codec.encode({"t": "cmd", "id": 1}), "proto"),
    (codec.encode({"t": "hello", "versions": [1]}), "proto"),  # second hello
])
async def test_malformed_frame_closes_only_that_connection(server, client, garbage, code):
    await client.connect()
    await client.wait_image()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(codec.encode(codec.hello()) + garbage)
    frames = await read_frames(reader, "EOF")
    assert frames[-1] == {"t": "EOF"} and frames[-2]["t"] == "err" and frames[-2]["code"] == code
    writer.close()
    server.apply([upd(1, 42.0)])
    assert (await client.next_change())[2] == 42.0
    assert len(server.clients()) == 1


async def test_message_before_hello_is_refused(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(codec.encode({"t": "hb"}))
    frames = await read_frames(reader, "EOF")
    assert [m["t"] for m in frames] == ["err", "EOF"] and frames[0]["code"] == "proto"
    writer.close()


async def test_full_queue_resynchronises_with_an_image():
    async with sefeps_server(queue_max=5) as srv, sefeps_client(srv.port) as c:
        srv.load_image([upd(1, 0.0)])
        await c.connect()
        await c.wait_image()
        c.image_ready.clear()
        srv.apply([upd(1, float(i)) for i in range(1, 11)])  # 10 events at once, queue holds 5
        await c.wait_image()
        assert c.images == 2 and c.image[1][0] == 10.0 and c.seq == srv.seq and c.changes.empty()
        assert next(iter(srv.clients().values()))["overflows"] == 1 and srv.counts.events_dropped == 10
        srv.apply([upd(1, 11.0)])
        assert (await c.next_change())[2] == 11.0


async def test_new_image_is_sent_to_connected_masters(server, client):
    await client.connect()
    await client.wait_image()
    client.image_ready.clear()
    server.load_image([upd(1, 9.0)])
    await client.wait_image()
    assert client.image[1] == (9.0, 0, 1000) and client.images == 2
    assert client.image[2] == (None, 0x80, 0)  # no value any more: in the image, invalid


async def test_stop_with_a_command_in_flight_leaves_nothing_running():
    sink = Sink(block=asyncio.Event())
    srv = SefepsServer(RTU, None, "127.0.0.1", sink, "A")
    await srv.start()
    c = SefepsClient("127.0.0.1", srv.port)
    await c.connect()
    pending = asyncio.create_task(c.command(40, 1.0))
    while not sink.calls:
        await asyncio.sleep(0.01)
    await srv.stop()
    with pytest.raises(SefepsError):
        await pending
    await c.close()


async def test_sample_configuration_rtu_12_and_busy_port(feproot):
    import dataclasses as dc

    from fepha.semodel import db
    from fepha.semodel.model import Model

    rows, _ = db.read_rows(feproot / "db" / "SEMODEL.db")
    model = Model.from_rows(rows)
    r12 = dc.replace(model.rtus[12], listen_port=0)
    async with sefeps_server(r12, model) as srv:
        srv.load_image([Update(f, Value(f.addr, 0, 5)) for f in r12.forwards])
        async with sefeps_client(srv.port) as c:
            w = await c.connect()
            assert [a for a, _ in w["points"]] == [1, 2, 10, 11, 12, 20, 30, 40]
            img = await c.wait_image()
            assert sorted(img) == [1, 2, 10, 11, 12, 20, 30, 40] and all(img[a][0] == a for a in img)
            with pytest.raises(OSError):
                await SefepsServer(dc.replace(r12, listen_port=srv.port), model, "127.0.0.1", Sink(), "A").start()


async def test_tls(tmp_path):
    """Same protocol inside TLS (stdlib ssl), self-signed certificate for 127.0.0.1 made with openssl."""
    sctx, cert = await self_signed_server_context(tmp_path)
    async with sefeps_server(tls=sctx) as srv:
        srv.load_image([upd(1, 7.0)])
        async with sefeps_client(srv.port, tls=ssl.create_default_context(cafile=str(cert))) as c:
            plain = SefepsClient("127.0.0.1", srv.port)
            await c.connect()
            assert (await c.wait_image())[1][0] == 7.0
            with pytest.raises((SefepsError, OSError, asyncio.TimeoutError)):
                await plain.connect(timeout=2)  # a plain-TCP master does not get in
            assert len(srv.clients()) == 1


async def test_mutual_tls(tmp_path):
    """[tls] ca set: the forwarder's own context (`tls_context`, relative paths from FEPROOT) requires a
    client certificate the CA signed; masters without one, or with another, are refused; the rest work."""
    await make_cert(tmp_path, "server")
    ccert, ckey = await make_cert(tmp_path, "master")
    ocert, okey = await make_cert(tmp_path, "intruder")
    sctx = tls_context(NodeConfig(tls_cert="server-cert.pem", tls_key="server-key.pem", tls_ca="master-cert.pem"),
                       root=tmp_path)
    assert sctx is not None and sctx.verify_mode == ssl.CERT_REQUIRED

    def client_ctx(cert=None, key=None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "server-cert.pem"))
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    async with sefeps_server(tls=sctx) as srv:
        srv.load_image([upd(1, 7.0)])
        async with sefeps_client(srv.port, tls=client_ctx(ccert, ckey)) as good:
            await good.connect()
            assert (await good.wait_image())[1][0] == 7.0
            for bad in (client_ctx(), client_ctx(ocert, okey)):
                async with sefeps_client(srv.port, tls=bad) as c:
                    with pytest.raises((SefepsError, OSError, asyncio.TimeoutError)):
                        await c.connect(timeout=2)
            assert len(srv.clients()) == 1
            srv.apply([upd(1, 8.0)])
            assert (await good.next_change())[1:3] == (1, 8.0)


def cursor_of(srv: SefepsServer) -> tuple[int, int]:
    return srv.known_cursors().get("127.0.0.1", (0, 0))


@contextlib.asynccontextmanager
async def imaged(acks: bool, **options: Any) -> AsyncIterator[tuple[SefepsServer, SefepsClient]]:
    """A server at stream entry 1-0 and a master that has its image."""
    async with sefeps_server(**options) as srv, sefeps_client(srv.port, acks=acks) as c:
        srv.advance("1-0")
        srv.load_image([upd(1, 0.0)])
        await c.connect()
        await c.wait_image()
        yield srv, c


async def test_an_ack_that_ends_inside_an_entry_moves_the_position_to_the_entries_it_completes():
    """Ev frames of 2 events, entries of 3 events: acknowledgements per frame end inside entries. The
    position never passes an entry still partly outstanding, and moves to the newest entry that completes
    (it used to stay where it was whenever an acknowledgement ended inside an entry)."""
    async with imaged(False, event_chunk=2) as (srv, c):
        c.send_ack(c.seq)
        await until_cursor(srv, "127.0.0.1", (1, 0))
        base = c.seq
        srv.apply([supd(a, float(ms), ms) for ms in (2, 3) for a in (1, 2, 10)])  # seqs base+1..base+6
        srv.advance("3-0")
        assert [(await c.next_change())[0] for _ in range(6)] == [base + i for i in range(1, 7)]
        c.send_ack(base + 2)  # inside entry 2-0
        await astays(lambda: cursor_of(srv) == (1, 0), 0.2, "the position stays before entry 2-0")
        c.send_ack(base + 4)  # entry 2-0 whole, inside 3-0
        await until_cursor(srv, "127.0.0.1", (2, 0))
        await astays(lambda: cursor_of(srv) == (2, 0), 0.2, "the position does not pass entry 3-0")
        c.send_ack(base + 6)
        await until_cursor(srv, "127.0.0.1", (3, 0))


@pytest.mark.parametrize(("offset", "why"), [(1, "was never sent"), (-2, "is behind")])
async def test_an_ack_out_of_order_or_of_a_seq_never_sent_is_a_protocol_error(offset, why):
    """It gets `err` `proto` and the connection closes; the master's position does not move."""
    async with imaged(False) as (srv, c):
        srv.apply([supd(1, 2.0, 2), supd(1, 3.0, 3)])
        srv.advance("3-0")
        await c.next_change()
        seq = (await c.next_change())[0]
        c.send_ack(seq - 1)  # entry 2-0
        await until_cursor(srv, "127.0.0.1", (2, 0))
        c.send_ack(seq + offset)
        await asyncio.wait_for(c.closed.wait(), 5)
        assert c.error is not None and c.error["code"] == "proto" and why in c.error["msg"]
        assert cursor_of(srv) == (2, 0)


async def test_a_resume_of_this_session_moves_the_position_only_to_what_the_master_has():
    """A master back on the same server with (session, seq) gets the events after seq again: they are
    outstanding, so its position stays at the entries up to seq (it used to jump to the server's position,
    past events the master had never received: a switchover then would have lost them)."""
    async with imaged(True, event_chunk=2) as (srv, c):
        srv.apply([supd(1, 2.0, 2), supd(2, 2.0, 2)])
        srv.advance("2-0")
        await c.next_change()
        await c.next_change()
        await until_cursor(srv, "127.0.0.1", (2, 0))
        await c.close()
        c.acks = False
        srv.apply([supd(a, float(ms), ms) for ms in (3, 4) for a in (1, 2)])
        srv.advance("4-0")
        c.seq -= 1  # it applied entry 2-0 only partly
        await c.connect(resume=True)
        got = [(await c.next_change())[0] for _ in range(5)]  # entry 2-0's second event again, 3-0, 4-0
        assert got == list(range(got[0], got[0] + 5)) and got[-1] == srv.seq
        await astays(lambda: cursor_of(srv) == (2, 0), 0.2, "the position stays at entry 2-0")
        c.send_ack(got[-1])
        await until_cursor(srv, "127.0.0.1", (4, 0))


async def test_a_new_full_image_moves_the_position_only_once_the_master_acknowledges_it():
    """After a stream gap (or a Redis reconnect) the runner gives a full image at a later entry; a master
    with nothing outstanding has not got the entries in between until it acknowledges that image (its
    position used to follow the image's entry at once: a switchover before the image reached it lost them)."""
    async with imaged(False) as (srv, c):
        c.send_ack(c.seq)
        await until_cursor(srv, "127.0.0.1", (1, 0))
        c.image_ready.clear()
        srv.image_at("5-0", [upd(1, 5.0)])  # as the runner loads it
        await c.wait_image()
        await astays(lambda: cursor_of(srv) == (1, 0), 0.2, "the position waits for the image's ack")
        c.send_ack(c.seq)
        await until_cursor(srv, "127.0.0.1", (5, 0))
