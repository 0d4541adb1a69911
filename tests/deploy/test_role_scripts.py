"""deploy/keepalived scripts against real redis-server processes on loopback (no namespaces needed):
the role script's decisions, its in-order FIFO reader with reconciliation, the track script and the
rendered keepalived.conf (checked by keepalived's own config test)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from tests.redisproc import RedisProc

REPO = Path(__file__).resolve().parents[2]
KA = REPO / "deploy" / "keepalived"
pytestmark = pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli not installed (.ci/install)")


def script_env(local: RedisProc, peer: RedisProc | None, vip: str, tmp: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "FEP_ROLE_ENV": str(tmp / "none.env"), "REDIS_HOST": local.host,
            "REDIS_PORT": str(local.port), "PEER_IP": "127.0.0.1",
            "PEER_REDIS_PORT": str(peer.port if peer else 1), "VIP": vip, "REDISCLI_AUTH": "",
            "FEP_RUN": str(tmp), "ROLE_LOG": str(tmp / "role.log")}


def role(r: RedisProc) -> str:
    info = r.client().info("replication")
    return "master" if info["role"] == "master" else f"slave {info['master_port']}"


def once(state: str, env: dict[str, str]) -> int:
    return subprocess.run([str(KA / "redis-role.sh")], env={**env, "REDIS_ROLE_ONCE": state}, timeout=20, check=False).returncode


@pytest.fixture
def pair():
    with RedisProc() as m, RedisProc() as s:
        s.client().replicaof(m.host, m.port)
        yield m, s


def test_master_with_the_vip_promotes(pair, tmp_path: Path) -> None:
    m, s = pair
    assert once("MASTER", script_env(s, m, "127.0.0.1", tmp_path)) == 0   # 127.0.0.1 is on lo: "has the VIP"
    assert role(s) == "master"
    assert "promoted" in (tmp_path / "role.log").read_text()


def test_master_without_the_vip_does_not_promote(pair, tmp_path: Path) -> None:
    """A notify that is already out of date (VIP gone again) changes nothing."""
    m, s = pair
    assert once("MASTER", script_env(s, m, "127.9.9.9", tmp_path)) == 1
    assert role(s) == f"slave {m.port}"


@pytest.mark.parametrize("state", ["BACKUP", "FAULT"])
def test_backup_or_fault_follows_a_master_peer(tmp_path: Path, state: str) -> None:
    with RedisProc() as a, RedisProc() as b:
        a.client().set("k", "from-a")
        assert once(state, script_env(b, a, "127.9.9.9", tmp_path)) == 0
        assert role(b) == f"slave {a.port}"
        b.wait_synced()
        assert b.client().get("k") == "from-a"
        assert once(state, script_env(b, a, "127.9.9.9", tmp_path)) == 0   # idempotent, no second resync


def test_backup_never_follows_a_peer_that_is_not_master(pair, tmp_path: Path) -> None:
    """The peer is a replica (booting, or not yet promoted): becoming its replica would chain or wipe."""
    m, s = pair
    m.client().set("keep", "1")
    assert once("BACKUP", script_env(m, s, "127.9.9.9", tmp_path)) == 1
    assert role(m) == "master" and m.client().get("keep") == "1"


def test_backup_with_unreachable_peer_stays_master(tmp_path: Path) -> None:
    with RedisProc() as a:
        assert once("BACKUP", script_env(a, None, "127.9.9.9", tmp_path)) == 1
        assert role(a) == "master"


@contextlib.contextmanager
def fifo_reader(env: dict[str, str], tmp: Path) -> Iterator[TextIO]:
    """redis-role.sh reading its FIFO as keepalived's notify_fifo_script; yields the FIFO opened to write."""
    fifo = tmp / "keepalived.fifo"
    os.mkfifo(fifo)
    p = subprocess.Popen([str(KA / "redis-role.sh"), str(fifo)], env=env, start_new_session=True)
    try:
        with open(fifo, "w") as f:
            yield f
    finally:
        os.killpg(p.pid, 15)
        p.wait(5)


def wait_role(r: RedisProc, want: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while role(r) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return role(r)


def test_fifo_reader_applies_states_in_order_and_reconciles(pair, tmp_path: Path) -> None:
    m, s = pair
    with fifo_reader(script_env(s, m, "127.0.0.1", tmp_path), tmp_path) as f:
        f.write('INSTANCE "VI_FEP" MASTER 100\n')
        f.flush()
        assert wait_role(s, "master") == "master"
        # A restarted Redis boots as a replica (compose.yml): the reader puts it back within ~1 s.
        s.client().replicaof(m.host, m.port)
        assert wait_role(s, "master") == "master"
        assert (tmp_path / "state").read_text().strip() == "MASTER"
        f.write('INSTANCE "VI_FEP" BACKUP 100\n')
        f.flush()
        assert wait_role(s, f"slave {m.port}") == f"slave {m.port}"


def test_fifo_reader_keeps_a_line_cut_at_its_read_deadline(pair, tmp_path: Path) -> None:
    """bash reads the FIFO byte by byte and checks `read -t 1`'s deadline before each byte: a line that
    arrives just before the deadline, or while the reader waits for the CPU, is cut after its first bytes,
    which read consumes and hands back, failing. keepalived writes each line at once; here the line is
    written in two parts around a deadline, so the cut is certain. The reader used to drop the first part
    and skip the rest ('TER 100'): the MASTER state was never applied, B's Redis never promoted (a CI run:
    VIP on B, its Redis a replica of the crashed node 10 s later)."""
    m, s = pair
    with fifo_reader(script_env(s, m, "127.0.0.1", tmp_path), tmp_path) as f:
        f.write('INSTANCE "VI_FEP" MAS')
        f.flush()
        time.sleep(2.5)    # past the deadline of the read that took the first part (1 s + one apply)
        f.write('TER 100\n')
        f.flush()
        assert wait_role(s, "master", 5) == "master"
        assert (tmp_path / "state").read_text().strip() == "MASTER"
        assert 'keepalived: "VI_FEP" MASTER' in (tmp_path / "role.log").read_text()


def test_track_script_checks_redis_itself(tmp_path: Path) -> None:
    r = RedisProc().start()
    env = {"PATH": os.environ["PATH"], "FEP_ROLE_ENV": str(tmp_path / "none.env"), "REDIS_HOST": r.host,
           "REDIS_PORT": str(r.port), "REDISCLI_AUTH": ""}
    try:
        assert subprocess.run([str(KA / "check-redis.sh")], env=env, timeout=10, check=False).returncode == 0
        r.pause()   # hung Redis: PING times out
        assert subprocess.run([str(KA / "check-redis.sh")], env=env, timeout=10, check=False).returncode != 0
        r.resume()
    finally:
        r.close()
    assert subprocess.run([str(KA / "check-redis.sh")], env=env, timeout=10, check=False).returncode != 0


def test_track_script_rewrites_keepalived_sign_of_life(tmp_path: Path) -> None:
    """Run by keepalived's VRRP process with an ALIVE file: it rewrites it ("NODE_ID STATE", readable by the
    services' user) whatever Redis answers, as that process's sign of life (docs/ha.md); run with no
    arguments (the container's healthcheck, which runs without keepalived) it writes nothing."""
    (tmp_path / "role.env").write_text("NODE_ID=A\nREDIS_HOST=127.0.0.1\nREDIS_PORT=1\n")
    (tmp_path / "state").write_text("MASTER\n")
    alive = tmp_path / "vrrp.alive"
    env = {"PATH": os.environ["PATH"], "FEP_RUN": str(tmp_path)}
    assert subprocess.run([str(KA / "check-redis.sh")], env=env, timeout=10, check=False).returncode != 0
    assert not alive.exists()
    os.utime(tmp_path / "role.env")
    rc = subprocess.run([str(KA / "check-redis.sh"), str(tmp_path / "role.env"), str(alive)], env=env,
                        timeout=10, check=False).returncode
    assert rc != 0                                   # no Redis on port 1: the check fails, the sign is written
    assert alive.read_text() == "A MASTER\n" and alive.stat().st_mode & 0o777 == 0o644
    assert time.time() - alive.stat().st_mtime < 5
    assert not (tmp_path / "vrrp.alive.tmp").exists()


@pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived not installed (.ci/install)")
def test_rendered_config_passes_keepalived_config_test(tmp_path: Path) -> None:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout.splitlines()
    ifaces = [ln.split(": ")[1].split("@")[0] for ln in links if ": lo:" not in ln]
    if not ifaces:
        pytest.skip("no non-loopback interface for keepalived's config test")
    env = {"PATH": os.environ["PATH"], "NODE_ID": "A", "NODE_IP": "198.18.0.1", "PEER_IP": "198.18.0.2",
           "VIP": "198.18.0.10", "VRRP_INTERFACE": ifaces[0], "VRRP_AUTH": "secret12345", "FEP_RUN": str(tmp_path),
           "REDISCLI_AUTH": "pw", "RENDER_ONLY": "1"}
    out = subprocess.run([str(KA / "start.sh")], env=env, capture_output=True, text=True, timeout=10, check=False)
    assert out.returncode == 0, out.stderr
    conf = Path(out.stdout.strip()).read_text()
    for must in ("state BACKUP", "nopreempt", "advert_int 1", "unicast_peer", "198.18.0.2",
                 f"198.18.0.10/24 dev {ifaces[0]}", "track_script", "notify_fifo", "auth_pass secret12",
                 f"check-redis.sh {tmp_path}/role.env {tmp_path}/vrrp.alive"):
        assert must in conf, must
    import re
    assert not re.findall(r"@[A-Z_]+@", "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#")))
    assert "REDISCLI_AUTH=pw" in (tmp_path / "role.env").read_text()
    t = subprocess.run(["keepalived", "-t", "-f", out.stdout.strip()], capture_output=True, text=True, timeout=10, check=False)
    assert t.returncode == 0, t.stdout + t.stderr


def peer_behind_vip() -> RedisProc:
    """The peer's Redis, also reachable as the "VIP" 127.0.0.2 (an address on no interface, routed to lo)."""
    return RedisProc(extra=["--bind", "127.0.0.1", "127.0.0.2"])


def stopped(env: dict[str, str], wait_s: int = 1) -> int:
    """start.sh's step after keepalived ended (REDIS_ROLE_ONCE=STOPPED)."""
    return once("STOPPED", {**env, "STOP_DEMOTE_WAIT_S": str(wait_s)})


def test_stopped_demotes_a_master_once_the_vip_leads_to_the_peers_master(tmp_path: Path) -> None:
    """keepalived ended on the old master's node; the peer was promoted and the VIP (127.0.0.2 is not on
    any interface and reaches the peer's port through lo) leads to it: the old master follows it, and the
    writes the new master accepted are kept."""
    with RedisProc() as old, peer_behind_vip() as new:
        new.client().set("k", "accepted-by-the-new-master")
        t0 = time.monotonic()
        assert stopped(script_env(old, new, "127.0.0.2", tmp_path)) == 0
        assert time.monotonic() - t0 < 1.0
        assert role(old) == f"slave {new.port}" and role(new) == "master"
        old.wait_synced()
        assert old.client().get("k") == "accepted-by-the-new-master"
        assert "now replica of" in (tmp_path / "role.log").read_text()


def test_stopped_waits_for_the_peer_to_take_over(tmp_path: Path) -> None:
    """The peer is still a replica of this master when keepalived ends (it takes the VIP ~1 s later):
    the step waits for its promotion instead of giving up or chaining."""
    with RedisProc() as old, peer_behind_vip() as new:
        new.client().replicaof(old.host, old.port)
        env = script_env(old, new, "127.0.0.2", tmp_path)
        p = subprocess.Popen([str(KA / "redis-role.sh")], env={**env, "REDIS_ROLE_ONCE": "STOPPED",
                                                               "STOP_DEMOTE_WAIT_S": "10"})
        time.sleep(1.0)
        assert p.poll() is None and role(old) == "master"
        new.client().replicaof("NO", "ONE")
        assert p.wait(10) == 0
        assert role(old) == f"slave {new.port}" and role(new) == "master"


def test_stopped_never_demotes_without_a_master_peer_holding_the_vip(tmp_path: Path) -> None:
    """Never both replicas, never a Redis that holds the VIP: a peer that stays a replica (nobody took
    over), a peer that is down, or the VIP still on this host (keepalived's VRRP process killed with it)
    leave this master as it is."""
    with RedisProc() as old, peer_behind_vip() as new:
        new.client().replicaof(old.host, old.port)
        t0 = time.monotonic()
        assert stopped(script_env(old, new, "127.0.0.2", tmp_path), 1) == 1   # peer stays a replica
        assert 1.0 <= time.monotonic() - t0 < 3.0
        assert role(old) == "master" and role(new) == f"slave {old.port}"
        new.client().replicaof("NO", "ONE")
        assert stopped(script_env(old, new, "127.0.0.1", tmp_path)) == 1    # the VIP is on this host
        assert role(old) == "master"
        assert stopped(script_env(old, None, "127.0.0.2", tmp_path)) == 1   # peer unreachable
        assert role(old) == "master"
    log = (tmp_path / "role.log").read_text()
    assert "did not take over" in log and "still on this host" in log and "peer Redis unreachable" in log


def test_an_empty_redis_is_not_promoted_nor_kept_master_while_the_peer_has_a_configuration(tmp_path: Path) -> None:
    """The master's Redis restarted without its data (files lost) boots as a replica of the peer, which is
    a replica itself (its master was that Redis): no sync either way (NOMASTERLINK). Promoted by the role
    script's MASTER reconciliation, the empty Redis wiped the peer's copy at the peer's next resync. Now the
    role script refuses that promotion and the track script fails, so keepalived moves the VIP to the peer,
    whose Redis has the data. Either check passes again once the local Redis has a configuration, and
    neither asks more of a peer that does not answer."""
    with RedisProc() as peer, RedisProc() as empty:
        peer.client().set("fep:cfg:gen", 1)
        peer.client().replicaof("127.0.0.1", 1)  # its master gone (the lost Redis, not yet back): link down
        empty.client().replicaof(peer.host, peer.port)  # booted empty as the peer's replica: NOMASTERLINK
        env = script_env(empty, peer, "127.0.0.1", tmp_path)  # 127.0.0.1: "this host holds the VIP"
        assert once("MASTER", env) == 1
        assert role(empty) == f"slave {peer.port}"
        assert "not promoting (it would wipe the peer's copy)" in (tmp_path / "role.log").read_text()
        track = [str(KA / "check-redis.sh")]
        assert subprocess.run(track, env=env, timeout=10, check=False).returncode != 0
        assert subprocess.run(track, env={**env, "PEER_REDIS_PORT": "1"}, timeout=10, check=False).returncode == 0
        peer.client().replicaof("no", "one")  # the VIP moved there: promoted; the empty one resyncs from it
        end = time.monotonic() + 10
        while empty.client().get("fep:cfg:gen") != "1":
            assert time.monotonic() < end, "the empty Redis did not resync from the peer"
            time.sleep(0.05)
        assert subprocess.run(track, env=env, timeout=10, check=False).returncode == 0
        assert once("MASTER", env) == 0 and role(empty) == "master"  # with its data back, it may be promoted
        fresh = script_env(empty, peer, "127.0.0.1", tmp_path)
        empty.client().flushall()
        peer.client().flushall()  # both empty (a first start): nothing to protect
        assert subprocess.run(track, env=fresh, timeout=10, check=False).returncode == 0
