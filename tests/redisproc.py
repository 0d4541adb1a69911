"""Real redis-server processes for tests, benchmarks and the demo: started on a free port, stopped by PID.

No fakeredis anywhere: a `RedisProc` is a real server with its own directory, optionally a replica of
another. `stop()` sends SIGTERM to its own PID (never a kill by name) and waits for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import redis


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return path


@dataclass
class RedisProc:
    host: str = "127.0.0.1"
    port: int = 0
    replicaof: tuple[str, int] | None = None
    password: str = ""
    appendonly: bool = False
    dir: Path | None = None
    extra: list[str] = field(default_factory=list)
    netns: str | None = None
    env: dict[str, str] | None = None  # added to the server's environment (e.g. LD_PRELOAD)
    proc: subprocess.Popen | None = None
    _own_dir: bool = False

    def start(self, timeout: float = 10.0) -> RedisProc:
        if not self.port:
            self.port = free_port(self.host)
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix=f"fep-redis-{self.port}-"))
            self._own_dir = True
        args = [redis_server_binary(), "--port", str(self.port), "--bind", self.host, "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.dir / "redis.log"), "--lazyfree-lazy-server-del", "yes",
                "--repl-diskless-sync-delay", "0"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replicaof:
            args += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        args += self.extra
        if self.netns:
            args = ["ip", "netns", "exec", self.netns, *args]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **self.env} if self.env else None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    break
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text() if (self.dir / "redis.log").exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on {self.host}:{self.port} did not start: {log[-500:]}")
            time.sleep(0.02)
        return self

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password or None,
                           decode_responses=True, socket_timeout=5, **kw)  # type: ignore[arg-type]

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Replica only: wait until the initial sync with its master is done."""
        deadline = time.monotonic() + timeout
        c = self.client()
        while time.monotonic() < deadline:
            info = c.info("replication")
            if info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"replica {self.port} not in sync")

    def caught_up(self, master: RedisProc, timeout: float = 10.0) -> None:
        """Replica only: wait until it has applied everything `master` has written so far.

        WAIT would not do here: it only counts the writes of its own connection, and the writes under test
        come from another process's connection.
        """
        target = master.client().info("replication")["master_repl_offset"]
        deadline = time.monotonic() + timeout
        c = self.client()
        while time.monotonic() < deadline:
            if c.info("replication").get("slave_repl_offset", -1) >= target:
                return
            time.sleep(0.02)
        raise TimeoutError(f"replica {self.port} did not reach offset {target}")

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets (a hung master)."""
        if self.proc:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and directory (keeps data only with appendonly)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
