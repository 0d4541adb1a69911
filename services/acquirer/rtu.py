"""One acquisition RTU on this node: its channel loop, polls, change detection and fenced writes.

Every node polls every device (hot standby: a takeover never waits for a connect); only the lease holder
writes values. The lease view is updated by the housekeeping loop (housekeeping.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from fep_acquirer.changes import (
    FAILED,
    FENCED,
    OK,
    ChangeTracker,
    Kept,
    ResendQueue,
    Sample,
    StandbyLog,
    after_replay,
    at_lease_gain,
    held_in_redis,
)
from fep_acquirer.channel import ChannelSwitcher
from fep_acquirer.device import Busy, DeviceError, DeviceLink, LinkError, NoAnswer, Unanswered, register_words
from fep_acquirer.lease import LeaseView, reach_window_s, reaches, reaches_fully
from fep_acquirer.metrics import Metrics
from fep_acquirer.plan import decode_block, plan_reads
from fep_acquirer.readback import MARGIN_S, confirmed, readback_due
from fep_acquirer.tasks import cancel_and_wait
from fep_acquirer.writer import Writer, WriteResult
from fepha import keyspace as ks
from fepha import points as pt
from fepha import redisfns
from fepha.config import NodeConfig
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Point, Rtu

log = logging.getLogger("acquirer")
IV = int(pt.Quality.IV)
_KEEP = b"keep"
"""A busy block's place in a poll's answers: its points keep their samples (RtuRunner.poll)."""
PENDING_MAX = 8
"""Polls' writes waiting behind the one in flight (RtuRunner._submit): a point may change this many times
within a write's time (a slow link to the master) without losing a value; past it the newest poll is
merged into the last waiting write (only the point's latest value then, as while Redis is unreachable)."""
READBACK_RETRY_S = 0.05
"""A control's read-back with no connection to read on (lost, the runner reconnecting or switching
channel) tries again this often, until its deadline."""


class _Batch:
    """One waiting write: the samples due, their poll time (ms; per point in `ts_of` once a merge mixes
    polls), and `before`, the monotonic time of the poll before its first one: while it is being written,
    the newest poll whose values are all in Redis (the holder's `polled_age_ms`)."""

    __slots__ = ("before", "samples", "ts_ms", "ts_of")

    def __init__(self, samples: dict[int, Sample], ts_ms: int, before: float | None) -> None:
        self.samples, self.ts_ms, self.before = samples, ts_ms, before
        self.ts_of: dict[int, int] | None = None

    def takes(self, samples: dict[int, Sample]) -> bool:
        """Whether merging `samples` in replaces no waiting sample with another (no change lost)."""
        mine = self.samples
        return all(mine.get(pid, s) == s for pid, s in samples.items())

    def merge(self, samples: dict[int, Sample], ts_ms: int) -> None:
        """A later poll's samples: a point already waiting with the same sample keeps its first poll time."""
        mine = self.samples
        ts_of = self.ts_of
        if ts_of is None:
            ts_of = self.ts_of = dict.fromkeys(mine, self.ts_ms)
        for pid, s in samples.items():
            if mine.get(pid) != s:
                mine[pid], ts_of[pid] = s, ts_ms

    def pairs(self, changes: dict[int, Sample]) -> list[str]:
        """The write_values arguments of these of its samples, each with its poll's time."""
        ts_of = self.ts_of
        if ts_of is None:
            return pt.encode_pairs(changes, self.ts_ms)
        by_ts: dict[int, dict[int, Sample]] = {}
        for pid, s in changes.items():
            by_ts.setdefault(ts_of[pid], {})[pid] = s
        return [x for t in sorted(by_ts) for x in pt.encode_pairs(by_ts[t], t)]


class RunnerBase:
    """What every acquisition runner shares (Modbus here, IEC 104 in iec104rtu.py): its RTU, lease view,
    channel switcher, change tracker and task. Housekeeping and the executor use only this contract plus
    `reaches`, `invalidate`, `full_image`, `lease_gained` and `write_point`."""

    TASK = "acquirer-rtu"

    def __init__(self, rtu: Rtu, cfg: NodeConfig, writer: Writer, metrics: Metrics, once: OnceLogger) -> None:
        self.rtu, self.cfg, self.writer, self.metrics, self.once = rtu, cfg, writer, metrics, once
        self.node = cfg.node_id
        self.deadband = {p.id: p.deadband for p in rtu.points if p.deadband > 0}
        self.tracker = ChangeTracker(deadband=self.deadband)
        self.samples: dict[int, Sample] = {}
        self.switcher = ChannelSwitcher(tuple(c.no for c in rtu.channels) or (1,), cfg.channel_switch_s,
                                        cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.lease = LeaseView(self.node)
        self._write_lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self._stopping = False
        self.switched: list[dict[str, str | int]] = []
        """Channel switches not yet in the timeline; housekeeping writes them with the channel state."""
        self.closed_channel: int | None = None
        """The channel whose connection `stop` closed (None: none was open); see `carry_over`."""
        self._resync: asyncio.Task[None] | None = None  # the rewrite of a rolled-back data set (`resync`)

    async def next_channel(self) -> int:
        """Wait for the next connection attempt (backoff, channel_switch_s) and return its channel; the same
        for every acquisition protocol. A switch is counted, logged and queued for the timeline."""
        before = self.switcher.active
        ch, delay = self.switcher.next_attempt(time.monotonic())
        if ch != before:
            self.metrics.inc("channel_switches")
            self.switched.append({"from_ch": before, "to_ch": ch, "ts_ms": int(time.time() * 1000),
                                  "error": self.switcher.info[before].last_error})
            log.info("%s: switching to channel %d", self.key, ch)
        if delay:
            await asyncio.sleep(delay)
        return ch

    @property
    def key(self) -> str:
        return f"rtu {self.rtu.id}"

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"{self.TASK}-{self.rtu.id}")

    async def stop(self) -> None:
        """Stop the task (see tasks.py: the loops also check `_stopping`, a cancel may be swallowed)."""
        self.closed_channel = self.open_channel()
        self._stopping = True
        task, self.task = self.task, None
        await cancel_and_wait(task)
        await cancel_and_wait(self._resync)

    def resync(self) -> None:
        """The lease tick says the master's values of this RTU are older than a write of this holder (the data
        set was rolled back: `lease_tick`'s `rolled_back_ms`, which makes them NT for every reader): write again,
        now, every value that differs from the master's (`rewrite`), then clear the mark (`lease_synced`). One
        at a time; the ticks ask again while the mark lasts (a rewrite that failed is tried again)."""
        if self._stopping or (self._resync is not None and not self._resync.done()):
            return
        self._resync = asyncio.create_task(self._resync_now(), name=f"acquirer-resync-{self.rtu.id}")

    async def _resync_now(self) -> None:
        epoch = self.lease.epoch
        try:
            if not await self.rewrite() or not self.lease.held or self.lease.epoch != epoch:
                return
            await self.writer.master.fcall(*redisfns.lease_synced(self.rtu.id, self.node, epoch).argv)
        except Exception as exc:  # noqa: BLE001 - the next tick asks again while the mark lasts
            self.once.problem(f"{self.key} resync", f"{type(exc).__name__}: {exc}")
            return
        self.once.clear(f"{self.key} resync")
        log.warning("%s: the master's values were older than this holder's writes (data set rolled back): "
                    "written again where they differed, current again", self.key)

    async def rewrite(self) -> bool:
        """Write now every value of the last poll (or event) that differs from the master's; True when done,
        False when it could not be (nothing acquired yet, a write failed or was fenced)."""
        raise NotImplementedError

    async def held_by_master(self) -> dict[int, tuple[Sample, int]] | None:
        """The RTU's values as the master Redis holds them (one HGETALL; a full image compares with it);
        None when unreadable (logged once: the full image then writes every point)."""
        try:
            raw = await self.writer.master.hgetall(ks.values(self.rtu.id))
        except Exception as exc:  # noqa: BLE001 - the full image still follows, whole
            self.once.problem(f"{self.key} full image", f"{type(exc).__name__}: {exc}")
            return None
        self.once.clear(f"{self.key} full image")
        return held_in_redis(raw)

    def reaches(self) -> bool:
        raise NotImplementedError

    def open_channel(self) -> int | None:
        """The channel of the connection open now (None: none is)."""
        return None

    def carry_over(self, old: RunnerBase) -> None:
        """Take what `old` (this RTU's runner before a reload restarted it, stopped) knew of the device and
        still holds true after the restart: its reach (RtuRunner, Iec104Runner) and, here, the channel. With
        the same channels, the first connection is made on the one that was open: the other may be dead,
        and a fresh runner tried channel 1 first, leaving a device reached on channel 2 not reached (and,
        Modbus, reached only in part) until channel_switch_s had passed."""
        if type(old) is type(self) and old.rtu.channels == self.rtu.channels and old.closed_channel is not None:
            self.switcher.active = old.closed_channel

    def reaches_fully(self, clean_s: float | None = None) -> bool:
        """Reached with nothing missing (the lease's reach 1, else 2), for `clean_s` (default: the reach
        window; lease.reaches_fully): as `reaches` unless a runner can tell a partial answer."""
        return self.reaches()

    async def run(self) -> None:
        raise NotImplementedError


class RtuRunner(RunnerBase):
    def __init__(self, rtu: Rtu, cfg: NodeConfig, writer: Writer, metrics: Metrics, once: OnceLogger) -> None:
        super().__init__(rtu, cfg, writer, metrics, once)
        self.poll_s = (rtu.poll_ms or cfg.poll_ms) / 1000
        self.timeout_s = rtu.timeout_ms / 1000
        self.blocks = plan_reads(rtu.points)
        self.points = {p.id: p for p in rtu.points}
        # what this node sees while standby, replayed when it takes over: covers the longest gap without
        # a writer (takeover time or lease TTL) plus a few ticks and polls
        gap_s = max(cfg.takeover_s, cfg.lease_ttl_s) + 3 * cfg.lease_tick_s + 2 * self.poll_s
        self.standby = StandbyLog(window_ms=int(gap_s * 1000), deadband=self.deadband)
        self._replay_pending = False
        self._sync_pending = False  # full image asked: compare with the master's values once, then write
        self._image_pending = False  # replayed at a lease gain, the image owed with the next poll
        self.window_s = reach_window_s(self.poll_s, self.timeout_s, cfg.lease_tick_s)
        self.last_ok: float | None = None  # monotonic time of the last poll that reached the device
        self.last_bad: float | None = None  # monotonic time of the last poll with a block unanswered, or failed
        self.polled_ts_ms = 0  # wall time of that poll: the time of its samples
        self.stale_ms = int(cfg.quality_stale_polls * self.poll_s * 1000)
        self._gain: asyncio.Task[None] | None = None  # the writes at a lease gain (`lease_gained`)
        self.link: DeviceLink | None = None
        self._answers: list[bytes | None] = [None] * len(self.blocks)
        """Per block, its last answer's data bytes on the current connection (poll: decode what changed)."""
        self._busy: dict[int, float] = {}
        """Blocks the device answers BUSY (0x06): block index -> monotonic time of the first busy answer."""
        self._pending: list[_Batch] = []  # writes waiting behind the one in flight (`_submit`)
        self._drain: asyncio.Task[None] | None = None  # writes them, one after the other
        self._drain_name = f"acquirer-write-{rtu.id}"
        self._behind: float | None = None  # while writing: the newest poll whose values are all in Redis
        self.resend = ResendQueue(max_changes=cfg.resend_max_changes)  # failed writes, re-sent as they were
        self.token = secrets.token_hex(4)  # this runner's write sequences (a restart starts another)

    def reaches(self) -> bool:
        return reaches(time.monotonic(), self.last_ok, self.window_s)

    def carry_over(self, old: RunnerBase) -> None:
        """A reload that changed this RTU but not its channels (a poll period, a point) restarts its runner:
        the device was reached when the old one last polled it, and says so until the reach window (of the
        new period) from then has passed, as it would have without the restart. Without this, the housekeeping
        tick between the restart and the new runner's first poll wrote "not reached", and the link virtual
        point fell to 0 at SCADA for a moment, a false link alarm at every such reload. A device that no longer
        answers is still not reached one window after its last answer."""
        super().carry_over(old)
        if isinstance(old, RtuRunner) and old.rtu.channels == self.rtu.channels:
            self.last_ok, self.last_bad = old.last_ok, old.last_bad

    def reaches_fully(self, clean_s: float | None = None) -> bool:
        return reaches_fully(time.monotonic(), self.last_ok, self.last_bad, self.window_s, clean_s)

    def open_channel(self) -> int | None:
        return self.switcher.active if self.link is not None else None

    def polled_age_ms(self) -> int:
        """ms since the last poll that reached the device (-1: none yet); the holder's becomes the lease's
        polled_ms. While the holder's writes lag behind its polls (a slow link to the master), the age of
        the newest poll whose values are all written: the values in Redis are no newer than that."""
        last = self.last_ok
        if last is None:
            return -1
        behind = self._behind
        if behind is not None and self._drain is not None and not self._drain.done():
            last = min(last, behind)
        return int((time.monotonic() - last) * 1000)

    async def run(self) -> None:
        chans = {c.no: c for c in self.rtu.channels}
        if not chans:
            self.once.problem(self.key, "no channel configured")
            return
        while not self._stopping:
            ch = await self.next_channel()
            link = DeviceLink(chans[ch], self.timeout_s, self.rtu.inflight)
            try:
                await link.connect()
                self.switcher.connected(time.monotonic(), wall=time.time())
                self.link = link
                self._answers = [None] * len(self.blocks)  # a new connection: decode everything again
                self.once.clear(f"{self.key} channel {ch}")
                await self._poll_loop(link)
            except LinkError as exc:
                self.last_bad = time.monotonic()
                self.switcher.failed(self.last_bad, str(exc), wall=time.time())
                self.once.problem(f"{self.key} channel {ch}", str(exc))
            finally:
                self.link = None
                link.close()

    async def _poll_loop(self, link: DeviceLink) -> None:
        """Poll at once, then on a fixed schedule at this RTU's own phase of the period: RTUs connected at
        the same moment would otherwise poll in one burst each period (bench/acquire.py, 100 RTUs: the
        burst queues in the acquirer and the devices). A poll that overruns is followed at once."""
        period = self.poll_s
        phase = (self.rtu.id * 0.6180339887) % 1.0 * period  # golden-ratio spread over the period
        slot: float | None = None
        while not self._stopping:
            await self.poll(link, wait=False)
            now = time.monotonic()
            slot = now + (phase - now) % period if slot is None else slot + period
            if slot < now:
                slot = now
            await asyncio.sleep(slot - now)

    async def poll(self, link: DeviceLink, wait: bool = True) -> None:
        """Read every block; LinkError propagates (channel logic), DeviceError marks that block invalid.
        The holder's write of what changed is queued (`_submit`); with `wait`, the poll returns once it is
        written (the poll loop does not wait: its schedule must not depend on the master's round trip).

        Only what changed is decoded and passed on: per block, the points whose registers differ from that
        block's previous answer on this connection (every point after a connect, a failed read of the block
        or an invalidation: `_answers` is cleared). `self.samples` keeps every point's current sample; the
        change tracker gets the changed ones, plus all of them while it has not written every point (first
        poll, full image, fenced or failed writes) and its dirty points, so its rule stays exact: a point
        left out has the same sample as at the previous poll, which the tracker (or, while standby, the
        standby log) has already judged against the same reference."""
        raws: list[bytes | None] = []
        self.metrics.inc("polls")
        bad = unanswered = ""  # the last block refused / the first block not answered (a channel failure)
        try:
            got = await link.read_all(self.blocks)
        except LinkError:
            self.metrics.inc("poll_errors")
            raise
        now = time.monotonic()
        busy = self._busy
        for i, (block, a) in enumerate(zip(self.blocks, got, strict=True)):
            if isinstance(a, DeviceError):
                bad = f"{block.area}{block.start}+{block.count}: {a}"
                if isinstance(a, NoAnswer) and not unanswered:
                    unanswered = bad
                if isinstance(a, Busy):
                    since = busy.setdefault(i, now)
                    # busy: the block keeps its samples (nothing new was learned) while it has an answer on
                    # this connection and has been busy no longer than the reach window; else invalid
                    raws.append(_KEEP if self._answers[i] is not None and now - since <= self.window_s else None)
                    continue
                raws.append(None)
            else:
                raws.append(a)
        if busy:  # blocks answered again are no longer busy (checked only while one is)
            for i in [i for i in busy if not isinstance(got[i], Busy)]:
                del busy[i]
        # taken after the reads: an invalidation or a reconnect meanwhile has reset it (decode everything)
        samples, answers = self.samples, self._answers
        delta: dict[int, Sample] = {}
        for i, (block, raw) in enumerate(zip(self.blocks, raws, strict=True)):
            if raw is _KEEP:
                continue
            prev, answers[i] = answers[i], raw
            if raw is None:
                for p in block.points:
                    s = (samples.get(p.id, (0, 0))[0], IV)
                    if samples.get(p.id) != s:
                        delta[p.id] = s
                continue
            for pid, v in decode_block(block, raw, prev).items():
                # v - v is 0 for every number; NaN for a float32 NaN or infinity: no value, so invalid
                # with its last one (as IEC 104 takes a short float that is no number), never a good NaN
                delta[pid] = (v, 0) if v - v == 0 else (samples.get(pid, (0, 0))[0], IV)
        if bad:
            self.metrics.inc("poll_errors")
            self.once.problem(f"{self.key} read", bad)
        else:
            self.once.clear(f"{self.key} read")
        before, self.last_ok = self.last_ok, time.monotonic()
        if unanswered:
            self.last_bad = self.last_ok
        give_up = self.switcher.polled(self.last_ok, not unanswered, unanswered)
        samples.update(delta)
        ts_ms = self.polled_ts_ms = int(time.time() * 1000)
        self._polled(delta, ts_ms, before)
        if wait and self.lease.held:
            await self.flush()
        if give_up:  # the connection is open but the channel has not worked for switch_s: switch
            raise LinkError(f"no complete poll for {self.switcher.switch_s:g} s ({unanswered})")

    def _polled(self, delta: dict[int, Sample], ts_ms: int, before: float | None) -> None:
        """A poll's changes (`delta`, polled at `ts_ms`) passed on: the holder queues their write, which
        replays the standby log first if the lease is new (`_sync`; the log is kept until it has been read);
        the standby logs them."""
        if self.lease.held:
            self._submit(self._due(delta), ts_ms, before)
            self.standby.holding(delta, self._replay_pending)
        else:
            self.standby.observe(delta, ts_ms)

    def _due(self, delta: dict[int, Sample]) -> dict[int, Sample]:
        """What the tracker must judge this poll: see `poll`."""
        tracker, samples = self.tracker, self.samples
        if len(tracker.written) < len(samples) or self._replay_pending or self._image_pending:
            self._image_pending = False
            return dict(samples)  # a copy: the write may wait behind another while polls go on
        if tracker.dirty:
            return {**{pid: samples[pid] for pid in tracker.dirty if pid in samples}, **delta}
        return delta

    def _submit(self, samples: dict[int, Sample], ts_ms: int, before: float | None) -> None:
        """Queue a write of `samples` (judged by the tracker when it goes out, as the writes before it
        have then been answered: compensation, fencing and the tracker stay exact) and return at once.
        Written in order: one round trip at a time, which carries every write waiting when it starts
        (`_publish`); a poll's samples are merged into the last waiting write unless that would replace a
        waiting sample (a change not yet written), up to PENDING_MAX waiting.

        Why: the poll awaited its own write, so on a slow link to the master (0.8 s round trips, HA lab)
        the next poll waited too; polls were missed and a change shorter than a few round trips, right
        after a lease gain (whose writes take three), never read (docs/ha.md "Degraded links").
        A poll with nothing to write still queues one while failed writes are kept: they are re-sent then."""
        if not samples and not self.resend.kept:
            return
        pending = self._pending
        last = pending[-1] if pending else None
        if last is not None and (len(pending) >= PENDING_MAX or last.takes(samples)):
            last.merge(samples, ts_ms)
        else:
            pending.append(_Batch(samples, ts_ms, before))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._write_pending(), name=self._drain_name)

    async def _write_pending(self) -> None:
        pending = self._pending
        while pending:
            batches = pending[:]
            pending.clear()
            self._behind = batches[0].before
            try:
                await self._publish(batches)
            except Exception as exc:  # noqa: BLE001 - not judged: re-sent with the next poll
                for batch in batches:
                    self.tracker.failed(batch.samples)
                self.once.problem(f"{self.key} write", f"{type(exc).__name__}: {exc}")
        self._behind = None

    async def flush(self) -> None:
        """Wait until every queued write is done (not cancelled with the caller)."""
        task = self._drain
        if task is not None and not task.done():
            await asyncio.shield(task)

    async def publish(self, samples: dict[int, Sample], ts_ms: int) -> None:
        """One fenced write of what changed (plus compensations) since the last successful write."""
        await self._publish([_Batch(samples, ts_ms, None)])

    async def _publish(self, batches: list[_Batch]) -> None:
        """The fenced writes in one round trip and in order: first the kept ones (failed or timed out
        before, re-sent as they were: `changes.ResendQueue`), then what changed in each batch (each judged
        as if the ones before it were written: `ChangeTracker.changes(ahead=...)`), then each outcome in
        that order (a failed one kept, re-sent first by the next round trip)."""
        async with self._write_lock:
            resend = self.resend
            if not self.lease.held:
                for batch in batches:  # not judged: they must be judged (re-sent) when held again
                    self.tracker.failed(batch.samples)
                self._unkeep(resend.drop(), "the lease is lost")
                return
            if self._sync_pending:
                self._sync_pending = False
                await self._sync()
            epoch = self.lease.epoch
            writes, dropped = resend.due(epoch)
            self._unkeep(dropped, "made under an earlier lease")
            ahead: dict[int, Sample] = {}
            for w in writes:
                ahead.update(w.changes)
            for batch in batches:
                changes = self.tracker.changes(batch.samples, ahead)
                if changes:
                    writes.append(Kept(resend.next_seq(), epoch, changes, batch.pairs(changes)))
                    if len(batches) > 1:
                        ahead.update(changes)
            if not writes:
                return
            results = await self.writer.write_many(self.rtu.id, epoch, [w.pairs for w in writes],
                                                   [(self.token, w.seq) for w in writes])
            for w, res in zip(writes, results, strict=True):
                self._outcome(w, res)

    def _outcome(self, w: Kept, res: WriteResult) -> None:
        changes = w.changes
        unkept = self.resend.settle(w, OK if res.ok else FENCED if res.fenced else FAILED)
        if res.ok:
            if not self.resend.kept:
                self.once.clear(f"{self.key} write not kept")
            if res.duplicate:  # a write that timed out had been applied: not written twice
                self.metrics.inc("writes_duplicate")
            else:
                self.metrics.inc("changes_written", len(changes))
            resent = self.tracker.committed(changes)
            if resent:
                self.metrics.inc("compensations", resent)
            self.once.clear(f"{self.key} write")
        elif res.fenced:
            self.once.problem(f"{self.key} write", f"fenced out: lease is {res.holder}@{res.epoch}")
            self.lease.fenced_out(res.holder, res.epoch)
            self._unkeep(unkept, "the lease is lost")  # not written: re-sent if this node writes again
        else:
            self.metrics.inc("write_errors")
            self._unkeep(unkept, f"past [writer] resend_max_changes ({self.resend.max_changes})")
            self.once.problem(f"{self.key} write", res.error)

    def _unkeep(self, writes: list[Kept], why: str) -> None:
        """Failed writes not re-sent as they were: their points are re-sent with the next poll, whatever
        their value (the seed's rule; their values between are lost), counted and logged once."""
        n = 0
        for w in writes:
            self.tracker.failed(w.changes)
            n += len(w.changes)
        if n:
            self.metrics.inc("changes_not_kept", n)
            self.once.problem(f"{self.key} write not kept",
                              f"{why}: the points' current values are re-sent (changes_not_kept)")

    async def invalidate(self) -> None:
        """The holder lost its device: its points become invalid (written once, thanks to the tracker)."""
        samples = {pid: (self.samples.get(pid, (0, 0))[0], IV) for pid in self.points}
        self.samples.update(samples)
        self._answers = [None] * len(self.blocks)  # the next poll decodes everything (quality changes back)
        self._submit(samples, int(time.time() * 1000), None)  # after the polls' writes still waiting
        await self.flush()

    def full_image(self) -> None:
        """With the next poll, write every point whose value or quality differs from the master's (new
        lease, Redis role change or restart): the master's value hash is read once then (`_sync`)."""
        self.tracker.forget()
        self._sync_pending = True
        self.metrics.inc("full_images")

    def lease_gained(self) -> None:
        """Replay what was seen as standby, then the full image: at once when the last poll allows it
        (`changes.at_lease_gain`), with the next poll otherwise (and for what was not written at once).
        Nothing once the runner is stopping: a gain reported then (a tick that read the runners before a
        reload stopped this one) would start writes that nobody awaits or cancels, left pending after the
        acquirer stopped (`stop` cancels only the one started before it)."""
        if self._stopping:
            return
        self._replay_pending = True
        self.full_image()
        gain = at_lease_gain(self.polled_age_ms(), int(self.poll_s * 1000), self.stale_ms, self.reaches())
        if gain.replay and (self._gain is None or self._gain.done()):
            self._gain = asyncio.create_task(self._write_at_gain(gain.image), name=f"acquirer-gain-{self.rtu.id}")

    async def _write_at_gain(self, image: bool) -> None:
        """The replay and, with `image`, the full image from the last poll's samples (with that poll's time),
        written now, in that order, fenced by the new epoch (the write lock keeps a poll's write after them)."""
        try:
            if image:
                await self.publish(dict(self.samples), self.polled_ts_ms)
                return
            async with self._write_lock:
                if self.lease.held and self._sync_pending:
                    self._sync_pending = False
                    self._image_pending = True  # the next poll judges every point against what Redis holds
                    await self._sync()
        except Exception as exc:  # noqa: BLE001 - the next poll writes what this could not
            self.once.problem(f"{self.key} lease gain", f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        await super().stop()  # `_stopping` set before its first await: no gain starts writes from then on
        await cancel_and_wait(self._gain)
        await cancel_and_wait(self._drain)

    async def rewrite(self) -> bool:
        if not self.samples or not self.reaches():
            return False
        self.full_image()
        await self.publish(dict(self.samples), self.polled_ts_ms)
        return not self._sync_pending and not self.resend.kept and not self.tracker.dirty

    async def _sync(self) -> None:
        """Read the master's value hash once: replay the standby log's changes newer than its values (see
        changes.StandbyLog), then let the tracker take what Redis holds as written, so the full image
        writes only what differs. Unreadable: no replay, and every point is written (tracker forgotten)."""
        current = await self.held_by_master()
        # due until the log is read (below): a poll meanwhile keeps it (StandbyLog.holding)
        replay, self._replay_pending = self._replay_pending, False
        if current is None:
            return
        if replay and self.standby.entries:
            batches = self.standby.replay(current)
            replayed = 0
            for batch in batches:
                pairs: list[str] = []
                for pid, ((v, q), ts) in batch.items():
                    pairs += (str(pid), pt.encode(v, q, ts))
                res = await self.writer.write(self.rtu.id, self.lease.epoch, pairs)
                if not res.ok:
                    self.once.problem(f"{self.key} replay", res.error or f"fenced out: lease is {res.holder}")
                    return
                replayed += len(batch)
            if replayed:
                self.metrics.inc("changes_replayed", replayed)
                log.info("%s: replayed %d changes seen while standby", self.key, replayed)
            current = after_replay(current, batches)
        self.tracker.seed({pid: s for pid, (s, _) in current.items()})

    async def write_point(self, point_id: int, value: float, deadline: float | None = None) -> str | None:
        """Control output: write one point to the device over the connected channel (the executor's
        wait_for enforces `deadline`; a Modbus write has no later phase to bound). A set-point whose write
        went out unanswered is read back before `deadline` (readback.py): returns how it was confirmed,
        or raises the write's error with what the read-back found. None: the write was answered."""
        p = self.points.get(point_id)
        if p is None:
            raise ValueError(f"point {point_id} is not a point of RTU {self.rtu.id}")
        link = self.link
        if link is None:
            raise LinkError("device not connected")
        try:
            await link.write(p, value)
        except (LinkError, DeviceError) as exc:
            if deadline is None or not readback_due(p.kind, p.area, isinstance(exc, Unanswered),
                                                    deadline - time.monotonic()):
                raise
            return await self._read_back(p, value, exc, deadline - MARGIN_S)
        return None

    async def _read_back(self, p: Point, value: float, lost: Exception, until: float) -> str:
        """Read a set-point's registers back, never writing them again, on the connection the runner has
        now (the same channel, or the other one if it switched), until `until`: the commanded raw values
        there -> how it was confirmed; else LinkError (the control fails as it did before the read-back)."""
        want = register_words(p, value)
        found = "no connection to the device"
        while (left := until - time.monotonic()) > 0:
            link = self.link
            if link is None or link.closed:
                await asyncio.sleep(min(READBACK_RETRY_S, left))
                continue
            try:
                got = await asyncio.wait_for(link.read_registers(p.address, len(want)), left)
            except (LinkError, TimeoutError) as exc:  # read again, on the connection there is then
                found = f"unreadable: {exc or type(exc).__name__}"
                await asyncio.sleep(min(READBACK_RETRY_S, max(0.0, until - time.monotonic())))
                continue
            except DeviceError as exc:
                found = f"unreadable: {exc}"
                break
            if confirmed(want, got):
                self.metrics.inc("controls_read_back")
                log.warning("%s: control write to point %d unanswered (%s), confirmed by read-back on channel "
                            "%d", self.key, p.id, lost, link.channel.no)
                return f"written: its answer was lost ({lost}), confirmed by read-back on channel {link.channel.no}"
            held = [int.from_bytes(got[i:i + 2], "big") for i in range(0, len(got), 2)]
            found = f"the device holds {held}, not the commanded {want}"
            break
        raise LinkError(f"{lost}; read back: {found}") from lost
