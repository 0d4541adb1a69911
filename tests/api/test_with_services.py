"""The api over a running system: the sample configuration in a real Redis pair, a real PlcSim serving its
acquisition RTUs, and for each node the real `fep-acquirer` and `fep-forwarder` processes (as in their
containers, configured by FEP_* variables, timers shortened), with one api per node in this test: A's
reads the master, B's the replica. The test writes nothing into Redis besides the configuration; every
value, lease, state, heartbeat and counter comes from the services."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from pymodbus.client import AsyncModbusTcpClient

from fep_api.app import create_app
from fep_loader.store import replace_config
from fep_tools.plcsim import PlcSim
from fepha import config, controls, freshness, heartbeat
from fepha.config import NodeConfig
from fepha.semodel.model import Model
from tests.api.cdp import rendered_dom
from tests.api.conftest import TOKEN, sample_rows
from tests.redisproc import RedisProc, free_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NODE_IP = {"A": "127.0.0.1", "B": "127.0.0.2"}
# Shortened timers (the acquirer's tests use the same order of magnitude). A heartbeat is fresh for three
# periods: 0.9 s, long enough not to flap on a busy two-core machine.
TIMERS = {"FEP_TIMERS_LEASE_TICK_S": "0.1", "FEP_TIMERS_LEASE_TTL_S": "1.0", "FEP_TIMERS_TAKEOVER_S": "1.5",
          "FEP_TIMERS_CHANNEL_SWITCH_S": "0.4", "FEP_TIMERS_RECONNECT_MIN_S": "0.05",
          "FEP_TIMERS_RECONNECT_MAX_S": "0.2", "FEP_TIMERS_HEARTBEAT_S": "0.3", "FEP_TIMERS_POLL_MS": "100",
          "FEP_REDIS_SOCKET_TIMEOUT_S": "2.0"}
COMMANDS = {"acquirer": "fep_acquirer.cli", "forwarder": "fep_forwarder.cli"}
STOP_S = 3.0
"""How long a service may take to stop after SIGTERM (it takes well under a second)."""
ACQ = (1, 2)


def without_iec104(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The sample without its IEC 104 RTU (this system's devices are fep-plcsim's Modbus PLCs; IEC 104
    acquisition has its own tests in tests/acquirer/test_iec104*.py)."""
    gone = {r["RTUID"] for r in rows["T004_RTU"] if r["PROTOCOL"] == "iec104"}
    out = {t: [r for r in rs if r.get("RTUID") not in gone or t.startswith(("T005", "T006", "T007", "T008", "T009"))]
           for t, rs in rows.items()}
    srcs = {p["PNTID"] for p in out["T011_POINT"]} | {v["VPID"] for v in out["T036_VTPNT"]}
    for t in ("T005_ZFAI", "T006_ZFDI", "T007_ZFACC", "T008_ZFDO", "T009_ZFAO"):
        out[t] = [r for r in out[t] if r["SRCID"] in srcs]
    return out


def system_rows(feproot: Path) -> dict[str, list[dict[str, Any]]]:
    """The sample configuration moved to free ports (devices and forwarding servers) and polled every
    100 ms with a 300 ms timeout; everything else as in cfg/SEMODEL.sql."""
    rows = without_iec104(sample_rows(feproot))
    dev_ports = {port: free_port() for port in {c["PORT"] for c in rows["T010_CHANNEL"]}}
    rows["T010_CHANNEL"] = [{**c, "PORT": dev_ports[c["PORT"]]} for c in rows["T010_CHANNEL"]]
    rows["T004_RTU"] = [{**r, "POLLMS": 100, "TIMEOUTMS": 300} if r["RTUTYPE"] == 0 else
                        {**r, "LISTENPORT": free_port()} for r in rows["T004_RTU"]]
    return rows


def node_env(node: str, master: RedisProc, local: RedisProc) -> dict[str, str]:
    """FEP_* settings of one node: what compose.yml gives each container, with the shortened timers."""
    return {"FEP_NODE_ID": node, "FEP_NODE_IP": NODE_IP[node], "FEP_NODE_BIND": NODE_IP[node],
            "FEP_REDIS_VIP": master.host, "FEP_REDIS_PORT": str(master.port),
            "FEP_REDIS_LOCAL_HOST": local.host, "FEP_REDIS_LOCAL_PORT": str(local.port),
            "FEP_API_TOKEN": TOKEN, **TIMERS}


async def until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Await an async predicate until it is truthy; its last error (an assert) explains a timeout."""
    end = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            v = await pred()
            if v:
                return v
        except (AssertionError, KeyError, TypeError) as exc:
            last = exc
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout} s: {last!r}")
        await asyncio.sleep(0.05)


async def exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait (without blocking the loop) for a process to end."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        await asyncio.sleep(0.05)
    return proc.poll() is not None


def kill_leftovers(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """A test's end: SIGKILL (by PID) what it started and is still running."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@dataclass
class System:
    feproot: Path
    master: RedisProc
    replica: RedisProc
    model: Model
    sim: PlcSim
    env: dict[str, dict[str, str]]
    cfg: dict[str, NodeConfig]
    api: dict[str, httpx.AsyncClient]
    procs: dict[tuple[str, str], subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, service: str, node: str) -> None:
        env = {**os.environ, "FEPROOT": str(self.feproot), "FEP_LOG_DIR": "", **self.env[node]}
        with open(self.feproot / f"{service}-{node}.log", "ab") as log:
            self.procs[(service, node)] = subprocess.Popen(
                [sys.executable, "-m", COMMANDS[service]], env=env, stdout=log, stderr=log)

    async def stop(self, *which: tuple[str, str]) -> None:
        """SIGTERM the services (default: all); one that does not exit within STOP_S is killed and reported
        by a warning (how the services stop is their own tests' business, not the api's)."""
        procs = {k: self.procs.pop(k) for k in (which or list(self.procs))}
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        hung = []
        for (service, node), proc in procs.items():
            if not await exited(proc, STOP_S):
                hung.append(f"{service} {node} (pid {proc.pid})")
                proc.kill()
                proc.wait(5)
        if hung:
            warnings.warn(f"did not exit within {STOP_S} s of SIGTERM, killed: {', '.join(hung)}",
                          stacklevel=1)

    async def get(self, node: str, path: str, **kw: Any) -> Any:
        r = await self.api[node].get(path, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    async def rtus(self, node: str = "A") -> dict[int, dict[str, Any]]:
        return {r["id"]: r for r in (await self.get(node, "/api/v1/rtus"))["items"]}

    async def point(self, pid: int, node: str = "A") -> dict[str, Any]:
        return await self.get(node, f"/api/v1/points/{pid}")

    async def metrics(self, node: str = "A") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        r = await self.api[node].get("/metrics")
        assert r.status_code == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(r.text) for s in fam.samples}


@pytest.fixture
async def system(redis_pair: tuple[RedisProc, RedisProc], feproot: Path, make_api) -> AsyncIterator[System]:
    """Everything set up, no service started yet; services still running at the end are stopped."""
    master, replica = redis_pair
    rows = system_rows(feproot)
    replace_config(master.client(), rows, source="sample")
    model = Model.from_rows(rows)
    sim = PlcSim(model)
    await sim.start()
    env = {node: node_env(node, master, local) for node, local in (("A", master), ("B", replica))}
    cfg = {node: config.load_node(feproot, env=env[node]) for node in env}
    api = {node: await make_api(cfg[node]) for node in cfg}
    s = System(feproot, master, replica, model, sim, env, cfg, api)
    try:
        yield s
    finally:
        try:
            await s.stop()
        finally:
            await sim.stop()


def start_all(s: System) -> None:
    for node in "AB":
        for service in COMMANDS:
            s.start(service, node)


async def ready(s: System, node: str) -> bool:
    return (await s.api[node].get("/ready")).status_code == 200


async def settled(s: System) -> dict[int, dict[str, Any]]:
    """/rtus of A once every acquisition RTU has a holder, both nodes report channel 1 connected and
    link up, and B's api (the replica) shows the same holders."""
    rtus = await s.rtus("A")
    for rid in ACQ:
        r = rtus[rid]
        assert r["lease"]["holder"] in ("A", "B"), r["lease"]
        assert (r["link"]["vala"], r["link"]["valb"], r["link"]["val"]) == (True, True, True), r["link"]
        for st in r["channel_state"]:
            assert st["reported"] and st["active"] == 1 and st["channels"][0]["connected"], st
    on_b = await s.rtus("B")
    assert [on_b[rid]["lease"]["holder"] for rid in ACQ] == [rtus[rid]["lease"]["holder"] for rid in ACQ]
    return rtus


async def test_status_of_a_running_system(system: System, tmp_path: Path) -> None:
    s = system
    # nothing runs yet: not ready, and the api says why
    r = await s.api["A"].get("/ready")
    assert r.status_code == 503
    assert r.json()["reasons"] == ["no heartbeat of acquirer on node A",
                                   "no heartbeat of forwarder on node A"]
    start_all(s)
    for node in "AB":
        await until(lambda node=node: ready(s, node), 10, f"/ready of node {node}")

    # --- RTUs: one lease holder each, both nodes' channel and link state, the same on the replica
    rtus = await until(lambda: settled(s), 10, "leases, channel and link states")
    t0 = int(time.time() * 1000)
    for rid in ACQ:
        r = rtus[rid]
        lease = r["lease"]
        assert lease["epoch"] >= 1 and not lease["lapsed"] and lease["handover"] is None
        assert 0 < lease["remaining_ms"] <= 1000 and lease["reached_ms"]
        for st in r["channel_state"]:
            ch1, ch2 = st["channels"]
            assert (ch1["no"], ch1["connected"]) == (1, True)
            # the last error stays shown after a reconnect: on a loaded CI machine one 300 ms read timeout
            # of these 100 ms polls was seen in full CI runs (prefixed with the block unanswered, "di0+2: ");
            # any other error is a defect
            assert ch1["error"] is None or ch1["error"].endswith("no answer within the timeout"), ch1
            assert 0 < ch1["since_ms"] <= t0 and ch1["switches"] == 0
            assert (ch2["connected"], ch2["since_ms"]) == (False, None)  # never tried: channel 1 works
    node_info = await s.get("B", "/api/v1/node")
    assert node_info["redis"]["role"] == "slave" and node_info["cfg"]["gen"] == 1
    hbs = {(h["service"], h["node"]): h for h in node_info["heartbeats"]}
    assert all(h["alive"] for h in hbs.values()), hbs
    assert {k: h["pid"] for k, h in hbs.items()} == {k: p.pid for k, p in s.procs.items()}
    # each acquirer reports the timers its lease ticks go by (its FEP_TIMERS_*); the forecast goes by them
    with s.master.client() as r:
        for node in "AB":
            hb = heartbeat.read_sync(r, "acquirer", node) or {}
            assert [hb.get(k) for k in ("lease_ttl_ms", "lease_tick_ms", "takeover_ms")] == [1000, 100, 1500], hb
    assert [rtus[rid]["lease"]["timers_from"] for rid in ACQ] == ["acquirers", "acquirers"]
    # each forwarder reports the freshness limits it serves SCADA by; the api's NT goes by them
    with s.master.client() as r:
        for node in "AB":
            hb = heartbeat.read_sync(r, "forwarder", node) or {}
            assert {k: hb.get(k) for k in freshness.Limits.FIELDS} == freshness.Limits.of(s.cfg[node]).report(), hb
    assert [rtus[rid]["limits_from"] for rid in ACQ] == ["forwarder", "forwarder"]

    # --- values: every point polled with good quality; a change in the device changes value and time
    pts = await until(lambda: _all_good(s), 5, "every point polled with good quality")
    assert len(pts) == 17 and all(p["ts_ms"] and p["time"] for p in pts)
    before = await s.point(101)
    assert before["value"] == 0
    s.sim.set_value(101, 231.5)
    s.sim.set_value(201, 4.25)
    after = await until(lambda: _value(s, 101, 231.5), 5, "point 101 = 231.5")
    assert after["ts_ms"] > before["ts_ms"] and after["quality_flags"] == [] and after["time"]
    await until(lambda: _value(s, 201, 4.25, "B"), 5, "point 201 = 4.25 on the replica's api")
    vps = (await s.get("A", "/api/v1/virtual-points"))["items"]
    assert [(v["id"], v["vala"], v["valb"], v["val"], v["value"], v["valid"]) for v in vps] == \
        [(901, True, True, True, 1, True), (902, True, True, True, 1, True)]

    # --- a master connected to node A's modbus_trains server is listed under the forwarding RTU
    mbt = s.model.rtus[11]
    master = AsyncModbusTcpClient(NODE_IP["A"], port=mbt.listen_port, timeout=2, retries=0)
    assert await master.connect()
    try:
        assert not (await master.read_input_registers(0, count=2, device_id=mbt.address or 1)).isError()
        r11 = await until(lambda: _masters(s, 11), 5, "the connected master of RTU 11")
        assert [(c["node"], c["peer"].rsplit(":", 1)[0]) for c in r11["clients"]] == [("A", "127.0.0.1")]
        # --- the dashboard shows the holders the acquirers chose, and the master
        dom = await dashboard_dom(s, tmp_path)
    finally:
        master.close()
    assert 'data-rendered="1"' in dom
    for rid in ACQ:
        holder = rtus[rid]["lease"]["holder"]
        assert (await s.get("A", f"/api/v1/rtus/{rid}"))["lease"]["holder"] == holder  # still the same
        assert f'<tr data-rtu="{rid}" data-holder="{holder}">' in dom, (rid, holder)
    for name in ("Substation North", "Pump Station 7", "SCADA IEC 104", "Pump Station 7 link",
                 r11["clients"][0]["peer"]):
        assert name in dom

    # --- handover: token rules, unknown RTU, then a real move accepted by the other node's acquirer
    holder1 = rtus[1]["lease"]["holder"]
    other = "B" if holder1 == "A" else "A"
    url = "/api/v1/rtus/1/handover"
    assert (await s.api["A"].post(url)).status_code == 401
    assert (await s.api["A"].post(url, headers={"Authorization": "Bearer wrong"})).status_code == 403
    r = await s.api["A"].post("/api/v1/rtus/99/handover", headers=AUTH)
    assert r.status_code == 404 and "RTU 99" in r.json()["detail"]
    assert (await s.point(101))["value"] == 231.5  # none of these moved anything
    r = await s.api["A"].post(url, headers=AUTH, json={"wait": True, "window_s": 5})
    assert r.status_code == 200, r.text
    moved = r.json()
    assert (moved["status"], moved["holder"], moved["target"]) == ("moved", other, other)
    assert moved["epoch"] == rtus[1]["lease"]["epoch"] + 1
    lease = (await s.get("A", "/api/v1/rtus/1"))["lease"]
    assert (lease["holder"], lease["epoch"]) == (other, moved["epoch"])
    # the new holder writes: a device change shows up
    s.sim.set_value(101, 232.0)
    await until(lambda: _value(s, 101, 232.0), 5, "point 101 = 232 written by the new holder")
    # and back, asked on the replica's node (the api reads the replica, the handover goes to the master)
    r = await s.api["B"].post(url, headers=AUTH, json={"target": holder1})
    assert r.status_code == 202 and r.json()["status"] == "pending"
    await until(lambda: _holder(s, 1, holder1), 5, f"lease of RTU 1 back to {holder1}")

    # --- a control, as a forwarder submits it, executed on the device by the holder: in the audit
    master = aredis.Redis(host=s.master.host, port=s.master.port, decode_responses=True)
    try:
        res = await controls.execute(master, 1, 109, 1.0, "test:api", 3000)
    finally:
        await master.aclose()
    assert res.ok, res
    assert s.sim.value(109) == 1
    want = [(res.id, 1, 109, 1.0, "done", holder1, "test:api")]
    await until(lambda: _controls(s, "B", want), 3, "the control in the audit, read on the replica")

    # --- metrics from the running acquirers (flushed once a second)
    m = await until(lambda: _counters(s), 5, "acquirer counters of both nodes")
    written = sum(m.get(("fep_acquirer_changes_written_total", (("node", n),)), 0) for n in "AB")
    assert written >= 17
    assert m[("fep_acquirer_lease_changes_total", (("node", other),))] >= 1
    assert m[("fep_acquirer_polls_total", (("node", "A"),))] > 0
    assert m[("fep_acquirer_polls_total", (("node", "B"),))] > 0
    assert m[("fep_lease_changes_total", ())] >= 4  # two first holders, the move and the move back
    assert m[("fep_changes_entries_total", ())] > 0
    for n in "AB":
        for svc in ("acquirer", "forwarder"):
            assert m[("fep_service_up", (("node", n), ("service", svc)))] == 1
        assert m[("fep_link_up", (("node", n), ("rtu", "1")))] == 1
        assert m[("fep_channel_connected", (("channel", "1"), ("node", n), ("rtu", "1")))] == 1
    assert sum(m[("fep_lease_holder", (("node", n), ("rtu", "1")))] for n in "AB") == 1

    # --- the device of RTU 2 is cut (both channels): invalid points, link down on both nodes
    s.sim.cut(2)
    await until(lambda: _invalid(s, 2), 5, "points of RTU 2 invalid")
    r2 = await until(lambda: _link_down(s, 2), 5, "link of RTU 2 down")
    for st in r2["channel_state"]:
        assert not any(c["connected"] for c in st["channels"]) and st["channels"][0]["error"], st
    vp = {v["id"]: v for v in (await s.get("A", "/api/v1/virtual-points"))["items"]}
    assert (vp[902]["val"], vp[902]["value"], vp[901]["val"]) == (False, 0, True)
    assert all(p["valid"] for p in (await s.get("A", "/api/v1/points", params={"rtu": 1}))["items"])
    s.sim.restore(2)
    s.sim.set_value(201, 5.0)
    await until(lambda: _value(s, 201, 5.0), 5, "RTU 2 valid again after the restore")

    # --- node A's acquirer stops: A is not ready, and says why; B holds every lease
    await s.stop(("acquirer", "A"))
    r = await until(lambda: _not_ready(s, "A"), 5, "node A not ready")
    assert any("acquirer on node A" in x for x in r["reasons"]) and len(r["reasons"]) == 1, r
    assert await ready(s, "B")
    await until(lambda: _all_held_by(s, "B"), 5, "node B holds every lease")


async def _value(s: System, pid: int, want: float, node: str = "A") -> dict[str, Any] | None:
    p = await s.point(pid, node)
    return p if p["value"] == want and p["valid"] else None


async def _all_good(s: System) -> list[dict[str, Any]] | None:
    pts = (await s.get("A", "/api/v1/points", params={"limit": 1000}))["items"]
    bad = [(p["id"], p["value"], p["quality_flags"]) for p in pts if not p["valid"] or p["quality"] != 0]
    assert not bad, bad
    return pts


async def _controls(s: System, node: str, want: list[tuple[Any, ...]]) -> bool:
    items = (await s.get(node, "/api/v1/controls"))["items"]
    got = [(c["id"], c["rtu"], c["point"], c["value"], c["state"], c["executor"], c["origin"]) for c in items]
    assert got == want, got
    return True


async def _masters(s: System, rid: int) -> dict[str, Any] | None:
    r = await s.get("B", f"/api/v1/rtus/{rid}")
    return r if r["clients"] else None


async def _holder(s: System, rid: int, node: str) -> bool:
    return (await s.get("A", f"/api/v1/rtus/{rid}"))["lease"]["holder"] == node


async def _counters(s: System) -> dict[Any, float] | None:
    m = await s.metrics()
    need = [("fep_acquirer_lease_changes_total", (("node", n),)) for n in "AB"]
    return m if all(m.get(k, 0) >= 1 for k in need) else None


async def _invalid(s: System, rid: int) -> bool:
    items = (await s.get("A", "/api/v1/points", params={"rtu": rid}))["items"]
    return bool(items) and all(not p["valid"] and "IV" in p["quality_flags"] for p in items)


async def _link_down(s: System, rid: int) -> dict[str, Any] | None:
    r = (await s.get("A", f"/api/v1/rtus/{rid}"))
    return r if (r["link"]["vala"], r["link"]["valb"], r["link"]["val"]) == (False, False, False) else None


async def _not_ready(s: System, node: str) -> dict[str, Any] | None:
    r = await s.api[node].get("/ready")
    return r.json() if r.status_code == 503 else None


async def _all_held_by(s: System, node: str) -> bool:
    return all(x["holder"] == node for x in (await s.get("A", "/api/v1/leases"))["items"])


async def _started(server: uvicorn.Server) -> bool:
    return server.started


async def dashboard_dom(s: System, tmp_path: Path, node: str = "A") -> str:
    """The dashboard of `node`'s api served by uvicorn (in this loop, next to the test's other clients),
    once headless Chromium has rendered its first view."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(s.cfg[node]), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve(), name="test-uvicorn")
    try:
        await until(lambda: _started(server), 10, "uvicorn started")
        return await rendered_dom(f"http://127.0.0.1:{port}/", tmp_path / "profile")
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
