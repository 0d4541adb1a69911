"""A controlling station for tests on our own link (fepha.iec104.link, role CLIENT) over a real socket: it
records every ASDU it receives and can stop acknowledging (to leave frames unacknowledged at the RTU)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fepha.iec104 import codec as c
from fepha.iec104.link import AsduIn, Link, LinkParams, Role
from tests.forwarder.se104s_fixtures import until

PARAMS = LinkParams(k=12, w=8, t1=5, t2=0.05, t3=10)


@dataclass
class RawMaster:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    link: Link = field(default_factory=lambda: Link(Role.CLIENT, PARAMS, time.monotonic()))
    asdus: list[c.Asdu] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    ack: bool = True  # False: write nothing any more (no S frames, no answers)
    # set ack to False on the first ASDU this accepts, before anything is written in answer to it or to the
    # frames that came with it: leaves exactly what followed it unacknowledged, whatever came before
    mute_after: Callable[[c.Asdu], bool] | None = None
    error: Exception | None = None
    closed: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def flush(self) -> None:
        data = self.link.data_to_send()
        if data and self.ack and not self.closed:
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.raw.append(data)
                for ev in self.link.receive(data, time.monotonic()):
                    if isinstance(ev, AsduIn):
                        asdu = c.parse_asdu(ev.asdu)
                        self.asdus.append(asdu)
                        if self.mute_after is not None and self.mute_after(asdu):
                            self.ack, self.mute_after = False, None
                self.flush()
        except (c.ProtocolError, ConnectionError) as exc:
            self.error = exc
        finally:
            self.closed = True
            self.writer.close()

    async def _timers(self) -> None:
        while not self.closed:
            await asyncio.sleep(0.02)
            self.link.tick(time.monotonic())
            self.flush()

    async def start(self) -> None:
        self.link.start(time.monotonic())
        self.flush()
        await until(lambda: self.link.started, what="STARTDT con")

    def send(self, asdu: bytes) -> None:
        self.link.send(asdu, time.monotonic())
        self.flush()

    def values(self, cause: int | None = c.COT_SPONT) -> list[tuple[int, int, float, int, int | None]]:
        """(ca, ioa, value, quality, time tag ms) of every monitored object received with `cause`."""
        return [(a.ca, ioa, *c.decode_element(a.type_id, e)) for a in list(self.asdus)
                if a.type_id < 45 and (cause is None or a.cause == cause) for ioa, e in a.objects]


@contextlib.asynccontextmanager
async def raw_master(port: int, host: str = "127.0.0.1",
                     local_addr: tuple[str, int] | None = None) -> AsyncIterator[RawMaster]:
    reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
    m = RawMaster(reader, writer)
    m.tasks = [asyncio.create_task(m._read()), asyncio.create_task(m._timers())]
    try:
        yield m
    finally:
        m.closed = True
        writer.close()
        for t in m.tasks:
            t.cancel()
        await asyncio.gather(*m.tasks, return_exceptions=True)
