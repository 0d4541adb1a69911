"""Wireshark's IEC 60870-5-104 dissector decodes what the acquirer sends as a controlling station (and what
it answers to), against c104's server as the RTU: start of data transfer, clock synchronisation, general and
counter interrogation, S frames, test frames, a select-before-operate command and a direct set-point. No
malformed packet, no expert error or warning; every kind of frame present, each carrying the
cause of transmission and common address IEC 60870-5-101/104 ask for. (The se104s direction, where we are the
controlled station, is tests/forwarder/test_se104s_tshark.py.)"""

# no `from __future__ import annotations`: c104 checks the callbacks' annotations as objects

import shutil

import c104
import pytest

from fepha import controls
from tests.acquirer.helpers import Node, load, merge, node_cfg, until
from tests.acquirer.test_iec104 import CA, IEC_FAST, Rtu, holder, iec_rows, when
from tests.forwarder.test_se104s_tshark import captured, iec104_findings
from tests.redisproc import free_port

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark (Debian package) not installed")


async def test_tshark_decodes_every_frame_the_acquirer_sends(redis_master, feproot) -> None:
    port = free_port()
    load(redis_master, merge(iec_rows(5, port)))
    with Rtu(port) as rtu:
        rtu.sp.value, rtu.me.value, rtu.it.value = True, 10.5, 1234
        async with captured(port) as chunks:
            a = Node(node_cfg(feproot, redis_master, "A", **{**IEC_FAST, "iec104_clock_sync_s": 60.0}))
            try:
                await until(lambda: holder({"A": a}, 5) and a.acq.runners[5].link.started, 5)
                rtu.event(rtu.sp, c104.SingleInfo(on=False, recorded_at=when(1_790_000_000_000)))
                assert (await controls.execute(a.master, 5, 5005, 1, "test", 3000)).ok      # select, execute
                assert (await controls.execute(a.master, 5, 5006, 12.5, "test", 3000)).ok   # direct set-point
                assert rtu.commands == [(1000, True), (1100, 12.5)]
                await until(lambda: b"TESTFR" in b"".join(chunks), 5)    # t3 (0.5 s) without a frame
            finally:
                await a.stop()
    text = b"".join(chunks).decode(errors="replace")
    bad = iec104_findings(text)
    assert not bad, "\n\n".join(bad[:3])
    for needle in ("STARTDT act", "STARTDT con", "TESTFR act", "TESTFR con", "C_CS_NA_1", "C_IC_NA_1",
                   "C_CI_NA_1", "C_SC_NA_1", "C_SE_NC_1", "M_SP_TB_1", "M_ME_TF_1", "M_IT_NA_1", "ActCon",
                   "ActTerm"):
        assert needle in text, f"{needle} not decoded"
    assert "<- S (" in text, "no S frame from the acquirer decoded"   # '<-': towards the RTU's port
    # every command we send: cause Act (6) and the RTU's common address
    for typ in ("C_CS_NA_1", "C_IC_NA_1", "C_CI_NA_1", "C_SC_NA_1", "C_SE_NC_1"):
        asdus = [f for f in text.split("\nFrame ")[1:] if f"TypeId: {typ}" in f and "CauseTx: Act (6)" in f]
        assert asdus, f"no {typ} with cause Act"
        assert all(f"Addr: {CA}" in f for f in asdus), f"{typ} not addressed to CA {CA}"
