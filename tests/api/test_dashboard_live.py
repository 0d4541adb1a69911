"""The operator dashboard live, in headless Chromium, on a running two-node system: a real Redis master and
replica, `PlcSim` changing every point at the demo's rate (once a second), and for each node the real
`fep-acquirer`, `fep-forwarder` and `fep-api` processes (timers shortened, as in test_with_services.py).
One page is loaded once and watched over the DevTools protocol without a reload: values appear and
change, a cut device's points show as invalid, a handover appears in the timeline within 2 s, an analog
point's trend draws. Screenshots go to docs/img/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pymodbus.client import AsyncModbusTcpClient

from tests.api.cdp import CHROMIUM, Browser
from tests.api.conftest import TOKEN
from tests.api.test_with_services import NODE_IP, System, settled, start_all, system, until  # noqa: F401
from tests.redisproc import free_port

REPO = Path(__file__).resolve().parents[2]
IMG = REPO / "docs" / "img"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")


def start_api(s: System, node: str) -> str:
    """`fep-api` of one node as its own process (stopped with the services by `System.stop`)."""
    port = free_port()
    env = {**os.environ, "FEPROOT": str(s.feproot), "FEP_LOG_DIR": "", **s.env[node],
           "FEP_API_BIND": NODE_IP[node], "FEP_API_PORT": str(port)}
    with open(s.feproot / f"api-{node}.log", "ab") as log:
        s.procs[("api", node)] = subprocess.Popen([sys.executable, "-m", "fep_api.cli"], env=env,
                                                  stdout=log, stderr=log)
    return f"http://{NODE_IP[node]}:{port}"


async def answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as c:
            return (await c.get(url + "/health")).status_code == 200
    except httpx.HTTPError:
        return False


def rows(table: str, extra: str = "") -> str:
    """JS: the rows of a table as [[data attributes, cell texts], ...]."""
    return (f"[...document.querySelectorAll('#{table} tbody tr{extra}')].map(tr => "
            "[Object.assign({}, tr.dataset), [...tr.cells].map(td => td.textContent)])")


async def select_rtu(b: Browser, rid: int) -> None:
    await b.eval(f"(() => {{ const s = document.querySelector('#v-rtu'); s.value = '{rid}'; "
                 "s.dispatchEvent(new Event('change')); return true; })()")


async def test_dashboard_live(system: System, tmp_path: Path) -> None:  # noqa: F811
    s = system
    s.sim.rate = 1.0  # tools/demo.py runs fep-plcsim at its default: every point changes once a second
    start_all(s)
    urls = {node: start_api(s, node) for node in "AB"}
    for node, url in urls.items():
        await until(lambda url=url: answers(url), 15, f"fep-api of node {node}")
    await until(lambda: settled(s), 15, "leases, channel and link states")

    b = Browser(tmp_path / "profile")
    try:
        await b.open(urls["A"] + "/")
        await b.wait("document.body.dataset.live === '1'", 15, "the live stream")
        await b.eval("window.__page = Math.random(); true")  # a reload would lose it
        page = await b.eval("window.__page")

        # --- keyboard: Tab reaches the filters and the actions; arrow keys change the RTU on screen
        reached = []
        for _ in range(40):
            await b.key("Tab", 9)
            reached.append(await b.eval("document.activeElement.id || document.activeElement.textContent"))
        assert {"v-rtu", "v-kind", "v-quality", "t-kind", "t-rtu"} <= set(reached), reached
        assert any(str(x).startswith("Move to") for x in reached), reached
        await b.eval("document.querySelector('#v-rtu').focus(); true")
        await b.key("ArrowDown", 40)
        await b.wait("document.querySelector('#v-rtu').value === '2' && "
                     "!!document.querySelector(\"#points tbody tr[data-point='201']\")", 5,
                     "RTU 2's points after ArrowDown in the RTU select")

        # --- values appear and change, with good quality
        await select_rtu(b, 1)
        first = await b.wait(f"(() => {{ const r = {rows('points')}; "
                             "return r.some(x => x[0].point === '101') && "
                             "r.every(x => x[0].quality === 'good') && r; })()",
                             10, "RTU 1's points with good quality")
        assert {r[0]["point"] for r in first} >= {"101", "105"}
        assert all("✓ good" in r[1][4] for r in first)
        v0 = {r[0]["point"]: r[1][3] for r in first}
        changed = await b.wait(f"(() => {{ const v0 = {json.dumps(v0)}; const r = {rows('points')}; "
                               "const c = r.filter(x => v0[x[0].point] !== x[1][3]); "
                               "return c.length >= 3 && c.map(x => x[0].point); })()", 10,
                               "values changing without a reload")
        assert len(changed) >= 3

        # --- the trend of an analog point draws: a polyline over several changes
        n = await b.wait("(() => { const t = document.querySelector(\"#points tr[data-point='101'] svg.trend\"); "
                         "return t && Number(t.dataset.points) >= 3 && t.querySelector('polyline') && "
                         "Number(t.dataset.points); })()", 10, "trend of point 101")
        assert n >= 3
        await b.screenshot(tmp_path / "live.png")

        # --- a device cut: its points show as invalid (text, not only colour)
        await select_rtu(b, 2)
        await b.wait(f"{rows('points')}.some(x => x[0].point === '201')", 10, "RTU 2's points")
        s.sim.cut(2)
        inv = await b.wait(f"(() => {{ const r = {rows('points')}; "
                           "return r.some(x => x[0].point === '201') && "
                           "r.every(x => x[0].quality === 'invalid') && r; })()", 10,
                           "RTU 2's points invalid")
        assert all(r[1][4].startswith("✗ INVALID") for r in inv)
        await b.screenshot(tmp_path / "invalid.png")
        s.sim.restore(2)
        await b.wait(f"{rows('points')}.every(x => x[0].quality === 'good')", 10, "RTU 2 good again")

        # --- both acquirers frozen: nothing new is written, yet the page shows RTU 2's last values as stale
        # (NT, as SCADA is served them), without a reload, and good again once they run
        acquirers = [s.procs[("acquirer", node)] for node in "AB"]
        for proc in acquirers:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            await b.wait(f"(() => {{ const r = {rows('points')}; return r.some(x => x[0].point === '201') && "
                         "r.every(x => x[0].quality === 'stale' && x[1][4].includes('STALE')); })()", 10,
                         "RTU 2's points stale while no acquirer runs")
        finally:
            for proc in acquirers:
                os.kill(proc.pid, signal.SIGCONT)
        await b.wait(f"{rows('points')}.every(x => x[0].quality === 'good')", 10, "RTU 2 good again")
        assert await b.eval("window.__page") == page

        # --- a handover (through node B's api, on the replica) is in A's timeline within 2 s
        holder = (await s.get("A", "/api/v1/rtus/1"))["lease"]["holder"]
        target = "B" if holder == "A" else "A"
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.post(urls["B"] + "/api/v1/rtus/1/handover", headers=AUTH,
                             json={"target": target, "wait": True, "window_s": 5})
        assert r.status_code == 200 and r.json()["status"] == "moved", r.text
        moved = time.monotonic()
        want = f"RTU 1: lease {holder} → {target}"
        row = await b.wait(f"(() => {{ const r = {rows('events', '[data-kind=lease]')}; "
                           f"const e = r.find(x => x[1][3].startsWith({json.dumps(want)})); "
                           "return e; })()", 2.0, "the handover in the timeline")
        seen_s = time.monotonic() - moved
        assert row[1][3].endswith("handover)") and seen_s < 2.0
        # measured from the lease change itself (its time on the master's clock, the same host clock)
        ev = (await s.get("A", "/api/v1/events", params={"kind": "lease", "rtu": 1, "limit": 1}))["items"][0]
        assert ev["id"] == row[0]["event"]
        delay_ms = int(row[0]["arrivedMs"]) - ev["ts_ms"]
        assert 0 <= delay_ms < 2000, delay_ms
        # the RTU table follows too, and it is the same page
        await b.wait(f"document.querySelector('#acq tr[data-rtu=\"1\"]').dataset.holder === '{target}'", 3,
                     "the new holder in the RTU table")
        assert await b.eval("window.__page") == page
        # --- a SCADA master connecting to node A's modbus_trains server (RTU 11) is on the timeline
        mbt = s.model.rtus[11]
        master = AsyncModbusTcpClient(NODE_IP["A"], port=mbt.listen_port, timeout=2, retries=0)
        assert await master.connect()
        try:
            assert not (await master.read_input_registers(0, count=2, device_id=mbt.address or 1)).isError()
            await b.wait(f"{rows('events', '[data-kind=master]')}.some(x => x[1][3].startsWith("
                         "'RTU 11 on node A: master 127.0.0.1:') && x[1][3].endsWith(' connected'))", 5,
                         "the master's connect in the timeline")
        finally:
            master.close()
        await b.wait(f"{rows('events', '[data-kind=master]')}.some(x => x[1][3].endsWith(' disconnected'))", 5,
                     "the master's disconnect in the timeline")

        # --- node B's Redis promoted (as keepalived's notify script does): B's acquirer records the role
        # change, and the glance shows it as the last failover
        s.replica.client().execute_command("REPLICAOF", "NO", "ONE")
        await b.wait(f"{rows('events', '[data-kind=role]')}.some(x => x[1][3] === 'node B: Redis slave → master')",
                     5, "the role change in the timeline")
        await b.wait("document.querySelector('#g-failover').textContent.includes('node B: Redis slave → master')",
                     5, "the last failover at a glance")
        assert await b.eval("window.__page") == page
        await b.eval("document.querySelector('#timeline').scrollIntoView(); true")
        await b.screenshot(tmp_path / "timeline.png")
        IMG.mkdir(parents=True, exist_ok=True)
        for name in ("live", "invalid", "timeline"):  # as test_live.py: kept once made (FEP_SCREENSHOTS=1: redo)
            doc = IMG / f"dashboard-{name}.png"
            if not doc.exists() or os.environ.get("FEP_SCREENSHOTS") == "1":
                doc.write_bytes((tmp_path / f"{name}.png").read_bytes())
            assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        print(f"handover in the page's timeline {delay_ms} ms after the lease changed on the master "
              f"({seen_s * 1000:.0f} ms after the api answered 'moved')")
    finally:
        await b.close()
