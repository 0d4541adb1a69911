"""The api as operators run it: `fep-api` (uvicorn) in its own process on a free loopback port, against a
real Redis with the sample configuration. Schemathesis fuzzes every operation of the OpenAPI schema (no
500, responses match the schema); headless Chromium renders the dashboard (RTUs with their holders) and
saves a screenshot."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aredis
import schemathesis
from hypothesis import HealthCheck, given, settings

from fepha import points, redisfns
from tests.api.cdp import Browser, rendered_dom
from tests.api.conftest import TOKEN, populate
from tests.redisproc import RedisProc, free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def live(live_proc: tuple[str, subprocess.Popen[bytes]]) -> str:
    """Base URL of a `fep-api` process for node A."""
    return live_proc[0]


@pytest.fixture
def live_proc(loaded, feproot: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Base URL and process of a `fep-api` for node A; stopped by its PID."""
    async def fill() -> None:
        r = aredis.Redis(host=loaded.host, port=loaded.port, decode_responses=True)
        await populate(r)
        await r.aclose()
    asyncio.run(fill())
    port = free_port()
    env = dict(os.environ, FEPROOT=str(feproot), FEP_LOG_DIR="", FEP_REDIS_PORT=str(loaded.port),
               FEP_REDIS_LOCAL_PORT=str(loaded.port), FEP_API_PORT=str(port), FEP_API_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "fep_api.cli"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "fep-api did not start"
            time.sleep(0.05)
        yield url, proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


def bounded_stream(case):  # type: ignore[no-untyped-def]
    """The stream with a short `duration_s` (the fuzzed one if valid and short, else 0.5 s)."""
    q = dict(case.query or {})
    d = q.get("duration_s")
    if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 < d <= 1:
        q["duration_s"] = 0.5
    case.query = q
    return case


def test_schemathesis_finds_no_server_error(live: str) -> None:
    schema = schemathesis.openapi.from_url(live + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) == 18
    assert {"/api/v1/events", "/api/v1/stream"} <= {op.path for op in ops}
    for op in ops:
        strategy = op.as_strategy()
        if op.method.upper() == "POST":  # never wait for a handover window inside the fuzzing
            strategy = strategy.filter(lambda c: not (isinstance(c.body, dict) and c.body.get("wait")))
        if op.path == "/api/v1/stream":  # a live stream ends when the client leaves: bound it for the call
            strategy = strategy.map(bounded_stream)

        @given(case=strategy)
        @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # type: ignore[no-untyped-def]
            resp = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            assert resp.status_code < 500, \
                f"{case.method} {case.formatted_path}: {resp.status_code} {resp.text}"
            # every check, ignored_auth too: the schema lists the token only where this node asks it
            case.validate_response(resp)

        run()


async def test_dashboard_shows_rtus_with_holders(live: str, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    dom = await rendered_dom(live + "/", tmp_path / "profile", shot=shot)
    assert '<tr data-rtu="1" data-holder="A">' in dom and '<tr data-rtu="2" data-holder="B">' in dom
    for name in ("Substation North", "Pump Station 7", "SCADA IEC 104", "Train Modbus", "SCADA sefeps",
                 "Substation North link", "device refused"):
        assert name in dom
    assert shot.stat().st_size > 10_000
    docs = REPO / "docs" / "img" / "dashboard.png"
    if not docs.exists():
        docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, docs)


@pytest.mark.parametrize("fault", ["pause", "stop"])
async def test_dashboard_does_not_stay_live_when_redis_is_lost(fault: str, live: str, loaded,
                                                               tmp_path: Path) -> None:
    """The page said "● live" over its last values for as long as the local Redis was gone (the stream
    only sent keepalives): it must say that what it shows may not be current."""
    b = Browser(tmp_path / "profile")
    try:
        await b.open(live + "/")
        await b.wait("document.body.dataset.live === '1'", 15, "the live stream")
        getattr(loaded, fault)()
        try:
            await b.wait("document.body.dataset.live === '0' && "
                         "document.querySelector('#status').textContent.startsWith('✗') && "
                         "document.querySelector('#status').textContent.includes('may not be current')",
                         15, "the status saying the page is not current")
            await b.wait("document.querySelector('#error').textContent.includes('Redis unreachable')", 10,
                         "the polling's 503 shown")
        finally:
            if fault == "pause":
                loaded.resume()
    finally:
        await b.close()


async def test_dashboard_virtual_points_not_current_when_cut_off(live: str, loaded, tmp_path: Path) -> None:
    """The virtual points' table (link states) was loaded with the page and then changed only with the
    stream's value changes: with the local Redis (a replica) cut off from its master it went on showing the
    last links as current. Every health message now brings the links, and the table says "? unknown"
    within seconds, live, without a reload."""
    upstream = RedisProc(replicaof=(loaded.host, loaded.port), extra=["--repl-ping-replica-period", "1"]).start()
    b = Browser(tmp_path / "profile")
    vals = ("[...document.querySelectorAll('#vps tbody tr')].map(tr => [...tr.cells].slice(3, 6)"
            ".map(td => td.textContent))")
    try:
        upstream.wait_synced()  # the same data, then the roles swapped: this api's Redis is the replica
        upstream.client().replicaof("no", "one")
        loaded.client().replicaof(upstream.host, upstream.port)
        loaded.wait_synced()
        await b.open(live + "/")
        await b.wait("document.body.dataset.live === '1'", 15, "the live stream")
        known = await b.wait(f"(() => {{ const v = {vals}; return v.filter(r => !r.includes('? unknown')).length >= 2 "
                             "&& v; })()", 5, "links of RTU 1 and 2 known")
        assert known[0] == ["✓ up"] * 3 and known[1] == ["✗ down", "✓ up", "✓ up"], known
        upstream.stop()
        await b.wait(f"{vals}.every(r => r.every(t => t === '? unknown'))", 5, "the links not current")
        assert await b.eval("document.body.dataset.live") == "1"  # still live: the local Redis answers
    finally:
        await b.close()
        loaded.client().replicaof("no", "one")
        upstream.close()


async def test_dashboard_does_not_stay_live_when_the_api_hangs(live_proc: tuple[str, subprocess.Popen[bytes]],
                                                              tmp_path: Path) -> None:
    """An api that hangs (SIGSTOP here; a node that loses power looks the same: no reset, no end) sent
    nothing and ended nothing, and the page went on saying "● live" over frozen values. Health comes every
    second: five seconds of silence end the stream and the header says what is shown may not be current."""
    url, proc = live_proc
    b = Browser(tmp_path / "profile")
    try:
        await b.open(url + "/")
        await b.wait("document.body.dataset.live === '1'", 15, "the live stream")
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        await b.wait("document.body.dataset.live === '0' && "
                     "document.querySelector('#status').textContent.includes('may not be current')", 10,
                     "the status saying the page is not current")
        assert time.monotonic() - t0 < 7.5
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await b.close()


async def test_dashboard_shows_every_forwarding_point_with_its_own_id(live: str, loaded, tmp_path: Path) -> None:
    """A forwarding RTU's points were kept by ZFID alone, which is unique within its table only: RTU 10 showed
    some of its rows only (T005 ZFID 1 hidden by T006 ZFID 1 …), and a live change of a source point overwrote the
    forwarding point's id with the source's (ZFID 1 shown as 101)."""
    fwds = httpx.get(live + "/api/v1/rtus/10/forwards").json()["items"]
    assert len({f["id"] for f in fwds}) < len(fwds)  # ids repeat across tables
    rows = "[...document.querySelectorAll('#points tbody tr')]"
    b = Browser(tmp_path / "profile")
    r = aredis.Redis(host=loaded.host, port=loaded.port, decode_responses=True)
    try:
        await b.open(live + "/")
        await b.wait("document.body.dataset.live === '1'", 15, "the live stream")
        await b.eval("(() => { const s = document.querySelector('#v-rtu'); s.value = '10';"
                     " s.dispatchEvent(new Event('change')); })()")
        shown = await b.wait(f"(() => {{ const r = {rows}.map(tr => [...tr.cells].slice(0, 2).map(td => td.textContent));"
                             f" return r.length >= {len(fwds)} && document.body.dataset.live === '1' && r; }})()",
                             10, "every forwarding point")
        assert sorted(map(tuple, shown)) == sorted((str(f["id"]), f["table"]) for f in fwds), shown
        now = int((await r.time())[0]) * 1000
        w = await r.fcall(*redisfns.write_values(1, "A", 1, ["101", points.encode(77.25, 0, now)]).argv)
        assert int(w[0]) == 1
        row = await b.wait(f"(() => {{ const tr = {rows}.find(tr => tr.cells[4].textContent === '77.25');"
                           " return tr && [...tr.cells].slice(0, 4).map(td => td.textContent); })()", 5,
                           "source 101's change in its forwarding point's row")
        assert row[:3] == ["1", "T005_ZFAI", "1001"] and row[3].startswith("101 "), row
    finally:
        await b.close()
        await r.aclose()
