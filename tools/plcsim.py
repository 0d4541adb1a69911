"""PLC simulator: real pymodbus TCP servers serving the acquisition devices of a SEMODEL.db.

Tests, the demo and the benchmarks need devices that answer over real sockets and can be cut per channel
or as a whole; see docs/plcsim.md for the stable API and the line control interface.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException, NoSuchIdException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils
from pymodbus.transaction import TransactionManager

from fepha import datatypes as dt
from fepha.semodel.db import read_rows
from fepha.semodel.model import Model, Point, Rtu

log = logging.getLogger("plcsim")

_RANGES = {"int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-(2**31), 2**31 - 1),
           "uint32": (0, 2**32 - 1)}
_READ_FC = {1, 2, 3, 4, 23}
_FC_AREA = {1: "co", 5: "co", 15: "co", 2: "di", 3: "hr", 6: "hr", 16: "hr", 22: "hr", 23: "hr", 4: "ir"}
_WRITE_FC = {5, 6, 15, 16}
REQUEST, ANSWER = "request", "answer"
"""What `PlcSim.lose` loses of a write: the request (never executed) or its answer (executed)."""


class DeviceStore:
    """The data of one device (RTU), shared by both its channels."""

    def __init__(self, rtu: Rtu) -> None:
        self.rtu = rtu
        size = {a: 16 for a in dt.AREAS}
        for p in rtu.points:
            size[p.area] = max(size[p.area], p.address + dt.span(p.datatype, p.area) + 16)
        self.bits = {a: [False] * size[a] for a in dt.BIT_AREAS}
        self.regs = {a: [0] * size[a] for a in dt.REGISTER_AREAS}
        self.values: dict[int, int | float] = {}
        for p in rtu.points:
            self.set(p, 0)

    def set(self, p: Point, value: float) -> None:
        """Store an engineering value into the device's bits/registers."""
        if p.area in dt.BIT_AREAS:
            self.bits[p.area][p.address] = bool(value)
            self.values[p.id] = int(bool(value))
            return
        regs = self.regs[p.area]
        if p.datatype == "bool":
            bit = p.bit or 0
            regs[p.address] = (regs[p.address] | (1 << bit)) if value else (regs[p.address] & ~(1 << bit))
            self.values[p.id] = int(bool(value))
            return
        raw = dt.unscaled(value, p.scale, p.offset)
        words = dt.encode_registers(raw, p.datatype, p.byteorder, p.wordorder)
        regs[p.address : p.address + len(words)] = words
        self.values[p.id] = value

    def read(self, p: Point) -> int | float:
        """Decode a point's current engineering value from the device data (sees client writes)."""
        if p.area in dt.BIT_AREAS:
            return int(self.bits[p.area][p.address])
        n = dt.span(p.datatype, p.area)
        raw = dt.decode_registers(self.regs[p.area][p.address : p.address + n], p.datatype,
                                  p.byteorder, p.wordorder, p.bit)
        return dt.scaled(raw, p.scale, p.offset)

    def step(self) -> None:
        """Change every point once: bools toggle, numbers step by one, wrapping inside the type."""
        for p in self.rtu.points:
            cur = self.read(p)
            if p.datatype == "bool":
                self.set(p, 0 if cur else 1)
                continue
            nxt = cur + 1
            lo, hi = _RANGES.get(p.datatype, (-1e6, 1e6))
            if not lo <= dt.unscaled(nxt, p.scale, p.offset) <= hi:
                nxt = dt.scaled(max(lo, 0), p.scale, p.offset)
            self.set(p, nxt)

    def simdata(self) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        return (
            [SimData(0, count=len(self.bits["co"]), values=False, datatype=DataType.BITS)],
            [SimData(0, count=len(self.bits["di"]), values=False, datatype=DataType.BITS)],
            [SimData(0, count=len(self.regs["hr"]), values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=len(self.regs["ir"]), values=0, datatype=DataType.REGISTERS)],
        )


def _step_raw(store: DeviceStore, area: str, address: int, count: int) -> None:
    """change_on_read: every register of a read steps by one (mod 2**16), every bit toggles, so that every
    point of the read changes with each poll (the acquisition benchmark's load; costs little per read).
    For bit areas pymodbus passes the bit address and the count of 16-bit words covering the request."""
    if area in dt.BIT_AREAS:
        bits = store.bits[area]
        end = min(len(bits), address + 16 * count)
        bits[address:end] = [not b for b in bits[address:end]]
        return
    regs = store.regs[area]
    regs[address : address + count] = [(v + 1) & 0xFFFF for v in regs[address : address + count]]


def _stamp_some(store: DeviceStore, area: str, address: int, count: int, pct: float, rng: random.Random) -> None:
    """stamp_pct: `pct` % of the registers of a read (on average; which ones at random) take the serving
    moment as value, `time.time()` in ms modulo 2**16, so that whoever receives the value knows when the
    device served it (bench/acquire.py: device -> Redis latency, within 65 s). Bit areas are left alone."""
    if area in dt.BIT_AREAS:
        return
    want = count * pct / 100
    n = int(want) + (rng.random() < want - int(want))
    if not n:
        return
    regs = store.regs[area]
    stamp = int(time.time() * 1000) & 0xFFFF
    for i in rng.sample(range(address, address + count), min(n, count)):
        regs[i] = stamp if regs[i] != stamp else (stamp + 1) & 0xFFFF


class _InOrderHandler(ServerRequestHandler):
    """One client connection served as a single-threaded device serves it: every request received is taken
    (several may come in one TCP segment: a client with several requests in flight) and answered one after
    the other, in the order received, each after the device's response delay.

    pymodbus 3.16's own handler takes one request per chunk received (the others of the chunk wait for the
    next chunk, which a client awaiting their answers never sends) and keeps the request being served in
    one attribute (a second request received while the first is served replaces it): fine for a client with
    one request in flight, not for more."""

    def __init__(self, owner: ModbusTcpServer) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)
        self._queue: deque[tuple[ModbusPDU, tuple | None]] = deque()
        self._serving: asyncio.Task | None = None

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        used = 0
        while used < len(data):
            try:
                n = TransactionManager.callback_data(self, data[used:], addr)
            except ModbusIOException as exc:  # a request that does not decode: ILLEGAL FUNCTION, in its turn
                fc = 0 if exc.fcode is None else exc.fcode
                self._queue.append((ExceptionResponse(fc, exception_code=ExcCodes.ILLEGAL_FUNCTION,
                                                      device_id=exc.dev_id, transaction=exc.transaction_id),
                                    addr))
                used = len(data)
                break
            used += n
            if self.last_pdu is None:
                break  # the rest is not a whole frame yet
            self._queue.append((self.last_pdu, addr))
            self.last_pdu = None
        if self._queue and self._serving is None:
            self._serving = asyncio.get_running_loop().create_task(self._serve())
        return used

    async def _serve(self) -> None:
        try:
            while self._queue:
                pdu, addr = self._queue.popleft()
                if isinstance(pdu, ExceptionResponse):
                    self.server_send(pdu, addr)
                    continue
                if self.server.unanswered(pdu):   # `silence`: a request the device never answers
                    continue
                lost = self.server.lost(pdu)
                if lost == REQUEST:  # `lose`: a write that never reaches the device
                    continue
                try:
                    response = await pdu.datastore_update(self.server.context, pdu.dev_id)
                except NoSuchIdException:
                    response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
                except Exception:  # noqa: BLE001 - as pymodbus's handler: e.g. a unit id not served here
                    response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
                if lost == ANSWER:  # executed, its answer lost on the way back
                    continue
                response.transaction_id, response.dev_id = pdu.transaction_id, pdu.dev_id
                self.server_send(response, addr)
        finally:
            self._serving = None

    def callback_disconnected(self, exc: Exception | None) -> None:
        self._queue.clear()
        if self._serving is not None:
            self._serving.cancel()
        super().callback_disconnected(exc)


class _InOrderServer(ModbusTcpServer):
    """pymodbus's Modbus TCP server with `_InOrderHandler` connections; `unanswered(pdu)` tells a request
    to leave without an answer (PlcSim.silence), `lost(pdu)` a write whose request or answer is lost
    (PlcSim.lose: REQUEST, ANSWER or None)."""

    unanswered: Callable[[ModbusPDU], bool] = staticmethod(lambda pdu: False)  # type: ignore[assignment]
    lost: Callable[[ModbusPDU], str | None] = staticmethod(lambda pdu: None)  # type: ignore[assignment]

    def callback_new_connection(self) -> _InOrderHandler:
        return _InOrderHandler(self)


class SimControl:
    """What both simulators (this one and rtu104sim) share: their background tasks and the optional
    control port (JSON lines, served by the subclass's `_client`), opened and closed the same way."""

    control: tuple[str, int] | None
    control_port: int | None
    _tasks: list[asyncio.Task]
    _control_srv: asyncio.Server | None
    _client: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]  # each simulator's own

    async def _open_control(self) -> None:
        if self.control:
            self._control_srv = await asyncio.start_server(self._client, *self.control)
            self.control_port = self._control_srv.sockets[0].getsockname()[1]

    async def _cancel_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _close_control(self) -> None:
        if self._control_srv:
            self._control_srv.close()
            await self._control_srv.wait_closed()
            self._control_srv = None


class PlcSim(SimControl):
    """Modbus TCP servers for every acquisition RTU of a model, on both channels (see docs/plcsim.md)."""

    def __init__(self, model: Model, rate: float = 0.0, host_map: dict[str, str] | None = None,
                 control: tuple[str, int] | None = None, change_on_read: bool = False,
                 journal: Callable[[dict], None] | None = None,
                 on_read: Callable[[int, int, str, int, int], None] | None = None,
                 stamp_pct: float = 0.0, delay_ms: float = 0.0) -> None:
        self.model = model
        self.journal = journal  # called with every change made and write received (--journal)
        # called with (rtu, channel, area, address, count) as each read request is served, on the serving
        # loop, so it sees exactly the data served (bench/forward.py times the first read of a new value)
        self.on_read = on_read
        self.rate = rate
        self.change_on_read = change_on_read
        self.stamp_pct = stamp_pct  # see _stamp_some (--stamp-pct)
        self.delay_s = delay_ms / 1000  # every answer waits this long: a device's response time (--delay-ms)
        self._rng = random.Random(0)
        self.host_map = dict(host_map or {})
        self.control = control
        self.control_port: int | None = None
        self.stores = {r.id: DeviceStore(r) for r in model.modbus_rtus()}
        self.points = {p.id: p for r in model.modbus_rtus() for p in r.points}
        self.writes: list[tuple[int, str, int, list]] = []
        self._cut: set[tuple[int, int]] = set()
        # (rtu, channel or None: both, area, address, silent): reads covering it answered 0x0B, or not at all
        self._muted: set[tuple[int, int | None, str, int, bool]] = set()
        # (rtu, channel or None: both, area, address) -> REQUEST or ANSWER: writes covering it lose that
        self._lost: dict[tuple[int, int | None, str, int], str] = {}
        self._eps: dict[tuple[str, int], list[tuple[int, int, int]]] = {}  # endpoint -> (rtu, ch, unit)
        for r in model.modbus_rtus():
            for ch in r.channels:
                ep = (self.host_map.get(ch.host, ch.host), ch.port)
                if any(u == ch.unit and rid != r.id for rid, _, u in self._eps.get(ep, [])):
                    raise ValueError(f"two RTUs with unit {ch.unit} on {ep[0]}:{ep[1]}")
                self._eps.setdefault(ep, []).append((r.id, ch.no, ch.unit))
        self._servers: dict[tuple[str, int], ModbusTcpServer] = {}
        self._tasks: list[asyncio.Task] = []
        self._control_srv: asyncio.Server | None = None

    @classmethod
    def from_db(cls, path: Path | str, **kw) -> PlcSim:
        rows, problems = read_rows(Path(path))
        errors = [p for p in problems if getattr(p, "level", "error") == "error"]
        if not rows.get("T004_RTU") and errors:
            raise ValueError(f"{path}: {errors[0]}")
        return cls(Model.from_rows(rows), **kw)

    def endpoints(self) -> list[tuple[str, int]]:
        return list(self._eps)

    # --- serving -----------------------------------------------------------------------------------
    async def _action(self, rtu: int, ch: int, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: list | None) -> ExcCodes | None:
        """Called by pymodbus for each request: answer from (or write into) the device store."""
        if (rtu, ch) in self._cut:
            return ExcCodes.GATEWAY_NO_RESPONSE
        area = _FC_AREA.get(fc)
        store = self.stores[rtu]
        if area is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if values is None and self._muted and self._covers_muted(rtu, ch, area, address, count):
            return ExcCodes.GATEWAY_NO_RESPONSE
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if values is None and self.change_on_read:
            _step_raw(store, area, address, count)
        if values is None and self.stamp_pct:
            _stamp_some(store, area, address, count, self.stamp_pct, self._rng)
        if values is None and self.on_read is not None and fc in _READ_FC:  # a write's echo is no read
            self.on_read(rtu, ch, area, address, count)
        if area in dt.BIT_AREAS:
            bits = store.bits[area]
            if values is not None:
                n = len(values)
                bits[address : address + n] = [bool(v) for v in values]
                self.writes.append((rtu, area, address, [bool(v) for v in values]))
                self._note(ev="write", rtu=rtu, area=area, address=address, values=[bool(v) for v in values])
            packed = SimUtils.bitsToRegisters(bits + [False] * (-len(bits) % 16))
            registers[: len(packed)] = packed
            return None
        regs = store.regs[area]
        if values is not None:
            regs[address : address + len(values)] = [int(v) for v in values]
            self.writes.append((rtu, area, address, [int(v) for v in values]))
            self._note(ev="write", rtu=rtu, area=area, address=address, values=[int(v) for v in values])
        registers[address - start : address - start + count] = regs[address : address + count]
        return None

    def _server(self, ep: tuple[str, int]) -> _InOrderServer:
        devices = []
        for rtu, ch, unit in self._eps[ep]:
            devices.append(SimDevice(id=unit, simdata=self.stores[rtu].simdata(),
                                     action=functools.partial(self._action, rtu, ch)))
        srv = _InOrderServer(devices, address=ep)
        units = {unit: (rtu, ch) for rtu, ch, unit in self._eps[ep]}

        def unanswered(pdu: ModbusPDU) -> bool:
            rtu, ch = units.get(pdu.dev_id, (0, 0))
            area = _FC_AREA.get(pdu.function_code)
            if not self._muted or pdu.function_code not in _READ_FC or area is None:
                return False
            count = getattr(pdu, "count", 0)
            if area in dt.BIT_AREAS:
                count = (count + 15) // 16  # as _covers_muted counts them: 16-bit words
            return self._covers_muted(rtu, ch, area, getattr(pdu, "address", 0), count, silent=True)

        def lost(pdu: ModbusPDU) -> str | None:
            if not self._lost or pdu.function_code not in _WRITE_FC:
                return None
            rtu, ch = units.get(pdu.dev_id, (0, 0))
            start = getattr(pdu, "address", 0)
            end = start + max(1, getattr(pdu, "count", 0))  # FC 5's count is 0, FC 6's 1
            return next((what for (r, c, a, m), what in self._lost.items()
                         if r == rtu and c in (None, ch) and a == _FC_AREA[pdu.function_code] and start <= m < end),
                        None)
        srv.unanswered = unanswered  # type: ignore[method-assign]
        srv.lost = lost  # type: ignore[method-assign]
        return srv

    async def _listen(self, ep: tuple[str, int]) -> None:
        srv = self._server(ep)
        await srv.serve_forever(background=True)
        self._servers[ep] = srv

    async def _sync_endpoints(self) -> None:
        """Close endpoints whose RTUs are all cut, reopen those with at least one restored."""
        for ep, users in self._eps.items():
            down = all((rtu, ch) in self._cut for rtu, ch, _ in users)
            if down and ep in self._servers:
                await self._servers.pop(ep).shutdown()
            elif not down and ep not in self._servers:
                await self._listen(ep)

    async def start(self) -> None:
        await self._sync_endpoints()
        self._note(ev="start", values=self.snapshot())
        for ep in self._eps:
            log.info("serving %s:%d", *ep)
        self._tasks.append(asyncio.create_task(self._changer(), name="plcsim-rate"))
        await self._open_control()

    async def stop(self) -> None:
        await self._cancel_tasks()
        for srv in self._servers.values():
            await srv.shutdown()
        self._servers.clear()
        await self._close_control()
        await asyncio.sleep(0)

    async def _changer(self) -> None:
        while True:
            if self.rate > 0:
                await asyncio.sleep(1.0 / self.rate)
                self.tick()
            else:
                await asyncio.sleep(0.2)

    # --- control -----------------------------------------------------------------------------------
    def tick(self) -> None:
        for store in self.stores.values():
            store.step()
        self._note(ev="tick", values=self.snapshot())

    def snapshot(self) -> dict[int, int | float]:
        """Every point's current engineering value."""
        return {pid: self.value(pid) for pid in self.points}

    def _note(self, **event) -> None:
        """Hand a change made or a write received to the journal, if any (the HA suite counts them)."""
        if self.journal is not None:
            self.journal(event)

    def _channels(self, rtu: int, channel: int | None) -> list[tuple[int, int]]:
        if rtu not in self.stores:
            raise KeyError(f"unknown acquisition RTU {rtu}")
        chans = [c.no for c in self.stores[rtu].rtu.channels]
        if channel is not None and channel not in chans:
            raise KeyError(f"RTU {rtu} has no channel {channel}")
        return [(rtu, c) for c in chans if channel in (None, c)]

    def cut(self, rtu: int, channel: int | None = None) -> None:
        self._cut.update(self._channels(rtu, channel))
        self._resync()

    def restore(self, rtu: int, channel: int | None = None) -> None:
        self._cut.difference_update(self._channels(rtu, channel))
        self._resync()

    def is_cut(self, rtu: int, channel: int) -> bool:
        return (rtu, channel) in self._cut

    def mute(self, rtu: int, area: str, address: int, channel: int | None = None, silent: bool = False) -> None:
        """Reads of `rtu` (on `channel`, or both) that cover `area` `address` are answered with exception
        0x0B (gateway: target failed to respond), or with `silent` not at all (`silence`), while the rest
        of the device answers: a device reached in part."""
        self._channels(rtu, channel)
        if area not in dt.AREAS:
            raise ValueError(f"unknown area {area!r}")
        self._muted.add((rtu, channel, area, address, silent))

    def silence(self, rtu: int, area: str, address: int, channel: int | None = None) -> None:
        self.mute(rtu, area, address, channel, silent=True)

    def unmute(self, rtu: int, area: str, address: int, channel: int | None = None) -> None:
        self._muted -= {(rtu, channel, area, address, silent) for silent in (False, True)}
        self._lost.pop((rtu, channel, area, address), None)

    def lose(self, rtu: int, area: str, address: int, what: str = ANSWER, channel: int | None = None) -> None:
        """Writes of `rtu` (on `channel`, or both) covering `area` `address` (`co`, `hr`) are not answered:
        with `what` ANSWER they are executed and their answer is lost on the way back, with REQUEST the
        request is lost on the way there (not executed). `unmute` undoes it."""
        self._channels(rtu, channel)
        if area not in dt.WRITABLE_AREAS or what not in (REQUEST, ANSWER):
            raise ValueError(f"cannot lose the {what!r} of a write to {area!r}")
        self._lost[(rtu, channel, area, address)] = what

    def _covers_muted(self, rtu: int, ch: int, area: str, address: int, count: int, silent: bool = False) -> bool:
        # for bit areas pymodbus passes the bit address and the count of 16-bit words covering the request
        end = address + (16 * count if area in dt.BIT_AREAS else count)
        return any(r == rtu and c in (None, ch) and a == area and address <= m < end and q == silent
                   for r, c, a, m, q in self._muted)

    def _resync(self) -> None:
        """cut/restore are plain calls (usable from tests and the control port): apply them in a task."""
        task = asyncio.get_running_loop().create_task(self._sync_endpoints())
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def settle(self) -> None:
        """Wait until pending cut/restore operations are applied to the sockets."""
        pending = [t for t in self._tasks if t.get_name() != "plcsim-rate"]
        await asyncio.gather(*pending, return_exceptions=True)

    def set_value(self, point_id: int, value: float) -> None:
        p = self._point(point_id)
        self.stores[p.rtu].set(p, value)
        self._note(ev="set", values={point_id: self.value(point_id)})

    def value(self, point_id: int) -> int | float:
        p = self._point(point_id)
        return self.stores[p.rtu].read(p)

    def _point(self, point_id: int) -> Point:
        if point_id not in self.points:
            raise KeyError(f"unknown point {point_id}")
        return self.points[point_id]

    def command(self, line: str) -> str:
        """One control-interface command -> one answer line (see docs/plcsim.md)."""
        words = line.split()
        try:
            if not words:
                return "err empty command"
            cmd, args = words[0].lower(), words[1:]
            if cmd in ("cut", "restore") and 1 <= len(args) <= 2:
                getattr(self, cmd)(int(args[0]), int(args[1]) if len(args) == 2 else None)
                return "ok"
            if cmd in ("mute", "silence", "unmute") and 3 <= len(args) <= 4:
                getattr(self, cmd)(int(args[0]), args[1].lower(), int(args[2]), int(args[3]) if len(args) == 4 else None)
                return "ok"
            if cmd == "lose" and 4 <= len(args) <= 5:
                self.lose(int(args[0]), args[1].lower(), int(args[2]), args[3].lower(),
                          int(args[4]) if len(args) == 5 else None)
                return "ok"
            if cmd == "set" and len(args) == 2:
                self.set_value(int(args[0]), float(args[1]))
                return "ok"
            if cmd == "get" and len(args) == 1:
                return f"ok {self.value(int(args[0]))}"
            if cmd == "rate" and len(args) == 1:
                self.rate = max(0.0, float(args[0]))
                return "ok"
            if cmd == "status" and not args:
                words = [f"{rid}/{c.no}={'cut' if (rid, c.no) in self._cut else 'up'}"
                         for rid, s in sorted(self.stores.items()) for c in s.rtu.channels]
                return "ok " + " ".join(words)
            return f"err unknown command {line.strip()!r}"
        except (KeyError, ValueError) as exc:
            return f"err {exc}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = self.command(line.decode("ascii", "replace"))
                if not answer.startswith("err"):
                    await self.settle()
                writer.write(answer.encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fep-plcsim", description="Modbus TCP PLC simulator (docs/plcsim.md)")
    ap.add_argument("--db", required=True, help="SEMODEL.db whose acquisition RTUs to serve")
    ap.add_argument("--rate", type=float, default=1.0, help="changes per second of every point (0 = static)")
    ap.add_argument("--map", action="append", default=[], metavar="OLD=NEW", help="bind NEW instead of OLD")
    ap.add_argument("--change-on-read", action="store_true",
                    help="every read changes the values it reads (benchmark load: all points change each poll)")
    ap.add_argument("--stamp-pct", type=float, default=0.0,
                    help="each read changes this %% of the registers it reads to the serving time (ms mod 65536)")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="response delay of every request (device time)")
    ap.add_argument("--control", type=_hostport, default=None, metavar="HOST:PORT", help="control port")
    ap.add_argument("--journal", type=Path, default=None, metavar="FILE",
                    help="append one JSON line per change made (start, tick, set) and write received")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s plcsim %(levelname)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    host_map = dict(m.split("=", 1) for m in args.map)
    journal = None
    if args.journal:
        out = args.journal.open("a", buffering=1)
        journal = lambda ev: out.write(json.dumps({"t": time.time(), **ev}) + "\n")
    try:
        sim = PlcSim.from_db(args.db, rate=args.rate, host_map=host_map, control=args.control,
                             change_on_read=args.change_on_read, journal=journal,
                             stamp_pct=args.stamp_pct, delay_ms=args.delay_ms)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2

    return asyncio.run(serve_until_signal(sim, args.control))


async def serve_until_signal(sim: Any, control: tuple[str, int] | None) -> int:
    """Start a simulator (start/stop/control_port), run it until SIGTERM/SIGINT, stop it; the exit status
    (fep-plcsim, fep-rtu104sim)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sim.start()
    except (OSError, RuntimeError) as exc:
        log.error("cannot serve: %s", exc)
        await sim.stop()
        return 1
    if sim.control_port and control:
        log.info("control port %s:%d", control[0], sim.control_port)
    await stop.wait()
    await sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
