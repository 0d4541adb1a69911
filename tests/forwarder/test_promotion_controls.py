"""Controls sent continuously across a promotion of this node's Redis (docs/forwarder.md, "At a promotion").

Node A (a real acquirer on master R) holds acquisition RTU 1 (a fep-plcsim PLC); node B runs the real
acquirer and forwarder on its Redis L, a replica of R, writing through a "VIP" that leads to R. SCADA
masters (two c104 masters on B's se104s, two Modbus masters on B's modbus_trains, one sefeps master) send
set-points to the same AO point, each value unique: two without pause, three that stop while A is gone
(their connections to R then idle in the forwarder's pool, as after any control) and resume at the
promotion. A's node vanishes
(R SIGSTOPped: no answer, no FIN), and keepalived's work is done by hand: the VIP moves to L, then L is
promoted (REPLICAOF NO ONE), the order redis-role.sh keeps. The forwarder's role watch is slow on purpose
(`role_watch_s` 0.6 s): before each control is sent the forwarder now reads its local Redis's role itself;
before that, a control arriving between the promotion and the watch's next reading went out on an idle
pooled connection to R, waited there until that reading dropped it, and was answered negatively.

Every control must have one honest outcome: confirmed positively and written to the PLC exactly once, or
answered negatively and written at most once (one in flight when R vanished may have been queued there and
replicated to L before: then B executes it before its deadline, as docs/forwarder.md says). Every control
sent after the promotion (after REPLICAOF NO ONE returned) must be confirmed and written once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import c104
import redis.asyncio as aredis
from pymodbus.client import AsyncModbusTcpClient

from fep_acquirer.app import Acquirer
from fep_forwarder import app as fwd_app
from fep_tools.sefeps_client import SefepsClient
from fepha import redisconn, redisfns, rolewatch
from tests.acquirer.helpers import Node, free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.redisproc import RedisProc
from tests.vip import Vip

from .se104s_fixtures import c104_master

AO = 1950  # the set-point: hr 50, int16
AO_ADDR = 50
IOA = 6001
FWD_WATCH_S = 0.6  # the forwarder's role watch, slow: the window it leaves is the subject here
ACQ_WATCH_S = 0.2


def rows(plc_port: int, iec_port: int, mbt_port: int, fps_port: int) -> dict[str, list[dict[str, Any]]]:
    rtu1 = rtu_rows(1, plc_port)
    rtu1["T011_POINT"].append(dict(PNTID=AO, RTUID=1, KIND="AO", NAME="sp", AREA="hr", ADDRESS=AO_ADDR,
                                   DATATYPE="int16", BYTEORDER=None, WORDORDER=None, BITINDEX=None, SCALE=None,
                                   OFFSET=None, DEADBAND=None))
    fwd = {
        "T004_RTU": [dict(RTUID=10, NAME="scada 104", RTUTYPE=2, PROTOCOL="se104s", POLLMS=None, TIMEOUTMS=None,
                          LISTENPORT=iec_port, ADDRESS=1, ALLOW=None),
                     dict(RTUID=11, NAME="scada modbus", RTUTYPE=2, PROTOCOL="modbus_trains", POLLMS=None,
                          TIMEOUTMS=None, LISTENPORT=mbt_port, ADDRESS=1, ALLOW=None),
                     dict(RTUID=12, NAME="scada sefeps", RTUTYPE=2, PROTOCOL="sefeps", POLLMS=None,
                          TIMEOUTMS=None, LISTENPORT=fps_port, ADDRESS=None, ALLOW=None)],
        "T009_ZFAO": [dict(ZFID=1, RTUID=10, SRCID=AO, ADDR=IOA, TYPE="C_SE_NB_1", COEF=None),
                      dict(ZFID=2, RTUID=11, SRCID=AO, ADDR=0, TYPE="int16", COEF=None),
                      dict(ZFID=3, RTUID=12, SRCID=AO, ADDR=40, TYPE=None, COEF=None)],
    }
    return merge(rtu1, fwd)


@dataclasses.dataclass
class Sent:
    value: int
    sender: str
    t_sent: float
    t_answered: float = 0.0
    ok: bool | None = None


async def keep_sending(name: str, base: int, send: Callable[[int], Awaitable[bool]], out: list[Sent],
                       stop: asyncio.Event, go: asyncio.Event) -> None:
    """Send base+1, base+2, ... one after the other (20 ms apart) while `go` is set, until `stop`."""
    i = 0
    while not stop.is_set():
        await go.wait()
        i += 1
        s = Sent(base + i, name, time.monotonic())
        out.append(s)
        s.ok = await send(s.value)
        s.t_answered = time.monotonic()
        await asyncio.sleep(0.02)


async def c104_sender(port: int, name: str, base: int, out: list[Sent], stop: asyncio.Event,
                      go: asyncio.Event) -> None:
    async with c104_master(port, points={IOA: c104.Type.C_SE_NB_1}, ca=1) as m:
        await keep_sending(name, base, lambda v: m.command(IOA, c104.ScaledCmd(target=c104.Int16(v))), out,
                           stop, go)


async def modbus_sender(port: int, name: str, base: int, out: list[Sent], stop: asyncio.Event,
                        go: asyncio.Event) -> None:
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=6, retries=0, reconnect_delay=0)
    assert await c.connect()

    async def send(v: int) -> bool:
        return not (await c.write_register(0, v)).isError()
    try:
        await keep_sending(name, base, send, out, stop, go)
    finally:
        c.close()


async def sefeps_sender(port: int, name: str, base: int, out: list[Sent], stop: asyncio.Event,
                        go: asyncio.Event) -> None:
    c = SefepsClient("127.0.0.1", port)
    await c.connect()

    async def send(v: int) -> bool:
        return bool((await c.command(40, v, timeout=6))["ok"])
    try:
        await keep_sending(name, base, send, out, stop, go)
    finally:
        await c.close()


async def test_controls_across_a_promotion_run_once_or_are_refused(redis_master: RedisProc, feproot: Any) -> None:
    r = redis_master
    plc, iec, mbt, fps = free_port(), free_port(), free_port(), free_port()
    model = load(r, rows(plc, iec, mbt, fps))
    redisfns.load_sync(r.client())
    sim = await start_sim(model)
    sent: list[Sent] = []
    with RedisProc(replicaof=(r.host, r.port)) as local:
        local.wait_synced()
        vip = Vip((r.host, r.port))
        vip_port = await vip.start()
        a = Node(node_cfg(feproot, r, "A"))
        cfg_b = dataclasses.replace(node_cfg(feproot, r, "B", socket_timeout_s=3.0, control_timeout_s=3.0,
                                             role_watch_s=ACQ_WATCH_S, bind="127.0.0.1"),
                                    port=vip_port, local_port=local.port)
        master_b, local_b = redisconn.master_async(cfg_b), redisconn.local_async(cfg_b)
        acq_b = Acquirer(cfg_b, master_b, local_b)
        stop_b, stop_send = asyncio.Event(), asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []
        try:
            await until(lambda: a.acq.runners and a.acq.runners[1].lease.held, 5)
            tasks.append(asyncio.create_task(acq_b.run(stop_b, config_check_s=0.1)))
            tasks.append(asyncio.create_task(fwd_app.run(dataclasses.replace(cfg_b, role_watch_s=FWD_WATCH_S),
                                                         stop_b)))
            await until(lambda: acq_b.runners and acq_b.runners[1].reaches(), 5)
            always, sporadic = asyncio.Event(), asyncio.Event()
            always.set()
            sporadic.set()
            senders = [c104_sender(iec, "104-a", 1000, sent, stop_send, always),
                       c104_sender(iec, "104-b", 3000, sent, stop_send, sporadic),
                       modbus_sender(mbt, "mb-a", 5000, sent, stop_send, always),
                       modbus_sender(mbt, "mb-b", 7000, sent, stop_send, sporadic),
                       sefeps_sender(fps, "fps", 9000, sent, stop_send, sporadic)]
            send_tasks = [asyncio.create_task(s) for s in senders]
            tasks += send_tasks
            await until(lambda: sum(1 for s in sent if s.ok) >= 8, 10)  # every sender works through A
            sporadic.clear()
            await asyncio.sleep(0.1)  # their last controls are answered: their connections to R idle in the pool
            r.pause()  # A's node vanishes
            t_paused = time.monotonic()
            await asyncio.sleep(0.8)  # A's lease (TTL 0.6 s) lapses
            vip.target = (local.host, local.port)  # keepalived on B: the VIP first, then the promotion
            local.client().execute_command("REPLICAOF", "NO", "ONE")
            t_promoted = time.monotonic()
            sporadic.set()
            await asyncio.sleep(3.0)
            stop_send.set()
            await asyncio.wait_for(asyncio.gather(*send_tasks), 15)
            writes = [v for (rid, area, addr, vals) in sim.writes if rid == 1 and area == "hr" and addr == AO_ADDR
                      for v in vals]
        finally:
            stop_send.set()
            r.resume()
            stop_b.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await a.stop()
            await master_b.aclose()
            await local_b.aclose()
            await sim.stop()
            await vip.close()

    def show(s: Sent) -> str:
        return (f"{s.sender} {s.value} sent {s.t_sent - t_promoted:+.3f} s answered "
                f"{s.t_answered - t_promoted:+.3f} s {'ok' if s.ok else 'REFUSED'}, written {writes.count(s.value)}x")
    report = "\n".join(show(s) for s in sent if s.t_answered > t_paused - 0.1)
    after = [s for s in sent if s.t_sent >= t_promoted]
    assert len(after) >= 8, report
    for s in sent:
        n = writes.count(s.value)
        assert (n == 1) if s.ok else (n <= 1), f"{show(s)}\n{report}"
        if s.t_sent >= t_promoted:
            assert s.ok, f"refused although sent after the promotion: {show(s)}\n{report}"
            # waits in L's queue until B's acquirer sees the move (role_watch_s) and takes the lapsed lease
            assert s.t_answered - s.t_sent < 1.5, f"confirmed late: {show(s)}\n{report}"
        elif not s.ok and s.t_sent > t_paused:  # in flight on the vanished R: refused at once at the promotion
            assert s.t_answered - t_promoted < FWD_WATCH_S, f"refused late: {show(s)}\n{report}"
    print(report)


async def test_confirm_acts_on_a_move_once_and_never_waits_long_on_a_hung_local_redis(redis_master: RedisProc
                                                                                     ) -> None:
    """`RoleWatch.confirm`, the reading before each control: concurrent controls after a promotion drop the
    master connections once (a second drop would fail the control the first one just sent on a new
    connection); with the local Redis hung it gives up after `wait_s` and the control goes on as before,
    and controls sent meanwhile share the reading queued behind the hung one."""
    moves: list[tuple[str, str]] = []

    async def on_move(seen: str, now: str) -> None:
        moves.append((seen, now))
        await asyncio.sleep(0.05)  # dropping connections takes a moment: others must wait for it

    with RedisProc(replicaof=(redis_master.host, redis_master.port)) as local:
        local.wait_synced()
        client = aredis.Redis(host=local.host, port=local.port, decode_responses=True, socket_timeout=5)
        watch = rolewatch.RoleWatch(client, 10.0, on_move)
        try:
            assert await watch.confirm(1.0)
            assert watch.seen == "slave" and moves == []
            local.client().execute_command("REPLICAOF", "NO", "ONE")
            assert all(await asyncio.gather(*(watch.confirm(1.0) for _ in range(5))))
            assert moves == [("slave", "master")]
            local.pause()
            t0 = time.monotonic()
            assert not any(await asyncio.gather(*(watch.confirm(0.2) for _ in range(5))))
            assert not await watch.confirm(0.2)
            assert time.monotonic() - t0 < 0.8
            assert len(watch._checks) <= 2  # one reading waiting on the hung Redis, one queued behind it
        finally:
            local.resume()
            await asyncio.gather(*watch._checks, return_exceptions=True)
            await client.aclose()
