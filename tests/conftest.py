"""Shared fixtures: real redis-server processes on free loopback ports, a FEPROOT with the sample
configuration, and a guard that fails any test leaving threads or asyncio tasks running."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fepha.semodel import db
from tests.redisproc import RedisProc

REPO = Path(__file__).resolve().parent.parent

# The suites start the console commands (fep-plcsim, sysload, ...) by name: those of the interpreter that
# runs the tests (the project venv's .venv/bin) come first, however pytest was started.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """With CI set, a skipped test fails: every prerequisite is installed by .ci/install, so a skip there
    means a missing one, which must not pass as green (the suites' own guards say which)."""
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped with CI set (a missing prerequisite is a failure in CI): {rep.longrepr}"


@pytest.fixture
def redis_master():
    with RedisProc() as r:
        yield r


@pytest.fixture
def redis_pair():
    """(master, replica), the replica in sync."""
    with RedisProc() as m, RedisProc(replicaof=(m.host, m.port)) as s:
        s.wait_synced()
        yield m, s


@pytest.fixture
def feproot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FEPROOT with a copy of cfg/ and db/SEMODEL.db built from the sample; FEPROOT set to it."""
    shutil.copytree(REPO / "cfg", tmp_path / "cfg")
    db.build(tmp_path / "cfg" / "SEMODEL.sql", tmp_path / "db" / "SEMODEL.db")
    monkeypatch.setenv("FEPROOT", str(tmp_path))
    monkeypatch.setenv("FEP_LOG_DIR", "")
    return tmp_path


@pytest.fixture(autouse=True)
def no_leftover_threads():
    """Fail a test that leaves threads behind (pymodbus's fixture does the same)."""
    before = set(threading.enumerate())
    yield
    deadline = 50
    while deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
        if not extra:
            return
        deadline -= 1
        threading.Event().wait(0.1)
    pytest.fail(f"test left threads running: {extra}")


@pytest.fixture(autouse=True)
async def no_leftover_tasks():
    """Fail a test that leaves asyncio tasks pending on its loop (runs on the test's own loop)."""
    yield
    for _ in range(50):
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        if not pending:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"test left asyncio tasks pending: {pending}")
