"""Seeded mutations of valid frames for the fuzz tests (tests/iec104/test_codec_fuzz.py,
tests/forwarder/test_hostile_masters.py): the same seed gives the same cases, so a failure replays."""

from __future__ import annotations

import random

EXTREMES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


def mutate(rng: random.Random, frame: bytes, keep: int = 0) -> bytes:
    """`frame` with one random damage after its first `keep` octets: 1 to 4 bit flips, a truncation, an
    octet set to an extreme value, random octets appended, or a slice repeated."""
    b = bytearray(frame)
    if len(b) <= keep:
        return bytes(b + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))))
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            bit = rng.randrange(keep * 8, len(b) * 8)
            b[bit // 8] ^= 1 << (bit % 8)
    elif kind == 1:
        del b[rng.randrange(keep, len(b)):]
    elif kind == 2:
        b[rng.randrange(keep, len(b))] = rng.choice(EXTREMES)
    elif kind == 3:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    else:
        i = rng.randrange(keep, len(b))
        b[i:i] = b[i:i + rng.randint(1, 12)]
    return bytes(b)
