"""Table tests of the value record (fepha.points): one record format, whether encoded one at a time
(`encode`) or a poll's changes at once (`encode_pairs`, the acquirer's hot path)."""

from __future__ import annotations

import math

import pytest

from fepha import points as pt

TS = 1_764_500_000_123


@pytest.mark.parametrize(("value", "quality", "record"), [
    (0, 0, f"0|0|{TS}"),
    (65535, 0, f"65535|0|{TS}"),
    (-1234, 0x80, f"-1234|128|{TS}"),
    (7.0, 0, f"7|0|{TS}"),                      # integral float: written as an integer (DI/ACC exact)
    (-0.0, 0, f"0|0|{TS}"),
    (2.5, 0x40, f"2.5|64|{TS}"),
    (float(2**53), 0, f"{float(2**53)}|0|{TS}"),  # beyond exact integers: kept a float
    (math.inf, 0, f"inf|0|{TS}"),
    (True, 0, f"True|0|{TS}"),                  # not a float: as it is
])
def test_records(value: float, quality: int, record: str) -> None:
    assert pt.encode(value, quality, TS) == record
    assert pt.encode_pairs({42: (value, quality)}, TS) == ["42", record]
    if not math.isinf(value) and not isinstance(value, bool):
        back = pt.decode(record)
        assert (back.value, back.quality, back.ts_ms) == (value, quality, TS)


def test_encode_pairs_is_encode_per_point_in_order() -> None:
    samples = {3: (1, 0), 1: (2.0, 0x80), 2: (0.1, 0), 9: (4, 0x80), 5: (-3.0, 0x40)}
    want = [s for pid, (v, q) in samples.items() for s in (str(pid), pt.encode(v, q, TS))]
    assert pt.encode_pairs(samples, TS) == want
    assert pt.encode_pairs({}, TS) == []
