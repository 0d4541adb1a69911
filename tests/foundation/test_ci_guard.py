"""With CI set, a missing HA prerequisite fails the run instead of skipping it (a green run that tested
nothing); without CI it is a skip with the reason."""

from __future__ import annotations

import pytest

from tests.ha import harness


class _Req:
    class node:
        pass


@pytest.mark.parametrize("ci, outcome", [("1", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_missing_prerequisite(monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: type) -> None:
    monkeypatch.setattr(harness, "can_run", lambda: "needs root (ip netns)")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="needs root"), harness.running_lab(_Req()):
        pass
