"""Table tests of the IEC 104 codec (fepha.iec104.codec): framing, ASDUs, elements, CP56Time2a, without a network."""

from __future__ import annotations

import calendar
import struct

import pytest

from fepha.iec104 import codec as c

T0 = calendar.timegm((2026, 11, 25, 7, 44, 16)) * 1000 + 123  # a Wednesday


def test_apci_frames_on_the_wire() -> None:
    assert c.u_frame(c.STARTDT_ACT).hex() == "680407000000"
    assert c.u_frame(c.TESTFR_CON).hex() == "680483000000"
    assert c.s_frame(5).hex() == "680401000a00"
    assert c.i_frame(1, 2, b"\x01\x01\x03\x00\x01\x00" + b"\x01\x00\x00\x01").hex() == \
        "680e" + "02000400" + "010103000100" + "01000001"
    assert c.i_frame(0x7FFF, 0, b"x" * 6)[2:4] == b"\xfe\xff"


def test_frame_reader_reassembles_split_and_joined_frames() -> None:
    r = c.FrameReader()
    data = c.u_frame(c.STARTDT_ACT) + c.s_frame(3) + c.i_frame(4, 7, bytes.fromhex("640106000100000000" "14"))
    frames = []
    for i in range(len(data)):  # one octet at a time
        frames += r.feed(data[i:i + 1])
    assert [f.kind for f in frames] == ["U", "S", "I"]
    assert frames[0].code == c.STARTDT_ACT and frames[1].nr == 3
    assert (frames[2].ns, frames[2].nr) == (4, 7)
    assert c.parse_asdu(frames[2].asdu).type_id == c.C_IC_NA_1
    assert [f.kind for f in c.FrameReader().feed(data)] == ["U", "S", "I"]


@pytest.mark.parametrize("raw, why", [
    ("69040700 0000", "start octet"),
    ("6803010000", "length 3"),
    ("68ff" + "00" * 255, "length 255"),
    ("680408000000", "U code 0x08"),
    ("680407010000", "U with nonzero octet"),
    ("68050100000000", "S frame of length 5"),
    ("680401010000", "S frame second octet"),
    ("6806000000000100", "I frame with a 2-octet ASDU"),
])
def test_frame_reader_rejects_malformed(raw: str, why: str) -> None:
    with pytest.raises(c.ProtocolError):
        c.FrameReader().feed(bytes.fromhex(raw.replace(" ", "")))


def test_cp56_known_vector_and_roundtrip() -> None:
    b = c.cp56(T0)
    # ms = 16*1000+123 = 16123 = 0x3efb; min 44; hour 7; day 25 | wday(Wed=3)<<5; month 11; year 26
    assert b.hex() == "fb3e" + "2c" + "07" + f"{25 | (3 << 5):02x}" + "0b" + "1a"
    assert c.cp56_ms(b) == T0
    for t in (T0, T0 + 86_399_999, 946_684_800_000, 4_102_444_799_999):
        assert c.cp56_ms(c.cp56(t)) == t
    with pytest.raises(ValueError):  # month 0: an impossible date, answered negatively by the server
        c.cp56_ms(bytes(7))


@pytest.mark.parametrize("type_id, value, quality, element_hex", [
    (c.M_SP_NA_1, 1, 0, "01"),
    (c.M_SP_NA_1, 0, 0x80, "80"),  # IV
    (c.M_SP_NA_1, 1, 0x40 | 0x01, "41"),  # NT kept, OV not part of SIQ
    (c.M_DP_NA_1, 1, 0, "02"),  # on
    (c.M_DP_NA_1, 0, 0x80, "81"),  # off, invalid
    (c.M_ME_NA_1, 0.5, 0, "004000"),
    (c.M_ME_NA_1, -1.0, 0, "008000"),
    (c.M_ME_NA_1, 2.0, 0, "ff7f01"),  # clamped, OV
    (c.M_ME_NB_1, -2, 0x40, "feff40"),
    (c.M_ME_NB_1, 40000, 0, "ff7f01"),  # clamped, OV
    (c.M_ME_NC_1, 1.5, 0, "0000c03f00"),
    (c.M_ME_NC_1, 1.5, 0x80, "0000c03f80"),
    (c.M_IT_NA_1, 123456, 0, "40e2010000"),
    (c.M_IT_NA_1, 2**32 + 5, 0x80, "0500000080"),  # wraps like a counter, IV
    (c.M_SP_NA_1, 1, 0x20 | 0x10, "31"),  # SB, BL
    (c.M_ME_NC_1, 1.5, 0x20 | 0x10, "0000c03f30"),  # SB, BL in QDS
    (c.M_IT_NA_1, 7, 0x40 | 0x20 | 0x10, "0700000000"),  # NT/SB/BL are not BCR's CA/CY: sequence 0, none set
    (c.M_ME_NC_1, float("nan"), 0, "0000c07f80"),  # not a number: invalid, never a good NaN
    (c.M_ME_NB_1, float("nan"), 0, "000081"),  # 0, OV and IV
    (c.M_ME_NA_1, float("nan"), 0, "000081"),
])
def test_monitoring_elements(type_id: int, value: float, quality: int, element_hex: str) -> None:
    assert c.element(type_id, value, quality, T0).hex() == element_hex


def test_time_tagged_elements_append_cp56_and_decode_back() -> None:
    for tb, base in ((c.M_SP_TB_1, c.M_SP_NA_1), (c.M_DP_TB_1, c.M_DP_NA_1), (c.M_ME_TD_1, c.M_ME_NA_1),
                     (c.M_ME_TE_1, c.M_ME_NB_1), (c.M_ME_TF_1, c.M_ME_NC_1), (c.M_IT_TB_1, c.M_IT_NA_1)):
        e = c.element(tb, 1, 0x40, T0)
        assert e == c.element(base, 1, 0x40, T0) + c.cp56(T0)
        assert len(e) == c.element_size(tb)
        _v, _q, ts = c.decode_element(tb, e)
        assert ts == T0
    assert c.decode_element(c.M_ME_NC_1, c.element(c.M_ME_NC_1, -3.25, 0x80, 0)) == (-3.25, 0x80, None)


def test_pack_fills_asdus_up_to_the_limit_in_order() -> None:
    objs = [(1000 + i, c.element(c.M_ME_NC_1, float(i), 0, 0)) for i in range(100)]
    asdus = list(c.pack(c.M_ME_NC_1, c.COT_SPONT, 7, objs))
    assert [len(c.parse_asdu(a).objects) for a in asdus] == [30, 30, 30, 10]
    assert all(len(a) <= c.MAX_ASDU for a in asdus)
    parsed = [o for a in asdus for o in c.parse_asdu(a).objects]
    assert [ioa for ioa, _ in parsed] == [1000 + i for i in range(100)]
    a = c.parse_asdu(asdus[0])
    assert (a.type_id, a.cause, a.ca, a.negative, a.sq) == (c.M_ME_NC_1, c.COT_SPONT, 7, False, False)
    assert c.per_asdu(c.M_SP_NA_1) == 60 and c.per_asdu(c.M_ME_TF_1) == 16


def test_parse_asdu_sequence_and_errors() -> None:
    sq = bytes([c.M_SP_NA_1, 0x83, 20, 0]) + struct.pack("<H", 1) + c.ioa(10) + b"\x01\x00\x01"
    assert c.parse_asdu(sq).objects == ((10, b"\x01"), (11, b"\x00"), (12, b"\x01"))
    with pytest.raises(c.ProtocolError):  # declares 2 objects, carries 1
        c.parse_asdu(bytes([c.M_SP_NA_1, 2, 3, 0, 1, 0]) + c.ioa(1) + b"\x01")
    with pytest.raises(c.ProtocolError):
        c.parse_asdu(bytes([c.M_SP_NA_1, 0, 3, 0, 1, 0]))
    unknown = c.parse_asdu(bytes([102, 1, 5, 0, 1, 0]) + c.ioa(9))
    assert unknown.objects == ((9, b""),)


@pytest.mark.parametrize("type_id, element_hex, value, select", [
    (c.C_SC_NA_1, "01", 1.0, False),
    (c.C_SC_NA_1, "80", 0.0, True),
    (c.C_DC_NA_1, "02", 1.0, False),
    (c.C_DC_NA_1, "81", 0.0, True),
    (c.C_SE_NA_1, "004000", 0.5, False),
    (c.C_SE_NB_1, "9cff80", -100.0, True),
    (c.C_SE_NC_1, "0000c03f00", 1.5, False),
])
def test_commands_decode(type_id: int, element_hex: str, value: float, select: bool) -> None:
    cmd = c.decode_command(type_id, bytes.fromhex(element_hex))
    assert (cmd.value, cmd.select, cmd.ts_ms) == (value, select, None)
    assert c.encode_command(type_id, value, select) == bytes.fromhex(element_hex)


def test_time_tagged_commands_and_invalid_double_command() -> None:
    for ta, v in ((c.C_SC_TA_1, 1.0), (c.C_DC_TA_1, 1.0), (c.C_SE_TA_1, 0.25), (c.C_SE_TB_1, 7.0),
                  (c.C_SE_TC_1, 2.5)):
        cmd = c.decode_command(ta, c.encode_command(ta, v, False, T0))
        assert cmd.ts_ms == T0 and cmd.value == v
    for dcs in (0, 3):
        with pytest.raises(ValueError):
            c.decode_command(c.C_DC_NA_1, bytes([dcs]))


def test_mirror_answers_with_cause_and_negative_bit() -> None:
    a = c.parse_asdu(c.build_asdu(c.C_SC_NA_1, c.COT_ACT, 1, [(5001, b"\x01")], oa=3))
    neg = c.parse_asdu(c.mirror(a, c.COT_ACTCON, True))
    assert (neg.cause, neg.negative, neg.oa, neg.objects) == (c.COT_ACTCON, True, 3, a.objects)
    assert c.parse_asdu(c.mirror(a, c.COT_ACTTERM)).negative is False


def test_sequence_numbers_wrap() -> None:
    assert c.seq_diff(2, 32766) == 4
    assert c.seq_diff(5, 5) == 0


def test_interrogation_counter_interrogation_and_clock_sync_asdus() -> None:
    assert c.interrogation(7).hex() == "640106000700" "000000" "14"
    assert c.counter_interrogation(7, 5).hex() == "650106000700" "000000" "05"
    a = c.parse_asdu(c.clock_sync(0xFFFF, T0))
    assert (a.type_id, a.cause, a.ca, a.objects[0][0]) == (c.C_CS_NA_1, c.COT_ACT, 0xFFFF, 0)
    assert c.cp56_ms(a.objects[0][1]) == T0
    a = c.parse_asdu(c.interrogation(7, 21, c.COT_DEACT))
    assert (a.cause, a.objects[0][1]) == (c.COT_DEACT, b"\x15")


def test_tagged_and_base_forms() -> None:
    assert [c.tagged_type(t) for t in (c.M_SP_NA_1, c.M_DP_NA_1, c.M_ME_NA_1, c.M_ME_NB_1, c.M_ME_NC_1,
                                       c.M_IT_NA_1)] == [30, 31, 34, 35, 36, 37]
    assert c.tagged_type(c.M_ME_TF_1) == c.M_ME_TF_1 and c.base_type(c.M_ME_TF_1) == c.M_ME_NC_1


@pytest.mark.parametrize("tag_hex, why", [
    ("60ea" "00" "00" "01" "01" "1a", "milliseconds 60000"),
    ("0000" "3c" "00" "01" "01" "1a", "minute 60"),
    ("0000" "00" "18" "01" "01" "1a", "hour 24"),
    ("0000" "00" "1f" "01" "01" "1a", "hour 31 (five bits)"),
    ("0000" "00" "00" "00" "01" "1a", "day 0"),
    ("0000" "00" "00" "1e" "02" "1a", "30 February"),
    ("0000" "00" "00" "01" "0d" "1a", "month 13"),
    ("0000" "00" "00" "01" "01" "64", "year 100"),
])
def test_cp56_fields_out_of_range_are_not_a_time(tag_hex: str, why: str) -> None:
    """An impossible CP56Time2a must not become some other instant (the acquirer would store it, the
    server would run a time-tagged command on it): every field is checked against its range."""
    with pytest.raises(ValueError):
        c.cp56_ms(bytes.fromhex(tag_hex))


def test_cp56_iv_su_and_day_of_week_bits() -> None:
    sunday = 1_764_460_800_000 + 12 * 3_600_000  # Sunday 2025-11-30 12:00 UTC
    b = c.cp56(sunday, invalid=True)
    assert b[2] & 0x80 and b[3] & 0x80 == 0  # IV set; SU (summer time) never: we send UTC
    assert b[4] >> 5 == 7 and b[4] & 0x1F == 30  # day of week 1 = Monday .. 7 = Sunday
    assert c.cp56_ms(b) == sunday  # IV, SU and day of week do not change the instant
    assert c.cp56_ms(bytes((b[0], b[1], b[2], b[3] | 0x80, b[4] & 0x1F, b[5], b[6]))) == sunday
