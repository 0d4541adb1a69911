"""Modbus TCP devices misbehaving in ways tests/acquirer/test_mbtcp.py does not cover: an answer cut off
mid-frame, garbage, an MBAP length of 65535, a length out of range, answers just under and
just over the timeout. Each is a clear LinkError (the channel logic reconnects) within the timeout, never
a hang or a traceback, and a good answer after a reconnect is read again."""

from __future__ import annotations

import time

import pytest

from fep_acquirer import mbtcp
from fep_acquirer.device import DeviceError, LinkError

from .test_mbtcp import HR_BLOCK, exchange, link_to, serve


@pytest.mark.parametrize(("answer", "why"), [
    (lambda tid, unit: mbtcp.frame(tid, unit, b"\x03\x02\x00\x01")[:5], "closed"),  # cut mid-header
    (lambda tid, unit: mbtcp.frame(tid, unit, b"\x03\x02\x00\x01")[:9], "closed"),  # cut mid-PDU
    (lambda tid, unit: bytes(range(250, 256)) * 4, ""),  # garbage
    (lambda tid, unit: mbtcp.MBAP.pack(tid, 0, 0xFFFF, unit), "MBAP length 65535"),  # refused, not awaited
    (lambda tid, unit: mbtcp.MBAP.pack(tid, 0, 0, unit), ""),  # a length below the unit id's byte
])
async def test_broken_answer_is_a_link_error_within_the_timeout(answer, why: str) -> None:
    sent: list[int] = []

    def handler(tid: int, unit: int, pdu: bytes):
        sent.append(tid)
        yield answer(tid, unit)
        if "closed" in why:
            raise ConnectionError  # the device closes after the partial frame
    t0 = time.monotonic()
    out, _ = await exchange(handler, timeout_s=0.3)
    assert time.monotonic() - t0 < 2.0
    assert all(isinstance(x, LinkError) for x in out), out
    assert why in str(out[0]), out


@pytest.mark.parametrize(("delay_s", "ok"), [(0.15, True), (0.45, False)])
async def test_slow_answer_just_under_or_over_the_timeout(delay_s: float, ok: bool) -> None:
    server, port = await serve(lambda tid, unit, pdu: [mbtcp.frame(tid, unit, b"\x03\x02\x00\x2a")],
                               delay_s=delay_s)
    link = link_to(port, timeout_s=0.3)
    try:
        await link.connect()
        try:
            got: bytes | Exception = (await link.read_all([HR_BLOCK]))[0]
        except (LinkError, DeviceError) as exc:
            got = exc
    finally:
        link.close()
        server.close()
        await server.wait_closed()
    assert (got == b"\x00\x2a") if ok else (isinstance(got, LinkError) and "timeout" in str(got)), got
