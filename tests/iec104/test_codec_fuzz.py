"""The IEC 104 codec under hostile input (seeded, no network): whatever a peer sends, the frame reader and the
ASDU decoder raise `ProtocolError` only, the element decoders `ValueError` only, and a negative mirror of any
ASDU the decoder accepted is the same size as what came in (it fits an APDU). tests/forwarder/
test_hostile_masters.py throws the same mutations at the running se104s server."""

from __future__ import annotations

import random
import struct
import time

import pytest

from fepha.iec104 import codec as c
from tests.fuzzing import mutate

NOW_MS = 1_700_000_000_000
MONITOR_TYPES = (c.M_SP_NA_1, c.M_DP_NA_1, c.M_ME_NA_1, c.M_ME_NB_1, c.M_ME_NC_1, c.M_IT_NA_1, c.M_SP_TB_1,
                 c.M_DP_TB_1, c.M_ME_TD_1, c.M_ME_TE_1, c.M_ME_TF_1, c.M_IT_TB_1)


def valid_asdus(ca: int = 7, now_ms: int = NOW_MS) -> list[bytes]:
    """One well-formed ASDU of every type the codec knows, as a master (or an RTU) sends it."""
    out = [c.interrogation(ca), c.counter_interrogation(ca), c.clock_sync(ca, now_ms),
           c.build_asdu(c.C_RD_NA_1, c.COT_REQ, ca, [(1001, b"")]),
           c.build_asdu(c.C_TS_TA_1, c.COT_ACT, ca, [(0, b"\x01\x02" + c.cp56(now_ms))]),
           c.build_asdu(c.C_RP_NA_1, c.COT_ACT, ca, [(0, b"\x01")]),
           c.build_asdu(c.M_EI_NA_1, c.COT_INIT, ca, [(0, b"\x00")]),
           c.build_asdu(c.M_ME_ND_1, c.COT_SPONT, ca, [(1, b"\x00\x40")])]
    out += [c.build_asdu(t, c.COT_ACT, ca, [(5001, c.encode_command(t, 1, ts_ms=now_ms))]) for t in c.COMMAND_BASE]
    out += [c.build_asdu(t, c.COT_SPONT, ca, [(1, c.element(t, 1, 0, now_ms))]) for t in MONITOR_TYPES]
    return out


def hostile_asdu(rng: random.Random, asdus: list[bytes]) -> bytes:
    """A valid ASDU damaged at random, or with its type, VSQ (SQ = 1 and large counts), cause (P/N, T),
    common address or first IOA replaced; at most MAX_ASDU octets (what one APDU can carry)."""
    b = bytearray(rng.choice(asdus))
    field = rng.randrange(7)
    if field == 0:
        b[0] = rng.randrange(256)
    elif field == 1:
        b[1] = rng.choice((0, 1, 2, 0x7F, 0x80, 0x81, 0xFF, rng.randrange(256)))
        if b[1] & 0x80 and rng.random() < 0.5:  # SQ = 1: the objects' octets without their IOAs
            b += bytes(rng.randrange(256) for _ in range(rng.randrange(c.MAX_ASDU - len(b) + 1)))
    elif field == 2:
        b[2] = rng.randrange(256)
    elif field == 3:
        b[4:6] = struct.pack("<H", rng.choice((0, 1, 7, 0xFFFE, 0xFFFF)))
    elif field == 4 and len(b) >= 9:
        b[6:9] = rng.choice((b"\x00\x00\x00", b"\xff\xff\xff", b"\x89\x13\x00", b"\x00\x00\x80"))
    else:
        b = bytearray(mutate(rng, bytes(b)))
    return bytes(b[:c.MAX_ASDU])


def check_decoders(a: c.Asdu) -> None:
    """Decode every object of an accepted ASDU the way se104s and the acquirer do: ValueError only."""
    for _, e in a.objects:
        try:
            if a.type_id in c.COMMAND_BASE:
                c.decode_command(a.type_id, e)
            elif c.base_type(a.type_id) in (*MONITOR_TYPES, c.M_ME_ND_1):
                c.decode_element(a.type_id, e)
            elif a.type_id in (c.C_CS_NA_1, c.C_TS_TA_1):
                c.cp56_ms(e[-7:])
        except ValueError:  # the decoders' documented refusal; any other exception fails the test
            pass


NEGATIVE_CAUSES = (c.COT_ACTCON, c.COT_DEACTCON, c.COT_UNKNOWN_TYPE, c.COT_UNKNOWN_COT, c.COT_UNKNOWN_CA,
                   c.COT_UNKNOWN_IOA)


def check_mirror(a: c.Asdu, received: bytes, causes: tuple[int, ...] = NEGATIVE_CAUSES) -> None:
    """Every negative answer se104s may give is the ASDU as received with another cause: same size, same
    objects, so it always fits an APDU."""
    for cause in causes:
        m = c.mirror(a, cause, True)
        assert len(m) == len(received) and m[:2] == received[:2] and m[3:] == received[3:]
        assert m[2] == cause | c.NEGATIVE | (received[2] & c.TEST)
        back = c.parse_asdu(m)
        assert (back.type_id, back.objects, back.negative) == (a.type_id, a.objects, True)
        assert len(c.i_frame(0, 0, m)) == len(m) + 6


def test_every_type_and_cause_octet_decodes_or_is_refused() -> None:
    """Type ids 0 .. 255 with each cause octet (cause 0 .. 63 with P/N and T) and one object of the size the
    type needs (a type the codec does not know: one octet): decoded with type and cause as sent, mirrored whole."""
    for type_id in range(256):
        size = c.element_size(type_id)
        elem = bytes(range(1, 1 + (1 if size is None else size)))
        for cot in range(256):
            raw = c.header(type_id, 1, cot, 0xFFFF, oa=0xFF) + c.ioa(0xFFFFFF) + elem
            a = c.parse_asdu(raw)
            assert (a.type_id, a.cot, a.cause, a.ca, a.oa) == (type_id, cot, cot & 0x3F, 0xFFFF, 0xFF)
            assert a.objects == ((0xFFFFFF, elem),)
            check_mirror(a, raw, (c.COT_UNKNOWN_TYPE,))
            check_decoders(a)


@pytest.mark.parametrize("sq", [False, True])
def test_object_counts_against_the_octets_that_follow(sq: bool) -> None:
    """Every count 0 .. 127 of every known type, with SQ = 0 and 1, and a body one octet short, exact and one
    octet long: only the exact one decodes (IOAs counted up from the first with SQ = 1), the others are a
    ProtocolError; an accepted one mirrors at its own size (SQ = 1 with 127 objects included: rebuilt with
    an IOA per object, a C_RD_NA_1 mirror grew from 9 to 387 octets, past an APDU, and se104s's sender died)."""
    known = [t for t in range(256) if c.element_size(t) is not None]
    for type_id in known:
        size = c.element_size(type_id)
        assert size is not None
        for n in range(128):
            want = c.IOA_LEN + n * size if sq else n * (c.IOA_LEN + size)
            for extra in (-1, 0, 1):
                length = want + extra
                if length < 0 or c.HEADER + length > c.MAX_ASDU:
                    continue
                body = bytes((i * 7 + 3) & 0xFF for i in range(length))
                if length >= 3:
                    body = c.ioa(0xFFFFF0) + body[3:]
                raw = c.header(type_id, n, c.COT_ACT, 7, sq=sq) + body
                if n == 0 or extra:
                    with pytest.raises(c.ProtocolError):
                        c.parse_asdu(raw)
                    continue
                a = c.parse_asdu(raw)
                assert len(a.objects) == n and a.sq is sq
                if sq:
                    assert [ioa for ioa, _ in a.objects] == [0xFFFFF0 + i for i in range(n)]
                check_mirror(a, raw)
                check_decoders(a)


def test_seeded_asdu_mutations() -> None:
    """20,000 damaged ASDUs: ProtocolError or a decoded ASDU whose objects decode (ValueError at worst) and
    mirror at its own size; nothing else escapes."""
    rng = random.Random(104)
    asdus = valid_asdus(now_ms=int(time.time() * 1000))
    accepted = 0
    for _ in range(20_000):
        raw = hostile_asdu(rng, asdus)
        try:
            a = c.parse_asdu(raw)
        except c.ProtocolError:
            continue
        accepted += 1
        check_decoders(a)
        check_mirror(a, raw)
    assert 2_000 < accepted < 18_000  # both outcomes are exercised


def test_frame_reader_truncated_at_every_length_and_damaged() -> None:
    """Every prefix of valid APDUs waits for more (no frame, no error); 5,000 damaged streams fed in random
    chunks raise ProtocolError or give frames that encode back to exactly the octets received."""
    frames = [c.u_frame(code) for code in sorted(c.U_CODES)] + [c.s_frame(0), c.s_frame(32767)]
    frames += [c.i_frame(ns, 32767 - ns, a) for ns, a in enumerate(valid_asdus())]
    frames.append(c.i_frame(5, 6, bytes(c.MAX_ASDU)))
    for f in frames:
        for cut in range(len(f)):
            assert c.FrameReader().feed(f[:cut]) == []
    rng = random.Random(68)

    def encoded(fr: c.Frame) -> bytes:
        if fr.kind == "I":
            return c.i_frame(fr.ns, fr.nr, fr.asdu)
        return c.s_frame(fr.nr) if fr.kind == "S" else c.u_frame(fr.code)

    complete = 0
    for _ in range(5_000):
        stream = b"".join(rng.choice(frames) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.8:
            stream = mutate(rng, stream)
        reader, got = c.FrameReader(), []
        try:
            i = 0
            while i < len(stream):
                n = rng.randint(1, 300)
                got += reader.feed(stream[i:i + n])
                i += n
        except c.ProtocolError:
            continue
        back = b"".join(encoded(fr) for fr in got)
        assert stream.startswith(back) and len(stream) - len(back) < 255
        complete += bool(got)
    assert complete > 1_000
