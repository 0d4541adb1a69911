"""A stand-in for the VIP in tests of a promotion without keepalived (tests/acquirer/test_role_watch.py,
tests/forwarder/test_role_watch.py): what matters there is that connections opened before the VIP moved
still lead to the old master."""

from __future__ import annotations

import asyncio


class Vip:
    """The VIP as a TCP forwarder on a free loopback port: each new connection goes to the Redis the VIP
    leads to when it is opened; connections opened before a move stay with the old one (as a VIP move
    leaves established connections with the old peer)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        self.writers += [w, uw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        for t in (asyncio.create_task(pipe(r, uw)), asyncio.create_task(pipe(ur, w))):
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
