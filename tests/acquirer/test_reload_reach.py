"""A reload that restarts an RTU's runner (its poll period or a point changed) keeps what the old runner knew
of the device: reached, until the reach window from its last answer has passed. It used to start from
"never reached", so the housekeeping tick before the new runner's first poll wrote the link down, and the
link virtual point fell to 0 at SCADA at every such reload (seen in CI: tests/faults/test_audit.py
`test_sysload_init_of_a_changed_configuration_sends_no_unchanged_value_again`)."""

from __future__ import annotations

import logging
import time

import pytest
import redis.asyncio as aredis

from fep_acquirer.app import Acquirer
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner
from fepha.config import NodeConfig
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Model
from tests.acquirer.helpers import free_port, merge, rtu_rows
from tests.acquirer.test_mbtcp import RecordingWriter

PORT = free_port()  # nothing listens there: the runners only try to connect


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
