"""The acquirer's IEC 104 master side against frames an independent encoder builds: scapy's contrib IEC 104
layers (`scapy.contrib.scada.iec104`). No IEC 104 controlled station independent of lib60870 installs here
(docs/acquirer.md), so an RTU's ASDUs are built by scapy, with single and sequential (SQ = 1) addressing,
quality bits and CP56Time2a, and read by our codec and the acquisition rules; and every ASDU the acquirer
sends (interrogations, clock sync, each command type, select and execute) is dissected by scapy. No network,
no clock."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from fep_acquirer import iec104rules as rules
from fepha.iec104 import codec as c
from fepha.semodel.model import Channel, Rtu
from tests.prereq import require

from .test_iec104_rules import DC, IT, NA, NB, NC, RTU, RX, SC, SE_NA, SE_NB, SE_NC, SP, point

try:
    from scapy.contrib.scada.iec104 import IEC104_I_Message_SeqIOA, IEC104_I_Message_SingleIOA, iec104_decode
    from scapy.contrib.scada.iec104 import iec104_information_objects as sio
    from scapy.packet import Padding, Raw
    MISSING: str | None = None
except ImportError as exc:
    MISSING = f"scapy is not installed: {exc}"

CA = 7
WHEN = datetime.datetime(2026, 3, 29, 1, 59, 58, 765000, tzinfo=datetime.UTC)  # a Sunday, ms set
WHEN_MS = int(WHEN.timestamp() * 1000)


@pytest.fixture(autouse=True)
def _scapy() -> None:
    require(MISSING, "scapy's IEC 104 layers")


def cp56(when: datetime.datetime = WHEN, iv: int = 0) -> dict[str, int]:
    """scapy's CP56Time2a fields."""
    return {"sec_milli": when.second * 1000 + when.microsecond // 1000, "minutes": when.minute, "iv_time": iv,
            "hours": when.hour, "weekday": when.isoweekday(), "day_of_month": when.day, "month": when.month,
            "year": when.year % 100}


def received(frame: Any, rtu: Rtu = RTU) -> rules.Intake:
    """A frame scapy built, as the acquirer takes it in: APCI reader, ASDU codec, acquisition rules."""
    (f,) = c.FrameReader().feed(bytes(frame))
    assert f.kind == "I"
    return rules.PointMap(rtu).intake(c.parse_asdu(f.asdu), RX)


def single(type_id: int, cause: int, *objects: Any) -> Any:
    return IEC104_I_Message_SingleIOA(type_id=type_id, cot=cause, common_asdu_address=CA, io=list(objects))


@pytest.mark.parametrize("frame,want", [
    (lambda: single(c.M_SP_TB_1, 3, sio.IEC104_IO_M_SP_TB_1_IOA(information_object_address=100, spi_value=1,
                                                                 nt=1, **cp56())),
     [(SP.id, (1, 0x40), WHEN_MS)]),
    (lambda: single(c.M_SP_TB_1, 3, sio.IEC104_IO_M_SP_TB_1_IOA(information_object_address=100, spi_value=0,
                                                                 **cp56(iv=1))),
     [(SP.id, (0, 0), RX)]),  # the device marked its time invalid: reception time
    (lambda: single(c.M_DP_NA_1, 20, sio.IEC104_IO_M_DP_NA_1_IOA(information_object_address=101, dpi_value=2,
                                                                  sb=1, bl=1)),
     [(2, (1, 0x30), RX)]),
    (lambda: single(c.M_DP_NA_1, 20, sio.IEC104_IO_M_DP_NA_1_IOA(information_object_address=101, dpi_value=3)),
     [(2, (0, 0x80), RX)]),  # indeterminate: not a position
    (lambda: single(c.M_ME_NA_1, 3, sio.IEC104_IO_M_ME_NA_1_IOA(information_object_address=200,
                                                                 normed_value=-8192)),  # -0.25 * 2**15
     [(NA.id, (-25.0, 0), RX)]),  # SCALE 100
    (lambda: single(c.M_ME_TE_1, 3, sio.IEC104_IO_M_ME_TE_1_IOA(information_object_address=201,
                                                                 scaled_value=-32768, ov=1, **cp56())),
     [(NB.id, (-3276.8 - 40, 0x01), WHEN_MS)]),  # SCALE 0.1, OFFSET -40, OV carried
    (lambda: single(c.M_ME_NC_1, 1, sio.IEC104_IO_M_ME_NC_1_IOA(information_object_address=202,
                                                                 scaled_value=-1.5e6, iv=1)),
     [(NC.id, (-1.5e6, 0x80), RX)]),
    (lambda: single(c.M_IT_TB_1, 37, sio.IEC104_IO_M_IT_TB_1_IOA(information_object_address=300,
                                                                  counter_value=-2, **cp56())),
     [(IT.id, (-2, 0), WHEN_MS)]),
    # each type also in its other form (with / without time tag): a point takes both
    (lambda: single(c.M_DP_TB_1, 3, sio.IEC104_IO_M_DP_TB_1_IOA(information_object_address=101, dpi_value=1,
                                                                 **cp56())),
     [(2, (0, 0), WHEN_MS)]),
    (lambda: single(c.M_ME_TD_1, 3, sio.IEC104_IO_M_ME_TD_1_IOA(information_object_address=200,
                                                                 normed_value=32767, nt=1, **cp56())),
     [(NA.id, (100.0 * 32767 / 32768, 0x40), WHEN_MS)]),
    (lambda: single(c.M_ME_NB_1, 20, sio.IEC104_IO_M_ME_NB_1_IOA(information_object_address=201,
                                                                  scaled_value=650)),
     [(NB.id, (25.0, 0), RX)]),
    (lambda: single(c.M_ME_TF_1, 3, sio.IEC104_IO_M_ME_TF_1_IOA(information_object_address=202,
                                                                 scaled_value=0.125, sb=1, **cp56())),
     [(NC.id, (0.125, 0x20), WHEN_MS)]),
    (lambda: single(c.M_IT_NA_1, 37, sio.IEC104_IO_M_IT_NA_1_IOA(information_object_address=300,
                                                                  counter_value=2**31 - 1, iv=1)),
     [(IT.id, (2**31 - 1, 0x80), RX)]),
])
def test_rtu_objects_built_by_scapy_give_the_samples_encoded(frame: Any, want: list[Any]) -> None:
    got = received(frame())
    assert [(pid, (pytest.approx(v), q), ts) for pid, (v, q), ts in got.events] == want
    if want[0][2] == RX and got.tagged:
        assert got.clock  # a tag not used is logged


def test_sequential_addressing_of_a_whole_block() -> None:
    """SQ = 1 (one IOA, objects at IOA, IOA + 1 ...), as many RTUs answer an interrogation."""
    rtu = Rtu(id=2, name="sq", rtutype=0, protocol="iec104", channels=(Channel(2, 2, "h", 2404, CA),),
              points=tuple(point(20 + i, "DI", 10 + i, "M_SP_NA_1") for i in range(5))
              + tuple(point(30 + i, "AI", 500 + i, "M_ME_NC_1") for i in range(3)))
    sp = IEC104_I_Message_SeqIOA(type_id=c.M_SP_NA_1, cot=20, common_asdu_address=CA,
                                 information_object_address=10,
                                 io=[sio.IEC104_IO_M_SP_NA_1(spi_value=i % 2, iv=int(i == 3)) for i in range(5)])
    assert received(sp, rtu).events == [(20 + i, (i % 2, 0x80 if i == 3 else 0), RX) for i in range(5)]
    me = IEC104_I_Message_SeqIOA(type_id=c.M_ME_NC_1, cot=20, common_asdu_address=CA,
                                 information_object_address=500,
                                 io=[sio.IEC104_IO_M_ME_NC_1(scaled_value=0.5 * i) for i in range(3)])
    assert received(me, rtu).events == [(30 + i, (0.5 * i, 0), RX) for i in range(3)]


def dissected(asdu: bytes) -> Any:
    p = iec104_decode(c.i_frame(0, 0, asdu))
    assert not p.haslayer(Raw) and not p.haslayer(Padding), p.summary()
    assert (p.cot, p.ack, p.test, p.common_asdu_address, p.num_io) == (c.COT_ACT, 0, 0, CA, 1)
    return p


def test_interrogations_and_clock_sync_the_acquirer_sends_dissect_as_meant() -> None:
    gi = dissected(rules.interrogation_asdu("gi", CA, WHEN_MS))
    assert (gi.type_id, gi.io[0].information_object_address, gi.io[0].qoi) == (c.C_IC_NA_1, 0, 20)
    ci = dissected(rules.interrogation_asdu("ci", CA, WHEN_MS))
    assert (ci.type_id, ci.io[0].rqt, ci.io[0].frz) == (c.C_CI_NA_1, 5, 0)  # general request, read
    cs = dissected(rules.interrogation_asdu("cs", CA, WHEN_MS))
    assert cs.type_id == c.C_CS_NA_1
    assert {k: getattr(cs.io[0], k) for k in cp56()} == cp56() and cs.io[0].su == 0


@pytest.mark.parametrize("p,value,field,wire", [
    (SC, 1, "scs", 1), (DC, 1, "dcs", 2), (DC, 0, "dcs", 1),
    (SE_NA, -50.0, "normed_value", -0.5),  # SCALE 100
    (SE_NB, -1234, "scaled_value", -1234),
    (SE_NC, 7.0, "scaled_value", 3.0),  # (7 - OFFSET 1) / SCALE 2
])
def test_each_command_the_acquirer_sends_dissects_as_meant(p: Any, value: float, field: str, wire: float) -> None:
    for select in (True, False):
        d = dissected(rules.command_asdu(p, CA, value, select, WHEN_MS))
        o = d.io[0]
        assert (d.type_id, o.information_object_address) == (c.TYPE_IDS[p.datatype], p.address)
        assert getattr(o, field) == pytest.approx(wire)
        assert (o.s_or_e if hasattr(o, "s_or_e") else o.action) == int(select)
        assert (o.qu if hasattr(o, "qu") else o.ql) == 0
        if d.type_id in c.TIME_TAGGED:
            assert {k: getattr(o, k) for k in cp56()} == cp56()


def test_normalised_values_without_quality_reach_a_normalised_point() -> None:
    """M_ME_ND_1 (IEC 60870-5-101 7.3.1.21: a normalised value without quality descriptor, which RTUs send
    to save octets, often in SQ = 1 blocks) is the value of an M_ME_NA_1 point, good quality, our time."""
    one = single(c.M_ME_ND_1, 3, sio.IEC104_IO_M_ME_ND_1_IOA(information_object_address=200, normed_value=8192))
    assert received(one).events == [(NA.id, (25.0, 0), RX)]  # 0.25 x SCALE 100
    rtu = Rtu(id=3, name="nd", rtutype=0, protocol="iec104", channels=(Channel(3, 3, "h", 2404, CA),),
              points=tuple(point(40 + i, "AI", 700 + i, "M_ME_NA_1") for i in range(4)))
    block = IEC104_I_Message_SeqIOA(type_id=c.M_ME_ND_1, cot=20, common_asdu_address=CA,
                                    information_object_address=700,
                                    io=[sio.IEC104_IO_M_ME_ND_1(normed_value=-8192 * i) for i in range(4)])
    got = received(block, rtu)
    assert got.events == [(40 + i, (-0.25 * i, 0), RX) for i in range(4)]
    assert [r.mode for r in got.runs] == [rules.IMAGE]


@pytest.mark.parametrize("frame", [
    lambda: single(5, 3, sio.IEC104_IO_M_ST_NA_1_IOA(information_object_address=200, value=3)),  # M_ST_NA_1
    lambda: single(7, 20, sio.IEC104_IO_M_BO_NA_1_IOA(information_object_address=200, bsi=5)),  # M_BO_NA_1
])
def test_a_monitoring_type_we_do_not_read_is_named_not_dropped_silently(frame: Any) -> None:
    """An RTU that sends a point in a type the acquirer cannot read leaves that point as it was: the
    operator must learn why (logged once per type), not see a stale value with nothing said."""
    (f,) = c.FrameReader().feed(bytes(frame()))
    a = c.parse_asdu(f.asdu)
    assert not rules.is_monitoring(a.type_id)
    why = rules.unsupported(a)
    assert why is not None and f"type {a.type_id}" in why and "IOA 200" in why
    for handled in (rules.interrogation_asdu("gi", CA, WHEN_MS), rules.command_asdu(SC, CA, 1, False, WHEN_MS),
                    c.build_asdu(c.M_EI_NA_1, c.COT_INIT, CA, [(0, b"\x00")])):
        assert rules.unsupported(c.parse_asdu(handled)) is None
