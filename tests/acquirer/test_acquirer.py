"""The acquirer against a real Redis and real Modbus servers (PlcSim), timers shortened (helpers.FAST)."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest
import redis.asyncio as aredis

from fep_acquirer import mbtcp
from fep_acquirer.executor import execute_loop
from fep_acquirer.lease import LeaseView
from fep_acquirer.metrics import Metrics
from fepha import controls, points, redisfns
from fepha import keyspace as ks
from fepha.logsetup import OnceLogger
from tests.acquirer.helpers import (
    Node,
    free_port,
    holding,
    load,
    lone_runner,
    merge,
    node_cfg,
    rtu_rows,
    start_sim,
    until,
)
from tests.redisproc import RedisProc


async def value_of(r, rtu: int, pid: int):
    raw = await r.hget(ks.values(rtu), str(pid))
    return points.decode(raw) if raw else None


async def test_poll_write_switch_and_invalid(redis_master, feproot):
    model = load(redis_master, merge(rtu_rows(1, free_port())))
    sim = await start_sim(model)
    a = Node(node_cfg(feproot, redis_master, "A"))
    try:
        r = a.master
        await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
        sim.set_value(1002, 42)
        await until(lambda: value_of(r, 1, 1002), 3)
        assert (await until(lambda: _eq(value_of(r, 1, 1002), 42))) is True
        assert (await r.hget(ks.link(1), "vala")) == "1" and (await r.hget(ks.VPOINTS, "1999")).startswith("1|")
        # channel 1 cut: switch to channel 2 after channel_switch_s, values keep flowing
        t0 = time.monotonic()
        sim.cut(1, 1)
        await until(lambda: _field(r, ks.channel_state(1, "A"), "active", "2"), 5)
        assert time.monotonic() - t0 >= 0.3
        sim.set_value(1002, 43)
        await until(lambda: _eq(value_of(r, 1, 1002), 43), 3)
        # both down: the holder writes its points invalid (once) and its link goes 0
        sim.cut(1)
        await until(lambda: _quality(value_of(r, 1, 1002), points.Quality.IV), 5)
        await until(lambda: _field(r, ks.link(1), "val", "0"), 3)
        assert (await r.hget(ks.VPOINTS, "1999")).startswith("0|")
        # channel 1 back: found again by alternating, values valid again
        sim.restore(1, 1)
        sim.set_value(1002, 44)
        await until(lambda: _eq(value_of(r, 1, 1002), 44), 5)
        v = await value_of(r, 1, 1002)
        assert v.quality == 0
        await until(lambda: _field(r, ks.channel_state(1, "A"), "ch1_connected", "1"), 2)
        st = await r.hgetall(ks.channel_state(1, "A"))
        assert st["active"] == "1" and int(st["ch2_switches"]) >= 1 and st["ch2_error"]
        for ch in (1, 2):  # wall-clock ms for the api, although the switching runs on the monotonic clock
            assert abs(int(st[f"ch{ch}_since_ms"]) / 1000 - time.time()) < 60
        m = await until(lambda: r.hgetall(ks.metrics("acquirer", "A")), 2)
        assert int(m["changes_written"]) > 0 and a.acq.metrics.total["channel_switches"] >= 2
    finally:
        await a.stop()
        await sim.stop()


async def _eq(coro, want) -> bool:
    v = await coro
    return v is not None and v.value == want and v.quality == 0


async def _field_is(r, key: str, field: str, want: str) -> bool:
    return await r.hget(key, field) == want


async def _quality(coro, q) -> bool:
    v = await coro
    return v is not None and bool(v.quality & q)


async def _field(r, key, field, want) -> bool:
    return (await r.hget(key, field)) == want


async def test_takeover_no_steal_back_and_fencing(redis_master, feproot):
    model = load(redis_master, merge(rtu_rows(1, free_port())))
    sim = await start_sim(model)
    a = Node(node_cfg(feproot, redis_master, "A", channel_switch_s=100))  # A stays on channel 1
    await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
    b = Node(node_cfg(feproot, redis_master, "B"))
    try:
        r = a.master
        await until(lambda: b.acq.runners and b.acq.runners[1].reaches(), 3)
        old_epoch = a.acq.runners[1].lease.epoch
        t0 = time.monotonic()
        sim.cut(1, 1)  # A loses its device; B switches to channel 2 and reaches it
        await until(lambda: b.acq.runners[1].lease.held, 5)
        assert time.monotonic() - t0 >= 1.0  # takeover_s
        assert (await r.hget(ks.lease(1), "holder")) == "B"
        ev = (await r.xrevrange(ks.LEASE_EVENTS, count=1))[0][1]
        assert ev["reason"] == "takeover" and ev["to"] == "B"
        sim.set_value(1001, 7)
        await until(lambda: _eq(value_of(r, 1, 1001), 7), 3)
        # the fenced-out former holder's write is rejected by Redis
        res = await r.fcall(*redisfns.write_values(1, "A", old_epoch, ["1001", "99|0|1"]).argv)
        assert int(res[0]) == 0 and res[1] == "B"
        assert (await value_of(r, 1, 1001)).value == 7
        # A recovers: it reaches its device again but does not steal the lease back
        sim.restore(1, 1)
        await until(lambda: a.acq.runners[1].reaches(), 3)
        t1 = time.monotonic()
        while time.monotonic() - t1 < 1.5:
            assert (await r.hget(ks.lease(1), "holder")) == "B"
            await until(lambda: True)
        assert not a.acq.runners[1].lease.held
        assert (await r.hget(ks.link(1), "val")) == "1"
    finally:
        await b.stop()
        await a.stop()
        await sim.stop()


async def test_holder_stopped_lease_lapses(redis_master, feproot):
    """A holder stopped without handing over (stop_handover_s = 0; a crash is the same): the lease lapses."""
    model = load(redis_master, merge(rtu_rows(1, free_port())))
    sim = await start_sim(model)
    a = Node(node_cfg(feproot, redis_master, "A", stop_handover_s=0))
    await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
    b = Node(node_cfg(feproot, redis_master, "B", takeover_s=30))
    try:
        await until(lambda: b.acq.runners and b.acq.runners[1].reaches(), 3)
        await a.stop()
        t0 = time.monotonic()
        await until(lambda: b.acq.runners[1].lease.held, 3)
        assert time.monotonic() - t0 < 2.0  # lease_ttl_s 0.6, not takeover_s 30
        ev = (await b.master.xrevrange(ks.LEASE_EVENTS, count=1))[0][1]
        assert ev["reason"] == "lapsed"
        # B's heartbeat is there, A's expires
        await until(lambda: _missing(b.master, ks.heartbeat("acquirer", "A")), 3)
        assert await b.master.exists(ks.heartbeat("acquirer", "B"))
    finally:
        await b.stop()
        await sim.stop()


async def test_stop_hands_over_what_the_other_node_reaches_and_keeps_the_rest(redis_master, feproot, caplog):
    """A planned stop of the holder of RTUs 1 and 2 while B reaches only RTU 1: RTU 1 is handed over at
    once (reason handover, well before the TTL), RTU 2 is kept (said once) and lapses as before: handing it
    to a node that cannot reach its device would stop its data."""
    model = load(redis_master, merge(rtu_rows(1, free_port()), rtu_rows(2, free_port())))
    sim = await start_sim(model)
    sim.cut(2, 1)  # RTU 2 answers on channel 2 only: A switches there (0.4 s), B stays on channel 1
    a = Node(node_cfg(feproot, redis_master, "A", lease_ttl_s=1.5))
    await until(lambda: a.acq.runners and all(a.acq.runners[i].lease.held for i in (1, 2)), 5)
    b = Node(node_cfg(feproot, redis_master, "B", lease_ttl_s=1.5, channel_switch_s=100))
    try:
        r = b.master
        await until(lambda: b.acq.runners and b.acq.runners[1].reaches(), 3)
        await until(lambda: _field_is(r, ks.link(1), "valb", "1"), 2)
        assert not b.acq.runners[2].reaches()
        t0 = time.monotonic()
        await a.stop()
        stopped = time.monotonic() - t0
        assert await r.hget(ks.lease(1), "holder") == "B"  # A returned once B held it
        assert stopped < 1.0, stopped  # B took RTU 1 at its next tick (0.1 s), not after the TTL (1.5 s)
        assert await r.hget(ks.lease(2), "holder") == "A"  # kept
        kept = [m for m in caplog.messages if "keeping the leases" in m]
        assert kept == ["stopping: keeping the leases of RTU 2 until they lapse (lease_ttl_s): node B does not "
                        "reach their devices, handing them over would stop their data"], caplog.messages
        ev = {e["rtu"]: e for _, e in await r.xrange(ks.LEASE_EVENTS)}
        assert (ev["1"]["from"], ev["1"]["to"], ev["1"]["reason"]) == ("A", "B", "handover")
        # RTU 2: lapses, then B (which cannot reach it) takes it to mark its points invalid, as before
        await until(lambda: b.acq.runners[2].lease.held, 5)
        ev = (await r.xrevrange(ks.LEASE_EVENTS, count=1))[0][1]
        assert (ev["rtu"], ev["reason"]) == ("2", "lapsed")
    finally:
        await b.stop()
        await sim.stop()


async def test_takeover_replays_what_the_standby_saw_in_the_gap(redis_master, feproot):
    """Holder gone: until its lease lapses nobody writes; a value that changes and changes back in that
    gap still reaches the change stream, in order, with the standby's timestamps."""
    model = load(redis_master, merge(rtu_rows(1, free_port())))
    sim = await start_sim(model)
    a = Node(node_cfg(feproot, redis_master, "A", lease_ttl_s=1.5, stop_handover_s=0))  # gone as by a crash
    await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
    b = Node(node_cfg(feproot, redis_master, "B", lease_ttl_s=1.5, takeover_s=30))
    try:
        await until(lambda: b.acq.runners and b.acq.runners[1].reaches(), 3)
        sim.set_value(1001, 7)
        await until(lambda: value_of(b.master, 1, 1001), 3)
        await until(lambda: _is(value_of(b.master, 1, 1001), 7), 3)
        await a.stop()
        gap_start = (await b.master.xrevrange(ks.CHANGES, count=1))[0][0]
        sim.set_value(1001, 8)   # both inside the gap: A is gone, B does not hold the lease yet
        await until(lambda: b.acq.runners[1].samples[1001][0] == 8, 2)
        sim.set_value(1001, 7)
        await until(lambda: b.acq.runners[1].samples[1001][0] == 7, 2)
        assert not b.acq.runners[1].lease.held
        await until(lambda: b.acq.runners[1].lease.held, 4)
        await until(lambda: b.acq.metrics.total["changes_replayed"] >= 2, 2)
        seen = [points.decode(f["1001"]).value for _, f in await b.master.xrange(ks.CHANGES, min=f"({gap_start}")
                if "1001" in f]
        assert seen[:2] == [8, 7], seen
        # the full image that follows writes only what differs from Redis: nothing here (docs/acquirer.md)
        polls = b.acq.metrics.total["polls"]
        await until(lambda: b.acq.metrics.total["polls"] >= polls + 3, 3)
        written = [(pid, points.decode(rec).value)
                   for _, f in await b.master.xrange(ks.CHANGES, min=f"({gap_start}")
                   for pid, rec in f.items() if pid in ("1000", "1001", "1002", "1003")]
        assert written == [("1001", 8), ("1001", 7)], written
        assert b.acq.metrics.total["full_images"] >= 1
    finally:
        await b.stop()
        await sim.stop()


async def test_lease_gain_writes_the_replay_then_the_image_at_once(redis_master, feproot):
    """A new holder whose last poll is younger than its poll period writes the standby replay, then the
    full image from that poll's samples (with that poll's time), at the lease gain itself, not with its next
    poll (docs/acquirer.md, "Lease rules"). Polls every second; A stops at a moment of the poll period chosen
    so that B takes the lapsed lease (TTL 1.5 s) between two of its polls: with the next poll, the first
    write came up to one poll period after the gain."""
    model = load(redis_master, merge(rtu_rows(1, free_port(), poll_ms=1000)))
    sim = await start_sim(model)
    # A stops as after a crash (stop_handover_s 0): its lease lapses rather than being handed over at once
    a = Node(node_cfg(feproot, redis_master, "A", lease_ttl_s=1.5, takeover_s=30, stop_handover_s=0))
    await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
    b = Node(node_cfg(feproot, redis_master, "B", lease_ttl_s=1.5, takeover_s=30))
    try:
        await until(lambda: b.acq.runners and b.acq.runners[1].reaches(), 3)
        period, phase = 1.0, (1 * 0.6180339887) % 1.0  # both poll RTU 1 at this phase (RtuRunner._poll_loop)
        await asyncio.sleep((phase - 0.25 - time.monotonic()) % period)
        # A's last renewal comes 0.1-0.5 s later (its executor ends first), the lease lapses 1.5 s after that:
        # B takes it 0.35-0.85 s after one of its polls
        await a.stop()
        gap_start = (await b.master.xrevrange(ks.CHANGES, count=1))[0][0]
        sim.set_value(1001, 8)  # seen by B's next poll, logged: the replay
        await b.master.hdel(ks.values(1), "1003")  # Redis lost a value: the full image writes it again
        await until(lambda: b.acq.runners[1].samples[1001][0] == 8, 2, step=0.01)
        polled_ms = b.acq.runners[1].polled_ts_ms
        await until(lambda: b.acq.runners[1].lease.held, 3, step=0.01)
        await until(lambda: b.acq.metrics.total["changes_replayed"] >= 1, 2, step=0.01)
        ev_id, ev = (await b.master.xrevrange(ks.LEASE_EVENTS, count=1))[0]
        assert ev["to"] == "B" and ev["reason"] == "lapsed", ev
        await until(lambda: b.master.hexists(ks.values(1), "1003"), 2, step=0.01)
        entries = await b.master.xrange(ks.CHANGES, min=f"({gap_start}")
        written = [(pid, points.decode(rec)) for _, f in entries for pid, rec in f.items() if pid != "r"]
        gain_ms, first_ms = int(ev_id.split("-")[0]), int(entries[0][0].split("-")[0])
        image_ms = int(next(i for i, f in entries if "1003" in f).split("-")[0])
        image = dict(written)["1003"]
        print(f"lease gain -> first write {first_ms - gain_ms} ms, -> image {image_ms - gain_ms} ms "
              f"(poll period 1000 ms, image of the poll {gain_ms - image.ts_ms} ms before the gain)")
        assert [pid for pid, _ in written][:2] == ["1001", "1003"], written  # the replay, then the image
        assert written[0][1].value == 8 and written[0][1].ts_ms == polled_ms, written  # as the standby saw it
        # the image: the last poll before the gain, younger than one period, with that poll's time, good
        assert 0 <= gain_ms - image.ts_ms < 1000 and image.quality == 0, (gain_ms, written)
        assert image_ms - gain_ms < 150, (gain_ms, first_ms, image_ms)
    finally:
        await b.stop()
        await sim.stop()


async def _is(value, expected) -> bool:
    v = await value
    return v is not None and v.value == expected


async def _missing(r, key) -> bool:
    return not await r.exists(key)


async def test_compensation_across_redis_restart(feproot):
    with RedisProc(appendonly=True) as rp:
        model = load(rp, merge(rtu_rows(1, free_port())))
        sim = await start_sim(model)
        a = Node(node_cfg(feproot, rp, "A"))
        try:
            await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
            sim.set_value(1000, 5)
            await until(lambda: _eq(value_of(a.master, 1, 1000), 5), 3)
            rp.stop()
            sim.set_value(1000, 6)
            sim.set_value(1001, 9)
            await until(lambda: a.acq.metrics.total["write_errors"] > 0, 3)
            rp.start()
            await until(lambda: _eq(value_of(a.master, 1, 1000), 6), 5)
            await until(lambda: _eq(value_of(a.master, 1, 1001), 9), 3)
            assert a.acq.metrics.total["compensations"] + a.acq.metrics.total["full_images"] > 0
        finally:
            await a.stop()
            await sim.stop()


@pytest.mark.parametrize("a_state, b_state, val", [(0, 0, "0"), (1, 0, "1"), (0, 1, "1"), (1, 1, "1")])
async def test_virtual_point_combinations(redis_master, a_state, b_state, val):
    import redis.asyncio as aredis

    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    try:
        redisfns.load_sync(redis_master.client())
        for node, state in (("A", 1 - a_state), ("B", 1 - b_state), ("A", a_state), ("B", b_state)):
            res = await r.fcall(*redisfns.link_set(7, node, bool(state), [77]).argv)
        assert res == [str(a_state), str(b_state), val]
        assert points.decode(await r.hget(ks.VPOINTS, "77")).value == int(val)
    finally:
        await r.aclose()


async def test_reload_without_restart(redis_master, feproot):
    p1, p2 = free_port(), free_port()
    model = load(redis_master, merge(rtu_rows(1, p1)))
    sim = await start_sim(load(redis_master, merge(rtu_rows(1, p1), rtu_rows(2, p2))))
    load(redis_master, merge(rtu_rows(1, p1)))
    a = Node(node_cfg(feproot, redis_master, "A"))
    try:
        await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
        first = a.acq.runners[1]
        load(redis_master, merge(rtu_rows(1, p1), rtu_rows(2, p2)))  # add RTU 2, RTU 1 untouched
        await until(lambda: 2 in a.acq.runners and a.acq.runners[2].lease.held, 3)
        assert a.acq.runners[1] is first
        sim.set_value(2001, 11)
        await until(lambda: _eq(value_of(a.master, 2, 2001), 11), 3)
        assert "identity" not in a.acq.once.active  # fep-ha.cfg and T020_UNION agree: node A
        load(redis_master, merge(rtu_rows(1, p1, poll_ms=150)))  # RTU 1 changed, RTU 2 removed
        await until(lambda: 2 not in a.acq.runners and a.acq.runners[1] is not first, 3)
        assert model.gen == 0
        swapped = merge(rtu_rows(1, p1, poll_ms=150))  # T020_UNION now says 127.0.0.1 is node B
        swapped["T020_UNION"] = [{"ID": 1, "IP1": "127.0.0.2", "IP2": "127.0.0.1"}]
        load(redis_master, swapped)
        await until(lambda: "identity" in a.acq.once.active, 3)
        assert "i.e. node B" in a.acq.once.active["identity"]
    finally:
        await a.stop()
        await sim.stop()


async def test_several_requests_in_flight_end_to_end(redis_master, feproot):
    """T004_RTU.INFLIGHT 4: the acquirer polls fep-plcsim with several requests outstanding (three blocks:
    hr 0.., hr 500, the coil); values and a control go through as with one, the control written once."""
    rows = merge(rtu_rows(1, free_port()))
    rows["T004_RTU"][0]["INFLIGHT"] = 4
    rows["T011_POINT"].append({**rows["T011_POINT"][0], "PNTID": 1500, "NAME": "far", "ADDRESS": 500})
    model = load(redis_master, rows)
    sim = await start_sim(model)
    a = Node(node_cfg(feproot, redis_master, "A"))
    try:
        r = a.master
        await until(lambda: a.acq.runners and a.acq.runners[1].lease.held and a.acq.runners[1].link)
        assert isinstance(a.acq.runners[1].link.client.proto, mbtcp._Pipelined)
        assert len(a.acq.runners[1].blocks) == 3
        sim.set_value(1002, 42)
        sim.set_value(1500, 77)
        await until(lambda: _eq(value_of(r, 1, 1002), 42), 3)
        await until(lambda: _eq(value_of(r, 1, 1500), 77), 3)
        res = await controls.execute(r, 1, 1003, 321, "test", 2000)
        assert res.ok, res
        assert sim.value(1003) == 321 and [w for w in sim.writes if w[1] == "hr"] == [(1, "hr", 3, [321])]
        sim.set_value(1500, 78)
        await until(lambda: _eq(value_of(r, 1, 1500), 78), 3)
        assert a.acq.metrics.total["poll_errors"] == 0
    finally:
        await a.stop()
        await sim.stop()


async def test_controls_once_and_expired(redis_master, feproot):
    async with holding(redis_master, feproot, merge(rtu_rows(1, free_port()))) as (_, sim, a):
        r = a.master
        res = await controls.execute(r, 1, 1003, 321, "test", 2000)
        assert res.ok, res
        assert sim.value(1003) == 321
        res = await controls.execute(r, 1, 1900, 1, "test", 2000)
        assert res.ok and sim.value(1900) == 1
        assert [w for w in sim.writes if w[1] == "hr"] == [(1, "hr", 3, [321])]
        # deadline already passed when claimed: never written
        ctl = await controls.submit(r, 1, 1002, 555, "test", 0)
        res = await controls.wait(r, ctl, 500)
        assert res.state == controls.EXPIRED and sim.value(1002) != 555
        # unknown point: a clear failure, not a crash
        res = await controls.execute(r, 1, 424242, 1, "test", 2000)
        assert res.state == controls.FAILED and "not a point" in res.reason
        m = a.acq.metrics.total
        assert m["controls_executed"] == 2 and m["controls_failed"] == 1


@pytest.mark.parametrize(("poll_age_s", "at_gain", "with_next_poll"), [
    (0.2, ["1001", "1003"], []),     # younger than the period: replay and image at the gain
    (1.5, ["1001"], ["1003"]),       # a period old: the replay at the gain, the image with the next poll
    (3.5, [], ["1001", "1003"]),     # past the reach window and [quality] stale_polls: all with the next poll
])
async def test_what_a_new_holder_writes_at_the_gain_and_with_the_next_poll(redis_master, feproot, poll_age_s,
                                                                           at_gain, with_next_poll):
    """`changes.at_lease_gain` in the runner, on a real Redis with fencing, the polls played by the test:
    A wrote every point 7; B, standby, saw point 1001 change to 8 (the replay) and sees point 1003 at 7
    where Redis has 5 (a value the log does not explain: the image corrects it). The age of B's last poll
    decides what goes out at the gain; the rest is written by the next poll, even one that sees no change.
    The replay keeps the change's own time whichever writes it: a poll before the replay (it waits for that
    poll, or a poll comes while it reads Redis) does not drop the log (it did: 1001 went out as the image's
    current value, at the poll's time, and a change gone again by then was lost)."""
    pids = (1000, 1001, 1002, 1003, 1900)
    model = load(redis_master, merge(rtu_rows(1, free_port(), poll_ms=1000)))
    async with lone_runner(feproot, redis_master, model, "B") as (r, runner):
        _, epoch_a, _ = await r.fcall(*redisfns.lease_tick(1, "A", True, 60_000, 90_000).argv)
        t0 = int(time.time() * 1000) - 5000
        held = {pid: 5 if pid == 1003 else 7 for pid in pids}
        await r.fcall(*redisfns.write_values(1, "A", int(epoch_a), [x for pid, v in held.items()
                                                                     for x in (str(pid), points.encode(v, 0, t0))]).argv)
        runner.standby.observe({pid: (7, 0) for pid in pids}, t0 + 100)  # B's first poll: the baseline
        runner.standby.observe({1001: (8, 0)}, t0 + 4000)
        runner.samples = {**{pid: (7, 0) for pid in pids}, 1001: (8, 0)}
        runner.last_ok = time.monotonic() - poll_age_s
        runner.polled_ts_ms = int(time.time() * 1000) - int(poll_age_s * 1000)
        await r.delete(ks.lease(1))  # A's lease lapsed; B takes it
        holder, epoch_b, _ = await r.fcall(*redisfns.lease_tick(1, "B", True, 60_000, 90_000).argv)
        start = (await r.xrevrange(ks.CHANGES, count=1))[0][0]

        async def written_since(since: str) -> tuple[list[str], str]:
            entries = await r.xrange(ks.CHANGES, min=f"({since}")
            return [pid for _, f in entries for pid in f if pid != "r"], entries[-1][0] if entries else since
        assert runner.lease.update(holder, int(epoch_b)) == "gained"
        runner.lease_gained()
        if runner._gain is not None:
            await asyncio.wait_for(runner._gain, 2)
        got, start = await written_since(start)
        assert got == at_gain
        runner._polled({}, int(time.time() * 1000), None)  # the next poll passes on what changed: nothing
        await runner.flush()
        got, start = await written_since(start)
        assert got == with_next_poll
        held = {int(pid): points.decode(rec) for pid, rec in (await r.hgetall(ks.values(1))).items()}
        assert {pid: v.value for pid, v in held.items()} == {**{pid: 7 for pid in pids}, 1001: 8}
        assert held[1001].ts_ms == t0 + 4000  # replayed, with the time the standby saw it


async def test_the_executor_takes_up_a_queued_control_at_the_lease_gain(redis_master):
    """A control queued while no node holds the RTU (a failover's gap) is claimed as soon as this node gains
    the lease, not when the executor's idle wait ends (`block_s`, 1 s here: 0.7 s after the gain)."""
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)

    class Runner:  # what the executor uses of an RtuRunner: its RTU id, lease view, write_point
        rtu, lease, writes = SimpleNamespace(id=1), LeaseView("B"), []

        async def write_point(self, point: int, value: float, deadline: float | None = None) -> None:
            self.writes.append((point, value, time.monotonic()))

    runner, stopping, gained = Runner(), asyncio.Event(), asyncio.Event()
    loop = asyncio.create_task(execute_loop(r, "B", {1: runner}, Metrics("B"), OnceLogger(logging.getLogger("t")),
                                            stopping, block_s=1.0, gained=gained))
    try:
        ctl = await controls.submit(r, 1, 1002, 7, "test", 3000)
        await asyncio.sleep(0.3)  # the executor waits, holding nothing
        holder, epoch, _ = await r.fcall(*redisfns.lease_tick(1, "B", True, 60_000, 90_000).argv)
        t_gain = time.monotonic()
        assert runner.lease.update(holder, int(epoch)) == "gained"
        gained.set()  # what the housekeeping does at a gain
        res = await controls.wait(r, ctl, 3000)
        assert res.ok and [(p, v) for p, v, _ in runner.writes] == [(1002, 7.0)], res
        assert runner.writes[0][2] - t_gain < 0.2
    finally:
        stopping.set()
        gained.set()
        await asyncio.wait_for(loop, 3)
        await r.aclose()


async def test_a_tick_with_a_channel_switch_is_one_round_trip(redis_master, feproot, monkeypatch):
    """A tick's lease calls, link states, channel switch events and states, and its read of the master clock's
    gen go out as one packed send: on a slow link each further round trip spaces the renewals further apart
    (docs/ha.md "Degraded links": a channel-state change used to add a pipeline of its own)."""
    from fep_acquirer import housekeeping

    sends: list[int] = []
    real = housekeeping.send_fcalls

    async def counted(r, argvs, tail=()):
        sends.append(len(argvs) + len(tail))
        return await real(r, argvs, tail)

    monkeypatch.setattr(housekeeping, "send_fcalls", counted)
    model = load(redis_master, merge(rtu_rows(1, free_port())))
    sim = await start_sim(model)
    a = Node(node_cfg(feproot, redis_master, "A"))
    try:
        r = a.master
        await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
        a.acq.house.ticker.pipeline = lambda *_, **__: pytest.fail("a tick sent a second round trip")
        sim.cut(1, 1)
        await until(lambda: _field(r, ks.channel_state(1, "A"), "active", "2"), 5)
        kinds = [e[1]["kind"] for e in await r.xrange(ks.EVENTS)]
        assert "channel" in kinds
        assert a.acq.house.clock_gen == "0"  # read in the same send, last
        assert sends and max(sends) > 2  # ticks, link states and at least the clock gen
    finally:
        await a.stop()
        await sim.stop()
