"""compose.yml and .env.example validated with Debian's docker-compose (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fepha.config import NodeConfig

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed (.ci/install)")


def env_example() -> dict[str, str]:
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def config(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    shutil.copy(REPO / "compose.yml", tmp_path / "compose.yml")
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {k: v for k, v in os.environ.items() if k not in env_example()}
    return subprocess.run(["docker-compose", "-f", str(tmp_path / "compose.yml"), *extra, "config"],
                          cwd=tmp_path, env=clean, capture_output=True, text=True, check=False)


def services(tmp_path: Path, *extra: str) -> dict:
    r = config(tmp_path, env_example(), *extra)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)["services"]


def test_env_example_renders_every_service(tmp_path: Path) -> None:
    s = services(tmp_path, "--profile", "loader")
    assert set(s) == {"redis", "keepalived", "loader", "acquirer", "forwarder", "api"}


def test_loader_only_in_its_profile(tmp_path: Path) -> None:
    """`docker compose up -d` leaves the one-shot loader out; `docker compose run --rm loader` runs it."""
    s = services(tmp_path)
    assert s["loader"]["profiles"] == ["loader"] and s["loader"]["restart"] == "no"
    assert s["loader"]["command"] == ["sysload", "init"]
    assert all("profiles" not in v for k, v in s.items() if k != "loader")


@pytest.mark.parametrize("var", ["NODE_ID", "NODE_IP", "PEER_IP", "VIP", "REDIS_PASSWORD", "VRRP_INTERFACE"])
def test_required_variable_fails_early_with_its_message(tmp_path: Path, var: str) -> None:
    env = env_example()
    del env[var]
    r = config(tmp_path, env)
    assert r.returncode != 0
    assert var in r.stderr and "set " in r.stderr, r.stderr


def test_fep_services_share_settings_and_env_overrides(tmp_path: Path) -> None:
    s = services(tmp_path, "--profile", "loader")
    env = env_example()
    for name in ("acquirer", "forwarder", "api", "loader"):
        svc = s[name]
        assert svc["network_mode"] == "host"
        e = svc["environment"]
        assert e["FEP_NODE_ID"] == env["NODE_ID"] and e["FEP_REDIS_VIP"] == env["VIP"]
        assert e["FEP_REDIS_LOCAL_HOST"] == env["NODE_IP"] and e["FEP_REDIS_PASSWORD"] == env["REDIS_PASSWORD"]
        vols = [str(v) for v in svc["volumes"]]
        assert any(re.search(r"cfg:/opt/fep/cfg:ro", v) for v in vols), vols
        assert any("fep-logs" in v and "/opt/fep/log" in v for v in vols), vols
        assert any(re.search(r"fep-run:/run/fep:ro$", v) for v in vols), vols   # keepalived's sign of life
    # every FEP_ variable names a real setting of fepha.config
    from dataclasses import fields

    from fepha.config import LogConfig, NodeConfig, _key
    known = {f"FEP_{f.metadata['section']}_{_key(f)}".upper() for c in (NodeConfig, LogConfig) for f in fields(c)}
    for name in ("acquirer", "forwarder", "api"):
        unknown = {k for k in s[name]["environment"] if k.startswith("FEP_")} - known
        assert not unknown, unknown


def test_healthchecks_restart_and_dependencies(tmp_path: Path) -> None:
    s = services(tmp_path)
    assert s["acquirer"]["healthcheck"]["test"] == ["CMD", "fep-acquirer", "--check"]
    assert s["forwarder"]["healthcheck"]["test"] == ["CMD", "fep-forwarder", "--check"]
    assert "/ready" in " ".join(s["api"]["healthcheck"]["test"])
    assert "ping" in " ".join(s["redis"]["healthcheck"]["test"])
    for name in ("redis", "keepalived", "acquirer", "forwarder", "api"):
        assert s[name]["restart"] == "always"   # podman-restart.service starts only these at boot
    assert s["acquirer"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert s["api"]["depends_on"]["acquirer"]["condition"] == "service_healthy"


def test_redis_persistent_and_boots_as_replica_of_the_peer(tmp_path: Path) -> None:
    s = services(tmp_path)
    cmd = s["redis"]["command"]
    cmd = cmd if isinstance(cmd, str) else " ".join(cmd)
    env = env_example()
    assert "--appendonly yes" in cmd
    assert f"--replicaof {env['PEER_IP']} 6379" in cmd
    assert f"--requirepass {env['REDIS_PASSWORD']}" in cmd and f"--masterauth {env['REDIS_PASSWORD']}" in cmd


def test_keepalived_host_network_net_admin(tmp_path: Path) -> None:
    k = services(tmp_path)["keepalived"]
    assert k["network_mode"] == "host" and "NET_ADMIN" in k["cap_add"] and k["user"] == "root"
    assert k["command"] == ["/opt/fep/deploy/keepalived/start.sh"]
    # FEP_RUN, where the track script rewrites vrrp.alive, is the volume the services read it from
    assert k["environment"]["FEP_RUN"] == "/run/fep"
    assert any(re.search(r"fep-run:/run/fep(:rw)?$", str(v)) for v in k["volumes"]), k["volumes"]


def test_dockerfile_installs_the_distribution_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "ARG BASE=python:3.11-slim" in text and "FROM ${BASE}" in text
    assert "python3 -m venv /opt/venv" in text and "/opt/venv/bin/pip install" in text
    assert "COPY tools" not in text, "the dev tools (tools/) stay out of the image"
    assert "ENV FEPROOT=/opt/fep " in text
    assert re.search(r"^USER fep$", text, re.MULTILINE)
    scripts = set(re.findall(r'^([a-z_-]+) = "', (REPO / "pyproject.toml").read_text(), re.MULTILINE))
    assert not any(v.startswith("fep_tools") for v in re.findall(r'^[a-z_-]+ = "([^"]+)"',
                                                                 (REPO / "pyproject.toml").read_text(), re.MULTILINE))
    s = yaml.safe_load((REPO / "compose.yml").read_text())["services"]
    for name in ("loader", "acquirer", "forwarder", "api"):
        assert s[name]["command"][0] in scripts


def test_acquirer_stop_grace_period_covers_its_handover(tmp_path: Path) -> None:
    """On SIGTERM the acquirer waits up to stop_handover_s for the other node to take its leases; the
    engine's SIGKILL must not come before that wait and the exit after it (about a second)."""
    grace = services(tmp_path)["acquirer"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= NodeConfig().stop_handover_s + 2, grace


def test_forwarder_stop_grace_period_covers_its_drain(tmp_path: Path) -> None:
    """On SIGTERM the forwarder waits up to stop_drain_s for the controls in flight to be answered; the
    engine's SIGKILL must not come before that wait and the exit after it."""
    grace = services(tmp_path)["forwarder"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= NodeConfig().stop_drain_s + 2, grace


def test_keepalived_stop_grace_period_covers_its_demotion(tmp_path: Path) -> None:
    """On SIGTERM start.sh gives keepalived's VRRP process up to 4 s (deploy/keepalived/start.sh), then waits
    up to STOP_DEMOTE_WAIT_S for the peer to take the master over before demoting the local Redis: the
    engine's SIGKILL (compose's default: 10 s) must come after both, with a second or two to spare."""
    k = services(tmp_path)["keepalived"]
    grace = k.get("stop_grace_period", "10s")
    wait = float(k["environment"]["STOP_DEMOTE_WAIT_S"])
    assert grace.endswith("s") and float(grace[:-1]) >= 4 + wait + 2, (grace, wait)


def test_every_service_comes_back_after_a_host_reboot(tmp_path: Path) -> None:
    """Docker starts `always` and `unless-stopped` containers at boot; podman's boot unit
    (podman-restart.service: `podman start --all --filter restart-policy=always`) only `always` ones."""
    s = services(tmp_path)
    assert {k for k, v in s.items() if v.get("restart") == "always"} == set(s) - {"loader"}


def test_redis_password_with_spaces_and_quotes_reaches_redis_whole(tmp_path: Path) -> None:
    """The password is one argument of redis-server, whatever it holds (compose splits a string command)."""
    env = env_example() | {"REDIS_PASSWORD": "pa ss'w\"rd#1"}
    r = config(tmp_path, env)
    assert r.returncode == 0, r.stderr
    cmd = yaml.safe_load(r.stdout)["services"]["redis"]["command"]
    assert isinstance(cmd, list), cmd
    assert cmd[cmd.index("--requirepass") + 1] == cmd[cmd.index("--masterauth") + 1] == env["REDIS_PASSWORD"]
