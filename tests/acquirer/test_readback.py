"""A Modbus set-point whose write the device executed but whose answer was lost is confirmed by reading it
back, not answered negatively (docs/ha.md "Noticed in the re-runs", docs/acquirer.md "Modbus device faults").

The rule (readback.py) in tables; how a write's failure is told apart (sent and unanswered, or not) on a
loopback device; and one control through a real Redis, fep-plcsim and the acquirer, with the write's answer
lost (done, written once) and with its request lost (failed, not written)."""

from __future__ import annotations

import struct
import time

import pytest

from fep_acquirer import mbtcp
from fep_acquirer.device import DeviceError, DeviceLink, LinkError, Unanswered, register_words
from fep_acquirer.readback import MARGIN_S, confirmed, readback_due
from fep_tools.plcsim import ANSWER, REQUEST
from fepha import controls
from fepha import keyspace as ks
from fepha.semodel.model import Model, Point
from tests.acquirer.helpers import free_port, holding, lone_runner, merge, rtu_rows

from .test_mbtcp import link_to, serve


@pytest.mark.parametrize(("kind", "area", "unanswered", "left_s", "due"), [
    ("AO", "hr", True, 1.5, True),              # a set-point written, its answer lost: read it back
    ("AO", "hr", True, MARGIN_S + 0.001, True),  # just enough time left
    ("AO", "hr", True, MARGIN_S, False),         # no time left for a read before the deadline
    ("AO", "hr", True, -0.2, False),             # past the deadline: never read (nor written) after it
    ("AO", "hr", False, 1.5, False),             # refused (exception answer) or never sent: failed as it is
    ("DO", "co", True, 1.5, False),              # a coil: latched or a pulse, the model does not say
    ("DO", "hr", True, 1.5, False),              # a bit of a register (read-modify-write): a DO too
])
def test_when_a_write_is_read_back(kind: str, area: str, unanswered: bool, left_s: float, due: bool) -> None:
    assert readback_due(kind, area, unanswered, left_s) is due


@pytest.mark.parametrize(("want", "got", "ok"), [
    ([321], b"\x01\x41", True),
    ([321], b"\x01\x40", False),                        # another value: the write was not executed
    ([0x3039, 0x0000], b"\x30\x39\x00\x00", True),     # two registers, both as commanded
    ([0x3039, 0x0000], b"\x30\x39\x00\x01", False),    # one of them differs
    ([-1], b"\xff\xff", True),                          # a negative int16 is its two's complement
    ([321], None, False),                               # unreadable
    ([321], b"", False),
])
def test_how_a_read_back_is_judged(want: list[int], got: bytes | None, ok: bool) -> None:
    assert confirmed(want, got) is ok


SETPOINT = Point(id=1, rtu=1, kind="AO", name="sp", area="hr", address=5, datatype="uint16")


@pytest.mark.parametrize(("device", "raised"), [
    ("exception", DeviceError),   # refused by the device: not executed
    ("silent", Unanswered),       # executed or not: no answer within the timeout
    ("closes", Unanswered),       # the connection dropped after the request was sent
    ("garbled", Unanswered),      # executed or not: an echo that is not the request's (connection closed)
])
async def test_a_write_sent_and_unanswered_is_told_from_one_refused(device: str, raised: type) -> None:
    def handler(tid: int, unit: int, pdu: bytes):
        if device == "exception":
            yield mbtcp.frame(tid, unit, bytes([pdu[0] | 0x80, 4]))
        elif device == "closes":
            raise ConnectionError
        elif device == "garbled":
            yield mbtcp.frame(tid, unit, pdu[:3] + b"\x00\x00")
        return
    server, port = await serve(handler)
    link = link_to(port, timeout_s=0.2)
    try:
        await link.connect()
        with pytest.raises(LinkError if raised is Unanswered else DeviceError) as got:
            await link.write(SETPOINT, 7)
        assert type(got.value) is raised, got.value
    finally:
        link.close()
        server.close()
        await server.wait_closed()


AO_ID = 1800


def with_setpoint(port: int) -> dict:
    """RTU 1 (helpers.rtu_rows) plus a set-point: int32 x 0.1 in holding registers 10-11 (FC 16)."""
    rows = merge(rtu_rows(1, port))
    rows["T011_POINT"].append(dict(PNTID=AO_ID, RTUID=1, KIND="AO", NAME="sp", AREA="hr", ADDRESS=10,
                                   DATATYPE="int32", BYTEORDER=None, WORDORDER=None, BITINDEX=None, SCALE=0.1,
                                   OFFSET=None, DEADBAND=None))
    return rows


async def test_a_set_point_whose_connection_drops_after_the_write_is_read_back_on_a_new_one(redis_master,
                                                                                           feproot):
    """A device that executes the write and closes the connection without answering: the read-back opens
    it again and confirms the write, which went out once."""
    regs = [0] * 16
    writes: list[bytes] = []

    def device(tid: int, unit: int, pdu: bytes):
        if pdu[0] == mbtcp.WRITE_REGISTERS:
            writes.append(pdu)
            address, n = struct.unpack_from(">HH", pdu, 1)
            regs[address:address + n] = struct.unpack_from(f">{n}H", pdu, 6)
            raise ConnectionError  # executed; the connection drops before the answer
        address, n = struct.unpack_from(">HH", pdu, 1)
        yield mbtcp.frame(tid, unit, bytes([3, 2 * n]) + struct.pack(f">{n}H", *regs[address:address + n]))
    conns: list[int] = []
    server, port = await serve(device, conns=conns)
    model = Model.from_rows(with_setpoint(port))
    async with lone_runner(feproot, redis_master, model, "A") as (_, runner):
        runner.link = link = DeviceLink(model.rtus[1].channels[0], 0.2)
        try:
            await link.connect()
            how = await runner.write_point(AO_ID, 1234.5, deadline=time.monotonic() + 1.5)
        finally:
            link.close()
            server.close()
            await server.wait_closed()
    assert how is not None and "confirmed by read-back on channel 1" in how, how
    assert len(writes) == 1 and len(conns) == 2 and regs[10:12] == register_words(model.points[AO_ID], 1234.5)


async def test_a_set_point_executed_whose_answer_is_lost_is_done_once(redis_master, feproot):
    """Real Redis, fep-plcsim, the acquirer (node A): a set-point's write executed and its answer lost is
    confirmed by read-back (done, written once); its request lost, it is failed and not written."""
    async with holding(redis_master, feproot, with_setpoint(free_port())) as (model, sim, a):
        r = a.master
        words = register_words(model.points[AO_ID], 1234.5)  # FC 16, two registers
        sim.lose(1, "hr", 10, ANSWER)
        res = await controls.execute(r, 1, AO_ID, 1234.5, "test", 2000)
        assert res.state == controls.DONE and "confirmed by read-back" in res.reason, res
        assert sim.value(AO_ID) == 1234.5
        assert [w for w in sim.writes if w[1] == "hr"] == [(1, "hr", 10, words)]  # once
        audit = [f for _, f in await r.xrange(ks.CTL_AUDIT) if f.get("id") == str(res.id)]
        assert [(f["state"], "confirmed by read-back" in f["result"]) for f in audit] == [("done", True)], audit

        sim.lose(1, "hr", 10, REQUEST)
        res = await controls.execute(r, 1, AO_ID, 999.0, "test", 2000)
        assert res.state == controls.FAILED, res
        assert "no answer within the timeout" in res.reason and "read back: the device holds" in res.reason, res
        assert sim.value(AO_ID) == 1234.5 and len([w for w in sim.writes if w[1] == "hr"]) == 1
        m = a.acq.metrics.total
        assert (m["controls_executed"], m["controls_read_back"], m["controls_failed"]) == (1, 1, 1)
