"""modbus_trains: one forwarding RTU served as a Modbus TCP server on pymodbus 3.16.1.

Data and controls go through pymodbus's `SimDevice` with an action hook: on a read the hook copies the
current image (kept by `AddressMap`) into the device's registers, on a write it runs the controls through
the `ControlSink` and answers with a Modbus exception when one fails. What SimDevice and pymodbus's server
cannot express is added on pymodbus's own server classes (docs/modbus_trains.md):

- `_GuardedCore` (a `SimCore`, the object pymodbus builds from the SimDevices): SimCore answers an unknown
  unit id with a KeyError (logged with a traceback, answered DEVICE_FAILURE) and SimDevice bit areas have
  no holes (every bit between the first and the last configured one reads as 0), and the action hook of a
  bit read is not told the bit count. The guard checks unit id and every requested address before the
  SimDevice sees the request.
- `_Handler` (pymodbus's per-connection `ServerRequestHandler`): the client address allowlist and the
  connected-clients table, which need the peer address pymodbus does not pass to any hook; our own framing
  and one worker per connection answering its requests in order (pymodbus's handler lost or mis-answered
  pipelined requests); an MBAP length field out of range (`mbap_problem`) closes that connection, which
  pymodbus would keep open and deaf; a frame whose protocol id is not 0 is discarded (`not_modbus`).
- `ModbusTrainsServer.answer`: unit id routing (ADDRESS, 0xFF, 0, the quality unit) and the request checks
  of `pdu.py` in the specification's order, before pymodbus's PDU decoder and SimDevice path.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from fep_forwarder.allow import peer_host
from fep_forwarder.base import STALLS, ForwardServer, OpeningSlot, Update
from fep_forwarder.modbus_trains.addrmap import (
    FUNCTION_AREA,
    GATEWAY_PATH_UNAVAILABLE,
    GATEWAY_TARGET_NO_RESPONSE,
    ILLEGAL_FUNCTION,
    OUTCOME_EXCEPTION,
    SERVER_DEVICE_FAILURE,
    AddressMap,
    RequestError,
)
from fep_forwarder.modbus_trains.pdu import WRITES, check, write_echo
from fepha import datatypes
from fepha.listen import listeners, serve_all

log = logging.getLogger("fep.forwarder.modbus_trains")
_WRITE_FUNCTIONS = (5, 6, 15, 16, 22, 23)


def _area_blocks(amap: AddressMap) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
    """One SimData per area covering its used range (holes are refused by the guard, not by SimDevice).
    An area without points still needs one entry for SimDevice; the guard makes it unreachable."""
    out: list[list[SimData]] = []
    for area in ("co", "di", "hr", "ir"):
        span = amap.span(area)
        lo, hi = span if span else (0, 0)
        if area in datatypes.BIT_AREAS:
            out.append([SimData(lo, values=[False] * (hi - lo + 1), datatype=DataType.BITS)])
        else:
            out.append([SimData(lo, count=hi - lo + 1, datatype=DataType.REGISTERS)])
    return out[0], out[1], out[2], out[3]


class _GuardedCore(SimCore):
    """SimCore that answers unknown units and unmapped addresses with the proper exception."""

    def __init__(self, owner: ModbusTrainsServer, devices: list[SimDevice]) -> None:
        super().__init__(devices)
        self.owner = owner

    def _refuse(self, device_id: int, func_code: int, address: int, count: int, write: bool) -> ExcCodes | None:
        o = self.owner
        if device_id != o.unit and device_id != o.quality_unit and o.unit != 0:
            return ExcCodes(GATEWAY_PATH_UNAVAILABLE)
        area = FUNCTION_AREA.get(func_code)
        if area is None:
            return ExcCodes(ILLEGAL_FUNCTION)
        if write and device_id == o.quality_unit:
            return ExcCodes(ILLEGAL_FUNCTION)
        try:
            o.amap.check(area, address, count)
        except RequestError as exc:
            return ExcCodes(exc.code)
        return None

    def _device(self, device_id: int) -> int:
        return device_id if device_id == self.owner.quality_unit else self.owner.value_device

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        if (refused := self._refuse(device_id, func_code, address, count, False)) is not None:
            return refused
        return await super().async_getValues(self._device(device_id), func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: list[int] | list[bool]) -> ExcCodes | None:
        if (refused := self._refuse(device_id, func_code, address, len(values), True)) is not None:
            return refused
        return await super().async_setValues(self._device(device_id), func_code, address, values)


MBAP_LENGTH = (2, 254)  # the MBAP length field: unit id + function code ... unit id + a 253-byte PDU


def mbap_problem(buf: bytes | bytearray) -> str | None:
    """What makes the stream unreadable at the MBAP header at the start of `buf` (the unprocessed bytes of
    a connection), None when its length field is in range or not complete yet: with a length outside
    2 .. 254 there is no frame boundary any more. pymodbus's framer keeps such a header in its buffer and
    waits for ever (the connection stays open and deaf), so the server closes the connection instead."""
    lo, hi = MBAP_LENGTH
    if len(buf) >= 6 and not lo <= (n := int.from_bytes(buf[4:6], "big")) <= hi:
        return f"length field {n} (allowed {lo}..{hi})"
    return None


def not_modbus(header: bytes | bytearray) -> int | None:
    """The protocol id of a complete frame's MBAP header when it is not Modbus's (0), else None. Such a frame
    is discarded, not answered, and the connection goes on (MODBUS Messaging on TCP/IP Implementation
    Guide V1.0b, 4.4.2.2 "MODBUS PDU Checking": a protocol identifier other than MODBUS's means the indication
    is discarded); its length field still delimits it."""
    pid = int.from_bytes(header[2:4], "big")
    return pid if pid != 0 else None


THIS_DEVICE = (0, 0xFF)
"""Unit ids that address the server itself (MODBUS Messaging on TCP/IP Implementation Guide V1.0b, 4.4.1.2:
0xFF on TCP/IP, 0 also accepted): answered as the RTU's ADDRESS."""


def keep_alive(sock: socket.socket, seconds: int) -> None:
    """TCP keep-alive on a master's connection (Implementation Guide V1.0b 4.3.2 recommends it; Modbus TCP has
    none of its own): probes after `seconds` of silence, then every quarter of that; the kernel closes the
    connection once nothing has been acknowledged for twice `seconds` (TCP_USER_TIMEOUT, which also bounds
    answers a vanished master never acknowledges)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, seconds // 4))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 2 * seconds * 1000)


MAX_PENDING = 16
"""Requests queued on one connection before the server stops reading it (TCP flow control holds the rest)."""
_MBAP = struct.Struct(">HHHB")
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("modbus_trains_deadline", default=None)
"""Monotonic time by which the controls of the request being answered must have run (arrival + control
timeout): set per request by the connection's worker, read by the write hook."""


class _Handler(ServerRequestHandler):
    """One master's connection: the allowlist check, the clients table, our own framing and one worker that
    answers the requests in order. pymodbus's handler keeps one `last_pdu` per connection and answers only
    the first frame of a segment (the others wait for the next segment or are overwritten), sends a slow
    write's answer with the transaction id of a request that came after it, and empties its receive buffer
    whenever it sends or holds more than 516 bytes: pipelined requests were lost or mis-answered."""

    host = "?"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.buf = bytearray()
        self.pending: deque[tuple[float, int, int, bytes]] = deque()  # (arrival, tid, unit, pdu), in order
        self.worker: asyncio.Task[None] | None = None
        self.paused = False
        self.writable = asyncio.Event()  # cleared while the transport's write buffer is over its high-water mark
        self.writable.set()
        self.opening: OpeningSlot | None = None  # its place among its address's openings, until its first request

    def _close(self, why: str) -> None:
        """Drop this connection, logging `why` once per client address."""
        owner: ModbusTrainsServer = self.server.fwd
        owner.once.problem(f"modbus_trains RTU {owner.rtu.id} client {self.host}", why)
        self.transport.abort()  # type: ignore[attr-defined]  # pymodbus types it BaseTransport

    def callback_connected(self) -> None:
        super().callback_connected()
        owner: ModbusTrainsServer = self.server.fwd
        peer = self.transport.get_extra_info("peername") if self.transport else None
        self.host = peer_host(peer)
        if not owner.admit(self.host):  # T004_RTU.ALLOW: logged once per address, counted
            self.transport.abort()  # type: ignore[attr-defined]  # pymodbus types it BaseTransport
            return
        self.peer = f"{self.host}:{peer[1]}" if peer else "?"
        self.opening = owner.opening.enter(self.host, self.peer)
        if self.opening is None:  # [forwarder] opening_max: counted, logged
            self.transport.abort()  # type: ignore[attr-defined]  # pymodbus types it BaseTransport
            return
        owner.conns[self.peer] = {"since_ms": int(time.time() * 1000)}
        sock = self.transport.get_extra_info("socket")
        if owner.keepalive_s and sock is not None:
            keep_alive(sock, owner.keepalive_s)

    def data_received(self, data: bytes) -> None:
        """Cut the stream into frames (any number per segment, any frame over several segments) and queue
        them for the worker; a frame of another protocol id is dropped; a length field out of range closes
        the connection (no frame boundary any more)."""
        buf = self.buf
        buf += data
        while len(buf) >= 7:
            if (why := mbap_problem(buf)) is not None:
                buf.clear()
                self._close(f"malformed frame, connection closed: {why}")
                return
            n = 6 + int.from_bytes(buf[4:6], "big")
            if len(buf) < n:
                break
            tid, _, _, unit = _MBAP.unpack_from(buf)
            pid = not_modbus(buf)
            pdu = bytes(buf[7:n])
            del buf[:n]
            if self.opening is not None:
                self.opening.done()  # its first complete request: its opening is over
            if pid is not None:
                owner: ModbusTrainsServer = self.server.fwd
                owner.once.problem(f"modbus_trains RTU {owner.rtu.id} client {self.host} protocol id",
                                   f"frame with protocol id {pid} (Modbus is 0) discarded, not answered")
                continue
            self._queue(tid, unit, pdu)
        if self.pending and self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._serve())
        if len(self.pending) >= MAX_PENDING and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def _queue(self, tid: int, unit: int, pdu: bytes) -> None:
        if pdu[0] in WRITES and any(p[1:] == (tid, unit, pdu) for p in self.pending):
            # a master's retransmission (same transaction id, same write) of a write not answered yet:
            # running it again would run its controls twice; the one answer serves both
            owner: ModbusTrainsServer = self.server.fwd
            owner.once.problem(f"modbus_trains RTU {owner.rtu.id} client {self.host} repeat",
                               f"write transaction {tid} received again while in progress: not run twice")
            return
        self.pending.append((time.monotonic(), tid, unit, pdu))

    async def _serve(self) -> None:
        """Answer the queued requests one after the other, each with its own transaction and unit id."""
        owner: ModbusTrainsServer = self.server.fwd
        try:
            while self.pending:
                # a master that does not read its answers: stop answering (and so, with MAX_PENDING, reading)
                # until it does, instead of queueing answers without bound
                await self.writable.wait()
                arrived, tid, unit, pdu = self.pending[0]  # stays queued while in progress (repeat check)
                answer = await owner.answer(unit, pdu, arrived)
                self.pending.popleft()
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                transport.write(_MBAP.pack(tid, 0, len(answer) + 1, unit) + answer)  # type: ignore[attr-defined]
                if self.paused and len(self.pending) < MAX_PENDING // 2:
                    self.paused = False
                    transport.resume_reading()  # type: ignore[attr-defined]
        finally:
            self.worker = None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        if self.opening is not None:
            self.opening.done()
        self.writable.set()  # the worker sees the closed transport and ends
        while len(self.pending) > (self.worker is not None):  # the one in progress finishes (not answered)
            self.pending.pop()
        self.server.fwd.conns.pop(getattr(self, "peer", None), None)


class _TcpServer(ModbusTcpServer):
    fwd: ModbusTrainsServer

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class ModbusTrainsServer(ForwardServer):
    """Options: quality_unit (int, unit id serving quality bits; default none), control_timeout_ms
    (int, default: the ControlSink's), keepalive_s (int, TCP keep-alive on masters' connections; default
    none: the runner passes `[modbus_trains] keepalive_s`)."""

    protocol = "modbus_trains"
    log = log

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.amap = AddressMap(self.rtu.forwards)
        self.unit = self.rtu.address
        self.value_device = self.unit if self.unit != 0 else 1
        q = self.options.get("quality_unit")
        self.quality_unit: int | None = int(q) if q is not None else None
        if self.quality_unit is not None and self.quality_unit in (self.unit, self.value_device, *THIS_DEVICE):
            raise ValueError(f"quality_unit {q} equals the RTU's unit id (or 0 / 255, which address it too)")
        self.keepalive_s = int(self.options.get("keepalive_s") or 0)
        self._decoder = DecodePDU(True)
        self.conns: dict[str, dict[str, Any]] = {}
        self.origin = f"modbus_trains:{self.rtu.id}@{self.node}"
        if self.tls is not None:
            log.info("modbus_trains RTU %s: plain Modbus TCP; the tls_* settings apply to se104s/sefeps only",
                     self.rtu.id)
        self._srv: _TcpServer | None = None
        self._writes: set[asyncio.Task] = set()
        # counts: controls, controls_ok, control_latency_ms_sum, connections_refused,
        # connections_opening_refused (Modbus is polled,
        # so there are no events to count)

    # -- ForwardServer ----------------------------------------------------------------------------------
    async def start(self) -> None:
        STALLS.ensure_running()  # run_control asks it how long a request may have waited unread
        devices = [SimDevice(self.value_device, simdata=_area_blocks(self.amap), action=self._values_action)]
        if self.quality_unit is not None:
            devices.append(SimDevice(self.quality_unit, simdata=_area_blocks(self.amap),
                                     action=self._quality_action))
        port = self.rtu.listen_port if self.rtu.listen_port is not None else 502
        srv = _TcpServer(devices, address=(self.bind, port))
        srv.fwd = self
        srv.context = _GuardedCore(self, devices)
        try:
            socks = listeners(self.bind, port, f"modbus_trains RTU {self.rtu.id}")
        except OSError as exc:
            raise OSError(f"modbus_trains RTU {self.rtu.id}: cannot listen on {self.bind}:{port}") from exc
        # pymodbus's listen() creates its server through `call_create`: on our sockets (every address of the
        # bind host), which refuse connections cleanly when the process is out of file descriptors (fepha.listen)
        create = functools.partial(asyncio.get_running_loop().create_server, srv.handle_new_connection,
                                   start_serving=True)
        srv.call_create = functools.partial(serve_all, create, socks)
        try:
            await srv.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus reports a failed listen this way
            for sock in socks:
                sock.close()
            raise OSError(f"modbus_trains RTU {self.rtu.id}: cannot listen on {self.bind}:{port}") from exc
        self._srv = srv
        log.info("modbus_trains RTU %s listening on %s:%s unit %s", self.rtu.id, self.bind, self.port, self.unit)

    async def stop(self) -> None:
        srv, self._srv = self._srv, None
        for t in list(self._writes):
            t.cancel()
        if srv is not None:
            await srv.shutdown()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self.conns.clear()
        await asyncio.sleep(0)  # let pymodbus's closed connections run their connection_lost

    def load_image(self, updates: Sequence[Update]) -> None:
        self.amap.clear()
        self.apply(updates)

    def apply(self, updates: Sequence[Update]) -> None:
        for u in updates:
            self.amap.set_value(u.fwd, u.value)

    def clients(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.conns.items()}

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for LISTENPORT 0)."""
        if self._srv is None or self._srv.transport is None:
            return int(self.rtu.listen_port or 0)
        return int(self._srv.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    # -- requests -------------------------------------------------------------------------------------
    def route(self, unit: int) -> int | None:
        """The SimDevice that answers a request to `unit`, None when no unit of ours has that id."""
        if unit == self.quality_unit:
            return unit
        if unit == self.unit or unit in THIS_DEVICE or self.unit == 0:
            return self.value_device
        return None

    async def answer(self, unit: int, pdu: bytes, arrived: float) -> bytes:
        """The answer PDU to one request PDU (a normal answer or an exception): unit id (0A), function and
        form (pdu.check: 01, 03, 02), then pymodbus's SimDevice path (the guard: 02; the write hook: the
        controls' outcome). Controls must have run by `arrived` + the control timeout."""
        fc = pdu[0]
        device = self.route(unit)
        code = GATEWAY_PATH_UNAVAILABLE if device is None else check(pdu)
        if code is not None:
            return bytes((fc | 0x80, code))
        assert device is not None
        if fc == 23 and device != self.quality_unit:  # its read range is checked before the write runs
            try:
                self.amap.check("hr", *struct.unpack_from(">HH", pdu, 1))
            except RequestError as exc:
                return bytes((fc | 0x80, exc.code))
        if fc in WRITES and self.control_timeout_ms is not None:
            _DEADLINE.set(arrived + self.control_timeout_ms / 1000)
        try:
            req = self._decoder.decode(pdu)
            assert req is not None
            req.dev_id = device
            assert self._srv is not None
            resp = await req.datastore_update(self._srv.context, device)  # type: ignore[arg-type]  # a SimCore
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the master still gets an answer
            self.once.problem(f"modbus_trains RTU {self.rtu.id} request", f"{pdu.hex()}: {exc!r}")
            return bytes((fc | 0x80, SERVER_DEVICE_FAILURE))
        finally:
            _DEADLINE.set(None)
        if isinstance(resp, ExceptionResponse):
            return bytes((fc | 0x80, resp.exception_code))
        if fc in WRITES and (echo := write_echo(pdu)) is not None:
            return echo
        return bytes((resp.function_code,)) + resp.encode()

    # -- SimDevice action hooks -------------------------------------------------------------------------
    async def _values_action(self, function_code: int, start_address: int, address: int, count: int,
                             registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        area = FUNCTION_AREA[function_code]
        if set_values is None or function_code not in _WRITE_FUNCTIONS:
            self._fill(area, start_address, address, count, registers, quality=False)
            return None
        return await self._write(area, address, set_values)

    async def _quality_action(self, function_code: int, start_address: int, address: int, count: int,
                              registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        self._fill(FUNCTION_AREA[function_code], start_address, address, count, registers, quality=True)
        return None

    def _fill(self, area: str, start: int, address: int, count: int, registers: list[int],
              quality: bool) -> None:
        """Copy the image into the SimDevice registers the request is about to read."""
        src = (self.amap.quality if quality else self.amap.words)[area]
        if area in datatypes.BIT_AREAS:
            # bit areas: `start` and `count` are in 16-bit words, `address` is the bit address
            first = address // 16
            for w in range(first, first + count):
                word = 0
                for b in range(16):
                    if src.get(w * 16 + b, 0):
                        word |= 1 << b
                registers[w - start] = word
        else:
            for a in range(address, address + count):
                registers[a - start] = src.get(a, 0)

    async def _write(self, area: str, address: int, values: Sequence[int | bool]) -> ExcCodes | None:
        try:
            plan = self.amap.writes(area, address, values)
        except RequestError as exc:
            return ExcCodes(exc.code)
        task = asyncio.current_task()
        if task is not None:
            self._writes.add(task)
        deadline = _DEADLINE.get()
        try:
            for fwd, value, words in plan:
                left_ms = None if deadline is None else int((deadline - time.monotonic()) * 1000)
                if left_ms is not None and left_ms <= 0:  # waited behind earlier requests past its deadline
                    self.log.info("modbus_trains RTU %s control %s=%s from %s: expired before it ran",
                                  self.rtu.id, fwd.id, value, self.origin)
                    return ExcCodes(GATEWAY_TARGET_NO_RESPONSE)
                out = await self.run_control(fwd, value, self.origin, left_ms)
                if not out.ok:
                    return ExcCodes(OUTCOME_EXCEPTION.get(out.state, SERVER_DEVICE_FAILURE))
                self.amap.store(area, fwd.addr, words)
            return None
        finally:
            if task is not None:
                self._writes.discard(task)
