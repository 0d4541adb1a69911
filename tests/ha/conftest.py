"""Fixtures of the HA suite: a fresh two-node lab per test, torn down (processes by PID, namespaces)
even when the test fails; its logs are attached to a failure."""

from __future__ import annotations

import pytest

from tests.ha.harness import FIGURES, running_lab
from tests.prereq import print_past_capture


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/ha/" in str(item.fspath):
            item.add_marker(pytest.mark.ha)


@pytest.fixture
def lab(request: pytest.FixtureRequest):
    with running_lab(request, getattr(request, "param", None)) as lab:
        yield lab


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session", autouse=True)
def print_figures(request: pytest.FixtureRequest):
    """At the end of the suite: the figures the scenarios measured, as one key=value line."""
    yield
    if FIGURES:
        print_past_capture(request, "HA figures: " + " ".join(f"{k}={v}" for k, v in FIGURES.items()))
