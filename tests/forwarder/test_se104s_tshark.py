"""Wireshark's IEC 60870-5-104 dissector decodes captured se104s traffic without malformed-packet warnings."""

import asyncio
import shutil
import signal

import c104
import pytest

from fepha.points import Quality

from .se104s_fixtures import c104_master, in_thread, se104_server, until, upd

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark (Debian package) not installed")


async def test_tshark_decodes_every_frame_we_send() -> None:
    async with se104_server() as srv:
        port = srv.port
        srv.load_image([upd(1001, 1.5), upd(1002, 2.5), upd(1003, 30), upd(1004, 40), upd(1, 1), upd(2, 0),
                        upd(3, 1), upd(4, 0, int(Quality.NT)), upd(3001, 99), upd(3002, 5)])
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
            async with c104_master(port) as m:
                assert await in_thread(m.conn.counter_interrogation, 7)
                srv.apply([upd(1001 + (i % 4), float(i)) for i in range(200)] + [upd(1, 0), upd(3, 0)])
                await until(lambda: len(m.values("SPONTANEOUS")) >= 202, what="spontaneous data")
                assert await m.command(5001, c104.SingleCmd(on=True))
                assert await m.command(6003, c104.ShortCmd(target=99.0)) is False  # negative ACT_CON
                assert await m.command(6004, c104.NormalizedCmd(target=c104.NormalizedFloat(0.5)), select=True)
            await asyncio.sleep(0.5)
        finally:
            cap.send_signal(signal.SIGINT)
            await asyncio.wait_for(cap.wait(), 20)
            await asyncio.wait_for(reader, 20)
    text = b"".join(chunks).decode(errors="replace")
    bad = iec104_findings(text)
    assert not bad, "\n\n".join(bad[:3])
    for needle in ("M_ME_NC_1", "M_ME_TF_1", "M_ME_NB_1", "M_ME_NA_1", "M_SP_TB_1", "M_SP_NA_1", "M_DP_NA_1",
                   "M_IT_TB_1", "M_IT_NA_1", "M_EI_NA_1", "C_IC_NA_1", "C_CI_NA_1", "C_CS_NA_1", "C_SC_NA_1",
                   "C_SE_NC_1", "C_SE_TA_1", "ActCon_NEGA", "ActTerm", "Spont", "STARTDT con"):
        assert needle in text, f"{needle} not decoded"


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
