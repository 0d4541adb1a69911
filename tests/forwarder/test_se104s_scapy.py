"""A second dissector of se104s's traffic, independent of Wireshark and of our codec: scapy's contrib IEC
104 layers (`scapy.contrib.scada.iec104`). The exchange of an independent master (icspacket) with se104s is
recorded by a TCP relay, cut into APDUs by their length octet and dissected by scapy: every APDU must
dissect whole (no undecoded rest), and type, cause, P/N and T bits, addresses, object count and each
object's IOA and CP56Time2a must be what our codec says was sent."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from typing import Any

from fepha.iec104 import codec as c
from fepha.points import Quality
from tests.prereq import require

from .se104s_fixtures import CA, Sink, in_thread, now_ms, se104_server, upd
from .test_se104s_icspacket import COMMANDS, MISSING, Peer, command, on_loop
from .test_se104s_server import full_image

try:
    from scapy.contrib.scada.iec104 import iec104_decode
    from scapy.packet import Padding, Raw
    SCAPY: str | None = None
except ImportError as exc:
    SCAPY = f"scapy is not installed: {exc}"


@contextlib.asynccontextmanager
async def relay(port: int) -> AsyncIterator[tuple[int, dict[str, bytearray]]]:
    """A TCP relay to `port` on a free port; what passed each way ("up": master to station, "down") is in
    the dict, whole streams."""
    streams = {"up": bytearray(), "down": bytearray()}
    tasks: list[asyncio.Task[None]] = []

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, into: bytearray) -> None:
        try:
            while data := await r.read(65536):
                into += data
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", port)
        tasks.extend([asyncio.create_task(pipe(r, sw, streams["up"])),
                      asyncio.create_task(pipe(sr, w, streams["down"]))])

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], streams
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def apdus(stream: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(stream):
        assert stream[i] == c.START, f"no start octet at {i}"
        n = stream[i + 1]
        out.append(bytes(stream[i:i + 2 + n]))
        i += 2 + n
    return out


def disagreements(apdu: bytes) -> list[str]:
    """What scapy makes of one APDU that differs from what our codec built."""
    p = iec104_decode(apdu)
    if p.haslayer(Raw) or p.haslayer(Padding):
        return [f"{apdu.hex()}: undecoded rest in scapy's {p.summary()}"]
    f = c.parse_apdu(apdu[2:])
    if f.kind != "I":
        return []
    a = c.parse_asdu(f.asdu)
    got: dict[str, Any] = {"ns": p.tx_seq_num, "nr": p.rx_seq_num, "type": p.type_id, "cause": p.cot,
                           "negative": p.ack == 1, "test": p.test == 1, "oa": p.origin_address,
                           "ca": p.common_asdu_address, "n": p.num_io}
    want = {"ns": f.ns, "nr": f.nr, "type": a.type_id, "cause": a.cause, "negative": a.negative,
            "test": bool(a.cot & c.TEST), "oa": a.oa, "ca": a.ca, "n": len(a.objects)}
    bad = [f"{apdu.hex()}: {k} {got[k]} by scapy, {want[k]} sent" for k in want if got[k] != want[k]]
    ioas = [o.information_object_address for o in p.io] if not a.sq else \
        [p.information_object_address + i for i in range(len(p.io))]
    if ioas != [ioa for ioa, _ in a.objects]:
        bad.append(f"{apdu.hex()}: IOAs {ioas} by scapy, {[ioa for ioa, _ in a.objects]} sent")
    if a.type_id in c.TIME_TAGGED or a.type_id in (c.C_SC_TA_1, c.C_DC_TA_1, c.C_SE_TA_1, c.C_SE_TB_1,
                                                   c.C_SE_TC_1, c.C_CS_NA_1):
        for o, (_, elem) in zip(p.io, a.objects, strict=True):
            stamp = datetime.datetime(2000 + o.year, o.month, o.day_of_month, o.hours, o.minutes,
                                      tzinfo=datetime.UTC) + datetime.timedelta(milliseconds=o.sec_milli)
            if int(stamp.timestamp() * 1000) != c.cp56_ms(elem[-7:]) or o.weekday != stamp.isoweekday():
                bad.append(f"{apdu.hex()}: CP56Time2a {stamp} weekday {o.weekday} by scapy")
    return bad


async def test_scapy_dissects_a_whole_exchange_as_our_codec_built_it() -> None:
    require(MISSING or SCAPY, "scapy's IEC 104 dissector with the icspacket master")
    sink = Sink()
    async with se104_server(sink, command_max_age_ms=5000) as srv, relay(srv.port) as (port, streams):
        t = now_ms() - 3000
        srv.load_image(full_image(t))
        events = on_loop(srv.apply, [upd(1001 + i % 4, float(i), int(Quality.NT) if i % 7 == 0 else 0)
                                     for i in range(100)] + [upd(1, 0), upd(4, 1), upd(3001, 5)])

        def run() -> None:
            p = Peer(port)
            try:
                list(p.m.general_interrogation(CA, timeout=3))
                list(p.m.counter_interrogation(CA, timeout=3))
                p.m.clock_sync(CA, datetime.datetime.now(datetime.UTC), timeout=3)
                p.m.read(CA, 1002, timeout=3)
                events()
                p.answer(c.M_SP_TB_1, c.COT_SPONT)
                for type_id, ioa, value, _ in COMMANDS:
                    p.send(type_id, command(type_id, value, True), ioa)
                    p.answer(type_id, c.COT_ACTCON, ioa)
                    p.send(type_id, command(type_id, value, False), ioa)
                    p.answer(type_id, c.COT_ACTTERM, ioa)
                p.send(c.C_SC_NA_1, command(c.C_SC_NA_1, 1, False), 5999)  # unknown IOA: 47
                p.answer(c.C_SC_NA_1, c.COT_UNKNOWN_IOA)
                p.send(c.C_SC_NA_1, command(c.C_SC_NA_1, 1, False), 5001, test=True)  # T bit mirrored
                p.until(lambda a: a.header.cot.test)
            finally:
                p.close()

        await in_thread(run)
        await asyncio.sleep(0.2)
    frames = apdus(bytes(streams["up"])) + apdus(bytes(streams["down"]))
    bad = [d for f in frames for d in disagreements(f)]
    assert len(frames) > 100 and not bad, "\n".join(bad[:10])
    kinds = {iec104_decode(f).type_id for f in frames if not f[2] & 1}
    assert {c.M_ME_NC_1, c.M_ME_TF_1, c.M_ME_NB_1, c.M_ME_NA_1, c.M_SP_TB_1, c.M_SP_NA_1, c.M_DP_NA_1,
            c.M_DP_TB_1, c.M_IT_TB_1, c.M_IT_NA_1, c.M_EI_NA_1, c.C_IC_NA_1, c.C_CI_NA_1, c.C_CS_NA_1,
            c.C_RD_NA_1} | {t for t, *_ in COMMANDS} <= kinds
