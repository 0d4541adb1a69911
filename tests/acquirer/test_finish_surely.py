"""The outcome of a control whose device write was made must reach the master even when the first send
of it is refused at a VIP move (services/acquirer/executor.py `finish_surely`; docs/ha.md "The holder at a
VIP move"). Before, one refusal (READONLY from a Redis not yet promoted, or a reset connection) left the
control `executing`, and its audit said `unknown` although the device had been written."""

from __future__ import annotations

import time

import pytest
from redis import exceptions as rex

from fep_acquirer import executor


class Master:
    """fcall answers: the errors first, then 1 (ctl_finish took it)."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), []

    async def fcall(self, *argv):
        self.calls.append(argv)
        if self.errors:
            raise self.errors.pop(0)
        return 1


async def test_an_outcome_refused_at_the_move_is_sent_again_until_the_new_master_takes_it(monkeypatch):
    monkeypatch.setattr(executor, "FINISH_RETRY_S", 0.01)
    m = Master(rex.ConnectionError("reset by peer"), rex.ReadOnlyError("READONLY You can't write against a "
                                                                       "read only replica."))
    await executor.finish_surely(m, 7, True, "written", time.monotonic() + 5)
    assert len(m.calls) == 3 and all(c[0] == "ctl_finish" for c in m.calls)
    assert m.calls[0] == m.calls[2]   # the same outcome each time


async def test_an_outcome_no_master_takes_is_given_up_at_its_bound(monkeypatch):
    monkeypatch.setattr(executor, "FINISH_RETRY_S", 0.01)
    m = Master(*[rex.TimeoutError("timeout")] * 1000)
    t0 = time.monotonic()
    with pytest.raises(rex.TimeoutError):
        await executor.finish_surely(m, 7, True, "written", t0 + 0.1)
    assert 0.1 <= time.monotonic() - t0 < 1.0


async def test_a_refusal_that_is_not_the_move_is_not_sent_again():
    m = Master(rex.ResponseError("ERR Function not found"))
    with pytest.raises(rex.ResponseError):
        await executor.finish_surely(m, 7, True, "written", time.monotonic() + 5)
    assert len(m.calls) == 1
