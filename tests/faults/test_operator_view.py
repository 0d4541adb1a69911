"""What the operator is shown under partial failure (docs/api.md "Under faults"): faults injected into the
running processes of two nodes (a real Redis master and replica, fep-plcsim's PLCs, the real `fep-acquirer`
and `fep-forwarder` of nodes A and B, timers shortened as in tests/api/test_with_services.py), read through
both nodes' apis. Every field is true, or null with the reason; never a last state shown as current."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_with_services import ACQ, System, dashboard_dom, settled, start_all, until


async def rtus(s: System, node: str) -> dict[int, dict[str, Any]]:
    return await s.rtus(node)


def samples(text: str, name: str) -> list[dict[str, str]]:
    return [smp.labels for fam in text_string_to_metric_families(text) for smp in fam.samples if smp.name == name]


async def test_a_dead_acquirers_last_channel_report_is_not_shown_as_current(system: System) -> None:
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
