"""Faults injected into the running processes of one node: a real redis-server (no persistence), fep-plcsim's
PLCs as devices, the real `fep-acquirer` and `fep-forwarder` processes (configured by FEP_* variables as in
their containers, timers shortened), the api in this test, and a sefeps master (SCADA) reading RTU 12."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fep_loader.store import replace_config
from fep_tools.plcsim import PlcSim
from fep_tools.sefeps_client import SefepsClient
from fepha import config
from fepha.points import Quality
from fepha.semodel.model import Model
from tests.api.test_with_services import COMMANDS, exited, kill_leftovers, node_env, system_rows
from tests.redisproc import RedisProc

NT = int(Quality.NT)
SEFEPS_RTU = 12
AI_RTU1, AI_RTU2 = 1, 2  # sefeps addresses of points 101 (RTU 1) and 202 (RTU 2)
VP_RTU1 = 11  # sefeps address of virtual point 901 (RTU 1's link)


@dataclass
class Node:
    feproot: Path
    redis: RedisProc
    rows: dict[str, list[dict[str, Any]]]
    env: dict[str, str]
    api: httpx.AsyncClient
    sim: PlcSim
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, service: str) -> None:
        env = {**os.environ, "FEPROOT": str(self.feproot), "FEP_LOG_DIR": "", **self.env}
        with open(self.log_path(service), "ab") as log:
            self.procs[service] = subprocess.Popen([sys.executable, "-m", COMMANDS[service]], env=env,
                                                   stdout=log, stderr=log)

    def log_path(self, service: str) -> Path:
        return self.feproot / f"{service}.log"

    def log(self, service: str) -> str:
        return self.log_path(service).read_text(errors="replace")

    @property
    def sefeps_port(self) -> int:
        return next(r["LISTENPORT"] for r in self.rows["T004_RTU"] if r["RTUID"] == SEFEPS_RTU)


@contextlib.asynccontextmanager
async def running_node(feproot: Path, make_api: Any, rp: RedisProc) -> AsyncIterator[Node]:
    """The sample configuration loaded into `rp` (started), its PLCs simulated, both services started."""
    rows = system_rows(feproot)
    replace_config(rp.client(), rows, source="sample")
    sim = PlcSim(Model.from_rows(rows))
    await sim.start()
    env = node_env("A", rp, rp)
    n = Node(feproot, rp, rows, env, await make_api(config.load_node(feproot, env=env)), sim)
    try:
        for service in COMMANDS:
            n.start(service)
        yield n
    finally:
        kill_leftovers(n.procs.values())
        await sim.stop()


@pytest.fixture
async def node(feproot: Path, make_api: Any) -> AsyncIterator[Node]:
    with RedisProc() as rp:
        async with running_node(feproot, make_api, rp) as n:
            yield n


async def sefeps(node: Node) -> SefepsClient:
    end = time.monotonic() + 10
    while True:
        c = SefepsClient("127.0.0.1", node.sefeps_port)
        try:
            await c.connect()
            return c
        except OSError:
            assert time.monotonic() < end, "sefeps server not listening"
            await asyncio.sleep(0.1)


async def until_quality(c: SefepsClient, want: dict[int, bool], timeout: float) -> dict[int, tuple[Any, int]]:
    """Read changes until each address in `want` last had NT set (True) or clear (False)."""
    last: dict[int, tuple[Any, int]] = {}
    end = time.monotonic() + timeout
    while any((a not in last) or bool(last[a][1] & NT) != nt for a, nt in want.items()):
        left = end - time.monotonic()
        assert left > 0, f"quality not reached: want NT {want}, last {last}"
        try:
            _, addr, value, q, _ = await c.next_change(left)
        except TimeoutError:
            continue
        last[addr] = (value, q)
    return last


async def topical(c: SefepsClient, img: dict[int, tuple[Any, ...]], *addrs: int, timeout: float = 10) -> None:
    """Wait until each address is served without NT: as in the image, or by the changes after it. With the
    suite's short timers (a poll every few hundred ms, NT after stale_polls of them) a loaded machine can
    show NT for a moment at start, which the forwarder clears with a quality change."""
    pending = {a: False for a in addrs if img[a][1] & NT}
    if pending:
        await until_quality(c, pending, timeout)


async def valid(node: Node, *pids: int, timeout: float = 10) -> None:
    """Wait until the api shows each point with a valid value (the acquirer holds and writes)."""
    end = time.monotonic() + timeout
    for pid in pids:
        while True:
            r = await node.api.get(f"/api/v1/points/{pid}")
            if r.status_code == 200 and r.json()["valid"]:
                break
            assert time.monotonic() < end, f"point {pid} not valid: {r.text}"
            await asyncio.sleep(0.1)


async def test_redis_killed_and_restarted_empty(node: Node) -> None:
    """SIGKILL of the node's Redis, restarted empty on the same port: SCADA sees NT on the acquisition
    values (no lease holder) and on the link points (no configuration any more), the api answers 503 with the reason, neither service exits or loops on a
    traceback, both log the reason once; after `sysload init` again, every value comes back topical."""
    await valid(node, 101, 202)
    c = await sefeps(node)
    try:
        img = await c.wait_image(10)
        await topical(c, img, AI_RTU1, AI_RTU2)
        os.kill(node.redis.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        node.redis.proc.wait(5)  # type: ignore[union-attr]
        node.redis.proc = None
        node.redis.start()
        t0 = time.monotonic()
        await until_quality(c, {AI_RTU1: True, AI_RTU2: True, VP_RTU1: True}, 10)
        took_nt = time.monotonic() - t0
        r = await node.api.get("/api/v1/points/101")
        assert r.status_code == 503 and "sysload init" in r.json()["detail"], r.text
        await asyncio.sleep(2)
        assert all(p.poll() is None for p in node.procs.values()), {s: p.poll() for s, p in node.procs.items()}
        for service in COMMANDS:
            assert "Traceback" not in node.log(service), node.log(service)[-3000:]
        assert node.log("acquirer").count("no configuration in Redis") == 1, node.log("acquirer")[-3000:]
        assert node.log("forwarder").count("no configuration in Redis") == 1, node.log("forwarder")[-3000:]
        assert node.log("acquirer").count("lease: Function not found") == 1  # once, not every tick
        assert "link refresh on the master: Function not found" in node.log("forwarder")
        replace_config(node.redis.client(), node.rows, source="sample")
        t1 = time.monotonic()
        await until_quality(c, {AI_RTU1: False, AI_RTU2: False, VP_RTU1: False}, 10)
        took_back = time.monotonic() - t1
        await valid(node, 101, 202, timeout=5)  # unchanged values written again (full image)
        took_values = time.monotonic() - t1
        print(f"NT after {took_nt:.2f} s, topical again {took_back:.2f} s and every value back {took_values:.2f} s "
              "after sysload init")
    finally:
        await c.close()
    for service, proc in node.procs.items():
        proc.send_signal(signal.SIGTERM)
        assert await exited(proc, 3.0), f"{service} did not exit within 3 s of SIGTERM"
        assert proc.returncode == 0, (service, proc.returncode, node.log(service)[-2000:])


async def stale(node: Node, pid: int) -> bool:
    r = await node.api.get(f"/api/v1/points/{pid}")
    assert r.status_code == 200, r.text
    return bool(r.json()["stale"]) and "NT" in r.json()["quality_flags"]


async def not_stale(node: Node, pid: int, timeout: float = 5) -> None:
    """Wait until the api shows `pid` topical (a moment of NT under load is the suite timers', `topical`)."""
    end = time.monotonic() + timeout
    while await stale(node, pid):
        assert time.monotonic() < end, f"point {pid} still stale after {timeout} s"
        await asyncio.sleep(0.1)


async def test_frozen_acquirer_values_go_nt_at_scada_and_in_the_api(node: Node) -> None:
    """SIGSTOP of the acquirer holding every lease (no other node): SCADA gets NT within lease_ttl_s + one
    tick + one check (docs/forwarder.md rule 2), and the api shows the same points stale (NT) rather than
    the stored records, which still look current; SIGCONT: topical again in both."""
    await valid(node, 101, 202)
    c = await sefeps(node)
    acq = node.procs["acquirer"]
    try:
        img = await c.wait_image(10)
        await topical(c, img, AI_RTU1, AI_RTU2)  # as in the Redis SIGSTOP test: no NT left from the start
        await not_stale(node, 101)
        acq.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            await until_quality(c, {AI_RTU1: True, AI_RTU2: True}, 10)
            took = time.monotonic() - t0
            assert took <= float(node.env["FEP_TIMERS_LEASE_TTL_S"]) + 0.1 + 1.0 + 0.5, took
            print(f"NT at SCADA {took:.2f} s after SIGSTOP of the acquirer")
            assert await stale(node, 101) and await stale(node, 202)
            page = (await node.api.get("/api/v1/points?quality=NT")).json()
            assert {101, 202} <= {p["id"] for p in page["items"]}, page
        finally:
            acq.send_signal(signal.SIGCONT)
        await until_quality(c, {AI_RTU1: False, AI_RTU2: False}, 10)
        await not_stale(node, 101)
    finally:
        await c.close()


async def test_redis_stopped_past_the_timeouts_then_resumed(node: Node) -> None:
    """SIGSTOP of the node's Redis for three socket timeouts: SCADA gets NT (local Redis unreachable,
    rule 1) within replica_down_s + one socket timeout + one check; neither service exits; after SIGCONT
    the values are topical again and the acquirer still writes (a change reaches SCADA)."""
    await valid(node, 101, 202)
    c = await sefeps(node)
    timeout_s = float(node.env["FEP_REDIS_SOCKET_TIMEOUT_S"])
    limit_s = 2 * float(node.env["FEP_TIMERS_LEASE_TTL_S"])  # replica_down_s 0: 2 x lease_ttl_s
    try:
        img = await c.wait_image(10)
        # NT for a moment at start (a loaded machine, the suite's short timers) would already be set when the
        # Redis stops, and no change would then carry it: wait until the values are topical first
        await topical(c, img, AI_RTU1, AI_RTU2)
        node.redis.pause()
        t0 = time.monotonic()
        try:
            await until_quality(c, {AI_RTU1: True, AI_RTU2: True}, 15)
            took = time.monotonic() - t0
            assert took <= limit_s + timeout_s + 1.0 + 0.5, took
            await asyncio.sleep(max(0.0, 3 * timeout_s - took))
            assert all(p.poll() is None for p in node.procs.values())
        finally:
            node.redis.resume()
        t1 = time.monotonic()
        await until_quality(c, {AI_RTU1: False, AI_RTU2: False}, 15)
        back = time.monotonic() - t1
        for service in COMMANDS:
            assert "Traceback" not in node.log(service), node.log(service)[-3000:]
        print(f"NT {took:.2f} s after SIGSTOP of Redis, topical {back:.2f} s after SIGCONT")
    finally:
        await c.close()


DO_ADDR = 30  # sefeps address of DO point 109 (RTU 1's coil)


async def test_forwarder_killed_with_a_master_connected(node: Node) -> None:
    """SIGKILL of the forwarder while a SCADA master is connected, one command in flight: restarted, the
    master reconnects and gets the image; the command in flight ran at most once, and a new one once."""
    await valid(node, 101, 202)
    c = await sefeps(node)
    try:
        await c.wait_image(10)
        assert (await c.command(DO_ADDR, 1, timeout=10))["ok"]
        assert len(node.sim.writes) == 1
        c._send({"t": "cmd", "id": 99, "addr": DO_ADDR, "value": 0})  # in flight as the forwarder dies
        node.procs["forwarder"].kill()
        node.procs["forwarder"].wait(5)
    finally:
        await c.close()
    node.start("forwarder")
    c = await sefeps(node)
    try:
        img = await c.wait_image(10)
        await topical(c, img, AI_RTU1)
        await asyncio.sleep(1.0)  # a control submitted before the kill has run by now
        in_flight = len(node.sim.writes) - 1
        assert in_flight in (0, 1), node.sim.writes
        assert (await c.command(DO_ADDR, 1, timeout=10))["ok"]
        assert len(node.sim.writes) == 1 + in_flight + 1, node.sim.writes
    finally:
        await c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_api_stops_with_exit_0(redis_master: RedisProc, feproot: Path, sig: int) -> None:
    """fep-api exits 0 within its stop time after SIGTERM/SIGINT, as the other services do (uvicorn raised
    the signal again after its shutdown: the process ended killed by it, status -15 / 143)."""
    from tests.redisproc import free_port

    port = free_port()
    env = {**os.environ, "FEPROOT": str(feproot), "FEP_LOG_DIR": "", "FEP_REDIS_PORT": str(redis_master.port),
           "FEP_REDIS_LOCAL_PORT": str(redis_master.port), "FEP_API_PORT": str(port)}
    proc = subprocess.Popen(["fep-api"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 20
        while True:
            try:
                async with httpx.AsyncClient() as h:
                    if (await h.get(f"http://127.0.0.1:{port}/health", timeout=1)).status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end and proc.poll() is None, "fep-api did not start"
            await asyncio.sleep(0.1)
        proc.send_signal(sig)
        assert await exited(proc, 3.0), "fep-api did not stop within 3 s"
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
        assert proc.returncode == 0 and "Traceback" not in err, (proc.returncode, err[-2000:])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("refusal", ["noreplicas", "oom"])
async def test_master_refusing_writes_then_accepting_again(node: Node, refusal: str) -> None:
    """The master answers but refuses every write (NOREPLICAS: `min-replicas-to-write` set with no replica
    in reach; OOM: `maxmemory` reached with `noeviction`; a full disk under AOF gives the same MISCONF
    refusal): no lease can be renewed, so SCADA gets NT once the leases lapse (rule 2); neither service
    exits or loops on a traceback; writes accepted again: the values are topical again and a change goes
    through."""
    await valid(node, 101, 202)
    c = await sefeps(node)
    r = node.redis.client()
    limit_s = 2 * float(node.env["FEP_TIMERS_LEASE_TTL_S"]) + 1.5
    try:
        img = await c.wait_image(10)
        await topical(c, img, AI_RTU1, AI_RTU2)
        if refusal == "noreplicas":
            r.config_set("min-replicas-to-write", 1)
        else:
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", 1)
        t0 = time.monotonic()
        try:
            await until_quality(c, {AI_RTU1: True, AI_RTU2: True}, 15)
            took = time.monotonic() - t0
            print(f"{refusal}: NT {took:.2f} s after the master refused writes")
            assert took <= limit_s, took
            await asyncio.sleep(2)
            assert all(p.poll() is None for p in node.procs.values())
        finally:
            r.config_set("min-replicas-to-write", 0)
            r.config_set("maxmemory", 0)
        t1 = time.monotonic()
        await until_quality(c, {AI_RTU1: False, AI_RTU2: False}, 15)
        print(f"{refusal}: topical {time.monotonic() - t1:.2f} s after writes were accepted again")
        word = "NOREPLICAS" if refusal == "noreplicas" else "OOM"
        for service in COMMANDS:
            log = node.log(service)
            assert "Traceback" not in log, log[-3000:]
            # the refusal in Redis's own words (redis-py's pipeline message lost it), once per problem
            said = [line.split(" ", 1)[1] for line in log.splitlines() if word in line]   # less its time
            assert "{exception.args}" not in log and len(said) == len(set(said)), said
    finally:
        r.close()
        await c.close()
