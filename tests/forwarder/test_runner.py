"""The forwarder runner against a real redis-server: configuration from Redis, full image, change stream
(XREAD BLOCK), stream gap, reload, controls through the master, Redis outage; a real c104 client at the
other end of se104s."""

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import c104
import pytest
import redis.asyncio as aredis

from fep_forwarder import app, cli
from fep_forwarder.se104s.server import Se104Server
from fep_loader.store import replace_config
from fepha import controls, points, redisfns
from fepha import keyspace as ks
from fepha.config import NodeConfig
from fepha.semodel import db
from tests.redisproc import RedisProc, free_port

from .se104s_fixtures import c104_master, in_thread, until

SAMPLE_POINTS = {1001: c104.Type.M_ME_NC_1, 1002: c104.Type.M_ME_TF_1, 1003: c104.Type.M_ME_NB_1,
                 1004: c104.Type.M_ME_NA_1, 1: c104.Type.M_SP_TB_1, 2: c104.Type.M_SP_NA_1,
                 3: c104.Type.M_DP_NA_1, 4: c104.Type.M_SP_TB_1, 5: c104.Type.M_SP_TB_1,
                 3001: c104.Type.M_IT_TB_1, 5001: c104.Type.C_SC_NA_1, 6001: c104.Type.C_SE_NB_1}


def se104s_rows(feproot: Path, port: int) -> dict[str, list[dict[str, Any]]]:
    """The sample configuration with only its se104s RTU (10), listening on `port`."""
    rows, problems = db.read_rows(feproot / "db" / "SEMODEL.db")
    assert not problems
    rows["T004_RTU"] = [dict(r, LISTENPORT=port) if r["RTUID"] == 10 else r
                        for r in rows["T004_RTU"] if r["RTUID"] not in (11, 12)]
    for t in ("T005_ZFAI", "T006_ZFDI", "T007_ZFACC", "T008_ZFDO", "T009_ZFAO"):
        rows[t] = [r for r in rows.get(t, []) if r["RTUID"] == 10]
    return rows


def node_cfg(proc: RedisProc, **kw: Any) -> NodeConfig:
    return NodeConfig(node_id="A", vip=proc.host, port=proc.port, local_host=proc.host, local_port=proc.port,
                      bind="127.0.0.1", heartbeat_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.3,
                      control_timeout_s=3.0, socket_timeout_s=2.0, **kw)


def rec(v: float) -> str:
    return points.encode(v, 0, int(time.time() * 1000))


class Writer:
    """Plays the acquirer: holds the lease of an acquisition RTU and makes fenced writes."""

    def __init__(self, r: aredis.Redis) -> None:
        self.r = r
        self.epochs: dict[int, int] = {}

    async def write(self, rtu: int, **pairs: float) -> None:
        if rtu not in self.epochs:
            holder, epoch, _ = await self.r.fcall(*redisfns.lease_tick(rtu, "A", True, 60_000, 90_000).argv)
            assert holder == "A"
            self.epochs[rtu] = int(epoch)
        flat = [x for pid, v in pairs.items() for x in (pid.lstrip("p"), rec(v))]
        res = await self.r.fcall(*redisfns.write_values(rtu, "A", self.epochs[rtu], flat).argv)
        assert int(res[0]) == 1


@contextlib.asynccontextmanager
async def forwarder(cfg: NodeConfig) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(cfg, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def setup(redis_master: RedisProc, feproot: Path) -> AsyncIterator[tuple[RedisProc, aredis.Redis, int]]:
    port = free_port()
    replace_config(redis_master.client(), se104s_rows(feproot, port))
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)
    yield redis_master, r, port
    await r.aclose()


async def wait_listening(port: int) -> None:
    async def probe() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        w.close()
        await w.wait_closed()
        return True
    end = time.monotonic() + 10
    while not await probe():
        assert time.monotonic() < end, f"nothing listens on {port}"
        await asyncio.sleep(0.05)


def spont(m: Any, ioa: int) -> list[Any]:
    return [r.value for r in m.values("SPONTANEOUS") if r.ioa == ioa]


async def test_image_then_stream_reach_the_client_and_state_is_written(setup: Any, monkeypatch: Any) -> None:
    proc, r, port = setup
    w = Writer(r)
    await w.write(1, p101=230.5, p103=20.0)
    cfg = node_cfg(proc)
    async with forwarder(cfg):
        await wait_listening(port)
        async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
            gi = {x.ioa: x.value for x in m.values("INTERROGATED_BY_STATION")}
            assert gi[1001] == pytest.approx(230.5) and int(gi[1003]) == 200  # COEF 10
            await w.write(1, p101=231.25)
            await r.fcall(*redisfns.link_set(1, "A", True, [901]).argv)
            await until(lambda: spont(m, 1001) and spont(m, 4), what="stream changes at the client")
            assert spont(m, 1001) == [pytest.approx(231.25)] and spont(m, 4) == [True]
            # connected masters, heartbeat and metrics in the master Redis
            clients = await until_clients(r)
            assert json.loads(next(iter(clients.values())))["active"] is True
            monkeypatch.setenv("FEP_REDIS_LOCAL_PORT", str(proc.port))
            assert await in_thread(cli.main, ["--check"]) == 0
            end = time.monotonic() + 5
            while int((await r.hgetall(ks.metrics("forwarder", "A"))).get("events_sent", 0)) < 2:
                assert time.monotonic() < end
                await asyncio.sleep(0.05)
        end = time.monotonic() + 5
        while await r.exists(ks.fwd_clients(10, "A")):  # the master left
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
    assert not await r.exists(ks.heartbeat("forwarder", "A"))
    assert await in_thread(cli.main, ["--check"]) == 1


async def test_a_change_is_written_to_the_masters_before_the_trim_check(setup: Any, monkeypatch: Any) -> None:
    """The frames of a stream read go to the masters' sockets before the runner's trim check (XINFO STREAM)
    is sent: sending it first (about 0.1 ms of redis-py) delayed every frame by it (bench/forward.py --trace)."""
    proc, r, port = setup
    servers: set[Se104Server] = set()
    queued: list[int] = []  # events dispatched and not yet written, at each trim check
    apply, xinfo = Se104Server.apply, aredis.Redis.xinfo_stream

    def recording_apply(self: Se104Server, updates: Any) -> None:
        servers.add(self)
        apply(self, updates)

    def checking_xinfo(self: aredis.Redis, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self, aredis.client.Pipeline):  # the full image's pipeline queues its own
            queued.append(sum(s.events_queued for srv in servers for s in srv.station.sessions))
        return xinfo(self, *args, **kwargs)

    monkeypatch.setattr(Se104Server, "apply", recording_apply)
    monkeypatch.setattr(aredis.Redis, "xinfo_stream", checking_xinfo)
    w = Writer(r)
    async with forwarder(node_cfg(proc)):
        await wait_listening(port)
        async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
            for k in range(5):
                queued.clear()
                await w.write(1, p101=300.0 + k)
                await until(lambda k=k: 300.0 + k in spont(m, 1001), what="the change at the client")
                assert queued and not any(queued), f"changes still queued at the trim check: {queued}"


async def test_stream_trimmed_past_last_read_loads_the_full_image(setup: Any) -> None:
    proc, r, port = setup
    w = Writer(r)
    await w.write(1, p101=1.0, p102=2.0)
    async with forwarder(node_cfg(proc)):
        await wait_listening(port)
        async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
            assert {x.ioa: x.value for x in m.values("INTERROGATED_BY_STATION")}[1002] == pytest.approx(2.0)
            # Two changes; the stream is trimmed so the first one is gone before the runner reads it.
            pipe = r.pipeline(transaction=True)
            pipe.hset(ks.values(1), "102", rec(22.0))
            pipe.xadd(ks.CHANGES, {"r": "1", "102": rec(22.0)})
            pipe.hset(ks.values(1), "101", rec(11.0))
            pipe.xadd(ks.CHANGES, {"r": "1", "101": rec(11.0)})
            pipe.xtrim(ks.CHANGES, maxlen=1, approximate=False)
            await pipe.execute()
            await until(lambda: spont(m, 1002) and spont(m, 1001), what="values after the gap")
            assert spont(m, 1002) == [pytest.approx(22.0)]  # only the full image knew it
            assert spont(m, 1001)[-1] == pytest.approx(11.0)
    metrics = await r.hgetall(ks.metrics("forwarder", "A"))
    assert int(metrics["full_images"]) >= 2


async def test_new_configuration_starts_only_changed_servers(setup: Any, feproot: Path) -> None:
    proc, r, port = setup
    w = Writer(r)
    port2 = free_port()
    async with forwarder(node_cfg(proc)):
        await wait_listening(port)
        async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
            peer = next(iter(json.loads(v) for v in (await until_clients(r)).values()))
            rows = se104s_rows(feproot, port)
            rows["T004_RTU"].append({"RTUID": 13, "NAME": "second 104", "RTUTYPE": 2, "PROTOCOL": "se104s",
                                     "POLLMS": None, "TIMEOUTMS": None, "LISTENPORT": port2, "ADDRESS": 2,
                                     "ALLOW": None})
            rows["T005_ZFAI"].append({"ZFID": 31, "RTUID": 13, "SRCID": 101, "ADDR": 7, "TYPE": "M_ME_NC_1",
                                      "COEF": 2})
            await in_thread(replace_config, proc.client(), rows)
            await wait_listening(port2)
            async with c104_master(port2, points={7: c104.Type.M_ME_NC_1}, ca=2) as m2:
                await w.write(1, p101=5.0)
                await until(lambda: spont(m, 1001) and spont(m2, 7), what="value on both RTUs")
                assert spont(m2, 7) == [pytest.approx(10.0)]  # COEF 2
            # the unchanged RTU kept its server and its master's connection
            assert m.conn.is_connected
            now = next(iter(json.loads(v) for v in (await until_clients(r)).values()))
            assert now["since_ms"] == peer["since_ms"]


async def until_clients(r: aredis.Redis) -> dict[str, str]:
    end = time.monotonic() + 5
    while not (got := await r.hgetall(ks.fwd_clients(10, "A"))):
        assert time.monotonic() < end, "no client state written"
        await asyncio.sleep(0.05)
    return got


async def executor(r: aredis.Redis, rtu: int, refuse: float, seen: list[tuple[int, float]]) -> None:
    """Plays the acquirer's control executor (lease holder A): claim, 'write the device', finish."""
    _holder, epoch, _ = await r.fcall(*redisfns.lease_tick(rtu, "A", True, 60_000, 90_000).argv)
    while True:
        got = await r.blpop([ks.control_queue(rtu)], timeout=1)
        if not got:
            continue
        claimed = await controls.claim(r, rtu, "A", int(epoch), int(got[1]))
        if claimed is None:
            continue
        seen.append((claimed.point, claimed.value))
        ok = claimed.value != refuse
        await controls.finish(r, claimed.id, ok, "written" if ok else "device refused")


async def test_controls_go_through_the_master_to_the_executor(setup: Any) -> None:
    proc, r, port = setup
    seen: list[tuple[int, float]] = []
    ex_r = aredis.Redis(host=proc.host, port=proc.port, decode_responses=True)
    ex = asyncio.create_task(executor(ex_r, 1, refuse=-7.0, seen=seen))
    try:
        async with forwarder(node_cfg(proc)):
            await wait_listening(port)
            async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
                assert await m.command(5001, c104.SingleCmd(on=True))
                assert await m.command(6001, c104.ScaledCmd(target=c104.Int16(42)), select=True)
                assert not await m.command(6001, c104.ScaledCmd(target=c104.Int16(-7)))
        assert seen == [(109, 1.0), (110, 42.0), (110, -7.0)]
        audit = await r.xrange(ks.CTL_AUDIT)
        assert [a[1]["state"] for a in audit] == ["done", "done", "failed"]
        assert all(a[1]["origin"].startswith("se104s:10:A:") for a in audit)
    finally:
        ex.cancel()
        await asyncio.gather(ex, return_exceptions=True)
        await ex_r.aclose()


async def test_control_without_executor_gets_a_negative_confirmation(setup: Any) -> None:
    proc, r, port = setup
    async with forwarder(dataclasses.replace(node_cfg(proc), control_timeout_s=0.5)):
        await wait_listening(port)
        async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
            assert not await m.command(5001, c104.SingleCmd(on=True))
    assert [a[1]["state"] for a in await r.xrange(ks.CTL_AUDIT)] == ["expired"]


async def test_redis_outage_is_survived_with_a_full_image_after(feproot: Path) -> None:
    with RedisProc(appendonly=True) as proc:
        port = free_port()
        replace_config(proc.client(), se104s_rows(feproot, port))
        redisfns.load_sync(proc.client())
        r = aredis.Redis(host=proc.host, port=proc.port, decode_responses=True)
        try:
            w = Writer(r)
            await w.write(1, p101=1.0)
            async with forwarder(node_cfg(proc)):
                await wait_listening(port)
                async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
                    await in_thread(proc.restart)
                    await r.connection_pool.disconnect()
                    await w.write(1, p101=3.5)
                    await until(lambda: spont(m, 1001), 10, "value after the outage")
                    assert spont(m, 1001)[-1] == pytest.approx(3.5)
                    assert m.conn.is_connected  # masters never noticed
        finally:
            await r.aclose()


async def test_every_protocol_of_the_sample_configuration_is_served(redis_master: RedisProc,
                                                                     feproot: Path) -> None:
    """The runner starts the sample's se104s, modbus_trains and sefeps RTUs through server_class()."""
    rows, _ = db.read_rows(feproot / "db" / "SEMODEL.db")
    ports = {10: free_port(), 11: free_port(), 12: free_port()}
    rows["T004_RTU"] = [dict(r, LISTENPORT=ports[r["RTUID"]]) if r["RTUID"] in ports else r
                        for r in rows["T004_RTU"]]
    replace_config(redis_master.client(), rows)
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    try:
        async with forwarder(node_cfg(redis_master)):
            for p in ports.values():
                await wait_listening(p)
            end = time.monotonic() + 5
            while True:
                hb = await r.get(ks.heartbeat("forwarder", "A"))
                if hb and json.loads(hb)["servers"] == [10, 11, 12]:
                    break
                assert time.monotonic() < end, hb
                await asyncio.sleep(0.05)
    finally:
        await r.aclose()


async def test_reads_the_local_replica_and_writes_the_master(redis_pair: tuple[RedisProc, RedisProc],
                                                             feproot: Path) -> None:
    master, replica = redis_pair
    port = free_port()
    replace_config(master.client(), se104s_rows(feproot, port))
    r = aredis.Redis(host=master.host, port=master.port, decode_responses=True)
    await redisfns.load_async(r)
    cfg = dataclasses.replace(node_cfg(master), node_id="B", local_host=replica.host, local_port=replica.port)
    try:
        w = Writer(r)
        await w.write(1, p101=7.0)
        async with forwarder(cfg):
            await wait_listening(port)
            async with c104_master(port, points=SAMPLE_POINTS, ca=1) as m:
                await w.write(1, p101=8.0)
                await until(lambda: spont(m, 1001), what="value through the replica")
                assert spont(m, 1001) == [pytest.approx(8.0)]
                end = time.monotonic() + 5
                while not await r.hgetall(ks.fwd_clients(10, "B")):  # written to the master
                    assert time.monotonic() < end
                    await asyncio.sleep(0.05)
    finally:
        await r.aclose()


async def test_configuration_loaded_again_after_a_wipe_is_applied(setup: Any, feproot: Path) -> None:
    """Redis's data wiped under the forwarder (FLUSHALL; a restart without persistence alike), then a
    configuration loaded again: generation 1 again, other content, and it must still be applied
    (cfgstore: a configuration is identified by generation and content)."""
    proc, r, port = setup
    port2 = free_port()
    async with forwarder(node_cfg(proc)):
        await wait_listening(port)
        await r.flushall()  # connections stay: only the pub/sub announcement says a configuration came
        rows = se104s_rows(feproot, port)
        rows["T004_RTU"].append({"RTUID": 13, "NAME": "second 104", "RTUTYPE": 2, "PROTOCOL": "se104s",
                                 "POLLMS": None, "TIMEOUTMS": None, "LISTENPORT": port2, "ADDRESS": 2,
                                 "ALLOW": None})
        assert (await in_thread(replace_config, proc.client(), rows)).gen == 1
        await wait_listening(port2)


async def test_a_dropped_config_subscription_is_made_again_at_once(redis_master: RedisProc, monkeypatch) -> None:
    """`Forwarder._watch_config`: its pub/sub connection killed (`CLIENT KILL TYPE pubsub`, as a proxy or a
    Redis restart drops every connection), then a configuration announced: `reload` is set as soon as the
    announcement is published, not after redis-py's random retry backoff (0.2-1.9 s measured; 1.8 s here)."""
    import random
    monkeypatch.setattr(random, "random", lambda: 0.9)
    fwd = app.Forwarder(node_cfg(redis_master), asyncio.Event())
    other = redis_master.client()
    watch = asyncio.create_task(fwd._watch_config())
    try:
        await asyncio.wait_for(fwd.reload.wait(), 3)       # subscribed
        await asyncio.sleep(0.1)
        for gen in (7, 8):
            fwd.reload.clear()
            assert other.client_kill_filter(_type="pubsub", skipme=True) == 1
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            assert other.publish(ks.CFG_CHANGED, str(gen)) == 1   # subscribed again by then
            await asyncio.wait_for(fwd.reload.wait(), 3)
            assert time.monotonic() - t0 < 0.3
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await fwd.local_rw.aclose()
        other.close()


async def test_the_heartbeat_says_when_the_server_certificate_expires(redis_master: RedisProc, tmp_path: Path) -> None:
    """The forwarder's heartbeat carries the ends of its [tls] files (`tls_expiry`, which /metrics exports as
    `fep_tls_expiry_timestamp_seconds`); before, only its log said them."""
    from .tls_cert import make_cert_now
    cert, key = make_cert_now(tmp_path, "server", days=30)
    fwd = app.Forwarder(node_cfg(redis_master, tls_cert=str(cert), tls_key=str(key)), asyncio.Event())
    try:
        await fwd._write_state()
        hb = json.loads(redis_master.client().get(ks.heartbeat("forwarder", "A")))
        [end] = hb["tls_expiry"]
        assert (end["file"], end["cn"]) == ("cert", "fep-server")
        assert abs(end["ms"] / 1000 - (time.time() + 30 * 86400)) < 120
    finally:
        await fwd.master.aclose()
        await fwd.local_rw.aclose()


async def test_the_stream_head_a_resuming_master_waits_for(redis_master: RedisProc) -> None:
    """`Forwarder._stream_head` (ForwardServer.caught_up): the local stream's newest entry; None for no
    stream, and for a local Redis that does not answer (the master then waits for nothing, as before)."""
    fwd = app.Forwarder(node_cfg(redis_master), asyncio.Event())
    try:
        assert await fwd._stream_head() is None
        r = redis_master.client()
        r.xadd(ks.CHANGES, {"r": "1"}, id="5-1")
        r.xadd(ks.CHANGES, {"r": "1"}, id="7-3")
        assert await fwd._stream_head() == (7, 3)
    finally:
        await fwd.local_rw.aclose()
    down = app.Forwarder(dataclasses.replace(node_cfg(redis_master), local_port=free_port()), asyncio.Event())
    try:
        assert await down._stream_head() is None
    finally:
        await down.local_rw.aclose()
