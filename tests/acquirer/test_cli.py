"""`fep-acquirer` as operators and Docker run it: a real process, and `--check` (the health check) exiting 0
only while its heartbeat is fresh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fepha import heartbeat
from fepha import keyspace as ks
from tests.redisproc import RedisProc, free_port

HEARTBEAT_S = 0.2  # --check wants the heartbeat younger than 3 periods: 0.6 s


def env_for(feproot: Path, port: int) -> dict[str, str]:
    return {**os.environ, "FEPROOT": str(feproot), "FEP_LOG_DIR": "", "FEP_NODE_ID": "A",
            "FEP_REDIS_VIP": "127.0.0.1", "FEP_REDIS_PORT": str(port), "FEP_REDIS_LOCAL_HOST": "127.0.0.1",
            "FEP_REDIS_LOCAL_PORT": str(port), "FEP_REDIS_SOCKET_TIMEOUT_S": "1",
            "FEP_TIMERS_HEARTBEAT_S": str(HEARTBEAT_S), "FEP_TIMERS_LEASE_TICK_S": "0.1",
            "FEP_TIMERS_LEASE_TTL_S": "0.6"}


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fep_acquirer.cli", "--check"], check=False, env=env,
                          capture_output=True, text=True, timeout=20)


def test_check_follows_the_heartbeat(redis_master: RedisProc, feproot: Path) -> None:
    env = env_for(feproot, redis_master.port)
    res = check(env)
    assert res.returncode == 1 and "no heartbeat of acquirer on node A" in res.stdout  # never started
    proc = subprocess.Popen([sys.executable, "-m", "fep_acquirer.cli"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 15
        while (res := check(env)).returncode != 0:
            assert proc.poll() is None, f"fep-acquirer exited: {proc.stderr.read()}"
            assert time.monotonic() < end, f"--check never fresh: {res.stdout}{res.stderr}"
            time.sleep(0.1)
        assert "acquirer on node A alive" in res.stdout
        assert check(env).returncode == 0  # stays fresh while it runs
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        err = proc.stderr.read()
    assert rc == 0, err
    assert "Traceback" not in err
    time.sleep(3 * HEARTBEAT_S + 0.3)  # past the freshness (and the key's TTL)
    res = check(env)
    assert res.returncode == 1
    assert "no heartbeat of acquirer on node A" in res.stdout or "s old" in res.stdout


def test_check_without_redis_is_one_clear_line(feproot: Path) -> None:
    res = check(env_for(feproot, free_port()))  # nothing listens there
    assert res.returncode != 0
    out = (res.stdout + res.stderr).strip()
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert "redis" in out.lower() and ("refused" in out.lower() or "connect" in out.lower()), out


def test_check_fails_on_a_stopping_heartbeat(redis_master: RedisProc, feproot: Path) -> None:
    """The last heartbeat of a planned stop (`stopping`: the acquirer handing its leases over) lives on
    for its TTL after the process: the health check of the container replacing it (an upgrade's `up -d`)
    must wait for the new process's own."""
    env = {**env_for(feproot, redis_master.port), "FEP_TIMERS_HEARTBEAT_S": "5"}  # fresh for 15 s: no race
    r = redis_master.client()
    key, life = ks.heartbeat("acquirer", "A"), heartbeat.lifetime_ms(5)
    r.set(key, heartbeat.payload("acquirer", "A", 1, 5, stopping=True), px=life)
    res = check(env)
    assert res.returncode == 1 and "acquirer on node A is stopping" in res.stdout, res.stdout
    r.set(key, heartbeat.payload("acquirer", "A", 1, 5), px=life)
    res = check(env)
    assert res.returncode == 0 and "acquirer on node A alive" in res.stdout, res.stdout
