"""Fenced value writes to the master: one `write_values` call per poll response, pipelined.

Direct mode (local Redis is the master) sends each poll's call at once; whatever queued up while the
previous pipeline was in flight goes out together in the next. Batched mode (writing through the VIP to
a remote master) holds calls up to `window_ms` or until `batch_size` changes are queued, so a remote
round trip carries many poll responses. Both modes report failures to the caller, which re-sends the
write as it was, with its write sequence (`wid`: applied at most once), or past its bound the points with
their next poll (compensation, see changes.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.exceptions import ResponseError

from fep_acquirer.tasks import cancel_and_wait
from fepha import redisfns


@dataclass(frozen=True, slots=True)
class WriteResult:
    ok: bool
    fenced: bool = False  # rejected because this node no longer holds the lease at this epoch
    holder: str = ""
    epoch: int = 0
    error: str = ""
    duplicate: bool = False  # ok, but not written now: the master had applied this write sequence already


async def send_fcalls(r: Any, argvs: list[tuple[Any, ...]], tail: Sequence[tuple[Any, ...]] = ()) -> list[Any]:
    """FCALL each argv, then each command of `tail` as it stands, in one round trip (a pipeline), packed by
    hiredis: redis-py's asyncio client packs in pure Python, which for one write_values call of 1000 changes
    (2000+ arguments) cost about 1 ms, about half of the acquirer's whole CPU per change (bench/acquire.py).
    Error replies come back as exceptions in the list; a broken connection raises (and is dropped, never
    reused half-read)."""
    packed = [hiredis.pack_command(("FCALL", *argv)) for argv in argvs]
    packed += [hiredis.pack_command(tuple(cmd)) for cmd in tail]
    pool = r.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(packed)
        results: list[Any] = []
        for _ in packed:
            try:
                results.append(await conn.read_response())
            except ResponseError as exc:
                results.append(exc)
        return results
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


class Writer:
    def __init__(self, master: Any, node: str, window_ms: int = 0, batch_size: int = 500) -> None:
        self.master = master
        self.node = node
        self.window_s = window_ms / 1000
        self.batch_size = batch_size
        self._queue: list[tuple[redisfns.Call, int, asyncio.Future[WriteResult]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written: dict[int, tuple[int, int]] = {}
        """RTU -> (epoch, the highest count of writes applied under its lease record that the master answered
        under that epoch: `write_values`' `wn`), which the holder's lease tick passes on (`lease_tick`'s
        `written`: a record whose count is below it was rolled back)."""

    def set_mode(self, window_ms: int, batch_size: int) -> None:
        self.window_s, self.batch_size = window_ms / 1000, batch_size

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="acquirer-writer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for _, _, fut in self._queue:
            if not fut.done():
                fut.set_result(WriteResult(False, error="stopped"))
        self._queue.clear()

    async def write(self, rtu: int, epoch: int, pairs: list[str]) -> WriteResult:
        """Queue one poll response's changes (flat pid, record, ...) and wait for the outcome."""
        return (await self.write_many(rtu, epoch, [pairs]))[0]

    async def write_many(self, rtu: int, epoch: int, writes: list[list[str]],
                         wids: Sequence[tuple[str, int]] | None = None) -> list[WriteResult]:
        """Several write_values calls queued together, in order (one pipeline: each runs after the one
        before it), and their outcomes in that order. `wids`: each write's (token, sequence), checked by
        the master (redisfns.write_values)."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[WriteResult]] = []
        for i, pairs in enumerate(writes):
            fut: asyncio.Future[WriteResult] = loop.create_future()
            call = redisfns.write_values(rtu, self.node, epoch, pairs, wid=wids[i] if wids else None)
            self._queue.append((call, len(pairs) // 2, fut))
            futs.append(fut)
        self._wake.set()
        return [await fut for fut in futs]

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.window_s > 0:
                end = time.monotonic() + self.window_s
                while sum(n for _, n, _ in self._queue) < self.batch_size and time.monotonic() < end:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), end - time.monotonic())
                    except TimeoutError:
                        break
            batch, self._queue = self._queue, []
            if batch:
                await self._send(batch)

    def _count(self, rtu: int, epoch: int, wn: int) -> None:
        was = self.written.get(rtu)
        if was is None or was[0] < epoch or (was[0] == epoch and was[1] < wn):
            self.written[rtu] = (epoch, wn)

    async def _send(self, batch: list[tuple[redisfns.Call, int, asyncio.Future[WriteResult]]]) -> None:
        try:
            results = await send_fcalls(self.master, [call.argv for call, _, _ in batch])
        except Exception as exc:  # noqa: BLE001 - Redis unreachable, failover...: caller compensates
            results = [exc] * len(batch)
        for (call, _, fut), res in zip(batch, results, strict=True):
            if not isinstance(res, Exception) and int(res[0]) in (1, 2) and len(res) > 2:
                self._count(*redisfns.write_target(call), int(res[2]))
            if fut.done():
                continue
            if isinstance(res, Exception):
                fut.set_result(WriteResult(False, error=f"{type(res).__name__}: {res}"))
            elif int(res[0]) in (1, 2):
                fut.set_result(WriteResult(True, duplicate=int(res[0]) == 2))
            else:
                fut.set_result(WriteResult(False, fenced=True, holder=str(res[1] or ""), epoch=int(res[2])))
