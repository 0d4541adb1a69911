"""What the operator is shown under partial failure (docs/api.md "Under faults"): faults injected into the
running processes of two nodes (a real Redis master and replica, fep-plcsim's PLCs, the real `fep-acquirer`
and `fep-forwarder` of nodes A and B, timers shortened as in tests/api/test_with_services.py), read through
both nodes' apis. Every field is true, or null with the reason; never a last state shown as current."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aredis
from prometheus_client.parser import text_string_to_metric_families

from fepha import controls
from tests.api.cdp import Browser
from tests.api.test_dashboard_live import answers, start_api
from tests.api.test_with_services import ACQ, System, dashboard_dom, settled, start_all, until


async def rtus(s: System, node: str) -> dict[int, dict[str, Any]]:
    return await s.rtus(node)


def samples(text: str, name: str) -> list[dict[str, str]]:
    return [smp.labels for fam in text_string_to_metric_families(text) for smp in fam.samples if smp.name == name]


async def test_a_dead_acquirers_last_channel_report_is_not_shown_as_current(system: System, tmp_path: Path) -> None:
    """SIGKILL of node A's acquirer: its channel-state hash (written on a change only) still says channel 1
    connected. Both apis show node A's channels with `not_current` and connected/active null, keep node B's,
    and /metrics drops A's channel samples."""
    s = system
    start_all(s)
    await until(lambda: settled(s), 10, "leases, channel and link states")
    acq = s.procs.pop(("acquirer", "A"))
    os.kill(acq.pid, signal.SIGKILL)
    acq.wait(5)

    async def a_shown_not_current(node: str) -> dict[int, dict[str, Any]] | None:
        got = await rtus(s, node)
        st = {c["node"]: c for c in got[1]["channel_state"]}
        return got if st["A"]["not_current"] else None

    for node in "AB":
        got = await until(lambda node=node: a_shown_not_current(node), 5, f"A's channels not current on {node}")
        for rid in ACQ:
            st = {c["node"]: c for c in got[rid]["channel_state"]}
            assert "acquirer of node A is not seen alive" in st["A"]["not_current"], st["A"]
            assert st["A"]["reported"] and st["A"]["active"] is None
            assert [c["connected"] for c in st["A"]["channels"]] == [None, None], st["A"]
            assert st["B"]["not_current"] is None and st["B"]["channels"][0]["connected"] is True, st["B"]
        text = (await s.api[node].get("/metrics")).text
        assert {smp["node"] for smp in samples(text, "fep_channel_connected")} == {"B"}
        assert {smp["node"] for smp in samples(text, "fep_channel_active")} == {"B"}
    # node A's own dashboard: its acquirer dead (the reason in the title), its channel reports not current
    dom = await dashboard_dom(s, tmp_path, "A")
    row_a = re.search(r'<tr data-node="A".*?</tr>', dom, re.S)
    assert row_a is not None and "✗ dead" in row_a.group(0) and "no heartbeat of acquirer on node A" in row_a.group(0)
    row_b = re.search(r'<tr data-node="B".*?</tr>', dom, re.S)
    assert row_b is not None and "✗ dead" not in row_b.group(0), row_b
    assert "? not current" in dom and "is not seen alive" in dom


async def test_master_hung_then_killed_as_the_replicas_api_shows_it(system: System, tmp_path: Path) -> None:
    """SIGSTOP of the master Redis (hung: the replica's link stays "up" until repl-timeout), then SIGKILL.
    Node B's api (on the replica) can no longer see heartbeats, leases or links evaluated on the master: it
    shows them unknown (null) with the reason instead of 'dead' and 'lapsed' read from a copy that stopped
    moving; /ready says the replica is cut off; the virtual points are NT as SCADA is served them; a link
    that is down has no lag (Redis's -1) but a down time."""
    s = system
    start_all(s)
    await until(lambda: settled(s), 10, "leases, channel and link states")
    assert s.master.proc is not None
    os.kill(s.master.proc.pid, signal.SIGSTOP)
    try:
        down_ms = s.cfg["B"].replica_down_s * 1000

        async def behind() -> dict[str, Any] | None:
            o = (await s.get("B", "/api/v1/overview"))
            return o if o["master_detail"] else None

        o = await until(behind, down_ms / 1000 + 5, "the replica's api sees it hears nothing")
        assert o["master_node"] is None and "hearing nothing from the master" in o["master_detail"], o
        assert o["replication"]["link_status"] == "up" and o["replication"]["lag_s"] >= 1, o["replication"]
        for n in o["nodes"]:
            assert n["master"] is None if n["node"] == "A" else n["master"] is False, n
            for hb in (n["acquirer"], n["forwarder"]):
                assert hb["alive"] is None and hb["detail"].startswith("unknown: "), hb
        r = await s.api["B"].get("/ready")
        assert r.status_code == 503
        checks = {c["name"]: c for c in r.json()["checks"]}
        assert not checks["replication"]["ok"] and "cut off from the master" in checks["replication"]["detail"]
        got = await rtus(s, "B")
        for rid in ACQ:
            r_ = got[rid]
            assert r_["values_nt"], r_
            lease = r_["lease"]
            assert lease["holder"] in ("A", "B") and lease["remaining_ms"] is None and lease["lapsed"] is None
            assert "hearing nothing from the master" in lease["not_current"], lease
            assert (r_["link"]["vala"], r_["link"]["valb"], r_["link"]["val"]) == (None, None, None), r_["link"]
            for st in r_["channel_state"]:
                assert st["not_current"] and [c["connected"] for c in st["channels"]] == [None, None], st
        for p in (await s.get("B", "/api/v1/points", params={"limit": 1000}))["items"]:
            assert "NT" in p["quality_flags"] and "cut off from the master" in p["nt_reason"], p
        for vp in (await s.get("B", "/api/v1/virtual-points"))["items"]:
            assert "NT" in vp["quality_flags"] and vp["val"] is None and vp["not_current"], vp
        text = (await s.api["B"].get("/metrics")).text
        assert samples(text, "fep_service_up") == [] and samples(text, "fep_lease_holder") == []
        # B's dashboard: services, master, holders and channels unknown, none shown dead, lapsed or up
        dom = await dashboard_dom(s, tmp_path, "B")
        assert 'data-rendered="1"' in dom
        assert "✗ dead" not in dom and "✗ lapsed" not in dom and "ch1 up" not in dom
        assert dom.count("? unknown") >= 4 and "? not current" in dom and "(last known)" in dom
        assert "hearing nothing from the master" in dom
        # above the values: why they are served STALE, in words
        assert 'data-why="stale"' in dom and "SCADA is served these values as not topical" in dom
    finally:
        os.kill(s.master.proc.pid, signal.SIGKILL)
        s.master.proc.wait(5)

    async def link_down() -> dict[str, Any] | None:
        rep = (await s.get("B", "/api/v1/overview"))["replication"]
        return rep if rep["link_status"] == "down" else None

    rep = await until(link_down, 10, "the replica's link down")
    assert rep["lag_s"] is None and rep["down_s"] is not None and rep["down_s"] >= 0, rep
    lease = (await s.get("B", "/api/v1/leases"))["items"][0]
    assert lease["lapsed"] is None and "replication link down" in lease["not_current"], lease
    await asyncio.sleep(0)


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")  # Debian package faketime


def clock_off(offset: str) -> dict[str, str]:
    """Environment that runs a service with its wall clock moved by `offset` (libfaketime; its monotonic
    clock, which its timers use, is left alone)."""
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


async def test_services_on_hosts_whose_clocks_differ(system: System) -> None:
    """Node A's services run 30 s ahead of the api's clock, node B's 30 s behind (their heartbeats and the
    values their holder stamps carry those clocks). Both apis show all four alive with an age within a
    heartbeat's lifetime, taken from the key's TTL on one Redis clock (it was 'dead, 30 s old' for B and a
    negative age for A), and no point with a negative age."""
    assert LIBFAKETIME.exists(), "the Debian package faketime is needed (.ci/install installs it)"
    s = system
    s.env["A"].update(clock_off("+30s"))
    s.env["B"].update(clock_off("-30s"))
    start_all(s)
    await until(lambda: settled(s), 15, "leases, channel and link states")
    max_age = s.cfg["A"].heartbeat_s * 3
    for node in "AB":
        hbs = (await s.get(node, "/api/v1/node"))["heartbeats"]
        assert all(h["alive"] and 0 <= h["age_s"] <= max_age for h in hbs), hbs
        o = await s.get(node, "/api/v1/overview")
        assert all(n[svc]["alive"] for n in o["nodes"] for svc in ("acquirer", "forwarder")), o["nodes"]
        r = await s.api[node].get("/ready")
        assert r.status_code == 200, r.text
        text = (await s.api[node].get("/metrics")).text
        ups = [smp for fam in text_string_to_metric_families(text) for smp in fam.samples
               if smp.name == "fep_service_up"]
        assert len(ups) == 4 and all(smp.value == 1 for smp in ups), ups
        ages = [smp for fam in text_string_to_metric_families(text) for smp in fam.samples
                if smp.name == "fep_heartbeat_age_seconds"]
        assert len(ages) == 4 and all(0 <= smp.value <= max_age for smp in ages), ages
        pts = (await s.get(node, "/api/v1/points?limit=1000"))["items"]
        assert all(p["age_ms"] is None or p["age_ms"] >= 0 for p in pts), [(p["id"], p["age_ms"]) for p in pts]
        for pid in (101, 201):
            p = await s.get(node, f"/api/v1/points/{pid}")
            assert p["age_ms"] is None or p["age_ms"] >= 0, p


async def _lease(s: System, node: str, rid: int, reach: str) -> dict[str, Any] | None:
    lease = (await s.get(node, f"/api/v1/rtus/{rid}"))["lease"]
    return lease if lease["reach"] == reach else None


async def _both(s: System, rid: int, reach: str) -> dict[str, dict[str, Any]] | None:
    got = {node: await _lease(s, node, rid, reach) for node in "AB"}
    return got if all(got.values()) else None  # type: ignore[return-value]


def _why(key: str, text: str) -> str:
    """JS: the box above the values has a line of this kind saying `text`."""
    return (f"[...document.querySelectorAll('#v-why [data-why=\"{key}\"]')]"
            f".some(p => p.textContent.includes({text!r}))")


ROW1 = "document.querySelector('#acq tr[data-rtu=\"1\"]').textContent"


async def test_partial_reach_a_lost_channel_and_a_lost_device_on_both_apis_and_the_dashboard(
        system: System, tmp_path: Path) -> None:
    """RTU 1's device first answers every block but one (fep-plcsim `mute`: points 105, 106 of the `di`
    block), then loses its channel 1, then stops answering: node B's dashboard (fep-api on the replica,
    watched live in Chromium, no reload) and both apis say how the holder reaches the device, which points
    are invalid and whether the other node takes over, within a few seconds, and clear it when it ends."""
    s = system
    start_all(s)
    rtus0 = await until(lambda: settled(s), 10, "leases, channel and link states")
    holder = rtus0[1]["lease"]["holder"]
    other = "B" if holder == "A" else "A"
    url = start_api(s, "B")
    await until(lambda: answers(url), 10, "fep-api of node B")
    b = Browser(tmp_path / "profile")
    try:
        await b.open(url + "/")
        await b.wait("document.body.dataset.live === '1'", 20, "the dashboard live")
        await b.wait(f"{ROW1}.includes('✓ fully')", 5, "RTU 1 reached fully")

        # --- one block unanswered: partial reach, its points invalid, the others good, no move
        t0 = time.monotonic()
        s.sim.mute(1, "di", 0)
        got = await until(lambda: _both(s, 1, "partial"), 5, "RTU 1 reached in part on both apis")
        api_s = time.monotonic() - t0
        for lease in got.values():
            assert lease["holder"] == holder and "in part only" in lease["reach_detail"], lease
            assert lease["answered_ms"] > lease["reached_ms"], lease
        await until(lambda: _invalid_only(s, 1, {105, 106}), 5, "points 105, 106 invalid, the others valid")
        for node in "AB":
            pts = {p["id"]: p for p in (await s.get(node, "/api/v1/points", params={"rtu": 1}))["items"]}
            assert "in part only" in pts[105]["iv_reason"] and pts[101]["iv_reason"] is None, pts[105]
        await b.wait(_why("reach", "in part only"), 5, "the reach line above RTU 1's values")
        await b.wait(f"{ROW1}.includes('⚠ in part only')", 5, "RTU 1's row: in part only")
        dash_s = time.monotonic() - t0
        p105 = "document.querySelector('#points tr[data-point=\"105\"]')"
        await b.wait(f"{p105}.dataset.quality === 'invalid' && {p105}.cells[4].title.includes('in part only')",
                     5, "point 105 invalid, the reason in its quality cell's title")
        # the other node reads it in part too: it never takes over (checked beyond the takeover time)
        await asyncio.sleep(s.cfg["A"].takeover_s + 0.5)
        lease = (await s.get("A", "/api/v1/rtus/1"))["lease"]
        assert lease["holder"] == holder and lease["reach"] == "partial", lease
        assert f"node {other} takes the lease over if it reads the device fully" in lease["reach_detail"], lease
        s.sim.unmute(1, "di", 0)
        await until(lambda: _both(s, 1, "full"), 5, "RTU 1 reached fully again")
        await b.wait(f"!document.querySelector('#v-why [data-why]') && {ROW1}.includes('✓ fully')", 5,
                     "the reach line gone")
        print(f"partial reach shown: api {api_s:.2f} s, dashboard {dash_s:.2f} s after the mute")

        # --- the holder's channel in use lost (a block left unanswered above may have switched channels:
        # the one in use now is cut): the other channel taken, the lost one's error said on the row
        st0 = {c["node"]: c for c in (await s.get("A", "/api/v1/rtus/1"))["channel_state"]}[holder]
        act = st0["active"]
        alt = 3 - act
        t0 = time.monotonic()
        s.sim.cut(1, act)

        def sw(st: dict[str, Any]) -> int:
            return sum(c["switches"] or 0 for c in st["channels"])

        async def switched(node: str) -> dict[str, Any] | None:
            r1 = (await s.get(node, "/api/v1/rtus/1"))
            st = {c["node"]: c for c in r1["channel_state"]}[holder]
            chans = {c["no"]: c for c in st["channels"]}
            assert (st["active"] == alt and chans[alt]["connected"] and chans[act]["connected"] is False and
                    chans[act]["error"] and sw(st) > sw(st0)), (st0, st)
            # the link is up again once the holder has polled on the new channel, which may come a poll after
            # the connection the channel state shows (CI, loaded: link down when the switch was first seen)
            assert r1["lease"]["holder"] == holder and r1["link"]["val"] is True, r1
            return r1

        for node in "AB":
            await until(lambda node=node: switched(node), 5, f"the holder on channel {alt}, link up, seen on {node}")
        cell = f"{ROW1.replace('.textContent', '')}.cells[{6 if holder == 'A' else 7}].textContent"
        await b.wait(f"{cell}.includes('*ch{alt} up') && {cell}.includes('ch{act} standby (last error: ')", 5,
                     f"the holder's channels: {alt} in use, {act}'s error")
        print(f"channel switch shown: dashboard {time.monotonic() - t0:.2f} s after the cut")
        s.sim.restore(1, act)

        # --- the device lost: nobody reaches it, no takeover, every point invalid; then back
        t0 = time.monotonic()
        s.sim.cut(1)

        async def no_takeover() -> dict[str, dict[str, Any]] | None:
            # the other node's link goes down one reach window after it loses the device too: until then
            # the api rightly forecasts its takeover
            got = await _both(s, 1, "none")
            return got if got and all(ls["takeover_in_ms"] is None for ls in got.values()) else None

        got = await until(no_takeover, 5, "RTU 1 not reached on both apis, by neither node")
        for lease in got.values():
            assert f"node {other} does not reach it either: no takeover" in lease["reach_detail"], lease

        async def all_invalid_why() -> bool:
            items = (await s.get("B", "/api/v1/points", params={"rtu": 1}))["items"]
            assert all(p["iv_reason"] and f"holder {holder} has not reached the device" in p["iv_reason"]
                       for p in items), items
            return True

        await until(all_invalid_why, 5, "every point of RTU 1 invalid, the reason given")
        await b.wait(_why("reach", "does not reach it either"), 5, "the reach line: no takeover")
        await b.wait(_why("channels", f"node {holder}'s channels: ch"), 5, "the holder's channel errors")
        await b.wait(f"{ROW1}.includes('✗ not reached, no takeover')", 5, "RTU 1's row: not reached")
        print(f"device lost shown: dashboard {time.monotonic() - t0:.2f} s after the cut")
        s.sim.restore(1)
        await until(lambda: _both(s, 1, "full"), 10, "RTU 1 reached fully after the restore")
        await b.wait(f"!document.querySelector('#v-why [data-why]') && {ROW1}.includes('✓ fully')", 5,
                     "the reach lines gone")
    finally:
        await b.close()


async def _invalid_only(s: System, rid: int, bad: set[int]) -> bool:
    for node in "AB":
        items = (await s.get(node, "/api/v1/points", params={"rtu": rid}))["items"]
        got = {p["id"] for p in items if not p["valid"]}
        assert got == bad, (node, got)
    return True


async def test_controls_that_failed_or_expired_are_shown_with_their_reason(system: System, tmp_path: Path) -> None:
    """A control the device does not answer (its register muted in fep-plcsim) ends `failed`, one queued
    while the holder's acquirer is frozen (SIGSTOP) ends `expired` (never executed): /controls, /controls/{id}
    and node B's dashboard (live, no reload) show each with its reason."""
    s = system
    start_all(s)
    rtus0 = await until(lambda: settled(s), 10, "leases, channel and link states")
    holder = rtus0[1]["lease"]["holder"]
    url = start_api(s, "B")
    await until(lambda: answers(url), 10, "fep-api of node B")
    master = aredis.Redis(host=s.master.host, port=s.master.port, decode_responses=True)
    b = Browser(tmp_path / "profile")
    try:
        await b.open(url + "/")
        await b.wait("document.body.dataset.live === '1'", 20, "the dashboard live")
        s.sim.mute(1, "hr", 100)  # point 110, the tap changer setpoint (AO)
        res = await controls.execute(master, 1, 110, 5.0, "test:operator", 3000)
        s.sim.unmute(1, "hr", 100)
        assert not res.ok, res
        failed = await s.get("B", f"/api/v1/controls/{res.id}")
        assert failed["state"] == "failed" and failed["executor"] == holder, failed
        assert failed["result"] == "modbus exception 0x0b (gateway target device failed to respond)", failed
        await b.wait(f"[...document.querySelectorAll('#controls tbody tr')].some(tr => tr.cells[0].textContent === "
                     f"'{res.id}' && tr.cells[4].textContent === '✗ failed' && "
                     f"tr.cells[5].textContent === {failed['result']!r})", 5, "the failed control and its result")

        acq = s.procs[("acquirer", holder)]
        os.kill(acq.pid, signal.SIGSTOP)
        try:
            res2 = await controls.execute(master, 1, 109, 1.0, "test:operator", 500)
        finally:
            os.kill(acq.pid, signal.SIGCONT)
        assert not res2.ok, res2

        async def ended() -> dict[str, Any] | None:
            c = await s.get("B", f"/api/v1/controls/{res2.id}")
            return c if c["state"] not in ("queued", "executing") else None

        expired = await until(ended, 5, "the queued control ended")
        assert expired["state"] == "expired" and "deadline" in expired["result"], expired
        assert expired["claimed_ms"] is None and s.sim.value(109) == 0, expired  # never executed
        listed = {c["id"]: c for c in (await s.get("B", "/api/v1/controls"))["items"]}
        assert (listed[res2.id]["state"], listed[res2.id]["result"]) == ("expired", expired["result"])
        await b.wait(f"[...document.querySelectorAll('#controls tbody tr')].some(tr => tr.cells[0].textContent === "
                     f"'{res2.id}' && tr.cells[4].textContent === '✗ expired' && "
                     f"tr.cells[5].textContent.includes('deadline'))", 5, "the expired control and its reason")
        await b.wait(f"[...document.querySelectorAll('#events tbody tr[data-kind=\"control\"]')].some(tr => "
                     f"tr.textContent.includes('control {res2.id} point 109') && tr.textContent.includes('expired'))",
                     5, "the expired control in the timeline")
        print(f"control {res.id}: failed, {failed['result']!r}; control {res2.id}: expired, {expired['result']!r}")
    finally:
        await b.close()
        await master.aclose()
