"""Two real FEP nodes on one machine: Linux network namespaces on a bridge, addresses in 198.18.0.0/15.

    switch ns  : bridge br0, one veth per host
    node A ns  : 198.18.0.1 (+ the VIP 198.18.0.10 while keepalived holds it)
    node B ns  : 198.18.0.2
    PLC ns     : 198.18.0.20 (channel 1 of every device) and 198.18.0.21 (channel 2)
    SCADA ns   : 198.18.0.30

Each node runs its own redis-server (compose.yml's command: appendonly, booting as replica of the peer),
keepalived through deploy/keepalived/start.sh (with the role and track scripts), and the FEP services
with the command and environment that compose.yml gives them (read through `docker-compose config`, so
the file's own substitution is exercised). Everything is stopped by PID (process group) and every
namespace deleted, also on failure (`close()` is registered with atexit by `Lab.start`).

Cuts are iptables DROP rules in one node's namespace: cutting 198.18.0.20 on node A silently drops what
A exchanges with the PLC's first address (a cable cut as A sees it) without touching node B.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fepha import keyspace as ks
from tests.prereq import require

REPO = Path(__file__).resolve().parents[2]
NET = "198.18.0"
IP = {"A": f"{NET}.1", "B": f"{NET}.2"}
VIP = f"{NET}.10"
PLC_IPS = (f"{NET}.20", f"{NET}.21")
SCADA_IP = f"{NET}.30"
REDIS_PORT = 6379
PASSWORD = "ha-suite"
FIGURES: dict[str, float | int | str] = {}
"""Figures measured by the scenarios (VIP move time, ...), printed at the end of the suite."""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def can_run() -> str | None:
    """None when the suite can run here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    for tool in ("ip", "iptables", "keepalived", "redis-server", "redis-cli", "docker-compose"):
        if not shutil.which(tool):
            return f"{tool} not installed (.ci/install)"
    probe = f"fhprobe{os.getpid() % 100000}"
    made = sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create network namespaces here: {made.stderr.strip()}"
    sh("ip", "netns", "delete", probe, check=False)
    return None


def ha_semodel_sql() -> str:
    """The sample SEMODEL.sql with the lab's addresses: nodes .1/.2, PLC channels .20/.21."""
    sql = (REPO / "cfg" / "SEMODEL.sql").read_text()
    sql = sql.replace("(1, '127.0.0.1', '127.0.0.2')", f"(1, '{IP['A']}', '{IP['B']}')")
    out = []
    for line in sql.splitlines():
        if line.startswith("INSERT INTO T010_CHANNEL"):
            line = line.replace("'127.0.0.1'", f"'{PLC_IPS[0]}'").replace("'127.0.0.3'", f"'{PLC_IPS[1]}'")
        out.append(line)
    return "\n".join(out) + "\n"


def compose_services(env: dict[str, str]) -> dict[str, Any]:
    """compose.yml resolved by Debian's docker-compose with `env` (what `docker compose up` would run)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("FEP_", "NODE_", "PEER_", "VIP"))}
    full.update(env)
    with tempfile.TemporaryDirectory() as d:   # a project dir without .env: only `env` counts
        shutil.copy(REPO / "compose.yml", Path(d) / "compose.yml")
        out = subprocess.run(["docker-compose", "-f", str(Path(d) / "compose.yml"), "config"], env=full,
                             check=True, capture_output=True, text=True).stdout
    return yaml.safe_load(out)["services"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, wait: float = 8.0) -> None:
        """Signal the process group this process leads (its own children: keepalived's VRRP child,
        ip netns exec's program), then SIGKILL what is left."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(5)


@dataclass
class Node:
    lab: Lab
    id: str
    ns: str
    dir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def ip(self) -> str:
        return IP[self.id]

    @property
    def peer(self) -> Node:
        return self.lab.nodes["B" if self.id == "A" else "A"]

    def env(self) -> dict[str, str]:
        """The node's .env, as an operator would write it from .env.example."""
        t = self.lab.timers
        return {"NODE_ID": self.id, "NODE_IP": self.ip, "PEER_IP": self.peer.ip, "VIP": VIP,
                "VRRP_INTERFACE": "eth0", "REDIS_PASSWORD": PASSWORD, "VRRP_ROUTER_ID": "51",
                "FEP_BIND": self.ip, "API_BIND": self.ip, "API_PORT": "8080",
                "CHANNEL_SWITCH_S": str(t["channel_switch_s"]), "TAKEOVER_S": str(t["takeover_s"]),
                "LEASE_TTL_S": str(t["lease_ttl_s"]), "LOG_LEVEL": "INFO"}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.dir / f"{name}.log"
        full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **(env or {})}
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], env=full, stdout=log.open("ab"),
                             stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir)
        self.procs[name] = Proc(name, p, log)
        return self.procs[name]

    # --- redis -------------------------------------------------------------------------------------
    def start_redis(self) -> Proc:
        """compose.yml's redis command (appendonly, boots as a replica of the peer), its data in the node's
        directory instead of the container's /data; no RDB snapshots and no diskless-sync delay (faster
        resyncs in the lab)."""
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        cmd = self.lab.compose(self)["redis"]["command"]
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        argv[argv.index("--dir") + 1] = str(data)
        argv += ["--save", "", "--loglevel", "notice", "--repl-diskless-sync", "yes",
                 "--repl-diskless-sync-delay", "0"]
        p = self.spawn("redis", argv)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.redis_cli("ping") == "PONG":
                return p
            time.sleep(0.05)
        raise RuntimeError(f"redis on node {self.id} did not start: {p.log.read_text()[-400:]}")

    def redis_cli(self, *args: str, host: str | None = None) -> str:
        r = subprocess.run(["ip", "netns", "exec", self.ns, "redis-cli", "--no-auth-warning", "-a", PASSWORD,
                            "-h", host or self.ip, "-p", str(REDIS_PORT), *args],
                           capture_output=True, text=True, timeout=5, check=False)
        return r.stdout.strip()

    def role(self) -> str:
        """'master', 'slave' or '' (down)."""
        out = self.redis_cli("role")
        return out.splitlines()[0] if out else ""

    # --- keepalived --------------------------------------------------------------------------------
    def start_keepalived(self) -> Proc:
        run = self.dir / "run"
        run.mkdir(exist_ok=True)
        svc = self.lab.compose(self)["keepalived"]
        env = {k: str(v) for k, v in svc["environment"].items()}
        env.update(FEP_RUN=str(run), DEPLOY=str(REPO / "deploy" / "keepalived"))
        env["ROLE_LOG"] = str(self.dir / "redis-role.log")
        argv = [str(REPO / "deploy" / "keepalived" / Path(svc["command"][0]).name)]
        return self.spawn("keepalived", argv, env)

    def has_vip(self) -> bool:
        out = sh("ip", "-n", self.ns, "-o", "addr", "show", "dev", "eth0", check=False).stdout
        return f"inet {VIP}/" in out

    # --- FEP services, as compose.yml runs them -----------------------------------------------------
    def start_service(self, service: str, extra_env: dict[str, str] | None = None) -> Proc:
        svc = self.lab.compose(self)[service]
        env = {k: "" if v is None else str(v) for k, v in svc.get("environment", {}).items()}
        env.update(FEPROOT=str(self.lab.feproot), FEP_LOG_DIR=str(self.dir / "log"))
        # keepalived's sign of life: compose.yml shares /run/fep (its FEP_RUN) with the services; here each
        # node's FEP_RUN is its own directory
        env["FEP_QUALITY_VRRP_ALIVE_FILE"] = str(self.dir / "run" / "vrrp.alive")
        env.update(extra_env or {})
        return self.spawn(service, [str(a) for a in svc["command"]], env)

    # --- failures ----------------------------------------------------------------------------------
    def crash(self) -> None:
        """Power cut: every process of the node SIGKILLed (no goodbye advert), link down."""
        for p in list(self.procs.values()):
            p.stop(signal.SIGKILL)
        self.link(False)

    def reboot_network(self) -> None:
        """After a crash: the VIP a killed keepalived left behind is gone with the reboot; link up."""
        sh("ip", "-n", self.ns, "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)
        self.link(True)

    def link(self, up: bool) -> None:
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up" if up else "down")

    def cut(self, addr: str, port: int | None = None) -> None:
        """Drop everything between this node and `addr`, both directions (iptables in the node's
        namespace; a blackhole route would not stop keepalived, whose socket is bound to eth0).
        With `port`: only TCP to/from that port of `addr` (one device of a host serving several)."""
        for rule in self._cut_rules(addr, port):
            sh("ip", "netns", "exec", self.ns, "iptables", "-w", "-A", *rule, "-j", "DROP")

    def heal(self, addr: str, port: int | None = None) -> None:
        for rule in self._cut_rules(addr, port):
            sh("ip", "netns", "exec", self.ns, "iptables", "-w", "-D", *rule, "-j", "DROP", check=False)

    @staticmethod
    def _cut_rules(addr: str, port: int | None) -> list[list[str]]:
        if port is None:
            return [["OUTPUT", "-d", addr], ["INPUT", "-s", addr]]
        return [["OUTPUT", "-d", addr, "-p", "tcp", "--dport", str(port)],
                ["INPUT", "-s", addr, "-p", "tcp", "--sport", str(port)]]

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        for name in reversed(list(self.procs)):
            self.procs[name].stop(sig)


class Lab:
    def __init__(self, timers: dict[str, float] | None = None, base: Path | None = None) -> None:
        self.prefix = f"fh{os.getpid() % 100000}"
        self.timers = {"channel_switch_s": 3, "takeover_s": 6, "lease_ttl_s": 4, **(timers or {})}
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir=base))
        self.feproot = self.dir / "feproot"
        self.ns = {k: f"{self.prefix}{k}" for k in ("sw", "a", "b", "plc", "scada")}
        self.nodes = {n: Node(self, n, self.ns[n.lower()], self.dir / f"node{n}") for n in ("A", "B")}
        self.extra: list[Proc] = []
        self._compose: dict[str, dict[str, Any]] = {}
        self._closed = False

    def compose(self, node: Node) -> dict[str, Any]:
        if node.id not in self._compose:
            self._compose[node.id] = compose_services(node.env())
        return self._compose[node.id]

    # --- network ---------------------------------------------------------------------------------------
    def start(self) -> Lab:
        atexit.register(self.close)
        for n in self.nodes.values():
            n.dir.mkdir(parents=True)
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sw = self.ns["sw"]
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        addrs = {"a": [IP["A"]], "b": [IP["B"]], "plc": list(PLC_IPS), "scada": [SCADA_IP]}
        for key, ips in addrs.items():
            ns = self.ns[key]
            sh("ip", "-n", sw, "link", "add", f"p{key}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", sw, "link", "set", f"p{key}", "master", "br0", "up")
            for ip in ips:
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self._feproot()
        return self

    def _feproot(self) -> None:
        from fepha.semodel import db
        (self.feproot / "cfg").mkdir(parents=True)
        for f in ("fep-ha.cfg", "syslod.cfg"):
            shutil.copy(REPO / "cfg" / f, self.feproot / "cfg" / f)
        sql = self.feproot / "cfg" / "SEMODEL.sql"
        sql.write_text(ha_semodel_sql())
        db.build(sql, self.feproot / "db" / "SEMODEL.db")

    def spawn(self, ns_key: str, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.dir / f"{name}.log"
        full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                "FEPROOT": str(self.feproot), "FEP_LOG_DIR": "", **(env or {})}
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[ns_key], *argv], env=full, stdout=log.open("ab"),
                             stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir)
        proc = Proc(name, p, log)
        self.extra.append(proc)
        return proc

    # --- the pair --------------------------------------------------------------------------------------
    def start_pair(self, wait: float = 20.0) -> Node:
        """Both Redis and keepalived; returns the node that ends up holding the VIP (its Redis master)."""
        a, b = self.nodes["A"], self.nodes["B"]
        a.start_redis()
        b.start_redis()
        a.start_keepalived()
        holder = self.wait_for(lambda: a if a.has_vip() and a.role() == "master" else None, wait, "A master")
        b.start_keepalived()
        self.wait_for(lambda: b.redis_cli("info", "replication").find("master_link_status:up") >= 0,
                      wait, "B replica in sync")
        return holder

    def sysload_init(self, node: Node) -> str:
        """`sysload init` with the loader service's command, on the VIP's node (seed)."""
        svc = self.compose(node)["loader"]
        env = {k: "" if v is None else str(v) for k, v in svc.get("environment", {}).items()}
        env.update(FEPROOT=str(self.feproot), FEP_LOG_DIR="", PATH=os.environ["PATH"])
        r = subprocess.run(["ip", "netns", "exec", node.ns, *[str(a) for a in svc["command"]]], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"sysload init failed: {r.stderr}")
        return r.stdout

    @staticmethod
    def wait_for(fn: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = fn()
            if v:
                return v
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # keepalived first, and everything by SIGKILL: the lab is thrown away, and a graceful stop is seconds
        # of teardown for nothing (start.sh waiting for the peer to take over, docs/ha.md "keepalived
        # stopped"; a master Redis waiting up to its shutdown-timeout, 10 s, for a replica that is cut off;
        # the SCADA probe's client threads; the acquirer's handover). How each stops on SIGTERM is proven
        # by the tests that stop them (tests/faults/test_planned_stop.py, test_keepalived_stop.py).
        for n in self.nodes.values():
            if "keepalived" in n.procs:
                n.procs["keepalived"].stop(signal.SIGKILL)
        for p in reversed(self.extra):
            p.stop(signal.SIGKILL)
        for n in self.nodes.values():
            n.stop_all(signal.SIGKILL)
        for ns in self.ns.values():
            sh("ip", "netns", "del", ns, check=False)
        if not os.environ.get("FEP_HA_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        """Tail of every log, for a failure message."""
        out = []
        for f in sorted(self.dir.rglob("*.log")):
            out.append(f"--- {f.relative_to(self.dir)}\n{f.read_text(errors='replace')[-1500:]}")
        return "\n".join(out)


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]



def healthcheck(lab: Lab, node: Node, service: str) -> subprocess.CompletedProcess:
    """Run the service's compose.yml health check command in the node's namespace."""
    svc = lab.compose(node)[service]
    env = {k: "" if v is None else str(v) for k, v in svc.get("environment", {}).items()}
    env.update(FEPROOT=str(lab.feproot), FEP_LOG_DIR="", PATH=os.environ["PATH"])
    return subprocess.run(["ip", "netns", "exec", node.ns, *svc["healthcheck"]["test"][1:]], env=env,
                          capture_output=True, text=True, timeout=20, check=False)


def start_probe(lab: Lab) -> Proc:
    """The SCADA host: IEC 104 + Modbus clients to both nodes (tools/scada_probe.py)."""
    import sys
    return lab.spawn("scada", "probe", [sys.executable, "-m", "fep_tools.scada_probe", "--db",
                                        str(lab.feproot / "db" / "SEMODEL.db"), "--node", f"A={IP['A']}",
                                        "--node", f"B={IP['B']}"], {"PYTHONPATH": str(REPO)})


def probe_records(p: Proc) -> list[dict[str, Any]]:
    return parse_json_lines(p.log.read_text(errors="replace"))


# --- the whole system: PLC simulator, FEP services on both nodes, Redis views (scenarios 1-7) --------
PLC_CONTROL_PORT = 15020


def lab_model(lab: Lab) -> Any:
    """The lab's SEMODEL.db as a fepha Model (acquisition RTUs, points, forwards)."""
    from fepha.semodel import db
    from fepha.semodel.model import Model
    rows, problems = db.read_rows(lab.feproot / "db" / "SEMODEL.db")
    assert not problems, problems
    return Model.from_rows(rows)


def acquisition_rtus(lab: Lab) -> list[int]:
    """The Modbus RTUs the lab's fep-plcsim serves (the sample's IEC 104 RTU has no device in the lab)."""
    return sorted(r.id for r in lab_model(lab).modbus_rtus())


def start_plcsim(lab: Lab, rate: float = 0.0) -> Proc:
    """`fep-plcsim` in the PLC namespace: every device on 198.18.0.20 (channel 1) and .21 (channel 2),
    static values by default (rate 0) so that the scenarios decide every change; control port on the
    PLC host's loopback (see `plc`)."""
    p = lab.spawn("plc", "plcsim", ["fep-plcsim", "--db", str(lab.feproot / "db" / "SEMODEL.db"),
                                    "--rate", str(rate), "--control", f"127.0.0.1:{PLC_CONTROL_PORT}",
                                    "--journal", str(lab.dir / "plcsim.jsonl")])
    lab.wait_for(lambda: plc(lab, "status").startswith("ok"), 20, "plcsim control port", interval=0.2)
    return p


def plc(lab: Lab, command: str) -> str:
    """One command on the simulator's control port (docs/plcsim.md), from inside the PLC namespace:
    `cut RTU [CH]`, `restore RTU [CH]`, `set PNTID VALUE`, `get PNTID`, `rate R`, `status`."""
    script = (f"exec 3<>/dev/tcp/127.0.0.1/{PLC_CONTROL_PORT} || exit 1; printf '%s\\n' \"$1\" >&3; "
              "IFS= read -r -t 10 line <&3; printf '%s' \"$line\"")
    r = subprocess.run(["ip", "netns", "exec", lab.ns["plc"], "bash", "-c", script, "plc", command],
                       capture_output=True, text=True, timeout=15, check=False)
    return r.stdout.strip()


def start_system(lab: Lab, services: tuple[str, ...] = ("acquirer", "forwarder"), rate: float = 0.0,
                 probe: bool = True) -> tuple[Node, Proc | None]:
    """Redis pair + keepalived, `sysload init` on the VIP's node, the PLC simulator, `services` on both
    nodes (compose.yml's command and env), optionally the SCADA probe. Returns (VIP node, probe)."""
    master = lab.start_pair()
    lab.sysload_init(master)
    for n in lab.nodes.values():
        lab.wait_for(lambda n=n: n.redis_cli("get", ks.CFG_GEN) == "1", 15, f"configuration on {n.id}")
    start_plcsim(lab, rate)
    for n in lab.nodes.values():
        for s in services:
            n.start_service(s)
    return master, (start_probe(lab) if probe else None)


def hgetall(node: Node, key: str) -> dict[str, str]:
    """HGETALL through redis-cli in the node's namespace (its local Redis unless told otherwise)."""
    lines = node.redis_cli("hgetall", key).splitlines()
    return dict(zip(lines[0::2], lines[1::2], strict=False))


def lease(node: Node, rtu: int) -> dict[str, str]:
    return hgetall(node, ks.lease(rtu))


def holders(node: Node, rtus: list[int]) -> dict[int, str]:
    """Lease holder of each RTU as `node`'s Redis sees it ('' when none)."""
    return {r: lease(node, r).get("holder", "") for r in rtus}


def channel_state(node: Node, rtu: int, of: str | None = None) -> dict[str, str]:
    """The channel-state hash that node `of` (default: `node` itself) writes for `rtu`."""
    return hgetall(node, ks.channel_state(rtu, of or node.id))


def link_state(node: Node, rtu: int) -> dict[str, str]:
    """vala/valb/val (+ since_*) of one acquisition RTU."""
    return hgetall(node, ks.link(rtu))


def point_value(node: Node, rtu: int, point: int) -> Any:
    """The decoded value record (fepha.points.Value) of one point, or None."""
    from fepha import points
    rec = node.redis_cli("hget", ks.values(rtu), str(point))
    return points.decode(rec) if rec else None


def vpoint_value(node: Node, vpid: int) -> Any:
    from fepha import points
    rec = node.redis_cli("hget", ks.VPOINTS, str(vpid))
    return points.decode(rec) if rec else None


def iec104_last(p: Proc, node: str, ioa: int, since: float = 0.0) -> dict[str, Any] | None:
    """The last IEC 104 object with this IOA that node `node`'s forwarder sent to the probe."""
    recs = [r for r in probe_records(p) if r["src"] == "iec104" and r["node"] == node and r["ioa"] == ioa
            and r["t"] >= since]
    return recs[-1] if recs else None


def modbus_last(p: Proc, node: str, kind: str, addr: int, since: float = 0.0) -> dict[str, Any] | None:
    """The last change the probe read from node `node`'s Modbus server at (kind 'di'|'ir', addr)."""
    recs = [r for r in probe_records(p) if r["src"] == "modbus" and r["node"] == node and r["kind"] == kind
            and r["addr"] == addr and r["t"] >= since]
    return recs[-1] if recs else None


def one_holder_each(lab: Lab, rtus: list[int], timeout: float = 40) -> dict[int, str]:
    """Wait until every acquisition RTU has a holder and both Redis agree on it; returns the holders."""
    a, b = lab.nodes["A"], lab.nodes["B"]

    def agreed() -> dict[int, str] | None:
        h = holders(a, rtus)
        return h if all(v in IP for v in h.values()) and holders(b, rtus) == h else None
    return lab.wait_for(agreed, timeout, "one holder per acquisition RTU, seen by both Redis", interval=0.3)


def stays(fn: Any, seconds: float, what: str, interval: float = 0.5) -> None:
    """Assert that `fn()` holds at every check during `seconds` (for "nothing moves by itself")."""
    end = time.monotonic() + seconds
    while True:
        assert fn(), what
        if time.monotonic() >= end:
            return
        time.sleep(interval)


def device_port(lab: Lab, rtu: int) -> int:
    """The TCP port of an acquisition RTU's channel 1 (the lab serves both channels on the same port)."""
    return lab_model(lab).rtus[rtu].channels[0].port


def last_lease_event(node: Node) -> dict[str, str]:
    """Fields of the newest entry of the lease-events stream (rtu, from, to, epoch, reason, ts_ms)."""
    lines = node.redis_cli("xrevrange", ks.LEASE_EVENTS, "+", "-", "count", "1").splitlines()[1:]
    return dict(zip(lines[0::2], lines[1::2], strict=False))


def value_flows(lab: Lab, probe: Proc, node: Node, rtu: int, point: int, ioa: int, value: float,
                nodes: tuple[str, ...] = ("A", "B"), timeout: float = 20) -> None:
    """Set `point` on its device now; wait until `node`'s Redis holds it with good quality and the IEC 104
    clients of `nodes` received it at `ioa` (a float point, forwarded unscaled)."""
    t0 = time.time()
    assert plc(lab, f"set {point} {value}") == "ok"

    def in_redis() -> bool:
        v = point_value(node, rtu, point)
        return v is not None and v.quality == 0 and abs(v.value - value) < 1e-3
    lab.wait_for(in_redis, timeout, f"point {point} = {value} (good) in {node.id}'s Redis", interval=0.2)
    for n in nodes:
        def got(n: str = n) -> bool:
            rec = iec104_last(probe, n, ioa, t0)
            return rec is not None and abs(float(rec["value"]) - value) < 1e-3
        lab.wait_for(got, timeout, f"IEC 104 client on {n}: IOA {ioa} = {value}", interval=0.2)


@contextlib.contextmanager
def running_lab(request: Any, timers: dict[str, float] | None = None, base: Path | None = None) -> Iterator[Lab]:
    """A fresh lab for one test (skipped where the suite cannot run), its logs printed when the test
    failed, always torn down (processes by PID, namespaces), also on failure."""

    reason = can_run()
    require(reason, "HA suite")
    if base is not None:
        base.mkdir(exist_ok=True)
    lab = Lab(timers, base=base)
    try:
        lab.start()
        yield lab
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(lab.logs())
        lab.close()
