"""SCADA masters that connect and never read what the forwarder sends them (a hung master, a broken client,
a flood), against the real servers on 127.0.0.1 with raw sockets: what the server holds for such a master
stays bounded, the other masters are served all along, and a master the protocol gives up on (IEC 104 t1,
sefeps's 3 heartbeats) releases its socket although it never reads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator

from fep_forwarder.modbus_trains import ModbusTrainsServer
from fep_forwarder.sefeps import codec as sefeps_codec
from fepha.iec104 import codec as c
from tests.forwarder.mbt_fixtures import IMAGE, ScriptedSink, rtu
from tests.forwarder.se104s_fixtures import se104_server
from tests.forwarder.test_sefeps_server import sefeps_client, sefeps_server, upd

BOUND = 256 << 10
"""What one non-reading master may hold in the server's write buffer: asyncio's high-water mark (64 KiB),
plus what the answers to one read of the socket (at most 256 KiB in) add before the server waits."""


def open_fds() -> int:
    """File descriptors of this process (the servers run in it; the deaf client's socket counts one)."""
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def deaf_socket(port: int) -> AsyncIterator[socket.socket]:
    """A non-blocking client socket with a small receive buffer that the test never reads from."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
        yield s
    finally:
        s.close()


async def flood(s: socket.socket, data: bytes, seconds: float) -> int:
    """Send `data` again and again for `seconds` or until the server stops taking it; bytes sent."""
    loop = asyncio.get_running_loop()
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.wait_for(loop.sock_sendall(s, data), 0.5)
        except TimeoutError:
            break  # the server stopped reading: TCP flow control holds the rest
        except ConnectionError:
            break  # the server dropped it
        sent += len(data)
    return sent


async def until(pred, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not pred():
        assert time.monotonic() < end, what
        await asyncio.sleep(0.02)


async def test_modbus_trains_a_pipelining_master_that_never_reads_is_held_by_flow_control():
    """Reads of the 5 holding registers (12 bytes) answered with 19 bytes each: a master that sends them
    without reading used to make the server queue every answer (megabytes, growing as long as it sent)."""
    srv = ModbusTrainsServer(rtu(), None, "127.0.0.1", ScriptedSink(), "A")
    await srv.start()
    srv.load_image(IMAGE)
    try:
        reads = b"".join(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, 0, 5) for tid in range(1000))
        async with deaf_socket(srv.port) as s:
            assert srv._srv is not None
            conns = srv._srv.active_connections

            def held() -> int:
                return sum(h.transport.get_write_buffer_size() for h in conns.values() if h.transport is not None)

            most = 0

            async def watch() -> None:
                nonlocal most
                while True:
                    most = max(most, held())
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            try:
                sent = await flood(s, reads, 3.0)
                await asyncio.sleep(2.0)  # whatever the server still had queued is answered (or waits)
            finally:
                watcher.cancel()

            assert most < BOUND, f"{most} bytes queued for a master that does not read ({sent} bytes sent)"
            # another master is served meanwhile
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(struct.pack(">HHHBBHH", 7, 0, 6, 1, 4, 10, 1))
            assert await asyncio.wait_for(r.readexactly(11), 2) == bytes.fromhex("0007 0000 0005 01 04 02 0001")
            w.close()
    finally:
        await srv.stop()


async def test_se104s_a_master_that_never_reads_is_bounded_then_dropped_with_its_socket():
    """A master sends STARTDT and then floods TESTFR act without reading the confirmations: the server stops
    reading it once its buffer is full; after t1 without an acknowledgement (of its end of initialisation)
    the server drops it, and the socket is released although the master never reads (close() alone waits
    for the buffered bytes to be read, for ever)."""
    async with se104_server(t1=3.0, t2=0.2, t3=0.5) as srv:
        before = open_fds()
        async with deaf_socket(srv.port) as s:
            await asyncio.get_running_loop().sock_sendall(s, c.u_frame(c.STARTDT_ACT))
            await until(lambda: len(srv._io) == 1, 2, "the master is connected")
            sent = await flood(s, c.u_frame(c.TESTFR_ACT) * 2000, 1.5)
            io = next(iter(srv._io.values()), None)
            held = io.writer.transport.get_write_buffer_size() if io is not None else 0
            assert held < BOUND, f"{held} bytes queued for a master that does not read ({sent} bytes sent)"
            await until(lambda: not srv._io and open_fds() <= before + 1, 5,
                        "the deaf master's connection and socket released")
            assert srv.clients() == {}


async def test_sefeps_a_master_that_sends_heartbeats_but_never_reads_is_dropped_with_its_socket():
    """sefeps closes a master that sent nothing for 3 heartbeats; one that keeps sending but never reads
    used to keep its connection for ever, the writer waiting on the full socket (and every answer to what it
    sent queued behind it). Now a write that cannot go out for 3 heartbeats closes it the same way."""
    async with sefeps_server(heartbeat_s=1.0) as srv, sefeps_client(srv.port) as good:
        srv.load_image([upd(1, 1.5)])
        await good.connect()
        before = open_fds()
        async with deaf_socket(srv.port) as s:
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(s, sefeps_codec.encode(sefeps_codec.hello()))
            await until(lambda: len(srv.clients()) == 2, 2, "the deaf master is connected")
            hb = sefeps_codec.encode(sefeps_codec.HB)
            end = time.monotonic() + 15.0  # the limit is 3 s; room for a loaded machine
            n = 0
            while time.monotonic() < end and len(srv.clients()) == 2:
                # more than the kernel's socket buffers take (up to 4 MiB for the sender on Linux)
                srv.apply([upd(1, float(n + i)) for i in range(5000)])
                n += 5000
                with contextlib.suppress(TimeoutError, OSError):
                    await asyncio.wait_for(loop.sock_sendall(s, hb), 0.05)
                await asyncio.sleep(0.05)
            assert len(srv.clients()) == 1, "the master that never reads is still connected after 15 s"
            await until(lambda: open_fds() <= before + 1, 3, "the deaf master's socket released")
        assert not good.closed.is_set()
        await until(lambda: good.image.get(1, (None,))[0] == float(n - 1), 3, "the reading master got the last value")


async def test_sefeps_a_slow_master_that_reads_is_kept():
    """The stall limit is on progress, not on the whole backlog: a master reading 40 kB/s (a narrow link)
    behind megabytes of events (the kernel's buffers full, the writer paused) stays connected."""
    async with sefeps_server(heartbeat_s=0.5) as srv:
        async with deaf_socket(srv.port) as s:
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(s, sefeps_codec.encode(sefeps_codec.hello()))
            await until(lambda: len(srv.clients()) == 1, 2, "the slow master is connected")
            conn = next(iter(srv.conns))
            hb = sefeps_codec.encode(sefeps_codec.HB)
            n = 0
            while conn.writer.transport.get_write_buffer_size() <= 1 << 16:  # the kernel's buffers full, writer paused
                assert n < 2_000_000 and conn.state == "open", "the server's buffer does not fill"
                srv.apply([upd(1, float(n + i)) for i in range(5000)])
                n += 5000
                await loop.sock_sendall(s, hb)
                await asyncio.sleep(0.02)
            end = time.monotonic() + 4.0  # past the stall limit (1.5 s) more than twice
            while time.monotonic() < end:
                await loop.sock_sendall(s, hb)
                for _ in range(2):
                    await asyncio.sleep(0.1)
                    with contextlib.suppress(BlockingIOError):
                        assert s.recv(4096) != b"", "the server closed the slow master"
            assert len(srv.clients()) == 1
