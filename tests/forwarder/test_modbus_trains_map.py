"""modbus_trains rules without a network (AddressMap, encode/decode): table tests."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from fep_forwarder.modbus_trains.addrmap import (
    ILLEGAL_DATA_ADDRESS,
    ILLEGAL_DATA_VALUE,
    AddressMap,
    RequestError,
    decode,
    encode,
)
from fepha.points import Quality, Value
from tests.forwarder.mbt_fixtures import BY_ID, FORWARDS


def f32(v: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


@pytest.mark.parametrize("dtype,value,coef,regs,extra", [
    ("bool", 1, 1.0, [1], 0),
    ("bool", 0.0, 1.0, [0], 0),
    ("bool", 5, -1.0, [1], 0),  # COEF is ignored for bits
    ("int16", -12.34, 10.0, [0xFF85], 0),  # -123.4 rounds to -123
    ("int16", 4000, 10.0, [0x7FFF], Quality.OV),  # clamped
    ("uint16", -1, 1.0, [0], Quality.OV),
    ("uint16", 65535, 1.0, [0xFFFF], 0),
    ("uint32", 70000, 1.0, [1, 4464], 0),
    ("int32", -2, 1.0, [0xFFFF, 0xFFFE], 0),
    ("float32", 1.5, 2.0, f32(3.0), 0),
    ("float32", 1e39, 1.0, f32(3.4028234663852886e38), Quality.OV),
    ("float32", float("inf"), 1.0, f32(3.4028234663852886e38), Quality.OV),
    ("int32", float("-inf"), 1.0, [0x8000, 0], Quality.OV),
])
def test_encode(dtype, value, coef, regs, extra):
    assert encode(dtype, value, coef) == (regs, int(extra))


def test_encode_nan_is_refused():
    with pytest.raises(ValueError):
        encode("float32", float("nan"), 1.0)


@pytest.mark.parametrize("dtype,regs,coef,value", [
    ("bool", [1], 1.0, 1.0), ("bool", [0], 1.0, 0.0),
    ("uint16", [500], 1.0, 500.0), ("int16", [0xFFFF], 1.0, -1.0),
    ("int32", [0xFFFF, 0xFFFE], 0.5, -4.0), ("float32", f32(2.5), 1.0, 2.5),
])
def test_decode(dtype, regs, coef, value):
    assert decode(dtype, regs, coef) == value


def test_decode_nan_is_illegal_value():
    with pytest.raises(RequestError) as e:
        decode("float32", f32(float("nan")), 1.0)
    assert e.value.code == ILLEGAL_DATA_VALUE


@pytest.mark.parametrize("area,address,count,code", [
    ("ir", 0, 4, None), ("ir", 0, 5, ILLEGAL_DATA_ADDRESS), ("ir", 10, 4, None), ("ir", 9, 1, ILLEGAL_DATA_ADDRESS),
    ("di", 0, 2, None), ("di", 0, 3, ILLEGAL_DATA_ADDRESS), ("di", 5, 1, None), ("di", 6, 1, ILLEGAL_DATA_ADDRESS),
    ("co", 0, 2, None), ("co", 2, 1, ILLEGAL_DATA_ADDRESS), ("hr", 0, 5, None), ("hr", 5, 1, ILLEGAL_DATA_ADDRESS),
    ("hr", 65535, 1, ILLEGAL_DATA_ADDRESS), ("ir", 3, 0, ILLEGAL_DATA_VALUE),
])
def test_check(area, address, count, code):
    amap = AddressMap(FORWARDS)
    if code is None:
        amap.check(area, address, count)
    else:
        with pytest.raises(RequestError) as e:
            amap.check(area, address, count)
        assert e.value.code == code


def test_image_and_invalid_quality_keeps_last_valid_value():
    amap = AddressMap(FORWARDS)
    assert amap.read("ir", 0, 4) == [0, 0, 0, 0]
    assert amap.read("ir", 0, 1, quality=True) == [Quality.IV]  # nothing received yet
    amap.set_value(BY_ID[1], Value(2.5, 0, 1))
    amap.set_value(BY_ID[2], Value(-1.5, Quality.NT, 1))  # stale but valid: shown
    assert amap.read("ir", 0, 3) == [*f32(2.5), 65521]
    assert amap.read("ir", 0, 3, quality=True) == [0, 0, Quality.NT]
    amap.set_value(BY_ID[1], Value(0, Quality.IV, 2))  # invalid: registers keep 2.5, quality says IV
    assert amap.read("ir", 0, 2) == f32(2.5)
    assert amap.read("ir", 0, 2, quality=True) == [Quality.IV, Quality.IV]
    amap.set_value(BY_ID[6], Value(1, 0, 1))
    amap.set_value(BY_ID[7], Value(0, Quality.IV, 1))
    assert amap.read("di", 0, 2) == [1, 0] and amap.read("di", 0, 2, quality=True) == [0, 1]
    assert not amap.set_value(dataclasses.replace(BY_ID[1], id=999), Value(1, 0, 1))
    assert not amap.set_value(dataclasses.replace(BY_ID[1], addr=40), Value(1, 0, 1))  # stale config
    amap.clear()
    assert amap.read("ir", 0, 2) == [0, 0]


def test_writes_decode_whole_values_in_order():
    amap = AddressMap(FORWARDS)
    plan = amap.writes("hr", 0, [7, *f32(1.25), 0, 6])
    assert [(f.id, v, w) for f, v, w in plan] == [(11, 7.0, [7]), (12, 1.25, f32(1.25)), (13, 12.0, [0, 6])]
    assert [(f.id, v) for f, v, _ in amap.writes("co", 0, [True, False])] == [(9, 1.0), (10, 0.0)]
    assert plan[0][0] is BY_ID[11]


@pytest.mark.parametrize("area,address,values", [
    ("hr", 2, [1]),  # second half of the float32 at 1
    ("hr", 1, [1]),  # first half only
    ("hr", 0, [1, 2]),  # runs into the middle of the float32
    ("hr", 5, [1]),  # nothing there
    ("co", 1, [True, True]),  # coil 2 is not a point
])
def test_writes_refused(area, address, values):
    with pytest.raises(RequestError) as e:
        AddressMap(FORWARDS).writes(area, address, values)
    assert e.value.code == ILLEGAL_DATA_ADDRESS


def test_store_keeps_the_commanded_value():
    amap = AddressMap(FORWARDS)
    amap.store("hr", 0, [42])
    assert amap.read("hr", 0, 1) == [42]
