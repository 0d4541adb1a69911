"""What the suites share around their prerequisites: a missing one skips outside CI and fails with CI set
(.ci/install installs them all, so a green CI run must never have skipped one); the end-of-suite figures
line printed past pytest's capture."""

from __future__ import annotations

import os

import pytest


def require(reason: str | None, what: str) -> None:
    """`reason` says which prerequisite is missing (None: all there). With CI set that fails the test,
    otherwise it is a skip with the reason."""
    if not reason:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} cannot run with CI set: {reason}")
    pytest.skip(reason)


def print_past_capture(request: pytest.FixtureRequest, line: str) -> None:
    """Print one line at the end of a session even with output captured (the suites' figures)."""
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print("\n" + line)
    else:
        print(line)
