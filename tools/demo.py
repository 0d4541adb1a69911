"""The README's first command (`./demo`): a complete two-node fep-ha on this one machine.

    node A = 127.0.0.1: master Redis, acquirer, forwarder (IEC 104 :2404, Modbus :1502, sefeps :7070), api :8080
    node B = 127.0.0.2: replica Redis, acquirer, forwarder, api on the same ports of 127.0.0.2
    PLCs   = fep-plcsim serving the sample SEMODEL.db's devices on 127.0.0.1 (channel 1) and 127.0.0.3 (channel 2)
    RTU    = fep-rtu104sim serving its IEC 104 RTU (Substation South) on 127.0.0.1:2414 and 127.0.0.3:2414,
             one spontaneous event a second

Loopback addresses stand in for the two hosts, so no namespaces and no root are needed for the run
itself (`.ci/install` may need root to apt-get the Debian packages). There is no keepalived in the demo:
the "VIP" is node A's address, fixed; the HA suite (tests/ha) shows the failover with keepalived.
Everything it starts is a child process stopped by its PID on Ctrl-C (or after --seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.redisproc import RedisProc

REPO = Path(__file__).resolve().parent.parent
NODES = {"A": "127.0.0.1", "B": "127.0.0.2"}


class Demo:
    def __init__(self, root: Path, redis_port: int, api_port: int) -> None:
        self.root = root
        self.redis_port = redis_port
        self.api_port = api_port
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.redis: list[RedisProc] = []

    # --- steps ---------------------------------------------------------------------------------------
    def prepare_root(self) -> None:
        """A FEPROOT of its own (run/demo): the sample cfg/, SEMODEL.db built by `sysload build`."""
        if self.root.exists():
            shutil.rmtree(self.root)
        shutil.copytree(REPO / "cfg", self.root / "cfg")
        self.check(["sysload", "build"], self.env("A"))

    def start_redis(self) -> None:
        data = self.root / "redis"
        a = RedisProc(host=NODES["A"], port=self.redis_port, appendonly=True, dir=data / "A")
        b = RedisProc(host=NODES["B"], port=self.redis_port, appendonly=True, dir=data / "B",
                      replicaof=(NODES["A"], self.redis_port))
        for r in (a, b):
            r.dir.mkdir(parents=True, exist_ok=True)   # type: ignore[union-attr]
            r.start()
            self.redis.append(r)
        b.wait_synced()

    def load(self) -> None:
        """Seed: `sysload init` only on the VIP's node (here node A, the master)."""
        print(self.check(["sysload", "init"], self.env("A")).stdout.rstrip())

    def start_plcs(self) -> None:
        self.spawn("plcsim", ["fep-plcsim", "--db", str(self.root / "db" / "SEMODEL.db")], self.env("A"))

    def start_rtu104(self) -> None:
        """The sample's IEC 104 RTU (PROTOCOL iec104), beside the Modbus PLCs."""
        self.spawn("rtu104sim", ["fep-rtu104sim", "--db", str(self.root / "db" / "SEMODEL.db"), "--rate", "1"],
                   self.env("A"))

    def start_node(self, node: str) -> None:
        for prog in ("fep-acquirer", "fep-forwarder", "fep-api"):
            self.spawn(f"{prog}-{node}", [prog], self.env(node))

    def wait_ready(self, timeout: float = 30.0) -> dict[str, bool]:
        ready = {n: False for n in NODES}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(ready.values()):
            for n, ip in NODES.items():
                if not ready[n]:
                    try:
                        with urllib.request.urlopen(f"http://{ip}:{self.api_port}/ready", timeout=2) as r:
                            ready[n] = r.status == 200
                    except OSError:
                        pass
            self.check_children()
            time.sleep(0.5)
        return ready

    # --- process handling ----------------------------------------------------------------------------
    def env(self, node: str) -> dict[str, str]:
        ip = NODES[node]
        return {**os.environ, "FEPROOT": str(self.root), "FEP_NODE_ID": node, "FEP_NODE_IP": ip,
                "FEP_NODE_BIND": ip, "FEP_REDIS_VIP": NODES["A"], "FEP_REDIS_PORT": str(self.redis_port),
                "FEP_REDIS_LOCAL_HOST": ip, "FEP_REDIS_LOCAL_PORT": str(self.redis_port),
                "FEP_API_BIND": ip, "FEP_API_PORT": str(self.api_port), "FEP_LOG_CONSOLE": "false"}

    def check(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"demo: {' '.join(argv)} failed:\n{r.stdout}{r.stderr}")
        return r

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        if not shutil.which(argv[0]):
            raise SystemExit(f"demo: {argv[0]} is not installed yet (.ci/install)")
        log = (self.root / "log")
        log.mkdir(exist_ok=True)
        p = subprocess.Popen(argv, env=env, stdout=(log / f"{name}.out").open("ab"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append((name, p))

    def check_children(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                out = (self.root / "log" / f"{name}.out").read_text(errors="replace")[-1500:]
                raise SystemExit(f"demo: {name} exited with {p.returncode}:\n{out}")

    def stop(self) -> None:
        for _name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _name, p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()
        for r in reversed(self.redis):
            r.stop()
        self.redis.clear()

    def banner(self) -> str:
        a, b = NODES["A"], NODES["B"]
        return f"""
fep-ha demo running: two nodes on this machine (no keepalived: the master Redis stays on node A).

  dashboard       http://{a}:{self.api_port}/   (node A)      http://{b}:{self.api_port}/   (node B)
  IEC 104         {a}:2404 and {b}:2404, common address 1; a reference master (c104's client) on both
                  nodes, printing what it receives (GI, then spontaneous changes) as JSON lines:
                    fep-scada-probe --db {self.root / 'db' / 'SEMODEL.db'} --node A={a} --node B={b}
  Modbus TCP      mbpoll -m tcp -p 1502 -a 1 -t 3:float -B -r 1 -c 2 {a}   (tank level, flow: input registers)
                  mbpoll -m tcp -p 1502 -a 1 -t 1 -r 1 -c 3 {b}            (pumps, link: discrete inputs)
  IEC 104 RTU     fep-rtu104sim (Substation South, RTU 3) on 127.0.0.1:2414 / 127.0.0.3:2414, common address 3:
                  both acquirers connected, the lease holder started; its events reach the IEC 104 masters
                  above with the RTU's own time tags (IOA 6 breaker Q3, 1005 line voltage)
  sefeps          python -m fep_tools.sefeps_client --help
  Redis           redis-cli -h {a} -p {self.redis_port}   (master)    redis-cli -h {b} -p {self.redis_port}   (replica)
  logs            {self.root / 'log'}

Ctrl-C stops everything the demo started.
"""


def main(argv: list[str] | None = None) -> int:
    # the commands (fep-acquirer, sysload, ...) beside this interpreter: the project venv, even when not activated
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    ap = argparse.ArgumentParser(prog="demo", description="two-node fep-ha demo on this machine")
    ap.add_argument("--no-install", action="store_true", help="do not run .ci/install first")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    ap.add_argument("--redis-port", type=int, default=16379)
    ap.add_argument("--api-port", type=int, default=8080)
    ap.add_argument("--root", type=Path, default=REPO / "run" / "demo", help="the demo's FEPROOT")
    args = ap.parse_args(argv)

    demo = Demo(args.root, args.redis_port, args.api_port)
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("preparing FEPROOT", args.root)
        demo.prepare_root()
        print(f"starting Redis master on {NODES['A']}:{args.redis_port}, replica on {NODES['B']}:{args.redis_port}")
        demo.start_redis()
        demo.load()
        demo.start_plcs()
        demo.start_rtu104()
        demo.start_node("A")
        demo.start_node("B")
        ready = demo.wait_ready()
        print("api /ready:", ", ".join(f"node {n} {'ready' if ok else 'NOT ready'}" for n, ok in ready.items()))
        print(demo.banner(), flush=True)
        t_end = time.monotonic() + args.seconds if args.seconds else None
        while not stop["now"] and (t_end is None or time.monotonic() < t_end):
            demo.check_children()
            time.sleep(0.5)
        return 0 if all(ready.values()) else 1
    finally:
        demo.stop()   # first: a closed stdout (demo | head) must not leave processes behind
        try:
            print("stopped everything the demo started", flush=True)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
