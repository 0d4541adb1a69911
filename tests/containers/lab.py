"""Two fep-ha nodes as an operator runs them: `docker-compose up -d` of the unchanged compose.yml, each
node with its own .env, on two network namespaces of tests/ha's lab (same addresses, PLC and SCADA hosts).

Each node namespace runs its own `podman system service` (Docker's API on its own socket), started inside
the namespace: a container with `network_mode: host` then lives on that node's network, as on a real host.
docker-compose (Debian's 1.29) talks to it through DOCKER_HOST. The two services share podman's image
store (the images are built once); each node's project directory has its own name (fep-a, fep-b), so
containers and volumes do not collide (on two real hosts the directory may be the same).

Health checks: podman runs a container's health check from a systemd timer; this machine has no systemd
(PID 1 is not systemd), so `HealthDriver` does what the timer does: `podman healthcheck run` on each
container at the interval its compose health check gives; within the check's start period, until its first
success, every second instead (Docker's start_interval: a failure there does not count, so only the wait
for the first healthy is shorter; 10 s intervals made a two-node bring-up ~40 s). Status, retries and the
resulting `depends_on: {condition: service_healthy}` stay podman's and docker-compose's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.containers import images
from tests.ha.harness import PASSWORD, VIP, Lab, Node, Proc

REPO = images.REPO
FIGURES: dict[str, float | int | str] = {}
"""Figures of the session (image sizes, build times, timings of the runs), printed at its end."""


class ComposeNode:
    """One node: its release directory (compose.yml, deploy/, cfg/, db/, .env), its podman service."""

    def __init__(self, lab: ContainerLab, node: Node) -> None:
        self.lab = lab
        self.node = node
        self.id = node.id
        self.project = node.dir / f"fep-{node.id.lower()}"
        self.sock = node.dir / "podman.sock"
        self.service: Proc | None = None

    # --- the release directory, as docs/deployment.md has the operator lay it out ----------------------
    def lay_out(self) -> None:
        p = self.project
        p.mkdir(parents=True)
        shutil.copy(REPO / "compose.yml", p / "compose.yml")
        shutil.copy(REPO / ".env.example", p / ".env.example")
        shutil.copytree(REPO / "deploy", p / "deploy")
        shutil.copytree(self.lab.feproot / "cfg", p / "cfg")
        shutil.copytree(self.lab.feproot / "db", p / "db")
        (p / ".env").write_text(self.dotenv())

    def env_values(self) -> dict[str, str]:
        t = self.lab.timers
        return {"NODE_ID": self.id, "NODE_IP": self.node.ip, "PEER_IP": self.node.peer.ip, "VIP": VIP,
                "VRRP_INTERFACE": "eth0", "REDIS_PASSWORD": PASSWORD,
                "CHANNEL_SWITCH_S": str(t["channel_switch_s"]), "TAKEOVER_S": str(t["takeover_s"]),
                "LEASE_TTL_S": str(t["lease_ttl_s"]),
                "FEP_IMAGE": images.FEP_IMAGE, "REDIS_IMAGE": images.REDIS_IMAGE}

    def dotenv(self) -> str:
        """.env.example with this node's values filled in (and the optional ones it sets uncommented)."""
        values = self.env_values()
        out, done = [], set()
        for line in (REPO / ".env.example").read_text().splitlines():
            key = line.lstrip("#").partition("=")[0]
            if "=" in line and key in values and key.isupper():
                out.append(f"{key}={values[key]}")
                done.add(key)
            else:
                out.append(line)
        missing = set(values) - done
        assert not missing, f".env.example lacks {missing}"
        return "\n".join(out) + "\n"

    # --- podman and compose ---------------------------------------------------------------------------
    def start_podman(self) -> None:
        # nsenter, not `ip netns exec`: that one also mounts a fresh /sys, which hides the cgroup mounts runc needs
        log = self.node.dir / "podman.log"
        argv = ["nsenter", f"--net=/run/netns/{self.node.ns}", "podman", "system", "service", "--time=0",
                f"unix://{self.sock}"]
        popen = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                                 env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")})
        self.service = self.node.procs["podman"] = Proc("podman", popen, log)
        self.lab.wait_for(self.sock.exists, 20, f"podman service socket of node {self.id}", interval=0.1)

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
               "DOCKER_HOST": f"unix://{self.sock}", "COMPOSE_HTTP_TIMEOUT": "300"}
        r = subprocess.run(["docker-compose", *args], cwd=self.project, env=env, capture_output=True,
                           text=True, timeout=timeout, check=False)
        with (self.node.dir / "compose.log").open("a") as f:
            f.write(f"$ docker-compose {' '.join(args)}\n{r.stdout}{r.stderr}\n")
        if check and r.returncode != 0:
            raise RuntimeError(f"node {self.id}: docker-compose {' '.join(args)} failed:\n{r.stderr[-3000:]}")
        return r

    def containers(self) -> list[dict[str, Any]]:
        out = subprocess.run(["podman", "ps", "-a", "--format", "json", "--filter",
                              f"label=com.docker.compose.project={self.project.name}"],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out or "[]")

    def health(self) -> dict[str, str]:
        """compose service -> state: 'healthy', 'unhealthy', 'starting', or the container state."""
        out = {}
        for c in self.containers():
            svc = c.get("Labels", {}).get("com.docker.compose.service", "?")
            st = subprocess.run(["podman", "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}",
                                 c["Id"]], capture_output=True, text=True, check=False).stdout.split()
            out[svc] = st[1] if len(st) > 1 and st[1] else (st[0] if st else "gone")
        return out

    def ready(self) -> bool:
        """GET /ready on the node's api, from inside the node's namespace."""
        r = subprocess.run(["ip", "netns", "exec", self.node.ns, "python3", "-c",
                            "import sys,urllib.request as u;"
                            f"sys.exit(0 if u.urlopen('http://{self.node.ip}:8080/ready',timeout=3).status==200 else 1)"],
                           capture_output=True, check=False, timeout=10)
        return r.returncode == 0

    def replace(self, *args: str) -> dict[str, str]:
        """`docker-compose *args` (an `up -d` that recreates containers), keeping the logs of the containers
        it replaces (compose removes them): followed from before the command to each one's end. Returns
        service -> log text of the container that was running before."""
        follow = {}
        for c in self.containers():
            if c.get("State") == "running":
                svc = c.get("Labels", {}).get("com.docker.compose.service", c["Id"][:12])
                path = self.node.dir / f"replaced-{svc}-{c['Id'][:12]}.txt"
                follow[svc] = (c["Id"], subprocess.Popen(["podman", "logs", "-f", c["Id"]], stdout=path.open("wb"),
                                                         stderr=subprocess.STDOUT), path)
        try:
            self.compose(*args)
        finally:
            kept = {c["Id"] for c in self.containers()}   # not replaced: its follower would never end
            for cid, p, _ in follow.values():
                if cid in kept:
                    p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        return {svc: path.read_text(errors="replace") for svc, (cid, _, path) in follow.items() if cid not in kept}

    def kill_containers(self) -> None:
        """Every container of the node SIGKILLed at once (`podman kill`, like a crash of the node's engine)."""
        ids = [c["Id"] for c in self.containers() if c.get("State") == "running"]
        if ids:
            subprocess.run(["podman", "kill", *ids], capture_output=True, check=False, timeout=30)

    def down(self) -> None:
        """The node thrown away: its containers SIGKILLed and removed at once with their anonymous volumes, the
        named ones pruned; not compose's graceful `down`, seconds per node for nothing (keepalived's start.sh
        waiting to give the VIP away, the acquirer's handover), as tests/ha's lab stops its processes."""
        ids = [c["Id"] for c in self.containers()]
        if ids:
            subprocess.run(["podman", "rm", "-f", "-t", "0", "-v", *ids], capture_output=True, check=False,
                           timeout=60)
        subprocess.run(["podman", "volume", "prune", "-f", "--filter",
                        f"label=com.docker.compose.project={self.project.name}"],
                       capture_output=True, check=False, timeout=60)


class HealthDriver(threading.Thread):
    """What podman's systemd timer does where there is no systemd: `podman healthcheck run` on every
    running container of the lab that has a health check, each at its own interval; in the check's start
    period until its first success, every START_INTERVAL_S (as Docker's start_interval)."""

    START_INTERVAL_S = 1.0

    def __init__(self, nodes: list[ComposeNode]) -> None:
        super().__init__(daemon=True, name="health-driver")
        self.nodes = nodes
        self.stop = threading.Event()
        self.due: dict[str, float] = {}
        self.timing: dict[str, tuple[float, float]] = {}
        self.seen: dict[str, float] = {}      # container -> when first seen running (its start, within 0.5 s)
        self.passed: set[str] = set()         # containers whose check has succeeded once

    def _timing(self, cid: str) -> tuple[float, float]:
        """The check's (interval, start period) in s; interval 0: the container has no health check."""
        if cid not in self.timing:
            out = subprocess.run(["podman", "inspect", "--format", "{{json .Config.Healthcheck}}", cid],
                                 capture_output=True, text=True, check=False).stdout.strip()
            hc = json.loads(out) if out and out != "null" else None
            self.timing[cid] = ((hc.get("Interval", 0) / 1e9 or 30.0, hc.get("StartPeriod", 0) / 1e9)
                                if hc and hc.get("Test") else (0.0, 0.0))
        return self.timing[cid]

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for n in self.nodes:
                try:
                    running = [c["Id"] for c in n.containers() if c.get("State") == "running"]
                except (subprocess.SubprocessError, json.JSONDecodeError):
                    continue
                now = time.monotonic()
                for cid in running:
                    iv, start_period = self._timing(cid)
                    if not iv or now < self.due.get(cid, 0.0):
                        continue
                    starting = cid not in self.passed and now - self.seen.setdefault(cid, now) < start_period
                    self.due[cid] = now + (min(iv, self.START_INTERVAL_S) if starting else iv)
                    # from the node's network namespace: a host-network container has none of its own,
                    # so the check's exec runs in the caller's (the timer's, on a real host the host's)
                    r = subprocess.run(["nsenter", f"--net=/run/netns/{n.node.ns}", "podman", "healthcheck", "run",
                                        cid], capture_output=True, check=False, timeout=60)
                    if r.returncode == 0:
                        self.passed.add(cid)


class ContainerLab(Lab):
    """tests/ha's namespaces and FEPROOT (SEMODEL.db with the lab's addresses), the FEP nodes in containers."""

    def __init__(self, timers: dict[str, float] | None = None, base: Path | None = None) -> None:
        super().__init__(timers, base)
        self.cnodes = {k: ComposeNode(self, n) for k, n in self.nodes.items()}
        self.health_driver: HealthDriver | None = None

    def start(self) -> ContainerLab:
        super().start()
        for cn in self.cnodes.values():
            cn.lay_out()
            cn.start_podman()
        self.health_driver = HealthDriver(list(self.cnodes.values()))
        self.health_driver.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        if self.health_driver is not None:
            self.health_driver.stop.set()
            self.health_driver.join(10)
        for cn in self.cnodes.values():
            cn.down()
            if cn.service is not None:  # podman's own stop (SIGTERM), not the lab's SIGKILL of what is left
                cn.service.stop()
        super().close()

    def logs(self) -> str:
        out = [super().logs()]
        for cn in self.cnodes.values():
            for c in cn.containers():
                svc = c.get("Labels", {}).get("com.docker.compose.service", c["Id"][:12])
                r = subprocess.run(["podman", "logs", "--tail", "30", c["Id"]], capture_output=True, text=True,
                                   check=False)
                out.append(f"--- node {cn.id} container {svc}\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
        return "\n".join(out)


