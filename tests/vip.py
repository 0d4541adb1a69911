"""A stand-in for the VIP in tests of a promotion without keepalived (tests/acquirer/test_role_watch.py,
tests/forwarder/test_role_watch.py): what matters there is that connections opened before the VIP moved
still lead to the old master. With `delay_s`, a slow link: every chunk is passed on that long after it
arrived, in each direction (tests/acquirer/test_slow_master.py; tests/ha/netem.py's relay uses the same
pipe)."""

from __future__ import annotations

import asyncio
import contextlib
import random


def due_times(arrivals: list[float], delay_s: float, jitter_s: float, rng: random.Random) -> list[float]:
    """When each chunk of one direction is passed on: arrival + delay ± jitter, never before the chunk
    ahead of it (a TCP stream keeps its order)."""
    out: list[float] = []
    last = 0.0
    for t in arrivals:
        last = max(last, t + max(0.0, delay_s + rng.uniform(-jitter_s, jitter_s)))
        out.append(last)
    return out


async def delayed_pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float = 0.0,
                       jitter_s: float = 0.0, rng: random.Random | None = None) -> None:
    """Copy `reader` to `writer`, each chunk held for delay ± jitter (`due_times`); EOF passed on last."""
    rng = rng or random.Random()
    q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def send() -> None:
        while True:
            due, data = await q.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            with contextlib.suppress(OSError):
                await writer.drain()

    sender = asyncio.create_task(send())
    last = 0.0
    try:
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            last = max(last, due_times([loop.time()], delay_s, jitter_s, rng)[0])
            await q.put((last, data))
            if not data:
                break
        await sender
    finally:
        sender.cancel()


class Vip:
    """The VIP as a TCP forwarder on a free loopback port: each new connection goes to the Redis the VIP
    leads to when it is opened; connections opened before a move stay with the old one (as a VIP move
    leaves established connections with the old peer)."""

    def __init__(self, target: tuple[str, int], delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        self.writers += [w, uw]

        for t in (asyncio.create_task(delayed_pipe(r, uw, self.delay_s)),
                  asyncio.create_task(delayed_pipe(ur, w, self.delay_s))):
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()
