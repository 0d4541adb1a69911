"""Controls written through modbus_trains down to the device, end to end: a raw Modbus TCP master on the
real forwarder (fep_forwarder.app.run), the real acquirer holding the acquisition RTU's lease, a real Redis
master and a fep-plcsim PLC that records every write it receives. What the master is told must be what
the device saw: a write confirmed was written to the PLC exactly once, a write refused was not written,
not even later (after its deadline), a master's retransmission is not a second write, and writes
pipelined in one segment reach the device once each, in order."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

from fep_forwarder import app as fwd_app
from fepha import redisfns
from tests.acquirer.helpers import Node, free_port, load, merge, node_cfg, rtu_rows, start_sim, until
from tests.redisproc import RedisProc

AO, AO_ADDR = 1950, 50  # the set-point on the PLC: hr 50, int16
MBAP = struct.Struct(">HHHB")


def rows(plc_port: int, mbt_port: int) -> dict[str, list[dict[str, Any]]]:
    rtu1 = rtu_rows(1, plc_port)
    rtu1["T011_POINT"].append(dict(PNTID=AO, RTUID=1, KIND="AO", NAME="sp", AREA="hr", ADDRESS=AO_ADDR,
                                   DATATYPE="int16", BYTEORDER=None, WORDORDER=None, BITINDEX=None, SCALE=None,
                                   OFFSET=None, DEADBAND=None))
    fwd = {
        "T004_RTU": [dict(RTUID=11, NAME="scada modbus", RTUTYPE=2, PROTOCOL="modbus_trains", POLLMS=None,
                          TIMEOUTMS=None, LISTENPORT=mbt_port, ADDRESS=1, ALLOW=None)],
        "T009_ZFAO": [dict(ZFID=2, RTUID=11, SRCID=AO, ADDR=0, TYPE="int16", COEF=None)],
    }
    return merge(rtu1, fwd)


def write(tid: int, value: int) -> bytes:
    return MBAP.pack(tid, 0, 6, 1) + struct.pack(">BHH", 6, 0, value)


def exception(tid: int, code: int) -> bytes:
    return MBAP.pack(tid, 0, 3, 1) + bytes((0x86, code))


async def test_writes_reach_the_device_once_and_never_after_their_deadline(redis_master: RedisProc,
                                                                           feproot: Any) -> None:
    r = redis_master
    plc, mbt = free_port(), free_port()
    model = load(r, rows(plc, mbt))
    redisfns.load_sync(r.client())
    sim = await start_sim(model)
    cfg = node_cfg(feproot, r, "A", control_timeout_s=1.0, bind="127.0.0.1")
    node = Node(cfg)
    stop = asyncio.Event()
    fwd = asyncio.create_task(fwd_app.run(cfg, stop))

    def written() -> list[int]:
        return [v for (rid, area, addr, vals) in sim.writes if rid == 1 and area == "hr" and addr == AO_ADDR
                for v in vals]

    try:
        await until(lambda: node.acq.runners and node.acq.runners[1].lease.held, 5)

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
            try:
                return await asyncio.open_connection("127.0.0.1", mbt)
            except OSError:
                return None
        conn = None
        for _ in range(100):
            if (conn := await connect()) is not None:
                break
            await asyncio.sleep(0.05)
        assert conn is not None, "modbus_trains never listened"
        reader, writer = conn

        # a write, and the master's retry of the same frame (same transaction id) before it was answered (here
        # in the same segment: the control takes a few ms end to end, the timing cases are in
        # test_modbus_trains_conformance.py with a slow sink): one answer, one write on the PLC
        writer.write(write(1, 101) + write(1, 101))
        assert await asyncio.wait_for(reader.readexactly(12), 3) == write(1, 101)
        # writes pipelined in one segment: answered in order under their own ids, written once each, in order
        writer.write(write(2, 201) + write(3, 202) + write(4, 203))
        assert await asyncio.wait_for(reader.readexactly(36), 5) == write(2, 201) + write(3, 202) + write(4, 203)
        await asyncio.sleep(0.3)  # nothing more comes: the retry got no answer of its own, no write of its own
        assert written() == [101, 201, 202, 203]
        writer.write(MBAP.pack(5, 0, 6, 1) + bytes.fromhex("03 0000 0001"))  # the connection goes on
        assert await asyncio.wait_for(reader.readexactly(11), 3) == MBAP.pack(5, 0, 5, 1) + bytes.fromhex("03 02 00cb")

        # the device unreachable: the write is refused (0x04: the acquirer fails it at once, its link being
        # down) and not written once the device is back
        sim.cut(1)
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        writer.write(write(6, 301))
        got = await asyncio.wait_for(reader.readexactly(9), 5)
        assert got == exception(6, 0x04), got.hex(" ")
        assert time.monotonic() - t0 < 1.0
        sim.restore(1)
        await until(lambda: node.acq.runners[1].reaches(), 5)
        await asyncio.sleep(1.5)  # past the deadline, with the device reachable again
        assert written() == [101, 201, 202, 203]
        # and the next write goes through at once
        writer.write(write(7, 401))
        assert await asyncio.wait_for(reader.readexactly(12), 3) == write(7, 401)
        assert written() == [101, 201, 202, 203, 401]

        # no acquirer holds the RTU (stopped): the write waits in the control queue until its deadline and is
        # answered 0x0B then; an acquirer that takes the RTU after that does not run it
        await node.stop()
        t0 = time.monotonic()
        writer.write(write(8, 501))
        assert await asyncio.wait_for(reader.readexactly(9), 5) == exception(8, 0x0B)
        # still queued at its deadline: expired then by the forwarder's own clock (ctl_expire), not LATE_S after it
        assert 1.0 - 0.1 < time.monotonic() - t0 < 1.0 + 0.5
        node = Node(cfg)
        await until(lambda: node.acq.runners and node.acq.runners[1].lease.held, 5)
        writer.write(write(9, 601))
        assert await asyncio.wait_for(reader.readexactly(12), 3) == write(9, 601)
        assert written() == [101, 201, 202, 203, 401, 601]
        writer.close()
    finally:
        stop.set()
        await asyncio.gather(fwd, return_exceptions=True)
        await node.stop()
        await sim.stop()
