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


def test_any_skip_fails_with_ci_set(tmp_path) -> None:
    """tests/conftest.py: with CI set, a skipped test (say a skipif on a missing tool) is a failure."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "tests").mkdir()
    shutil.copy(repo / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    shutil.copy(repo / "tests" / "redisproc.py", tmp_path / "tests" / "redisproc.py")
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.skipif(True, reason='tool missing')\ndef test_a():\n    pass\n")
    for ci, want in (("1", 1), ("", 0)):
        env = {**os.environ, "CI": ci, "PYTHONPATH": str(tmp_path)}
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_x.py"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == want, p.stdout + p.stderr
        if ci:
            assert "missing prerequisite is a failure in CI" in p.stdout
