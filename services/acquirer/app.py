"""The acquirer service: one runner per acquisition RTU, reloaded on a new configuration generation.

`run(cfg, stop)` is what fep-acquirer and em_daq run. Only RTUs whose `Rtu.signature()` changed are
restarted on reload; the others keep their connections, leases and change state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from fep_acquirer import handover
from fep_acquirer.executor import execute_loop
from fep_acquirer.housekeeping import Housekeeping
from fep_acquirer.iec104rtu import Iec104Runner
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner, RunnerBase
from fep_acquirer.tasks import cancel_all, unless_set
from fep_acquirer.writer import Writer
from fepha import cfgstore, heap, redisconn
from fepha.config import NodeConfig
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Model

log = logging.getLogger("acquirer")
UNREACHABLE = "stopping: master Redis unreachable, leases not handed over (they lapse after lease_ttl_s)"


class Acquirer:
    def __init__(self, cfg: NodeConfig, master: Any, local: Any) -> None:
        self.cfg, self.master, self.local = cfg, master, local
        self.once = OnceLogger(log)
        self.metrics = Metrics(cfg.node_id)
        self.writer = Writer(master, cfg.node_id, cfg.batch_window_ms if cfg.write_mode == "batched" else 0,
                             cfg.batch_size)
        self.runners: dict[int, RunnerBase] = {}
        self.signatures: dict[int, str] = {}
        self.house = Housekeeping(cfg, master, local, self.writer, self.metrics, self.once, self.runners)
        self.tasks: list[asyncio.Task[None]] = []
        self.stamp: cfgstore.Stamp | None = None  # of the configuration applied (cfgstore: not gen alone)
        self.stopping = asyncio.Event()
        self.controls_off = asyncio.Event()  # the executor takes no new control (planned stop, close)
        self.control_grace_s = 2.0  # close(): how long a control being executed may still take

    async def apply(self, model: Model) -> None:
        """Start, stop or restart runners so they match `model`."""
        wanted = {r.id: r for r in model.acquisition_rtus()}
        stopped: dict[int, RunnerBase] = {}
        for rid in list(self.runners):
            if rid not in wanted or wanted[rid].signature() != self.signatures[rid]:
                stopped[rid] = self.runners.pop(rid)
                await stopped[rid].stop()
                self.signatures.pop(rid)
                self.house.sent_state.pop(rid, None)
        for rid, rtu in wanted.items():
            if rid not in self.runners:
                cls = Iec104Runner if rtu.iec104 else RtuRunner
                runner = cls(rtu, self.cfg, self.writer, self.metrics, self.once)
                if rid in stopped:
                    runner.carry_over(stopped[rid])
                self.runners[rid] = runner
                self.signatures[rid] = rtu.signature()
                runner.start()
        if (why := model.identity_problem(self.cfg.node_id, self.cfg.ip)) is not None:
            self.once.problem("identity", why)
        else:
            self.once.clear("identity")
        self.house.gen = model.gen
        log.info("configuration gen %d: %d acquisition RTUs", model.gen, len(self.runners))

    async def check_config(self, stop: asyncio.Event | None = None) -> None:
        """Apply the configuration of the local Redis when its stamp changed. The read is given up as soon as
        `stop` is set (`unless_set`): the stop does not wait on a local Redis that hangs or was killed, whose
        answer (an error) would come only after redis-py's socket timeouts and retries."""
        try:
            read = await unless_set(stop or asyncio.Event(), self._read_config())
        except Exception as exc:  # noqa: BLE001 - local Redis down or loading: keep running what we have
            self.once.problem("config", f"local Redis {self.cfg.local_host}:{self.cfg.local_port}: configuration "
                              f"not read ({type(exc).__name__}: {exc}): " + (
                                  f"the RTUs of generation {self.house.gen} go on" if self.stamp is not None
                                  else "no RTU is polled until it is"))
            return
        if read is None:  # unchanged, or stopping
            return
        model, stamp = read
        if model is None:  # logged once while it lasts (a clear first logged "recovered" every second)
            self.once.problem("config", "no configuration in Redis (run sysload init)")
            return
        self.once.clear("config")
        await self.apply(model)
        self.stamp = stamp
        heap.settle()  # the configuration and runners live on: out of the collector's full passes

    async def _read_config(self) -> tuple[Model | None, cfgstore.Stamp] | None:
        """The local Redis's configuration and its stamp; None when the stamp is the one applied."""
        if await cfgstore.stamp_async(self.local) == self.stamp:
            return None
        return await cfgstore.read_stamped_async(self.local)

    async def run(self, stop: asyncio.Event, config_check_s: float = 1.0, hurry: asyncio.Event | None = None) -> None:
        """Until `stop` is set; then the planned stop (`planned_stop`), cut short by `hurry` (a second
        signal)."""
        self.writer.start()
        self.tasks = [asyncio.create_task(self.house.loop(), name="acquirer-housekeeping"),
                      asyncio.create_task(execute_loop(self.master, self.cfg.node_id, self.runners,
                                                       self.metrics, self.once, self.controls_off,
                                                       gained=self.house.gained, instance=self.house.instance,
                                                       presence=self.house.presence),
                                          name="acquirer-controls"),
                      asyncio.create_task(self.house.roles.run(self.stopping), name="acquirer-role-watch")]
        try:
            while not stop.is_set():
                await self.check_config(stop)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), config_check_s)
            await self.planned_stop(hurry or asyncio.Event())
        finally:
            await self.close()

    async def planned_stop(self, hurry: asyncio.Event) -> None:
        """Before exiting: no new control (the one in flight is finished), and the leases the other node can
        take handed over to it (handover.py), all within `stop_handover_s` or until `hurry` is set. A master
        Redis that failed the last tick is waited for first while the leases may still be alive on it
        (`handover.master_wait_s`: the VIP moving, as in a rolling upgrade's second step, where the holder
        used to exit without handing over and its RTUs had no writer until the lease lapsed). Unreachable
        for longer, or the timer at 0: nothing is tried, as after a crash the leases lapse."""
        limit = self.cfg.stop_handover_s
        self.controls_off.set()
        # on every path, handing over or not: the ticks until close() bid for no lease, so none is gained
        # (and no gain's writes started) on the way out
        self.house.stopping = True
        if not self.tasks or not limit:
            return
        h = self.house
        wait = handover.master_wait_s(h.tick_ok, None if h.failing_since is None
                                      else time.monotonic() - h.failing_since, self.cfg.lease_ttl_s)
        if wait is None:
            log.warning(UNREACHABLE)
            return
        t0 = time.monotonic()
        work = asyncio.create_task(self._hand_over(wait), name="acquirer-handover")
        rush = asyncio.create_task(hurry.wait(), name="acquirer-stop-again")
        try:
            await asyncio.wait([work, rush], timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this task is cancelled: neither outlives it
            unfinished = not work.done()
            await cancel_all(work, rush)
        if unfinished:  # exit at once: close() gives the executor no further grace
            self.control_grace_s = 0.0
            why = "second signal" if hurry.is_set() else f"stop_handover_s ({limit:g} s) ran out"
            left = sorted(rid for rid, r in self.runners.items() if r.lease.held)
            log.warning("stopping after %.2f s: %s%s%s", time.monotonic() - t0, why,
                        f"; leases of RTU {', '.join(map(str, left))} not taken, they lapse" if left else "",
                        "" if self.tasks[1].done() else "; the control being executed is left unfinished "
                        "(reported unknown at its deadline)")

    async def _hand_over(self, wait_s: float) -> None:
        """Wait up to `wait_s` for a lease tick to go through, say `stopping` in the heartbeat (the other node
        then hands nothing to this one), hand the leases over, and let the executor finish the control in
        flight."""
        if wait_s and not await self._master_back(wait_s):
            log.warning(UNREACHABLE)
        else:
            try:
                await self.house.beat()
                await handover.hand_over(self.master, self.cfg.node_id, self.cfg.peer,
                                         int(self.cfg.lease_ttl_s * 1000), self.cfg.stop_handover_s, self.runners,
                                         self.house.apply_lease)
            except Exception as exc:  # noqa: BLE001 - master unreachable now: exit as after a crash
                log.warning("stopping: leases not handed over (they lapse after lease_ttl_s): %s: %s",
                            type(exc).__name__, exc)
        await asyncio.wait([self.tasks[1]])

    async def _master_back(self, wait_s: float) -> bool:
        """Whether a lease tick goes through within `wait_s` (the housekeeping ticks every role_watch_s
        meanwhile: `housekeeping.tick_delay`)."""
        log.info("stopping: master Redis unreachable (moving?): waiting up to %.1f s for it", wait_s)
        end = time.monotonic() + wait_s
        while not self.house.tick_ok:
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(handover.WATCH_S)
        log.info("stopping: master Redis reached again")
        return True

    async def close(self) -> None:
        self.controls_off.set()
        self.stopping.set()
        if len(self.tasks) > 1 and self.control_grace_s:
            await asyncio.wait([self.tasks[1]], timeout=self.control_grace_s)
        await cancel_all(*self.tasks)
        self.tasks.clear()
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
        self.runners.clear()
        await self.writer.stop()


def master_client(cfg: NodeConfig) -> Any:
    """The acquirer's client of the master (through the VIP): a command whose connection fails is re-sent
    once, at once, on a new connection. redis-py's default waits a random backoff first (up to 2, 4, 8 s
    over three re-sends): after the role watch drops the connections at a VIP move, the control executor's
    BLPOP (and any command in flight) sat out that backoff before reaching the new master, and a control
    queued there for an RTU this node holds waited with it. Re-sent no more often than before (once instead
    of up to three times); whatever fails then is the caller's to handle (next tick, next BLPOP after
    0.5 s, compensation of a value write: those never go through redis-py's retries)."""
    return redisconn.master_async(cfg, retry=redisconn.resend_once())


def local_client(cfg: NodeConfig) -> Any:
    """The acquirer's client of its local Redis (the role watch's ROLE, the configuration's stamp): a
    command whose connection drops is re-sent at once on a new connection (`redisconn.resend_once`), as the
    master client's. With redis-py's default, a ROLE in flight when a `CLIENT KILL` dropped its connection
    came back after a random backoff (up to 1.9 s measured), longer than the tick waits for it
    (role_watch_s): "its role not read within role_watch_s, hung?" was logged and a VIP move was seen late."""
    return redisconn.local_async(cfg, retry=redisconn.resend_once())


async def run(cfg: NodeConfig, stop: asyncio.Event) -> None:
    """Run this node's acquirer until `stop` is set, hand its leases over (a second signal, `worker.Stop`'s
    `again`, cuts that short); leaves no task behind."""
    master = master_client(cfg)
    local = local_client(cfg)
    try:
        await Acquirer(cfg, master, local).run(stop, hurry=getattr(stop, "again", None))
    finally:
        await master.aclose()
        await local.aclose()
