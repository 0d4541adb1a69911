"""One IEC 104 acquisition RTU on this node: the acquirer as controlling station (IEC 60870-5-104 master).

The same contract as the Modbus `RtuRunner` (housekeeping ticks its lease, the executor runs its controls):
both nodes keep a connection to the RTU (its redundancy group); only the lease holder sends STARTDT, the
other stays stopped and learns reachability from TESTFR. After every STARTDT con, and after an end of
initialisation that follows it: clock sync (if configured), a general interrogation, a counter
interrogation (if the RTU has counters or a CI period is configured). Spontaneous events are written at once (rules.write_mode: time-tagged ones
and counter readings every one, untagged status and measured ones when they change the point); answers to
interrogations when they change something. Every read is acknowledged as soon as it is written. A
takeover or reconnect loses nothing the RTU buffered for the group: the next STARTDT makes the RTU send
it, and what had been written already is recognised. The rules are in iec104rules.py; the link
(APCI, k/w, t1..t3) is fepha.iec104.link; this module is the socket and the Redis edge.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

from fep_acquirer import iec104rules as rules
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RunnerBase
from fep_acquirer.tasks import cancel_and_wait
from fep_acquirer.writer import Writer
from fepha import keyspace as ks
from fepha import points as pt
from fepha.config import NodeConfig
from fepha.iec104 import codec as c
from fepha.iec104.link import AsduIn, Link, LinkParams, LinkTimeout, Role, Started, Stopped
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Channel, Rtu

log = logging.getLogger("acquirer")
IV = int(pt.Quality.IV)
TERM_MARGIN_S = 0.2  # ACT_TERM is awaited until this long before the control's deadline
# Before each STARTDT: how far back the change stream is read for the last records of this RTU (ours or
# the former holder's: the unacknowledged tail the RTU re-sends is at most its k I frames, each written as
# one entry or a few)
RECENT_ENTRIES, RECENT_SCAN = 64, 20_000


class LinkLost(Exception):
    """The connection to the RTU ended (closed, t1 expired, malformed frame)."""


class Iec104Runner(RunnerBase):
    TASK = "acquirer-iec104"

    def __init__(self, rtu: Rtu, cfg: NodeConfig, writer: Writer, metrics: Metrics, once: OnceLogger) -> None:
        super().__init__(rtu, cfg, writer, metrics, once)
        t1 = rtu.timeout_ms / 1000 if rtu.timeout_ms else cfg.iec104_t1_s
        self.params = LinkParams(k=cfg.iec104_k, w=cfg.iec104_w, t0=cfg.iec104_t0_s, t1=t1,
                                 t2=min(cfg.iec104_t2_s, t1 / 2), t3=cfg.iec104_t3_s)
        gi_s = rtu.poll_ms / 1000 if rtu.poll_ms else cfg.iec104_gi_period_s
        self.schedule = rules.Schedule(gi_s, cfg.iec104_ci_period_s, cfg.iec104_clock_sync_s,
                                       counters=any(p.kind == "ACC" for p in rtu.points))
        self.map = rules.PointMap(rtu)
        self.points = self.map.by_id
        self.window_s = max(self.params.t3 + self.params.t1, 2 * cfg.lease_tick_s)
        self.link: Link | None = None
        self.channel: Channel | None = None
        self._out: asyncio.StreamWriter | None = None
        self._wake = asyncio.Event()
        self._command: rules.CommandExchange | None = None
        self._command_done = asyncio.Event()
        self._started_evt = asyncio.Event()
        # records the former holder wrote last (point, record): the RTU's re-sent tail after our STARTDT
        self._tail: rules.Tail | None = None
        self._recent_pending = False
        self._gi = rules.Interrogation(self.params.t1)  # the GI under way on this connection (until ACT_TERM)
        self._gi_any = False  # a GI was sent since the last STARTDT con (the next one is not the first after it)
        self._spont_in_gi: set[int] = set()  # points with a spontaneous event since that GI was sent
        self._sync_pending = False  # full image asked: compare with the master's values before the next write
        # a reload's restart (`carry_over`), or a connection closed by t1 (`_session`): the last frame of that
        # connection, until the next connection attempt ends (rules.reaches)
        self.carried_rx: float | None = None
        self.closed_rx: float | None = None  # `stop`: the last frame of the connection it closed (None: none)

    # --- the contract housekeeping and the executor use -----------------------------------------------

    def reaches(self) -> bool:
        link = self.link
        return rules.reaches(None if link is None else link.last_rx, self.carried_rx, time.monotonic(), self.window_s)

    def polled_age_ms(self) -> int:
        """The lease's polled_ms (forwarder staleness, docs/forwarder.md): a device that reports by exception
        is topical while its link is alive (frames or TESTFR answers within t3 + t1), so 0 then; otherwise
        ms since its last frame (-1: none yet)."""
        link = self.link
        last = self.carried_rx if link is None else link.last_rx
        if last is None:
            return -1
        return 0 if self.reaches() else int((time.monotonic() - last) * 1000)

    def open_channel(self) -> int | None:
        return None if self.link is None or self.channel is None else self.channel.no

    async def stop(self) -> None:
        link = self.link
        self.closed_rx = None if link is None else link.last_rx  # for the runner a reload starts (`carry_over`)
        await super().stop()

    def carry_over(self, old: RunnerBase) -> None:
        """A reload that changed this RTU's points or parameters but not its channels restarts its runner,
        which closes the connection: until this runner's first connection attempt ends, the RTU is reached
        as that connection was (rules.reaches: by its last frame, within the reach window), and the attempt
        is made on the channel it was open on (RunnerBase.carry_over). A connection that opens carries on
        the old one's t3 / t1 timers (`run`); a first attempt that fails leaves the RTU not reached at once.
        Without this, the housekeeping tick before the new connection opened wrote "not reached", and the
        link virtual point fell to 0 at SCADA for a moment, a false link alarm at every such reload. Nothing
        is carried when the old connection was not open: the RTU was not reached then, nor is it now."""
        super().carry_over(old)
        if isinstance(old, Iec104Runner) and old.rtu.channels == self.rtu.channels:
            self.carried_rx = old.closed_rx

    def lease_gained(self) -> None:
        """Write every point again (the GI after our STARTDT brings them) and start data transfer, after
        reading what the former holder wrote last (to recognise what the RTU sends twice)."""
        self._recent_pending = True
        self.full_image()
        self._wake.set()

    def full_image(self) -> None:
        """Write again what differs from the master's values (read once, with the next write: the answers
        to the GI asked here), as the Modbus runner does."""
        self.tracker.forget()
        self._sync_pending = True
        self.metrics.inc("full_images")
        self.schedule.request_gi(time.monotonic())
        self._wake.set()

    async def rewrite(self) -> bool:
        """The values received last, as a full image would write them (timed now, as the answers to the GI it
        asks); the GI's answers follow."""
        if not self.samples or not self.reaches():
            return False
        self.full_image()
        now_ms = int(time.time() * 1000)
        return await self._publish([(pid, s, now_ms) for pid, s in self.samples.items()], rules.IMAGE)

    async def invalidate(self) -> None:
        """The holder lost its RTU: its monitored points become invalid (written once, thanks to the tracker)."""
        now_ms = int(time.time() * 1000)
        events = [(pid, (self.samples.get(pid, (0, 0))[0], IV), now_ms) for pid in
                  (p.id for p in self.map.monitored.values())]
        await self._publish(events, rules.IMAGE)

    async def write_point(self, point_id: int, value: float, deadline: float | None = None) -> str:
        """Control: send the command (direct or select before operate), wait for ACT_CON and ACT_TERM;
        returns how it ended. Raises on a negative or missing confirmation; the executor's wait_for cancels
        it at the control's deadline (`deadline`, monotonic), so nothing is ever sent late. ACT_TERM is
        awaited until shortly before the deadline (at most t1): an RTU that confirms but never terminates
        (lib60870 does not for direct commands) gives a success that says so."""
        p = self.points.get(point_id)
        if p is None or p.kind not in ("DO", "AO"):
            raise ValueError(f"point {point_id} is not a command target of RTU {self.rtu.id}")
        if self._command is not None:
            raise RuntimeError("another command to this RTU is in progress")
        while True:  # a holder that just gained the lease waits for its STARTDT con (within the deadline)
            link, ch = self.link, self.channel
            if link is not None and ch is not None and link.started:
                break
            if not self.lease.held:
                raise RuntimeError("not the lease holder")
            self._started_evt.clear()
            await self._started_evt.wait()
        ex = rules.CommandExchange(p, ch.unit or 1, value, p.ctlmode == "sbo", int(time.time() * 1000))
        first = ex.first()  # ValueError for a value the type cannot carry: nothing sent
        self._command, self._command_done = ex, asyncio.Event()
        try:
            if not self._send(link, first):
                raise RuntimeError("not sent: k unacknowledged frames to the RTU, or data transfer stopped")
            while ex.result is None and ex.phase != "term":
                self._command_done.clear()
                await self._command_done.wait()
            if ex.result is None:  # positive ACT_CON of the execute: ACT_TERM within the time left
                end = time.monotonic() + self.params.t1
                if deadline is not None:
                    end = min(end, deadline - TERM_MARGIN_S)
                while ex.result is None:
                    self._command_done.clear()
                    try:
                        await asyncio.wait_for(self._command_done.wait(), max(0.0, end - time.monotonic()))
                    except TimeoutError:
                        return "executed (positive ACT_CON; no ACT_TERM before the deadline)"
        finally:
            self._command = None
        assert ex.result is not None
        ok, reason = ex.result
        if not ok:
            raise RuntimeError(reason)
        return reason

    # --- connection loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        chans = {ch.no: ch for ch in self.rtu.channels}
        if not chans:
            self.once.problem(self.key, "no channel configured")
            return
        while not self._stopping:
            no = await self.next_channel()
            ch = chans[no]
            try:
                reader, out = await asyncio.wait_for(asyncio.open_connection(ch.host, ch.port), self.params.t0)
            except (OSError, TimeoutError) as exc:
                self.carried_rx = None  # the connection a reload closed tells nothing any more
                self.switcher.failed(time.monotonic(), f"connect {ch.host}:{ch.port}: {exc or 'timeout'}",
                                     wall=time.time())
                self.once.problem(f"{self.key} channel {no}", f"connect {ch.host}:{ch.port}: {exc or 'timeout'}")
                continue
            self.switcher.connected(time.monotonic(), wall=time.time())
            self.once.clear(f"{self.key} channel {no}")
            self._recent_pending = True  # what the RTU may send again was written by us or our predecessor
            # the first connection after a reload's restart, or after one closed by t1, goes on from the old
            # one's last frame: tested (TESTFR) and given up when that one would have been, so the device is
            # not reached any later (nor again by the opening alone, when it left that connection unanswered)
            since, self.carried_rx = self.carried_rx, None
            link = Link(Role.CLIENT, self.params, now=time.monotonic() if since is None else since,
                        confirm_by_caller=True)
            self.link, self.channel, self._out = link, ch, out
            try:
                await self._session(link, reader, out)
            except LinkLost as exc:
                self.switcher.failed(time.monotonic(), str(exc), wall=time.time())
                self.once.problem(f"{self.key} channel {no}", str(exc))
            except Exception as exc:  # a bug must not end the RTU's task: close, log, reconnect
                log.exception("%s: connection on channel %d failed", self.key, no)
                self.switcher.failed(time.monotonic(), f"{type(exc).__name__}: {exc}", wall=time.time())
            finally:
                self.link = self.channel = self._out = None
                self._gi.ended()
                self._gi_any = False
                self._spont_in_gi.clear()
                self.schedule.stopped()
                if self._command is not None and self._command.result is None:
                    self._command.finish(False, "connection to the RTU lost")
                    self._command_done.set()
                out.close()

    async def _session(self, link: Link, reader: asyncio.StreamReader, out: asyncio.StreamWriter) -> None:
        rx = asyncio.create_task(self._receive(link, reader), name=f"acquirer-iec104-rx-{self.rtu.id}")
        try:
            while not self._stopping:
                if rx.done():
                    rx.result()  # raises LinkLost
                    raise LinkLost("connection closed")
                now = time.monotonic()
                try:
                    link.tick(now)
                except LinkTimeout as exc:
                    # the RTU left a frame of ours unanswered for t1: the next connection goes on from this one's
                    # last frame (`run`), so it is not reached by its opening alone (an RTU whose application
                    # hangs while its host still accepts connections)
                    self.carried_rx = link.last_rx
                    raise LinkLost(str(exc)) from None
                if self._gi.expired(now):
                    self.once.problem(f"{self.key} gi", "general interrogation not terminated: no ACT_TERM, nor any "
                                      f"frame of it, within t1 ({self.params.t1:g} s); taken as ended (late "
                                      "answers still never overwrite a newer event)")
                if self._recent_pending and self.lease.held and not link.started and link.pending is None:
                    await self._load_recent()
                self._drive(link, now)
                self._flush(link)
                until = [link.next_deadline(), now + self.cfg.lease_tick_s]
                if (d := self.schedule.deadline(self._waiting(now))) is not None:
                    until.append(d)
                if self._gi.deadline is not None:
                    until.append(self._gi.deadline + 0.001)
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait([rx, wake], timeout=max(0.005, min(until) - time.monotonic()),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake.cancel()
        finally:
            await cancel_and_wait(rx)

    def _drive(self, link: Link, now: float) -> None:
        """The lease decides data transfer: the holder starts it, a node that lost the lease stops it."""
        if link.pending is None:
            if self.lease.held and not link.started:
                link.start(now)
                log.info("%s: STARTDT sent (lease holder, epoch %d)", self.key, self.lease.epoch)
            elif not self.lease.held and link.started:
                link.stop(now)
                self.schedule.stopped()
                self._gi.ended()  # its ACT_TERM may never come now: not a GI left unterminated
                self._spont_in_gi.clear()
                log.info("%s: STOPDT sent (lease now %s)", self.key, self.lease.holder or "free")
        if link.started and self.channel is not None and link.in_flight + 3 <= self.params.k:
            ca = self.channel.unit or 1
            for kind in self.schedule.due(now, self._waiting(now)):
                if self._send(link, rules.interrogation_asdu(kind, ca, int(time.time() * 1000))) and kind == "gi":
                    self._gi.sent(now, first=not self._gi_any)
                    self._gi_any = True
                    self._spont_in_gi.clear()

    def _waiting(self, now: float) -> tuple[str, ...]:
        """What the schedule keeps due, unsent: a GI while one is open (sent when it ends)."""
        return ("gi",) if self._gi.open(now) else ()

    def _send(self, link: Link, asdu: bytes) -> bool:
        """Send one ASDU; False when k frames are unacknowledged (the RTU is behind; t1 will tell) or data
        transfer stopped meanwhile (no I frame is sent then)."""
        if not link.window_open or not link.started:
            return False
        link.send(asdu, time.monotonic())
        self._flush(link)
        return True

    def _flush(self, link: Link) -> None:
        data = link.data_to_send()
        if data and self._out is not None and link is self.link:
            self._out.write(data)

    async def _receive(self, link: Link, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                raise LinkLost("closed by the RTU")
            now = time.monotonic()
            try:
                events = link.receive(data, now)
            except c.ProtocolError as exc:
                self.metrics.inc("poll_errors")
                raise LinkLost(f"malformed frame from the RTU: {exc}") from None
            await self._take(link, events, now)
            self._flush(link)  # the S frame of what this read wrote (only frames whose events are in Redis)

    async def _take(self, link: Link, events: list, now: float) -> None:
        """Act on one read's events. An I frame is confirmed to the link once what it carried is written,
        or at once when it needs no write (a command confirmation, an ignored object); what the read
        confirmed is acknowledged as soon as it is written (an S frame then, not after w frames or t2), so
        that a connection that closes leaves the RTU as little already written to send again. A write that
        fails closes the connection unacknowledged: the RTU keeps those frames and sends them again after
        the next STARTDT (ours after reconnecting, or the new holder's)."""
        written: list[rules.Event] = []
        mode = rules.IMAGE
        upto: int | None = None  # the sequence number after the last I frame handled (or to be written)
        rx_ms = int(time.time() * 1000)
        for ev in events:
            if isinstance(ev, Started):
                log.info("%s: data transfer started", self.key)
                self.schedule.started(now)
                self._gi_any = False  # the next GI is the one after this STARTDT (an M_EI may follow)
                self._started_evt.set()
                self._wake.set()
            elif isinstance(ev, Stopped):
                log.info("%s: data transfer stopped", self.key)
            elif isinstance(ev, AsduIn):
                try:
                    got = self._asdu(link, ev.asdu, rx_ms)
                except (c.ProtocolError, ValueError, struct.error) as exc:
                    self.metrics.inc("poll_errors")
                    raise LinkLost(f"malformed ASDU from the RTU: {exc}") from None
                for run in got or ():  # each object written as its own mode says, in wire order
                    if not run.events:
                        continue
                    if run.mode != mode and written:
                        await self._written(written, mode)
                        if upto is not None:  # frames before this one: all written (or none to write)
                            link.confirm(upto, time.monotonic(), at_once=True)
                            self._flush(link)
                        written = []
                    written += run.events
                    mode = run.mode
                upto = (ev.ns + 1) & 0x7FFF
                if not written:
                    link.confirm(upto, now)
        if written:
            await self._written(written, mode)
        if upto is not None:
            link.confirm(upto, time.monotonic(), at_once=True)

    async def _written(self, events: list[rules.Event], mode: str) -> None:
        if not await self._publish(events, mode):
            raise LinkLost("events not written to Redis: connection closed unacknowledged, the RTU keeps them")

    def _asdu(self, link: Link, raw: bytes, rx_ms: int) -> list[rules.Run] | None:
        """What to write of one ASDU (None: nothing; acting on what is no monitoring data)."""
        a = c.parse_asdu(raw)  # ProtocolError: the connection is closed, as for a malformed frame
        ca = (self.channel.unit if self.channel else 1) or 1
        if a.ca != ca:
            self.once.problem(f"{self.key} ca {a.ca}", f"ASDU for common address {a.ca}, this RTU is {ca}: ignored")
            return None
        if why := rules.refused(a):
            self.once.problem(f"{self.key} type {a.type_id} cause {rules.cause_text(a)}", why)
            return None
        if rules.is_monitoring(a.type_id):
            if not link.started:  # sent before the RTU saw our STOPDT act: not ours to write any more
                raise LinkLost("events after our STOPDT (lease lost): connection closed unacknowledged, "
                               "the RTU keeps them for the holder")
            got = self.map.intake(a, rx_ms)
            for k, msg in got.problems.items():
                self.once.problem(f"{self.key} {k}", msg)
            self._clock(got)
            runs = got.runs
            if got.spontaneous:
                if self._tail is not None and self._tail.recent:  # the tail the RTU had not seen acknowledged
                    runs = self._tail.take(runs, self.tracker.written)
                    self.metrics.inc("duplicates_dropped", sum(len(r.events) for r in got.runs)
                                     - sum(len(r.events) for r in runs))
                if self._gi.watch:
                    self._spont_in_gi.update(pid for r in runs for pid, _, _ in r.events)
            elif c.COT_INROGEN <= a.cause <= c.COT_INROGEN + 16 and self._gi.watch:
                self._gi.heard(time.monotonic())
                runs = [r._replace(events=rules.not_overtaken(r.events, self._spont_in_gi)) for r in runs]
            return runs
        ex = self._command
        if ex is not None and ex.mine(a):
            if ex.feed(a) == "execute" and not self._send(link, ex.execute(int(time.time() * 1000))):
                ex.finish(False, "not executed: k unacknowledged frames to the RTU, or data transfer stopped")
            self._command_done.set()
            return None
        if a.type_id == c.M_EI_NA_1:  # end of initialisation: the RTU restarted, its image may be new
            # (the GI sent right after STARTDT, still open, answers with the new image already: the RTU
            # reports M_EI once started, ahead of its answers; the clock sync and CI went with that GI. Any
            # other GI open, or one never terminated (given up after t1), does not: rules.Interrogation)
            coi = a.objects[0][1][0] if a.objects and a.objects[0][1] else 0
            if not self._gi.covers_restart(time.monotonic()) and self.schedule.initialised(time.monotonic()):
                self._gi.ended()  # one open was sent before the restart: a new one at once, not after it
                log.info("%s: RTU reports end of initialisation (cause %d, COI %d): clock sync, general and "
                         "counter interrogation as configured", self.key, a.cause, coi)
                self._wake.set()
        elif a.type_id == c.C_IC_NA_1 and (a.cause == c.COT_ACTTERM or a.negative):
            self._gi.ended()
            self._spont_in_gi.clear()
            self.once.clear(f"{self.key} gi")
            self._wake.set()  # a GI kept due while this one was open goes now
        elif a.type_id == c.C_IC_NA_1 and a.cause == c.COT_ACTCON:
            self._gi.heard(time.monotonic())
        if a.type_id in (c.C_IC_NA_1, c.C_CI_NA_1, c.C_CS_NA_1) and a.negative:
            self.once.problem(f"{self.key} type {a.type_id}", f"RTU refused type {a.type_id} (cause {rules.cause_text(a)})")
        why = rules.unsupported(a)
        if why:
            self.once.problem(f"{self.key} ioa {a.objects[0][0] if a.objects else 0} type {a.type_id}", why)
        return None

    def _clock(self, got: rules.Intake) -> None:
        """The device's time tags the reception time replaced, logged once per RTU and kind of fault (not per
        object: a wrong clock is wrong for every tag) with its first example; an ASDU whose every tag was
        taken ends them (its clock is right again)."""
        for kind, why in got.clock.items():
            self.once.begin(f"{self.key} {kind}", why)
        if got.tagged and got.runs and not got.clock:  # a run holds one event at least
            for kind in rules.TAG_FAULTS:
                self.once.clear(f"{self.key} {kind}")

    # --- fenced writes ----------------------------------------------------------------------------------

    async def _load_recent(self) -> None:
        """The records of this RTU among the newest change-stream entries (RECENT_SCAN at most)."""
        self._recent_pending = False
        self._tail = None
        recent: set[tuple[int, str]] = set()
        mine, scanned, top = 0, 0, "+"
        try:
            while scanned < RECENT_SCAN and mine < RECENT_ENTRIES:
                entries = await self.writer.master.xrevrange(ks.CHANGES, max=top, min="-", count=500)
                if not entries:
                    break
                for _eid, fields in entries:
                    if fields.get("r") == str(self.rtu.id):
                        mine += 1
                        recent.update((int(k), v) for k, v in fields.items() if k != "r")
                scanned += len(entries)
                top = "(" + entries[-1][0]
        except Exception as exc:  # noqa: BLE001 - no deduplication then: a re-sent event is written twice
            self.once.problem(f"{self.key} recent", f"{type(exc).__name__}: {exc}")
            return
        self._tail = rules.Tail(recent)

    async def _publish(self, events: list[rules.Event], mode: str) -> bool:
        """Write events in order, as `mode` says (rules.write_mode): every one (EVERY), those that differ
        from the point's previous one (CHANGES), those that change a point (IMAGE; all after a full
        image). False when a write failed (the master's values are read before the next write) or was
        fenced; received events are left to the RTU then, see _take."""
        async with self._write_lock:
            for pid, s, _ in events:
                self.samples[pid] = s
            if not self.lease.held:
                return False
            if self._sync_pending:
                self._sync_pending = False
                held = await self.held_by_master()
                if held is not None:
                    self.tracker.seed({pid: s for pid, (s, _) in held.items()})
            if mode == rules.CHANGES:
                events = rules.changes_only(events, self.tracker.written, self.tracker.dirty)
            for batch in rules.batches(events):
                if mode == rules.IMAGE:
                    changed = self.tracker.changes({pid: s for pid, s, _ in batch})
                    batch = [e for e in batch if e[0] in changed]
                if not batch:
                    continue
                pairs: list[str] = []
                for pid, (v, q), ts in batch:
                    pairs += (str(pid), pt.encode(v, q, ts))
                res = await self.writer.write(self.rtu.id, self.lease.epoch, pairs)
                done = {pid: s for pid, s, _ in batch}
                if res.ok:
                    self.metrics.inc("changes_written", len(batch))
                    self.tracker.committed(done)
                    self.once.clear(f"{self.key} write")
                    continue
                if res.fenced:
                    self.once.problem(f"{self.key} write", f"fenced out: lease is {res.holder}@{res.epoch}")
                    self.lease.fenced_out(res.holder, res.epoch)
                    self._wake.set()
                    return False
                self.metrics.inc("write_errors")
                # Applied or not (a reply lost leaves it unknown): the connection closes unacknowledged and
                # the RTU sends these events again, so before the next write the master's values are read
                # (as after a lease gain) rather than this batch's points re-sent whatever they hold: an
                # untagged event the write did apply is then no change, one it did not is written.
                self.tracker.forget()
                self.tracker.dirty.clear()
                self._sync_pending = True
                self.once.problem(f"{self.key} write", res.error)
                return False
            return True
