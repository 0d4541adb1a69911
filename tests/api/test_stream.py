"""The live stream: `/api/v1/stream` served by uvicorn (in the test's loop) over a real Redis with the
sample configuration; clients are httpx streams. Values written through the real functions and timeline
events arrive; the client limit answers 503; a client that stops reading is dropped, not waited for."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis
import uvicorn
from redis import exceptions as rex

from fep_api import live
from fep_api.app import create_app
from fep_api.live import Hub, TooManyClients, sse
from fepha import events, points, redisfns
from tests.api.conftest import node_cfg, populate
from tests.redisproc import free_port


async def serve(cfg: Any) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def url(loaded, ar: aredis.Redis) -> AsyncIterator[str]:
    await populate(ar)
    async for u in serve(node_cfg(loaded, api_stream_clients=3, api_stream_queue=50)):
        yield u


_lines: dict[int, Any] = {}


async def read_until(resp: httpx.Response, want: Any, timeout: float = 5.0) -> list[tuple[str, Any]]:
    """Messages (event, data) until `want(messages)` holds."""
    got: list[tuple[str, Any]] = []
    event = None
    end = time.monotonic() + timeout
    lines = _lines.setdefault(id(resp), resp.aiter_lines())
    while not want(got):
        line = await asyncio.wait_for(anext(lines), max(0.01, end - time.monotonic()))
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            got.append((event, json.loads(line[6:])))
    return got


async def test_values_timeline_and_health_arrive(url: str, ar: aredis.Redis) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c, \
            c.stream("GET", "/api/v1/stream", params={"rtu": "1"}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        got = await read_until(resp, lambda g: any(e == "health" for e, _ in g))
        assert got[0][0] == "hello"
        health = next(d for e, d in got if e == "health")
        assert health["overview"]["master_node"] == "A" and len(health["rtus"]["items"]) >= 2
        t = int((await ar.time())[0]) * 1000
        await ar.fcall(*redisfns.write_values(2, "B", 1, ["201", points.encode(7.0, 0, t)]).argv)
        await ar.fcall(*redisfns.write_values(1, "A", 1, ["101", points.encode(99.5, 0, t),
                                                          "102", points.encode(1.0, 0x80, t)]).argv)
        await events.add(ar, "channel", "B", 1, from_ch=1, to_ch=2)
        got = await read_until(resp, lambda g: any(e == "timeline" for e, _ in g))
        vals = [d for e, d in got if e == "values"]
        assert vals == [{"rtu": "1", "items": [
            {"id": 101, "value": 99.5, "quality": 0, "quality_flags": [], "valid": True, "ts_ms": t, "error": None},
            {"id": 102, "value": 1.0, "quality": 128, "quality_flags": ["IV"], "valid": False, "ts_ms": t,
             "error": None}]}]
        ev = next(d for e, d in got if e == "timeline")
        assert ev["kind"] == "channel" and ev["text"] == "RTU 1 on node B: channel 1 → 2"


async def test_client_limit_and_cleanup(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        async def hold() -> httpx.Response:
            return await c.send(c.build_request("GET", "/api/v1/stream"), stream=True)
        held = [await hold() for _ in range(3)]
        assert all(r.status_code == 200 for r in held)
        r = await c.get("/api/v1/stream")
        assert r.status_code == 503 and "stream_clients" in r.json()["detail"]
        for h in held:
            await h.aclose()
        # the server notices the closed connections and frees the places
        end = time.monotonic() + 5
        while True:
            r = await hold()
            if r.status_code == 200:
                await r.aclose()
                break
            await r.aclose()
            assert time.monotonic() < end, "closed clients were not cleaned up"
            await asyncio.sleep(0.1)
        r = await c.get("/api/v1/stream", params={"duration_s": 0.3})
        assert r.status_code == 200 and r.text.startswith("event: hello")


async def test_a_client_that_stops_reading_is_dropped() -> None:
    hub = Hub(store=None, max_clients=5, queue=3)  # type: ignore[arg-type]
    slow, fast = hub.join(None, True), hub.join(frozenset({"1"}), True)
    hub._task.cancel()  # no Redis here: only the fan-out is under test
    for i in range(5):
        hub._broadcast(sse("values", {"rtu": "1", "i": i}), "1")
        fast.queue.get_nowait()
    assert slow.dropped and slow not in hub.clients and hub.dropped_total == 1
    assert fast in hub.clients and not fast.dropped
    hub._broadcast(sse("values", {"rtu": "2"}), "2")  # not asked for: not queued
    assert fast.queue.empty()
    msgs = [m async for m in hub.messages(slow, "A", 1.0)]
    # what it had queued is discarded when it is dropped (it reloads anyway): overflow comes next
    assert msgs[0].startswith("event: hello") and msgs[-1].startswith("event: overflow") and len(msgs) == 2


@pytest.mark.parametrize("fault", ["pause", "stop"])
async def test_a_redis_lost_under_a_live_client_ends_its_stream(fault: str, loaded, ar: aredis.Redis) -> None:
    """A stream that only kept its keepalives while the local Redis was gone left the dashboard saying
    "● live" over the last health and values it had: they must not look current. The stream ends with
    `unavailable` (the dashboard falls back to polling, which shows the 503), and a new one is refused."""
    await populate(ar)
    cfg = node_cfg(loaded, socket_timeout_s=0.5)
    async for u in serve(cfg):
        async with httpx.AsyncClient(base_url=u, timeout=10) as c, c.stream("GET", "/api/v1/stream") as resp:
            await read_until(resp, lambda g: any(e == "health" for e, _ in g))
            getattr(loaded, fault)()
            try:
                t0 = time.monotonic()
                got = await read_until(resp, lambda g: any(e == "unavailable" for e, _ in g), timeout=5)
                assert time.monotonic() - t0 < 2 * cfg.socket_timeout_s + 2.0
                assert got[-1][1]["detail"].startswith("Redis unreachable")
                assert [line async for line in _lines[id(resp)] if line.strip()] == []  # it ended
                r = await c.get("/api/v1/stream", params={"duration_s": 0.3})
                assert r.status_code == 503 and r.json()["detail"].startswith("Redis unreachable"), r.text
            finally:
                if fault == "pause":
                    loaded.resume()


async def test_head_of_the_stream_answers_at_once_and_keeps_no_place(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as c:
        for _ in range(5):  # more than the 3 places: each HEAD gives its place back
            r = await c.head("/api/v1/stream")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert r.content == b""
        held = [await c.send(c.build_request("GET", "/api/v1/stream"), stream=True) for _ in range(3)]
        try:
            assert [h.status_code for h in held] == [200, 200, 200]
        finally:
            for h in held:
                await h.aclose()


async def test_a_dropped_client_frees_its_queue_and_holds_its_place_until_its_response_ends() -> None:
    """A client that never reads (its socket full) is dropped, but its response stays blocked on the
    socket: it gave back its place at once, so such connections could pile up without bound, each with a
    full queue. Now its queue is emptied at once (only `overflow` is left to send) and its place is
    held until its response ends: at most `stream_clients` connections, whatever the clients do."""
    hub = Hub(store=None, max_clients=2, queue=3)  # type: ignore[arg-type]
    slow, fast = hub.join(None, True), hub.join(None, True)
    hub._task.cancel()  # no Redis here: only the fan-out is under test
    for i in range(5):
        hub._broadcast(sse("values", {"rtu": "1", "i": i}), "1")
        fast.queue.get_nowait()
    assert slow.dropped and slow.queue.empty() and slow not in hub.clients
    with pytest.raises(TooManyClients):  # the slow one's response has not ended yet
        hub.join(None, True)
    msgs = [m async for m in hub.messages(slow, "A", 1.0)]
    assert [m.split("\n")[0] for m in msgs] == ["event: hello", "event: overflow"]
    hub.join(None, True)  # its response ended: its place is free
    await hub.aclose()


@pytest.mark.parametrize(("exc", "says"), [
    (rex.ConnectionError("Error 111"), "Redis unreachable: Error 111"),
    (TimeoutError("Timeout reading"), "Redis unreachable: Timeout reading"),
    (rex.ResponseError("WRONGTYPE"), "Redis error: WRONGTYPE"),
    (ValueError("bad"), "live updates failed: ValueError: bad"),  # not called a Redis outage
])
def test_why_the_streams_ended_is_worded_as_the_rest_503s(exc: Exception, says: str) -> None:
    assert live._reason(exc) == says


async def test_a_client_that_never_reads_is_disconnected_and_a_slow_reader_kept(
        loaded, ar: aredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """A real socket that sends its request and then never reads kept its place, a task and its buffers
    until its TCP connection closed (for good, when the peer keeps its window shut). Once its buffers are
    full a write waits `stream_write_timeout_s`, then the connection is reset and the place is free; a client
    that reads slowly keeps its stream. Timeline events of ~2 kB, 100 a second, fill its bounded buffers in
    about a second (loopback's autotuned ones took megabytes: half a minute at this rate)."""
    caplog.set_level("INFO", logger="fep_api.live")
    await populate(ar)
    async for u in serve(node_cfg(loaded, api_stream_clients=2, api_stream_queue=10_000,
                                  api_stream_write_timeout_s=1.0)):
        port = int(u.rsplit(":", 1)[1])
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: fep\r\n\r\n")
        async with httpx.AsyncClient(base_url=u, timeout=10) as c, c.stream("GET", "/api/v1/stream") as slow:
            assert slow.status_code == 200
            seen: list[str] = []

            async def read_slowly(seen: list[str]) -> None:
                async for chunk in slow.aiter_text():
                    seen.append(chunk)
                    await asyncio.sleep(0.02)

            reader = asyncio.create_task(read_slowly(seen))
            try:
                t0 = time.monotonic()
                end = t0 + 20
                while (r := await c.get("/api/v1/stream", params={"duration_s": 0.1})).status_code == 503:
                    assert time.monotonic() < end, "the stalled client kept its place"
                    await events.add(ar, "channel", "B", 1, from_ch=1, to_ch=2, pad="x" * 2_000)
                    await asyncio.sleep(0.01)
                assert time.monotonic() - t0 < 8, "the stalled client's buffers are not bounded"
                assert r.status_code == 200 and r.text.startswith("event: hello")
                m = (await c.get("/metrics")).text
                assert 'fep_api_stream_dropped_total{node="A"} 1.0' in m, m[-600:]
                stalled.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    while stalled.recv(1 << 20):
                        pass
                await events.add(ar, "channel", "B", 1, from_ch=2, to_ch=1)
                mark = len(seen)
                while not any('"to_ch":"1"' in s for s in seen[mark:]):
                    assert not reader.done(), "the slow reader's stream ended"
                    await asyncio.sleep(0.05)
            finally:
                reader.cancel()
                stalled.close()
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and "took no data for 1 s" in drops[0], drops
