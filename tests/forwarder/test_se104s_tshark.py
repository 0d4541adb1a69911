"""Wireshark's IEC 60870-5-104 dissector decodes captured se104s traffic without malformed-packet warnings."""

import asyncio
import contextlib
import shutil
import signal
import time
from collections.abc import AsyncIterator

import c104
import pytest

from fepha.iec104 import codec as c
from fepha.points import Quality
from tests.iec104.rawmaster import raw_master

from .se104s_fixtures import CA, c104_master, deactivate_on_act_con, measured_server, se104_server, until, upd

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark (Debian package) not installed")


@contextlib.asynccontextmanager
async def captured(port: int) -> AsyncIterator[list[bytes]]:
    """tshark decoding (-V) the traffic of `port` as IEC 104 while the body runs; the decoded text is in
    the list's chunks afterwards."""
    # Live decode (-l -V) rather than -w: we can see when the capture really runs.
    cap = await asyncio.create_subprocess_exec(
        "tshark", "-l", "-i", "lo", "-f", f"tcp port {port}", "-d", f"tcp.port=={port},iec60870_104", "-V",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert cap.stdout is not None
    chunks: list[bytes] = []

    async def collect() -> None:
        assert cap.stdout is not None
        while data := await cap.stdout.read(65536):
            chunks.append(data)

    reader = asyncio.create_task(collect())
    try:
        for _ in range(200):  # probe connections until tshark shows one
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()
            await asyncio.sleep(0.1)
            if b"Transmission Control Protocol" in b"".join(chunks):
                break
        else:
            raise AssertionError("tshark never captured")
        yield chunks
        await asyncio.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        await asyncio.wait_for(cap.wait(), 20)
        await asyncio.wait_for(reader, 20)


async def test_tshark_decodes_every_frame_we_send() -> None:
    async with se104_server() as srv:
        port = srv.port
        srv.load_image([upd(1001, 1.5), upd(1002, 2.5), upd(1003, 30), upd(1004, 40), upd(1, 1), upd(2, 0),
                        upd(3, 1), upd(4, 0, int(Quality.NT)), upd(3001, 99), upd(3002, 5)])
        async with captured(port) as chunks, c104_master(port) as m:
            assert await m.interrogate(7, c104.Rqt.GENERAL, counter=True)
            srv.apply([upd(1001 + (i % 4), float(i)) for i in range(200)] + [upd(1, 0), upd(3, 0)])
            await until(lambda: len(m.values("SPONTANEOUS")) >= 202, what="spontaneous data")
            assert await m.command(5001, c104.SingleCmd(on=True))
            assert await m.command(6003, c104.ShortCmd(target=99.0)) is False  # negative ACT_CON
            assert await m.command(6004, c104.NormalizedCmd(target=c104.NormalizedFloat(0.5)), select=True)
    text = b"".join(chunks).decode(errors="replace")
    bad = iec104_findings(text)
    assert not bad, "\n\n".join(bad[:3])
    for needle in ("M_ME_NC_1", "M_ME_TF_1", "M_ME_NB_1", "M_ME_NA_1", "M_SP_TB_1", "M_SP_NA_1", "M_DP_NA_1",
                   "M_IT_TB_1", "M_IT_NA_1", "M_EI_NA_1", "C_IC_NA_1", "C_CI_NA_1", "C_CS_NA_1", "C_SC_NA_1",
                   "C_SE_NC_1", "C_SE_TA_1", "ActCon_NEGA", "ActTerm", "Spont", "STARTDT con"):
        assert needle in text, f"{needle} not decoded"


async def test_tshark_decodes_the_station_wide_commands_refusals_and_stopdt_of_a_raw_master() -> None:
    """Our own codec as a second master (tests/iec104/rawmaster.py): read, test command, reset process,
    broadcast and unknown addresses, a freeze request, the T bit, a cause the type does not take, then
    STOPDT with a frame in flight."""
    async with se104_server() as srv:
        port = srv.port
        srv.load_image([upd(1002, 2.5), upd(1, 1)])
        now = int(time.time() * 1000)
        asdus = [
            c.build_asdu(c.C_RD_NA_1, c.COT_REQ, CA, [(1002, b"")], 9),
            c.build_asdu(c.C_RD_NA_1, c.COT_REQ, CA, [(4242, b"")]),
            c.build_asdu(c.C_TS_TA_1, c.COT_ACT, CA, [(0, b"\xaa\x55" + c.cp56(now))]),
            c.build_asdu(c.C_RP_NA_1, c.COT_ACT, CA, [(0, b"\x01")]),
            c.interrogation(c.BROADCAST_CA),
            c.build_asdu(c.C_SC_NA_1, c.COT_ACT, c.BROADCAST_CA, [(5001, b"\x01")]),
            c.counter_interrogation(CA, 0x45),
            c.build_asdu(c.C_SC_NA_1, c.COT_ACT | c.TEST, CA, [(5001, b"\x01")]),
            c.build_asdu(c.C_TS_NA_1, c.COT_ACT, CA, [(0, b"\xaa\x55")]),
            c.build_asdu(c.C_CS_NA_1, c.COT_DEACT, CA, [(0, c.cp56(now))]),
        ]
        async with captured(port) as chunks, raw_master(port) as m:
            await m.start()
            for a in asdus:
                m.send(a)
            # every command's last answer, not a count of frames: under load the interrogation's values come
            # first and a count is reached before the later refusals were sent (STOPDT then leaves them out)
            await until(lambda: all_answered(m.asdus), what="answers")
            m.link.stop(time.monotonic())
            m.flush()
            await until(lambda: m.link.pending is None, what="STOPDT con")
        assert m.error is None
    text = b"".join(chunks).decode(errors="replace")
    bad = iec104_findings(text)
    assert not bad, "\n\n".join(bad[:3])
    for needle in ("C_RD_NA_1", "C_TS_TA_1", "C_RP_NA_1", "Req", "UkComAdrASDU", "UkIOA", "UkTypeId",
                   "UkCauseTx", "ActCon_NEGA", "STOPDT con"):
        assert needle in text, f"{needle} not decoded"


async def test_tshark_decodes_a_deactivated_interrogation() -> None:
    """A raw master deactivates its station interrogation of a 5,000-point RTU on the ACT_CON (positive
    DEACT_CON), then sends a DEACT with nothing in progress (negative DEACT_CON)."""
    async with measured_server(5_000) as srv, captured(srv.port) as chunks, raw_master(srv.port) as m:
        await m.start()
        m.mute_after = deactivate_on_act_con(m.link)
        m.send(c.interrogation(CA))
        deact_cons = lambda: [a.negative for a in m.asdus if a.cause == c.COT_DEACTCON]
        await until(lambda: deact_cons() == [False], what="the positive DEACT_CON")
        m.send(c.interrogation(CA, cause=c.COT_DEACT))
        await until(lambda: deact_cons() == [False, True], what="the negative DEACT_CON")
    assert m.error is None
    text = b"".join(chunks).decode(errors="replace")
    bad = iec104_findings(text)
    assert not bad, "\n\n".join(bad[:3])
    for needle in ("C_IC_NA_1 Act ", "ActCon ", "Deact ", "DeactCon ", "DeactCon_NEGA"):
        assert needle in text, f"{needle} not decoded"
    assert "ActTerm" not in text


NEG = c.NEGATIVE
LAST_ANSWERS = {
    (c.C_RD_NA_1, NEG | c.COT_UNKNOWN_IOA), (c.C_TS_TA_1, c.COT_ACTCON), (c.C_RP_NA_1, NEG | c.COT_ACTCON),
    (c.C_IC_NA_1, c.COT_ACTTERM), (c.C_SC_NA_1, NEG | c.COT_UNKNOWN_CA), (c.C_CI_NA_1, NEG | c.COT_ACTCON),
    (c.C_SC_NA_1, c.TEST | NEG | c.COT_ACTCON), (c.C_TS_NA_1, NEG | c.COT_UNKNOWN_TYPE),
    (c.C_CS_NA_1, NEG | c.COT_UNKNOWN_COT)}
"""(type, cause with its P/N and T bits) of the final answer to each command the raw master sends but the
read of a known point, which is answered with that point's type and the cause "request"."""


def all_answered(asdus: list[c.Asdu]) -> bool:
    return LAST_ANSWERS <= {(a.type_id, a.cot) for a in asdus} and any(a.cot == c.COT_REQ for a in asdus)


def iec104_findings(text: str) -> list[str]:
    """The IEC 104 part of every decoded frame (from the first IEC 60870-5 layer on, which is where
    Wireshark's dissector puts its own findings and its "[Malformed Packet]") that holds a malformed-packet
    mark or an error or warning. TCP's own notes are left out: on a loaded loopback the kernel now and then
    retransmits a segment and Wireshark then warns about the TCP stream (D-SACK), which says nothing of
    our frames."""
    out = []
    for frame in text.split("\nFrame ")[1:]:
        at = frame.find("\nIEC 60870-5")
        part = frame[at:] if at >= 0 else ""
        if "Malformed" in part or "Expert Info (Error" in part or "Expert Info (Warning" in part:
            out.append("Frame " + frame[:60] + " ..." + part[:1500])
    return out
