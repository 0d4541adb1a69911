"""A request head over 16 kB gets 414 (request line) or 431 (header fields) from the real `fep-api` server
configuration, read by the client whole, where uvicorn reset a 1 MB URL's connection and took a 100 kB
header that arrived in one piece; a head not whole within `head_timeout_s` gets 408, where uvicorn held
such a connection for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI

from fep_api.cli import server_config
from fep_api.headlimit import MAX_HEAD, too_long
from tests.redisproc import free_port

LINE = b"GET /health?a=%s HTTP/1.1\r\nHost: fep\r\n"
HEAD_S = 0.5


@pytest.mark.parametrize("head, status", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
    (b"GET /?" + b"a" * (MAX_HEAD - 40), None),                       # not complete, could still fit
    (b"GET /?" + b"a" * MAX_HEAD, 414),                               # no line end within the limit
    (b"GET / HTTP/1.1\r\nX: " + b"b" * MAX_HEAD, 431),
    (b"GET / HTTP/1.1\r\nX: " + b"b" * (MAX_HEAD - 23) + b"\r\n\r\n", None),  # complete, 16384 bytes
    (b"GET / HTTP/1.1\r\nX: " + b"b" * (MAX_HEAD - 22) + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n\r\n" + b"body" * MAX_HEAD, None),            # what follows the head is not counted
], ids=range(7))
def test_too_long(head: bytes, status: int | None) -> None:
    assert too_long(head) == status


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    p = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", p, head_timeout_s=HEAD_S))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield p
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def exchange(port: int, *requests: bytes) -> bytes:
    """Send the requests on one connection as a client does (everything, then read), return the answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for r in requests:
            writer.write(r)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("request_, status", [
    (LINE % (b"a" * 1_000_000) + b"\r\n", b"414 URI Too Long"),
    (LINE % (b"a" * 20_000) + b"\r\n", b"414 URI Too Long"),
    (LINE % b"a" + b"X-Big: " + b"b" * 100_000 + b"\r\n\r\n", b"431 Request Header Fields Too Large"),
], ids=["1MB-url", "20kB-url", "100kB-header"])
async def test_a_head_too_long_is_answered_not_reset(port: int, request_: bytes, status: bytes) -> None:
    ok = LINE % b"1" + b"\r\n"
    out = await exchange(port, ok, request_)  # after a request on the same connection
    first, _, rest = out.partition(b'{"status":"ok"}')
    assert first.startswith(b"HTTP/1.1 200 OK"), out[:300]
    assert rest.startswith(b"HTTP/1.1 " + status) and b"longer than 16384 bytes" in rest, rest[:300]
    assert (await exchange(port, LINE % b"1" + b"Connection: close\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")


async def test_a_head_that_does_not_arrive_is_timed_out(port: int) -> None:
    """A connection that sends half a head, or nothing, after connecting or after a request, held its socket
    in uvicorn for good; a head sent in pieces within the time is served."""
    async def held(*parts: bytes) -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = asyncio.get_running_loop().time()
        try:
            for p in parts:
                writer.write(p)
                await writer.drain()
            return await asyncio.wait_for(reader.read(), 5), asyncio.get_running_loop().time() - t0
        finally:
            writer.close()

    out, took = await held(b"GET /health HT")
    assert out.startswith(b"HTTP/1.1 408 Request Timeout") and b"within 0.5 s" in out and took < 2, out
    out, took = await held()
    assert out == b"" and took < 2
    out, took = await held(LINE % b"1" + b"\r\n", b"GET /hea")  # after a request: its next head
    assert out.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 408 Request Timeout" in out and took < 2, out
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: f")
    await asyncio.sleep(0.2)
    writer.write(b"ep\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 OK")
    writer.close()
