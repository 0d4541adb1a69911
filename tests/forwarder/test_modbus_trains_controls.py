"""modbus_trains writes executed through the master Redis control queue (fepha.controls) by a lease holder."""

from __future__ import annotations

from pymodbus.client import AsyncModbusTcpClient

from fep_forwarder.modbus_trains import ModbusTrainsServer
from fepha import keyspace as ks
from tests.forwarder.ctl_helpers import redis_controls
from tests.forwarder.mbt_fixtures import FORWARDS, rtu


async def test_writes_through_redis_controls(redis_master):
    rtu_of = {f.src: 7 for f in FORWARDS if f.id != 10}
    rtu_of[BY10 := next(f.src for f in FORWARDS if f.id == 10)] = 8  # coil 1: RTU 8 has no executor
    async with redis_controls(redis_master, rtu_of, executor_rtus=(7,)) as (sink, execs):
        sink.timeout_ms = 300
        srv = ModbusTrainsServer(rtu(), None, "127.0.0.1", sink, "B")
        await srv.start()
        c = AsyncModbusTcpClient("127.0.0.1", port=srv.port, timeout=3, retries=0)
        try:
            await c.connect()
            r = await c.write_register(0, 42)
            assert not r.isError()
            r = await c.write_register(0, 99)  # the executor's device refuses 99
            assert r.isError() and r.exception_code == 0x04
            r = await c.write_coil(1, True)  # nobody executes RTU 8: expired at its deadline
            assert r.isError() and r.exception_code == 0x0B
            assert (await c.read_holding_registers(0, count=1)).registers == [42]
            src11 = next(f.src for f in FORWARDS if f.id == 11)
            assert execs[0].executed == [(src11, 42.0), (src11, 99.0)]
            audit = await sink.master.xrange(ks.CTL_AUDIT)
            states = [(e[1]["point"], e[1]["state"], e[1]["origin"]) for e in audit]
            assert states == [(str(src11), "done", "modbus_trains:50@B"), (str(src11), "failed", "modbus_trains:50@B"),
                              (str(BY10), "expired", "modbus_trains:50@B")]
        finally:
            c.close()
            await srv.stop()
