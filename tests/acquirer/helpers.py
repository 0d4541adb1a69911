
"""Shared setup of the acquirer's integration tests: a generated configuration on free ports, loaded
into a real Redis master, served by a real PlcSim, and nodes A/B with shortened timers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis

from fep_acquirer.app import Acquirer
from fep_acquirer.metrics import Metrics
from fep_acquirer.rtu import RtuRunner
from fep_acquirer.writer import Writer
from fep_loader.store import replace_config
from fep_tools.plcsim import PlcSim
from fepha import config, redisfns
from fepha.logsetup import OnceLogger
from fepha.semodel.model import Model
from tests.redisproc import RedisProc, free_port

FAST = dict(lease_tick_s=0.1, lease_ttl_s=0.6, takeover_s=1.0, channel_switch_s=0.4, reconnect_min_s=0.05,
            reconnect_max_s=0.2, heartbeat_s=0.2, poll_ms=100, stop_handover_s=2.0)


def rtu_rows(rid: int, port: int, points: int = 4, poll_ms: int = 100) -> dict[str, list[dict[str, Any]]]:
    """One acquisition RTU: channel 1 on 127.0.0.1, channel 2 on 127.0.0.2 (same port), `points` hr
    uint16 points at 0.., one coil at 100, one virtual point."""
    base = rid * 1000
    pts = [dict(PNTID=base + i, RTUID=rid, KIND="AI", NAME=f"p{i}", AREA="hr", ADDRESS=i, DATATYPE="uint16",
                BYTEORDER=None, WORDORDER=None, BITINDEX=None, SCALE=None, OFFSET=None, DEADBAND=None)
           for i in range(points)]
    pts.append(dict(PNTID=base + 900, RTUID=rid, KIND="DO", NAME="do", AREA="co", ADDRESS=100, DATATYPE="bool",
                    BYTEORDER=None, WORDORDER=None, BITINDEX=None, SCALE=None, OFFSET=None, DEADBAND=None))
    return {
        "T004_RTU": [dict(RTUID=rid, NAME=f"rtu{rid}", RTUTYPE=0, PROTOCOL="modbus_tcp", POLLMS=poll_ms,
                          TIMEOUTMS=200, LISTENPORT=None, ADDRESS=None, ALLOW=None)],
        "T010_CHANNEL": [dict(RTUID=rid, CHANNO=1, HOST="127.0.0.1", PORT=port, UNITID=1),
                         dict(RTUID=rid, CHANNO=2, HOST="127.0.0.2", PORT=port, UNITID=1)],
        "T011_POINT": pts,
        "T036_VTPNT": [dict(VPID=base + 999, RTUID=rid, NAME=f"link{rid}")],
    }


def merge(*parts: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"T020_UNION": [dict(ID=1, IP1="127.0.0.1", IP2="127.0.0.2")]}
    for p in parts:
        for t, rows in p.items():
            out.setdefault(t, []).extend(rows)
    return out


def node_cfg(feproot, r: RedisProc, node: str, **kw: Any) -> config.NodeConfig:
    """Node `node` as merge()'s T020_UNION lists it (A 127.0.0.1, B 127.0.0.2), against Redis `r`."""
    ip = "127.0.0.1" if node == "A" else "127.0.0.2"
    return config.load_node(feproot, env={}, node_id=node, vip=r.host, port=r.port, local_host=r.host,
                            local_port=r.port, **{"ip": ip, **FAST, **kw})


@contextlib.asynccontextmanager
async def lone_runner(feproot, rp: RedisProc, model: Model, node: str,
                      **client_kw: Any) -> AsyncIterator[tuple[aredis.Redis, RtuRunner]]:
    """The runner of `model`'s first acquisition RTU as node `node`'s, alone (no acquirer: the test plays
    its polls and its lease), writing through a real Writer to `rp` (functions loaded) with a client of
    `client_kw`; stopped and closed at the end."""
    r = aredis.Redis(host=rp.host, port=rp.port, decode_responses=True, **client_kw)
    await redisfns.load_async(r)
    writer = Writer(r, node)
    writer.start()
    runner = RtuRunner(model.acquisition_rtus()[0], node_cfg(feproot, rp, node), writer, Metrics(node),
                       OnceLogger(logging.getLogger("test")))
    try:
        yield r, runner
    finally:
        await runner.stop()
        await writer.stop()
        await r.aclose()


class Node:
    """One acquirer (node A or B) running in this test's event loop."""

    def __init__(self, cfg: config.NodeConfig, socket_timeout: float = 1) -> None:
        self.cfg = cfg
        self.master = aredis.Redis(host=cfg.vip, port=cfg.port, decode_responses=True,
                                   socket_timeout=socket_timeout, socket_connect_timeout=1)
        self.acq = Acquirer(cfg, self.master, self.master)
        self.stop_ev = asyncio.Event()
        self.task = asyncio.create_task(self.acq.run(self.stop_ev, config_check_s=0.1))

    async def stop(self) -> None:
        self.stop_ev.set()
        await self.task
        await self.master.aclose()


async def until(pred, timeout: float = 5.0, step: float = 0.05):
    """Poll an (async or plain) predicate until truthy; returns its value or fails."""
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            v = pred()
            if asyncio.iscoroutine(v):
                v = await v
            if v:
                return v
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


def load(r: RedisProc, rows: dict[str, list[dict[str, Any]]]) -> Model:
    replace_config(r.client(), rows, source="test")
    return Model.from_rows(rows)


async def start_sim(model: Model) -> PlcSim:
    sim = PlcSim(model)
    await sim.start()
    return sim


@contextlib.asynccontextmanager
async def holding(rp: RedisProc, feproot, rows: dict[str, list[dict[str, Any]]]) -> AsyncIterator[tuple[Model, PlcSim, Node]]:
    """`rows` loaded into `rp`, served by a PlcSim, and node A's acquirer holding RTU 1's lease and
    connected to its device (a control is written at once); both stopped at the end."""
    model = load(rp, rows)
    sim = await start_sim(model)
    a = Node(node_cfg(feproot, rp, "A"))
    try:
        await until(lambda: a.acq.runners and a.acq.runners[1].lease.held)
        await until(lambda: a.acq.runners[1].link is not None)
        yield model, sim, a
    finally:
        await a.stop()
        await sim.stop()


__all__ = ["FAST", "Node", "free_port", "holding", "load", "merge", "node_cfg", "rtu_rows", "start_sim", "until"]
