"""The loser of a split brain keeps its control audit (fepha.splitaudit, called by redis-role.sh before
it demotes a master): which entries are copied (a table of the rule), and the demotion path on two real
redis-servers split by REPLICAOF NO ONE."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fepha import keyspace as ks
from fepha import splitaudit as sa
from tests.deploy.test_role_scripts import once, role, script_env
from tests.redisproc import RedisProc, free_port

pytestmark = pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli not installed (.ci/install)")


def e(sid: str, ctl: str = "1", state: str = "done") -> tuple[str, dict[str, str]]:
    return sid, {"id": ctl, "state": state}


COMMON = [e("1-0", "1"), e("2-0", "2")]


@pytest.mark.parametrize("loser,held,copied,want", [
    # nothing written on the loser since the split: nothing to copy
    (COMMON, {"2-0": e("2-0", "2")[1]}, set(), []),
    # the entries after the last one both hold are the loser's own
    ([*COMMON, e("3-0", "7"), e("4-0", "8")], {"2-0": e("2-0", "2")[1]}, set(), ["3-0", "4-0"]),
    # the same id on the winner with other fields (its own control at the same millisecond): not common
    ([*COMMON, e("3-0", "7")], {"3-0": e("3-0", "9")[1], "2-0": e("2-0", "2")[1]}, set(), ["3-0"]),
    # written before the split and never replicated (the loser was the master): the loser's own as well
    ([*COMMON, e("2-1", "3")], {"2-0": e("2-0", "2")[1]}, set(), ["2-1"]),
    # copied by an earlier notify: not again
    ([*COMMON, e("3-0", "7"), e("4-0", "8")], {"2-0": e("2-0", "2")[1]}, {"3-0"}, ["4-0"]),
    ([*COMMON, e("3-0", "7")], {"2-0": e("2-0", "2")[1]}, {"3-0"}, []),
    # no entry both hold (the winner's audit empty, lost or trimmed past them): all, the winner holds none
    ([e("3-0", "7"), e("4-0", "8")], {}, set(), ["3-0", "4-0"]),
    # an older entry both hold does not hide newer common ones: the newest held one is the split point
    (COMMON, {"1-0": e("1-0", "1")[1], "2-0": e("2-0", "2")[1]}, set(), []),
    ([], {}, set(), []),
])
def test_which_entries_are_copied(loser, held, copied, want) -> None:
    got = sa.to_copy(loser, held, copied, "B")
    assert [sid for sid, _ in got] == want
    for sid, fields in got:   # intact, marked
        assert fields == {**dict(loser)[sid], "from_split": "B", "split_id": sid}


def test_already_copied_counts_this_nodes_copies_only() -> None:
    entries = [{"id": "1"}, {"from_split": "B", "split_id": "3-0"}, {"from_split": "A", "split_id": "4-0"},
               {"from_split": "B"}]
    assert sa.already_copied(entries, "B") == {"3-0"}


def audit(r: RedisProc) -> list[dict[str, str]]:
    return [f for _, f in r.client().xrange(ks.CTL_AUDIT)]


def test_the_losers_audit_reaches_the_winner_before_its_demotion(tmp_path: Path) -> None:
    with RedisProc() as win, RedisProc() as lose:
        lose.client().replicaof(win.host, win.port)
        w, lo = win.client(), lose.client()
        for i in (1, 2):
            w.xadd(ks.CTL_AUDIT, {"id": str(i), "state": "done", "executor": "A"})
        deadline = time.monotonic() + 10
        while lo.xlen(ks.CTL_AUDIT) < 2:
            assert time.monotonic() < deadline, "the replica never got the common entries"
            time.sleep(0.02)
        for r in (w, lo):   # the split: both masters
            r.replicaof("no", "one")
        mine = {"id": "3", "rtu": "1", "point": "109", "value": "1", "state": "done", "executor": "B"}
        lo.xadd(ks.CTL_AUDIT, mine)
        w.xadd(ks.CTL_AUDIT, {"id": "3", "state": "done", "executor": "A"})
        sid = lo.xrevrange(ks.CTL_AUDIT, count=1)[0][0]
        env = {**script_env(lose, win, "127.9.9.9", tmp_path), "FEP_PYTHON": sys.executable, "NODE_ID": "B"}

        # a notify whose demotion did not follow (the copy ran, then e.g. REPLICAOF failed) ...
        first = subprocess.run([sys.executable, "-m", "fepha.splitaudit", "--local", f"127.0.0.1:{lose.port}",
                                "--winner", f"127.0.0.1:{win.port}", "--node", "B"], check=True, timeout=10,
                               capture_output=True, text=True).stdout
        assert f"copied 1 entries of this node's audit to the winner's ({sid})" in first
        later = {**mine, "id": "4", "value": "0"}   # one more control run on the loser meanwhile
        sid2 = lo.xadd(ks.CTL_AUDIT, later)
        # ... then the heal's BACKUP, the role script: copies the new one only, then demotes
        assert once("BACKUP", env) == 0
        assert role(lose) == f"slave {win.port}"
        got = audit(win)
        assert [f["executor"] for f in got] == ["A", "A", "A", "B", "B"]
        assert got[-2:] == [{**mine, "from_split": "B", "split_id": sid}, {**later, "from_split": "B", "split_id": sid2}]
        log = (tmp_path / "role.log").read_text()
        assert f"copied 1 entries of this node's audit to the winner's ({sid2})" in log and "now replica" in log


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_a_winner_that_does_not_answer_never_holds_the_demotion(how: str) -> None:
    with RedisProc() as lose, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)   # connects, never answers: each call waits its whole timeout
        port = silent.getsockname()[1] if how == "silent" else free_port()
        lose.client().xadd(ks.CTL_AUDIT, {"id": "3", "state": "done"})
        t = time.monotonic()
        line = sa.keep(lose.client(), sa._client("127.0.0.1", port, None), "B")
        assert time.monotonic() - t < sa.WAIT_S + sa.CALL_S
        assert "lost at the resync" in line and "1 of the newest 1" in line
