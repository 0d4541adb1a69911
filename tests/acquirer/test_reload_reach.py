"""A reload that restarts an RTU's runner (its poll period or a point changed) keeps what the old runner knew
of the device: reached, until the reach window from its last answer has passed. It used to start from
"never reached", so the housekeeping tick before the new runner's first poll wrote the link down, and the
link virtual point fell to 0 at SCADA at every such reload (seen in CI: tests/faults/test_audit.py
`test_sysload_init_of_a_changed_configuration_sends_no_unchanged_value_again`). An IEC 104 runner's restart
closes its connection: the new runner is reached as that connection was until its first connection attempt
ends, not reached at once when that attempt fails. Either connects first on the channel that was open."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis

from fep_acquirer.app import Acquirer
from fep_acquirer.iec104rtu import Iec104Runner
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner, RunnerBase
from fep_tools.plcsim import PlcSim
from fep_tools.rtu104sim import Rtu104Sim, device
from fepha.config import NodeConfig
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Model, Rtu
from tests.acquirer.helpers import free_port, merge, rtu_rows, until
from tests.acquirer.test_mbtcp import RecordingWriter

PORT = free_port()  # nothing listens there: the runners only try to connect
FAST_SWITCH = dict(channel_switch_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.1)


def runner(poll_ms: int = 100, port: int = PORT) -> RtuRunner:
    rtu = Model.from_rows(merge(rtu_rows(1, port, poll_ms=poll_ms))).acquisition_rtus()[0]
    return RtuRunner(rtu, NodeConfig(), RecordingWriter(), Metrics("A"), OnceLogger(logging.getLogger("t.reload")))  # type: ignore[arg-type]


# old runner's last answer (s ago, None: never), new runner's poll period and port -> reaches right after
CASES = {
    "poll period changed, device answered just now": (0.05, 150, PORT, True),
    "never answered: nothing to carry": (None, 150, PORT, False),
    "last answer older than the new reach window": (5.0, 150, PORT, False),
    "another device address: its reach is not known": (0.05, 150, PORT + 1, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_reach_carried_over_a_restart(case: str) -> None:
    ago, poll_ms, port, want = CASES[case]
    old = runner()
    old.last_ok = None if ago is None else time.monotonic() - ago
    new = runner(poll_ms, port)
    new.carry_over(old)
    assert new.reaches() is want
    assert new.reaches_fully() is want
    assert (new.polled_age_ms() >= 0) is (ago is not None and port == PORT)


async def test_a_reload_hands_the_old_runners_reach_to_the_new_one() -> None:
    """Acquirer.apply: the RTU whose poll period changed gets a new runner, which reaches the device as the
    old one did; an unchanged RTU keeps its runner."""
    nobody = aredis.Redis(host="127.0.0.1", port=free_port())  # never asked: apply alone touches no Redis
    acq = Acquirer(NodeConfig(), nobody, nobody)
    rows = merge(rtu_rows(1, PORT), rtu_rows(2, PORT))
    await acq.apply(Model.from_rows(rows, gen=1))
    try:
        first, second = acq.runners[1], acq.runners[2]
        for r in (first, second):
            r.last_ok = time.monotonic()
        rows["T004_RTU"] = [{**r, "POLLMS": 150} if r["RTUID"] == 1 else r for r in rows["T004_RTU"]]
        await acq.apply(Model.from_rows(rows, gen=2))
        assert acq.runners[1] is not first and acq.runners[2] is second
        assert acq.runners[1].reaches() and acq.runners[1].poll_s == 0.15
    finally:
        for r in acq.runners.values():
            await r.stop()


async def test_a_reload_reconnects_on_the_channel_that_was_open() -> None:
    """Channel 1 is dead and the runner went over to channel 2: the restarted runner polls there at once. It
    tried channel 1 first, so the device was reached only in part (a failed attempt), then not at all once
    the reach window had passed, until channel_switch_s after that attempt."""
    rows = merge(rtu_rows(1, free_port()))
    model = Model.from_rows(rows, gen=1)
    sim = PlcSim(model)
    await sim.start()
    nobody = aredis.Redis(host="127.0.0.1", port=free_port())
    acq = Acquirer(NodeConfig(**FAST_SWITCH), nobody, nobody)
    try:
        sim.cut(1, 1)
        await acq.apply(model)
        first = acq.runners[1]
        await until(lambda: first.link is not None and first.switcher.active == 2, 5)
        rows["T004_RTU"] = [{**r, "POLLMS": 150} for r in rows["T004_RTU"]]
        await acq.apply(Model.from_rows(rows, gen=2))
        second = acq.runners[1]
        assert isinstance(second, RtuRunner) and second is not first and second.poll_s == 0.15
        await until(lambda: second.link is not None or second.switcher.info[1].last_error, 3)
        assert second.switcher.active == 2 and second.link is not None and not second.switcher.info[1].last_error
        assert second.reaches()
    finally:
        for r in acq.runners.values():
            await r.stop()
        await sim.stop()


# --- IEC 104: the restart closes the connection; the new runner is reached as the closed one was until its first
# connection attempt ends (iec104rules.reaches; Iec104Runner.carry_over) ------------------------------------------

CA = 7
IEC_POINTS = [(100, "M_SP_NA_1"), (200, "M_ME_NC_1"), (300, "M_IT_NA_1")]


def iec_model(dev: Rtu, gen: int, points: int = 3) -> Model:
    """`dev` with its first `points` points: a reload that changes only points restarts the RTU's runner."""
    return Model({dev.id: dataclasses.replace(dev, points=dev.points[:points])}, "", "", gen=gen)


async def connected(r: RunnerBase, channel: int = 1) -> Iec104Runner:
    assert isinstance(r, Iec104Runner)
    await until(lambda: r.link is not None and r.channel is not None and r.channel.no == channel, 5)
    return r


async def reached_until_connected(r: RunnerBase, timeout: float = 3.0) -> None:
    """The new runner reaches the device at every moment (a lease tick may fall on any) until its connection is
    open."""
    assert isinstance(r, Iec104Runner)
    end = time.monotonic() + timeout
    while r.link is None:
        assert r.reaches() and r.polled_age_ms() == 0, "not reached while the new connection is being made"
        assert time.monotonic() < end, "no connection"
        await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def iec104_acquirer(channels: int = 1, **cfg: float) -> AsyncIterator[tuple[Acquirer, Rtu104Sim, Rtu]]:
    """A simulated IEC 104 RTU and an acquirer (no Redis: no lease, so the runners stay standby connections)."""
    dev = device(1, CA, [("127.0.0.1", free_port()) for _ in range(channels)], IEC_POINTS)
    sim = Rtu104Sim([dev])
    await sim.start()
    nobody = aredis.Redis(host="127.0.0.1", port=free_port())
    acq = Acquirer(NodeConfig(**cfg), nobody, nobody)
    try:
        yield acq, sim, dev
    finally:
        for r in acq.runners.values():
            await r.stop()
        await sim.stop()


async def test_an_iec104_reload_keeps_the_link_up_while_reconnecting_and_drops_it_when_refused() -> None:
    async with iec104_acquirer() as (acq, sim, dev):
        await acq.apply(iec_model(dev, 1))
        first = await connected(acq.runners[1])
        # a point removed: the runner restarts, closing its connection; the new one reached at once
        await acq.apply(iec_model(dev, 2, points=2))
        second = acq.runners[1]
        assert second is not first and isinstance(second, Iec104Runner) and second.link is None
        await reached_until_connected(second)
        assert second.reaches()
        # the new connection goes on from the closed one's last frame: tested and given up when it would have been
        assert first.closed_rx is not None and second.link is not None and second.link.last_rx == first.closed_rx
        # the device now refuses connections (its open one kept): the next restart's first attempt fails
        sim.refuse_connections(1, 1)
        await acq.apply(iec_model(dev, 3))
        third = acq.runners[1]
        assert isinstance(third, Iec104Runner) and third.reaches()  # until the attempt ends
        await until(lambda: third.switcher.info[1].last_error, 3)
        # refused: not reached at once, though the closed connection's frame is well inside the reach window
        assert second.closed_rx is not None and time.monotonic() - second.closed_rx < third.window_s / 2
        assert not third.reaches() and third.polled_age_ms() == -1
        # a reload now: the device was not reached (no connection open), the new runner does not claim it
        await acq.apply(iec_model(dev, 4, points=2))
        assert acq.runners[1] is not third and not acq.runners[1].reaches()


async def test_an_iec104_reload_reconnects_on_the_channel_that_was_open() -> None:
    """Channel 1 is dead, the runner went over to channel 2: the restarted runner connects there, not on channel 1
    first (refused: its link would have fallen until channel_switch_s had passed)."""
    async with iec104_acquirer(channels=2, **FAST_SWITCH) as (acq, sim, dev):
        await sim.cut(1, 1)
        await acq.apply(iec_model(dev, 1))
        first = await connected(acq.runners[1], channel=2)
        await acq.apply(iec_model(dev, 2, points=2))
        second = acq.runners[1]
        assert second is not first
        await reached_until_connected(second)
        assert (await connected(second, channel=2)).reaches()

