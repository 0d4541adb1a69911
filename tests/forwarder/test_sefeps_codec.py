"""sefeps codec (framing, validation, negotiation, entries, replay buffer): table tests without a network."""

from __future__ import annotations

import json
import struct

import pytest

from fep_forwarder.sefeps import codec
from fepha.points import Quality, Value
from fepha.semodel.model import FwdPoint


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_encode_decode_roundtrip_in_pieces():
    msgs = [codec.hello((1, 2), "m1", ("A12-1", 5)), {"t": "cmd", "id": 3, "addr": 30, "value": 1.5},
            {"t": "hb"}, {"t": "resume", "session": "s", "seq": 0}, {"t": "bye"}]
    wire = b"".join(codec.encode(m) for m in msgs)
    dec = codec.Decoder(codec.CLIENT_MESSAGES)
    got = []
    for i in range(0, len(wire), 7):  # arbitrary TCP segmentation
        got += dec.feed(wire[i : i + 7])
    assert got == msgs and dec.buf == b""


@pytest.mark.parametrize("wire,code", [
    (struct.pack(">I", 0), "frame"),
    (struct.pack(">I", codec.MAX_FRAME + 1), "frame"),
    (frame(b"{not json"), "frame"),
    (frame(b"\xff\xfe"), "frame"),
    (frame(b"[1,2]"), "frame"),
    (frame(b'{"t":"hb","x":NaN}'), "frame"),
    (frame(b'{"t":"welcome"}'), "proto"),  # a server message from a client
    (frame(b'{"v":1}'), "proto"),
    (frame(b'{"t":"cmd","id":1,"addr":2}'), "proto"),
    (frame(b'{"t":"cmd","id":"1","addr":2,"value":1}'), "proto"),
    (frame(b'{"t":"cmd","id":true,"addr":2,"value":1}'), "proto"),
    (frame(b'{"t":"cmd","id":1,"addr":2,"value":"on"}'), "proto"),
    (frame(b'{"t":"hello","versions":["1"]}'), "proto"),
    (frame(b'{"t":"hello","versions":[1],"resume":{"seq":1}}'), "proto"),
    (frame(b'{"t":"resume","session":"s"}'), "proto"),
])
def test_malformed_input(wire, code):
    with pytest.raises(codec.ProtocolError) as e:
        codec.Decoder(codec.CLIENT_MESSAGES).feed(wire)
    assert e.value.code == code


def test_incomplete_frame_waits_and_extra_fields_are_ignored():
    dec = codec.Decoder(codec.CLIENT_MESSAGES)
    body = json.dumps({"t": "hb", "future": 1}).encode()
    assert dec.feed(frame(body)[:-1]) == []
    assert dec.feed(frame(body)[-1:]) == [{"t": "hb", "future": 1}]


def test_encode_refuses_nan_and_oversize():
    with pytest.raises(ValueError):
        codec.encode({"t": "ev", "seq": 1, "points": [[1, float("nan"), 0, 0]]})
    with pytest.raises(ValueError):
        codec.encode({"t": "hb", "pad": "x" * codec.MAX_FRAME})


@pytest.mark.parametrize("offered,expected", [([1], 1), ([1, 2, 3], 1), ([2, 3], None), ([], None)])
def test_negotiate(offered, expected):
    assert codec.negotiate(offered) == expected
    assert codec.negotiate(offered, (1, 2)) == (max(set(offered) & {1, 2}) if set(offered) & {1, 2} else None)


def fwd(kind: str, coef: float = 1.0, addr: int = 7) -> FwdPoint:
    table = {"AI": "T005_ZFAI", "DI": "T006_ZFDI", "ACC": "T007_ZFACC", "DO": "T008_ZFDO", "AO": "T009_ZFAO"}[kind]
    return FwdPoint(1, table, kind, 12, 101, addr, None, coef)


@pytest.mark.parametrize("kind,coef,value,quality,expected", [
    ("AI", 1.0, 2.5, 0, [7, 2.5, 0, 99]),
    ("AI", 10.0, 2.5, Quality.NT, [7, 25.0, Quality.NT, 99]),
    ("ACC", 2.0, 5, 0, [7, 10, 0, 99]),
    ("DI", 10.0, 1, Quality.IV, [7, 1, Quality.IV, 99]),  # COEF does not apply to states
    ("AI", 1.0, float("inf"), 0, [7, None, Quality.OV, 99]),
    ("AI", 1.0, float("nan"), Quality.IV, [7, None, Quality.IV | Quality.OV, 99]),
])
def test_entry(kind, coef, value, quality, expected):
    assert codec.entry(fwd(kind, coef), Value(value, int(quality), 99)) == expected


@pytest.mark.parametrize("kind,coef,value,expected", [("AO", 10.0, 25.0, 2.5), ("DO", 10.0, 1.0, 1.0)])
def test_command_value(kind, coef, value, expected):
    assert codec.command_value(fwd(kind, coef), value) == expected


def test_image_and_event_messages():
    entries = [[i, i, 0, 1] for i in range(5)]
    imgs = codec.image_messages(9, entries, 2)
    assert [(m["seq"], len(m["points"]), m["more"]) for m in imgs] == [(9, 2, True), (9, 2, True), (9, 1, False)]
    assert codec.image_messages(3, [], 2) == [{"t": "image", "seq": 3, "points": [], "more": False}]
    evs = codec.event_messages([(1, "a"), (2, "b"), (3, "c"), (5, "e")], 2)
    assert [(m["seq"], m["points"]) for m in evs] == [(1, ["a", "b"]), (3, ["c"]), (5, ["e"])]
    for m in imgs + evs[:1]:
        assert codec.Decoder(codec.SERVER_MESSAGES).feed(codec.encode(m)) == [m]
