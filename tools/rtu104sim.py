"""Simulated IEC 60870-5-104 RTUs: the field devices of the IEC 104 acquisition, on our own IEC 104 stack.

Each acquisition RTU with PROTOCOL 'iec104' of a SEMODEL.db (or each device given as a plain list of IOAs
and types) becomes a controlled station listening on both its channels' endpoints, built from the same
pieces as se104s: fepha.iec104 (codec, link) and the se104s station in redundancy-group mode (one started
connection at a time; events buffered while none is started and delivered, oldest first, on the next
STARTDT, including those the previous connection had not acknowledged). On top: spontaneous events with
CP56Time2a time tags at a configurable rate, a device clock that clock synchronisation sets, commands
journaled and optionally refused or delayed, cuts per channel, malformed frames on request, and a line
control port like fep-plcsim's. docs/rtu104sim.md is the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fep_forwarder.base import ControlOutcome, Update
from fep_forwarder.se104s import Se104Server
from fep_forwarder.se104s.station import Control, Session, Station
from fepha.iec104 import codec as c
from fepha.points import Value
from fepha.semodel.db import read_rows
from fepha.semodel.model import FWD_KIND, Channel, FwdPoint, Model, Point, Rtu

from .plcsim import SimControl, _hostport, serve_until_signal

log = logging.getLogger("rtu104sim")

IEC104 = "iec104"
TABLE_OF_KIND = {kind: table for table, kind in FWD_KIND.items()}
MONITOR_KINDS = ("AI", "DI", "ACC")
# A start octet that is not 0x68: what `malformed` sends (the peer must close that connection only).
MALFORMED = bytes.fromhex("690407000000")
_KIND_OF_PREFIX = {"M_SP": "DI", "M_DP": "DI", "M_ME": "AI", "M_IT": "ACC", "C_SC": "DO", "C_DC": "DO",
                   "C_SE": "AO"}


def kind_of(type_name: str) -> str:
    """AI / DI / ACC / DO / AO of an ASDU type name (M_ME_NC_1 -> AI ...); KeyError for others."""
    if type_name not in c.TYPE_IDS:
        raise KeyError(f"unknown ASDU type {type_name!r}")
    return _KIND_OF_PREFIX[type_name[:4]]


def device(rtu_id: int, ca: int, endpoints: Sequence[tuple[str, int]],
           points: Iterable[tuple[int, str]], first_point_id: int | None = None) -> Rtu:
    """An IEC 104 acquisition RTU from plain data: its common address, one endpoint per channel and
    (IOA, ASDU type name) pairs; point ids are first_point_id (default rtu_id * 1000) + index."""
    base = rtu_id * 1000 if first_point_id is None else first_point_id
    pts = tuple(Point(id=base + i, rtu=rtu_id, kind=kind_of(t), name=f"ioa {ioa}", area="", address=ioa,
                      datatype=t) for i, (ioa, t) in enumerate(points))
    chans = tuple(Channel(rtu_id, no, host, port, ca) for no, (host, port) in enumerate(endpoints, 1))
    return Rtu(id=rtu_id, name=f"rtu104sim {rtu_id}", rtutype=0, protocol=IEC104, channels=chans, points=pts)


def _next_value(type_id: int, v: float) -> float:
    """The next value a rate event gives a point: +1 for numbers (wrapping inside the type), toggle for
    status points, +2^-10 for normalised values."""
    base = c.base_type(type_id)
    if base in (c.M_SP_NA_1, c.M_DP_NA_1):
        return 0.0 if v else 1.0
    if base == c.M_ME_NA_1:
        n = v + 2.0**-10
        return -1.0 if n > c.NVA_MAX else n
    if base == c.M_ME_NB_1:
        return -32768.0 if v >= 32767 else v + 1
    if base == c.M_IT_NA_1:
        return -(2.0**31) if v >= 2**31 - 1 else v + 1
    return v + 1 if v < 2**24 else 0.0  # short float: exact integers up to 2^24


@dataclass
class Journal:
    """Commands executed, clock synchronisations, malformed frames sent: what tests check."""

    commands: list[dict[str, Any]]
    clock_syncs: list[dict[str, Any]]


class DeviceStation(Station):
    """The se104s station as a device: clock synchronisation sets the device clock (an offset).

    `forget_acked`: as lib60870's redundancy groups, a stopped connection's late acknowledgements still
    count: the I frames it had in flight when data transfer stopped (STOPDT, or another connection's
    STARTDT) and acknowledges afterwards are gone from the device's buffer (the group's cursor moves); by
    default (the se104s station's rule) they stay for the next started connection whatever happens."""

    def __init__(self, dev: Device, *args: Any, forget_acked: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dev = dev
        self.forget_acked = forget_acked
        self._late: dict[int, deque[list[Any]]] = {}  # session id: events of each frame in flight at its stop

    def _stop_events(self, s: Session) -> None:
        if self.forget_acked and not s.closed and any(s.inflight):
            self._late[s.id] = deque(s.inflight)
        elif s.closed:
            self._late.pop(s.id, None)
        super()._stop_events(s)

    def receive(self, s: Session, data: bytes, now: float) -> list[Control]:
        before = s.link.ack
        controls = super().receive(s, data, now)
        late = self._late.get(s.id)
        if late:
            acked = [it[2] for _ in range(min(c.seq_diff(s.link.ack, before), len(late))) for it in late.popleft()]
            first = next((items[0][2] for items in late if items), None)  # an entry still partly in flight
            done = [sid for sid in acked if first is None or sid < first]
            if done and (s.cursor is None or max(done) > s.cursor):
                s.cursor = max(done)
                self.acked(s.identity, s.cursor)
        return controls

    def _on_asdu(self, s: Session, a: c.Asdu, controls: list[Control]) -> None:
        if a.type_id == c.C_CS_NA_1 and a.cause == c.COT_ACT and a.ca in (self.ca, 0xFFFF):
            try:
                master_ms = c.cp56_ms(a.objects[0][1])
            except ValueError:
                master_ms = None
            if master_ms is not None:
                self.dev.set_clock(master_ms, s.peer)
        super()._on_asdu(s, a, controls)


class Device(Se104Server):
    """One simulated RTU: a controlled station listening on each channel's endpoint."""

    def __init__(self, rtu: Rtu, sim: Rtu104Sim, host_map: dict[str, str], options: dict[str, Any]) -> None:
        if not rtu.channels:
            raise ValueError(f"RTU {rtu.id} has no channel")
        self.acq = rtu
        self.sim = sim
        self.ca = rtu.channels[0].unit or 1
        self.clock_offset_ms = int(options.pop("clock_offset_ms", 0))
        self.tagged = bool(options.pop("time_tags", True))
        forget_acked = bool(options.pop("forget_acked", False))
        fwds = []
        for p in rtu.points:
            type_id = c.TYPE_IDS[p.datatype]
            if self.tagged and p.kind in MONITOR_KINDS:
                type_id = c.tagged_type(type_id)
            name = next(n for n, t in c.TYPE_IDS.items() if t == type_id)
            fwds.append(FwdPoint(p.id, TABLE_OF_KIND[p.kind], p.kind, rtu.id, p.id, p.address, name))
        srv_rtu = Rtu(id=rtu.id, name=rtu.name, rtutype=2, protocol="se104s", address=self.ca,
                      forwards=tuple(fwds))
        super().__init__(srv_rtu, Model({}, "", ""), "", sim, "sim", **{"single_active": True, **options})
        self.station = DeviceStation(self, srv_rtu, self.options, self.run_control, f"rtu104sim:{rtu.id}",
                                     wake=self._wake, closed=self._closed, clients_changed=self._clients_changed,
                                     acked=self.record_ack, counts=self.counts, make_room=self.make_room,
                                     forget_acked=forget_acked)
        self.fwd = {f.id: f for f in fwds}
        self.endpoints = {ch.no: (host_map.get(ch.host, ch.host), ch.port) for ch in rtu.channels}
        self._listeners: dict[int, asyncio.base_events.Server] = {}
        self._peer_ch: dict[str, int] = {}
        self._cut: set[int] = set()
        now = self.clock_ms()
        # through the server's load_image: the history starts here, so a master with a recorded position
        # (the new holder at a takeover) is resumed at once, not after the wait for a first image
        self.load_image([Update(f, Value(0.0, 0, now)) for f in fwds if f.kind in MONITOR_KINDS])
        self._monitor = [f for f in fwds if f.kind in MONITOR_KINDS]
        self._next = 0
        self._seq = 0  # the device's own event sequence: the station's history and cursor count in it

    def _publish(self, ups: list[Update]) -> None:
        """One batch of events as one entry of the device's sequence (as the forwarder's runner hands a
        change-stream entry): the redundancy group's cursor and history count in these entries."""
        self._seq += 1
        self.station.apply([Update(u.fwd, u.value, (self._seq, 0)) for u in ups])
        self.advance(f"{self._seq}-0")

    def clock_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def set_clock(self, master_ms: int, peer: str) -> None:
        self.clock_offset_ms = master_ms - int(time.time() * 1000)
        self.sim.note(ev="clock_sync", rtu=self.acq.id, peer=peer, offset_ms=self.clock_offset_ms)

    # --- sockets ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        for ch in self.endpoints:
            if ch not in self._cut:
                await self._listen(ch)

    async def _listen(self, ch: int) -> None:
        host, port = self.endpoints[ch]
        srv = await asyncio.start_server(functools.partial(self._serve_on, ch), host, port, reuse_address=True)
        self._listeners[ch] = srv
        self.endpoints[ch] = (host, int(srv.sockets[0].getsockname()[1]))  # port 0: keep the one bound
        log.info("RTU %s channel %s: CA %s on %s:%s", self.acq.id, ch, self.ca, *self.endpoints[ch])

    async def _serve_on(self, ch: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        self._peer_ch[f"{peername[0]}:{peername[1]}" if peername else "?"] = ch
        with contextlib.suppress(asyncio.CancelledError):  # cut or stop while it cleans up: it is done
            await self.accept(reader, writer)  # ALLOW, opening, TLS, then the station (ForwardServer.accept)

    async def stop(self) -> None:
        for srv in self._listeners.values():
            srv.close()
        await super().stop()
        for srv in self._listeners.values():
            await srv.wait_closed()
        self._listeners.clear()

    def _sessions(self, ch: int | None) -> list[Session]:
        return [s for s in self._io if ch in (None, self._peer_ch.get(s.peer))]

    async def cut(self, ch: int | None) -> None:
        """Close the listener(s) and drop their connections: connect refused, like a dead device."""
        for no in [ch] if ch is not None else list(self.endpoints):
            self._cut.add(no)
            srv = self._listeners.pop(no, None)
            if srv is not None:
                srv.close()
            tasks = [t for s in self._sessions(no) for t in self._io[s].tasks]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if srv is not None:
                await srv.wait_closed()

    def refuse_connections(self, ch: int) -> None:
        """Close channel `ch`'s listener only: new connections refused, the open ones kept (a device at its
        connection limit); `restore` listens again."""
        srv = self._listeners.pop(ch, None)
        if srv is not None:
            srv.close()

    async def restore(self, ch: int | None) -> None:
        for no in [ch] if ch is not None else list(self.endpoints):
            self._cut.discard(no)
            if no not in self._listeners:
                await self._listen(no)

    def malformed(self, ch: int | None) -> int:
        """Write a frame with a wrong start octet on every connection (of channel `ch`); returns how many."""
        n = 0
        for s in self._sessions(ch):
            if not s.closed:
                self._io[s].writer.write(MALFORMED)
                n += 1
        self.sim.note(ev="malformed", rtu=self.acq.id, channel=ch, connections=n)
        return n

    def connections(self) -> list[dict[str, Any]]:
        return [{"peer": s.peer, "channel": self._peer_ch.get(s.peer), "started": s.active}
                for s in self._io if not s.closed]

    # --- values ----------------------------------------------------------------------------------------

    def set(self, point_id: int, value: float, quality: int = 0, ts_ms: int | None = None) -> None:
        f = self.fwd[point_id]
        if f.kind not in MONITOR_KINDS:
            raise KeyError(f"point {point_id} is a command target, not a monitored point")
        self._publish([Update(f, Value(value, quality, self.clock_ms() if ts_ms is None else ts_ms))])

    def value(self, point_id: int) -> Value:
        f = self.fwd[point_id]
        if f.kind not in MONITOR_KINDS:
            raise KeyError(f"point {point_id} is a command target, not a monitored point")
        return self.station.image[(f.table, f.id)]

    def events(self, n: int) -> None:
        """n spontaneous events now: the monitored points in turn each take their next value."""
        if not self._monitor or n <= 0:
            return
        ts = self.clock_ms()
        now = {key: v.value for key, v in self.station.image.items()}  # the station's image changes in apply
        ups = []
        for _ in range(n):
            f = self._monitor[self._next]
            self._next = (self._next + 1) % len(self._monitor)
            key = (f.table, f.id)
            now[key] = _next_value(c.TYPE_IDS[f.type or ""], now[key])  # a point's next event in this batch
            ups.append(Update(f, Value(now[key], 0, ts)))                # steps from its previous one
        self._publish(ups)


class Rtu104Sim(SimControl):
    """Every IEC 104 acquisition RTU of a model as a simulated device (see docs/rtu104sim.md)."""

    def __init__(self, rtus: Iterable[Rtu], rate: float = 0.0, host_map: dict[str, str] | None = None,
                 control: tuple[str, int] | None = None, journal: Callable[[dict], None] | None = None,
                 **options: Any) -> None:
        self.journal = journal
        self.rate = rate  # spontaneous events per second per device
        self.control = control
        self.control_port: int | None = None
        self.refused: set[int] = set()
        self.command_delay_s = 0.0
        self.log = Journal([], [])
        self.devices: dict[int, Device] = {}
        self.point_rtu: dict[int, int] = {}
        seen: dict[tuple[str, int], int] = {}
        for r in rtus:
            dev = Device(r, self, dict(host_map or {}), dict(options))
            for ep in dev.endpoints.values():
                if ep[1] and seen.setdefault(ep, r.id) != r.id:
                    raise ValueError(f"RTUs {seen[ep]} and {r.id} on the same endpoint {ep[0]}:{ep[1]}")
            self.devices[r.id] = dev
            self.point_rtu.update(dict.fromkeys(dev.fwd, r.id))
        self._tasks: list[asyncio.Task] = []
        self._control_srv: asyncio.Server | None = None

    @classmethod
    def from_model(cls, model: Model, **kw: Any) -> Rtu104Sim:
        return cls([r for r in model.acquisition_rtus() if r.protocol == IEC104], **kw)

    @classmethod
    def from_db(cls, path: Path | str, **kw: Any) -> Rtu104Sim:
        rows, problems = read_rows(Path(path))
        if not rows.get("T004_RTU") and problems:
            raise ValueError(f"{path}: {problems[0]}")
        return cls.from_model(Model.from_rows(rows), **kw)

    def endpoints(self) -> list[tuple[str, int]]:
        return [ep for d in self.devices.values() for ep in d.endpoints.values()]

    def note(self, **event: Any) -> None:
        if event.get("ev") == "clock_sync":
            self.log.clock_syncs.append(event)
        if self.journal is not None:
            self.journal(event)

    # --- the ControlSink of every device: the device executing a command ---------------------------------

    async def execute(self, fwd: FwdPoint, value: float, origin: str,
                      timeout_ms: int | None = None) -> ControlOutcome:
        if self.command_delay_s:
            await asyncio.sleep(self.command_delay_s)
        ok = fwd.id not in self.refused
        ev = {"ev": "command", "rtu": fwd.rtu, "point": fwd.id, "ioa": fwd.addr, "type": fwd.type,
              "value": value, "ok": ok, "origin": origin}
        self.log.commands.append(ev)
        self.note(**ev)
        return ControlOutcome(True, "done") if ok else ControlOutcome(False, "failed", "refused by the device")

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        for d in self.devices.values():
            await d.start()
        self.note(ev="start", devices=sorted(self.devices))
        self._tasks.append(asyncio.create_task(self._changer(), name="rtu104sim-rate"))
        await self._open_control()

    async def stop(self) -> None:
        await self._cancel_tasks()
        for d in self.devices.values():
            await d.stop()
        await self._close_control()

    async def _changer(self) -> None:
        """`rate` events per second per device, in batches every few ms (owed events since the start of
        the current rate, so that the average holds however late the loop wakes)."""
        t0, done, rate = time.monotonic(), 0, self.rate
        while True:
            await asyncio.sleep(0.02 if self.rate <= 0 else max(0.002, min(0.02, 1.0 / self.rate)))
            if self.rate != rate:
                t0, done, rate = time.monotonic(), 0, self.rate
            if rate <= 0:
                continue
            n = int((time.monotonic() - t0) * rate) - done
            if n > 0:
                self.tick(n)
                done += n

    # --- control ---------------------------------------------------------------------------------------

    def tick(self, n: int = 1) -> None:
        """n spontaneous events on every device now."""
        for d in self.devices.values():
            d.events(n)

    def _device(self, rtu: int) -> Device:
        if rtu not in self.devices:
            raise KeyError(f"unknown IEC 104 RTU {rtu}")
        return self.devices[rtu]

    def _channel(self, rtu: int, ch: int | None) -> tuple[Device, int | None]:
        d = self._device(rtu)
        if ch is not None and ch not in d.endpoints:
            raise KeyError(f"RTU {rtu} has no channel {ch}")
        return d, ch

    async def cut(self, rtu: int, channel: int | None = None) -> None:
        d, ch = self._channel(rtu, channel)
        await d.cut(ch)
        self.note(ev="cut", rtu=rtu, channel=channel)

    def refuse_connections(self, rtu: int, channel: int) -> None:
        """New connections to `rtu`'s `channel` refused, its open ones kept (Device.refuse_connections)."""
        d, _ = self._channel(rtu, channel)
        d.refuse_connections(channel)
        self.note(ev="refuse_connections", rtu=rtu, channel=channel)

    async def restore(self, rtu: int, channel: int | None = None) -> None:
        d, ch = self._channel(rtu, channel)
        await d.restore(ch)
        self.note(ev="restore", rtu=rtu, channel=channel)

    def is_cut(self, rtu: int, channel: int) -> bool:
        return channel in self._device(rtu)._cut

    def malformed(self, rtu: int, channel: int | None = None) -> int:
        d, ch = self._channel(rtu, channel)
        return d.malformed(ch)

    def set_value(self, point_id: int, value: float, quality: int = 0, ts_ms: int | None = None) -> None:
        """A spontaneous event of one point (time tag: the device clock unless `ts_ms`)."""
        self._device(self._rtu_of(point_id)).set(point_id, value, quality, ts_ms)
        self.note(ev="set", point=point_id, value=value, quality=quality)

    def value(self, point_id: int) -> Value:
        return self._device(self._rtu_of(point_id)).value(point_id)

    def _rtu_of(self, point_id: int) -> int:
        if point_id not in self.point_rtu:
            raise KeyError(f"unknown point {point_id}")
        return self.point_rtu[point_id]

    def refuse(self, point_id: int, refused: bool = True) -> None:
        """Commands on this point get a negative ACT_CON (the device refuses them)."""
        self._rtu_of(point_id)
        (self.refused.add if refused else self.refused.discard)(point_id)

    def connections(self, rtu: int) -> list[dict[str, Any]]:
        return self._device(rtu).connections()

    def counters(self, rtu: int) -> dict[str, int]:
        return self._device(rtu).counters()

    async def command_async(self, line: str) -> str:
        """One control-interface command -> one answer line (see docs/rtu104sim.md)."""
        words = line.split()
        try:
            if not words:
                return "err empty command"
            cmd, args = words[0].lower(), words[1:]
            ints = [int(a) for a in args] if cmd in ("cut", "restore", "malformed", "refuse", "conns") else []
            if cmd in ("cut", "restore") and 1 <= len(args) <= 2:
                await getattr(self, cmd)(ints[0], ints[1] if len(ints) == 2 else None)
                return "ok"
            if cmd == "malformed" and 1 <= len(args) <= 2:
                return f"ok {self.malformed(ints[0], ints[1] if len(ints) == 2 else None)}"
            if cmd == "set" and 2 <= len(args) <= 3:
                self.set_value(int(args[0]), float(args[1]), int(args[2], 0) if len(args) == 3 else 0)
                return f"ok {self.value(int(args[0])).ts_ms}"
            if cmd == "get" and len(args) == 1:
                v = self.value(int(args[0]))
                return f"ok {v.value} {v.quality} {v.ts_ms}"
            if cmd == "rate" and len(args) == 1:
                self.rate = max(0.0, float(args[0]))
                return "ok"
            if cmd == "refuse" and len(args) == 2:
                self.refuse(ints[0], bool(ints[1]))
                return "ok"
            if cmd == "delay" and len(args) == 1:
                self.command_delay_s = max(0.0, float(args[0]))
                return "ok"
            if cmd == "commands" and not args:
                return "ok " + json.dumps(self.log.commands)
            if cmd == "conns" and len(args) == 1:
                return "ok " + json.dumps(self.connections(ints[0]))
            if cmd == "status" and not args:
                return "ok " + " ".join(self._status(rid, d, no) for rid, d in sorted(self.devices.items())
                                        for no in d.endpoints)
            return f"err unknown command {line.strip()!r}"
        except (KeyError, ValueError) as exc:
            return f"err {exc}"

    @staticmethod
    def _status(rid: int, d: Device, no: int) -> str:
        """RTU/CH=up|cut:CONNECTIONS, with * when one of them is started."""
        conns = [x for x in d.connections() if x["channel"] == no]
        return f"{rid}/{no}={'cut' if no in d._cut else 'up'}:{len(conns)}{'*' if any(x['started'] for x in conns) else ''}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((await self.command_async(line.decode("ascii", "replace"))).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fep-rtu104sim", description="Simulated IEC 104 RTUs (docs/rtu104sim.md)")
    ap.add_argument("--db", required=True, help="SEMODEL.db whose IEC 104 acquisition RTUs to serve")
    ap.add_argument("--rate", type=float, default=1.0, help="spontaneous events per second per device (0: none)")
    ap.add_argument("--map", action="append", default=[], metavar="OLD=NEW", help="bind NEW instead of OLD")
    ap.add_argument("--control", type=_hostport, default=None, metavar="HOST:PORT", help="control port")
    ap.add_argument("--journal", type=Path, default=None, metavar="FILE",
                    help="append one JSON line per command executed, clock sync, set, cut, malformed frame")
    ap.add_argument("--untagged", action="store_true",
                    help="send the configured types as they are (default: their CP56Time2a time-tagged form)")
    ap.add_argument("--clock-offset-ms", type=int, default=0, help="device clock minus real time at start")
    ap.add_argument("--buffer-max", type=int, default=200_000, help="events kept while no connection is started")
    for t in ("k", "w"):
        ap.add_argument(f"--{t}", type=int, default=None)
    for t in ("t1", "t2", "t3"):
        ap.add_argument(f"--{t}", type=float, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rtu104sim %(levelname)s %(message)s")
    journal = None
    if args.journal:
        out = args.journal.open("a", buffering=1)
        journal = lambda ev: out.write(json.dumps({"t": time.time(), **ev}) + "\n")
    link = {t: getattr(args, t) for t in ("k", "w", "t1", "t2", "t3") if getattr(args, t) is not None}
    try:
        sim = Rtu104Sim.from_db(args.db, rate=args.rate, host_map=dict(m.split("=", 1) for m in args.map),
                                control=args.control, journal=journal, time_tags=not args.untagged,
                                clock_offset_ms=args.clock_offset_ms, buffer_max=args.buffer_max, **link)
    except (OSError, ValueError, KeyError) as exc:
        log.error("%s", exc)
        return 2

    return asyncio.run(serve_until_signal(sim, args.control))


if __name__ == "__main__":
    raise SystemExit(main())
