"""A control is never written to the device after its deadline, however slow the link to the master
(docs/ha.md "Degraded links").

Seen in the HA lab with 400 +- 200 ms added each way between the nodes: a set-point queued on A with a 5 s
timeout, executed by B, was answered `unknown` at its deadline and written to the device 0.19 s after
it. The executor counted the time left from the claim's answer, which came back one trip (and the
replication wait) after the master had computed it. It now counts from when it sent the claim."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest
import redis.asyncio as aredis

from fep_acquirer.executor import DEADLINE, LATE, run_one
from fep_acquirer.metrics import Metrics
from fepha import controls, redisfns
from fepha import keyspace as ks
from tests.vip import Vip

ONE_WAY_S = 0.5
TIMEOUT_MS = 1800  # the claim runs ~1.5 s after the submit (INFO + TIME round trip, then the claim's trip):
# 0.3 s left on the master's clock, the answer back 0.5 s later, 0.2 s past the deadline


class Device:
    def __init__(self) -> None:
        self.writes: list[float] = []

    async def write_point(self, point: int, value: float, deadline: float) -> str:
        self.writes.append(time.monotonic())
        return "written"


async def test_no_device_write_after_the_deadline_through_a_slow_link(redis_master) -> None:
    redisfns.load_sync(redis_master.client())
    direct = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    vip = Vip((redis_master.host, redis_master.port), delay_s=ONE_WAY_S)
    slow = aredis.Redis(host="127.0.0.1", port=await vip.start(), decode_responses=True)
    device = Device()
    runner = SimpleNamespace(rtu=SimpleNamespace(id=7), lease=SimpleNamespace(epoch=1), write_point=device.write_point)
    try:
        await direct.fcall(*redisfns.lease_tick(7, "B", True, 60_000, 90_000).argv)
        await slow.ping()  # the executor's connection exists already, as it does in service
        t_submit = time.monotonic()
        ctl = await controls.submit(direct, 7, 1, 5.0, "test", TIMEOUT_MS)
        assert int(await direct.lpop(ks.control_queue(7))) == ctl
        await run_one(slow, "B", runner, ctl, Metrics("B"))
        deadline = t_submit + TIMEOUT_MS / 1000
        late = [round(t - deadline, 2) for t in device.writes if t > deadline]
        assert not late, f"device written {late} s after the control's deadline"
        state = await direct.hgetall(ks.control(ctl))
        if not device.writes:
            assert (state["state"], state["result"]) == ("failed", LATE), state
    finally:
        await slow.aclose()
        await direct.aclose()
        await vip.close()


async def test_a_device_that_never_answers_fails_the_control_with_a_reason(redis_master,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Found with lib60870-C as an IEC 104 RTU that confirms no set-point: the deadline's TimeoutError has no
    message, so the log said `failed: ` and nothing more, and the control's result was `TimeoutError`."""
    redisfns.load_sync(redis_master.client())
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)

    async def silent(point: int, value: float, deadline: float) -> str:
        await asyncio.Event().wait()
        return "written"

    runner = SimpleNamespace(rtu=SimpleNamespace(id=7), lease=SimpleNamespace(epoch=1), write_point=silent)
    try:
        await r.fcall(*redisfns.lease_tick(7, "B", True, 60_000, 90_000).argv)
        ctl = await controls.submit(r, 7, 1, 5.0, "test", 300)
        assert int(await r.lpop(ks.control_queue(7))) == ctl
        with caplog.at_level(logging.WARNING, logger="acquirer"):
            await run_one(r, "B", runner, ctl, Metrics("B"))
        state = await r.hgetall(ks.control(ctl))
        assert (state["state"], state["result"]) == ("failed", DEADLINE), state
        assert f"failed: {DEADLINE}" in caplog.text
    finally:
        await r.aclose()
