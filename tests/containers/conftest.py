"""The container suite's fixtures: prerequisites (a failure in CI, a skip elsewhere), the images built
once per session, the figures printed at the end."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.containers import images
from tests.containers.lab import FIGURES
from tests.prereq import print_past_capture, require


def prerequisite_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, podman)"
    missing = images.missing_tools()
    if missing:
        return f"{', '.join(missing)} not installed (.ci/install)"
    return None


@pytest.fixture(scope="session")
def built_images() -> dict[str, float | int | str]:
    reason = prerequisite_missing()
    require(reason, "container suite")
    t0 = time.monotonic()
    figures = images.build_all()
    figures["images ready s"] = round(time.monotonic() - t0, 1)
    FIGURES.update(figures)
    return figures


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session", autouse=True)
def print_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if FIGURES:
        print_past_capture(request, "container figures: " + " ".join(f"{k.replace(' ', '_')}={v}"
                                                                       for k, v in FIGURES.items()))
