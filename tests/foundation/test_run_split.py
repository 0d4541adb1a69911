"""tests/run, the README's test command: as root with no test named, the system suites and the rest run as
two pytest processes at once, the rest in a network namespace of its own; both parts' outcomes decide the
exit code. One run only (each collects the whole suite twice, about 10 s of CPU each), so the rules for
pytest's exit 5 (a -k selection only one part holds passes) are not exercised here."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEPHA_TESTS_SERIAL", "PYTEST_ADDOPTS")}
    return subprocess.run([str(REPO / "tests" / "run"), "-q", "-p", "no:cacheprovider", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="the split needs root (unshare --net); without it: one pytest")
def test_both_parts_run_and_decide_the_exit_code() -> None:
    # one pure test module in each part: tests/ha/test_switch_rules.py (system), tests/forwarder/test_allow.py
    both = run("-k", "test_switch_rules or test_allow")
    assert both.returncode == 0, both.stdout[-3000:]
    assert "== system part exit 0, the rest exit 0" in both.stdout, both.stdout[-3000:]
    system, _, rest = both.stdout.partition("== the rest:")
    assert " passed" in system and " passed" in rest, both.stdout[-3000:]
