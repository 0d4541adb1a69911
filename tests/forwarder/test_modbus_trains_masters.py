"""modbus_trains against Modbus masters that share no code with pymodbus (our server's base) nor with each
other: pyModbusTCP (pure Python) and libmodbus (C; mbpoll, tested in test_modbus_trains_server.py, is built
on it too), plus many masters at once, and a whole recorded session through tshark's Modbus/TCP dissector
with every frame, requests and answers, checked for malformed packets and expert warnings."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pyModbusTCP.client import ModbusClient

from tests.forwarder.test_modbus_trains_server import captured, tshark
from tests.prereq import require

T = TypeVar("T")
F230_5 = [0x4366, 0x8000]  # float32 230.5, high word first
F0_5 = [0x3F00, 0x0000]
F1_5 = [0x3FC0, 0x0000]


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking master in a thread of its own (joined before returning) so the server's loop runs."""
    pool = ThreadPoolExecutor(1)
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)
    finally:
        pool.shutdown(wait=True)


def pymodbustcp_session(port: int) -> list[tuple[str, Any, int]]:
    """Every function code modbus_trains serves and the exceptions it answers, as pyModbusTCP sees them:
    (what, result, last exception code)."""
    c = ModbusClient("127.0.0.1", port=port, unit_id=1, timeout=2, auto_open=True)
    out: list[tuple[str, Any, int]] = []

    def do(what: str, result: Any) -> None:
        out.append((what, result, c.last_except))

    try:
        do("ir", c.read_input_registers(0, 4))
        do("ir32", c.read_input_registers(10, 4))
        do("di", c.read_discrete_inputs(0, 2))
        do("co", c.read_coils(0, 2))
        do("hr", c.read_holding_registers(0, 5))
        do("fc5", c.write_single_coil(0, True))
        do("fc6", c.write_single_register(0, 7))
        do("fc15", c.write_multiple_coils(0, [True, False]))
        do("fc16", c.write_multiple_registers(0, [12, *F1_5, 0, 10]))
        do("fc23", c.write_read_multiple_registers(0, [5], 0, 1))
        do("fc22", c.custom_request(bytes.fromhex("16 0000 00f0 0003")))
        do("hole", c.read_input_registers(4, 1))
        do("half32", c.write_single_register(1, 1))
        do("fc43", c.read_device_identification())
        do("fc8", c.custom_request(bytes.fromhex("08 0000 1234")))
        do("qty0", c.custom_request(bytes.fromhex("04 0000 0000")))
        do("qty126", c.custom_request(bytes.fromhex("04 0000 007e")))
        do("overflow", c.custom_request(bytes.fromhex("03 ffff 0002")))
        do("fc5bad", c.custom_request(bytes.fromhex("05 0000 1234")))
        c.unit_id = 255
        do("unit255", c.read_input_registers(3, 1))
        c.unit_id = 0
        do("unit0", c.read_input_registers(3, 1))
        do("unit0 write", c.write_single_coil(1, False))
        c.unit_id = 9
        do("unit9", c.read_input_registers(3, 1))
        c.unit_id = 2
        do("quality", c.read_input_registers(0, 2))
        do("quality write", c.write_single_coil(0, True))
    finally:
        c.close()
    return out


async def test_pymodbustcp_master(served):
    """pyModbusTCP: every served function code, the exception codes of the spec's state diagrams, unit ids
    255 / 0 (this device, answered: a write to unit 0 runs once and is answered, it is not a broadcast), an
    unknown unit (0x0A) and the quality unit."""
    srv, sink, _ = served
    got = {what: (result, exc) for what, result, exc in await in_thread(lambda: pymodbustcp_session(srv.port))}
    assert got["ir"] == ([*F230_5, (-123) & 0xFFFF, 7], 0)
    assert got["ir32"] == ([1, 4464, 0xFFFF, 0xFFFE], 0)  # uint32 70000, int32 -2
    assert got["di"] == ([True, False], 0)
    assert got["co"] == ([False, True], 0)
    assert got["hr"] == ([11, *F0_5, 0, 2], 0)  # int32 4 * COEF 0.5
    for what in ("fc5", "fc6", "fc15", "fc16"):
        assert got[what] == (True, 0), what
    assert got["fc23"] == ([5], 0)
    assert got["fc22"] == (bytes.fromhex("16 0000 00f0 0003"), 0)
    assert got["hole"] == (None, 2)
    assert got["half32"] == (False, 2)  # half of the float32 at hr 1-2
    assert got["fc43"][0] is None and got["fc43"][1] == 1
    assert got["fc8"] == (None, 1)
    assert got["qty0"] == (None, 3) and got["qty126"] == (None, 3)
    assert got["overflow"] == (None, 2)
    assert got["fc5bad"] == (None, 3)
    assert got["unit255"] == ([7], 0) and got["unit0"] == ([7], 0)
    assert got["unit0 write"] == (True, 0)
    assert got["unit9"] == (None, 0x0A)
    assert got["quality"] == ([0, 0], 0)
    assert got["quality write"] == (False, 1)
    assert [c[:2] for c in sink.calls] == [
        (9, 1.0), (11, 7.0), (9, 1.0), (10, 0.0), (11, 12.0), (12, 1.5), (13, 20.0), (11, 5.0),
        (11, 5 & 0xF0 | 3 & 0x0F), (10, 0.0)]


LIBMODBUS_C = r"""
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
/* One libmodbus master session against modbus_trains: one line per request, "name ok values" or
   "name err <errno - MODBUS_ENOBASE>" (the exception code). */
static void res(const char *name, int rc, const uint16_t *v, int n) {
    if (rc < 0) { printf("%s err %d\n", name, errno - MODBUS_ENOBASE); return; }
    printf("%s ok", name);
    for (int i = 0; i < n; i++) printf(" %u", v[i]);
    printf("\n");
}
int main(int argc, char **argv) {
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", atoi(argv[1]));
    uint16_t r[8]; uint8_t b[8]; uint16_t w[5] = {12, 0x3fc0, 0, 0, 10}; uint8_t bits[2] = {1, 0};
    uint16_t bv[2];
    modbus_set_response_timeout(ctx, 2, 0);
    if (modbus_connect(ctx) < 0) { perror("connect"); return 2; }
    modbus_set_slave(ctx, 1);
    res("ir", modbus_read_input_registers(ctx, 0, 4, r), r, 4);
    int n = modbus_read_input_bits(ctx, 0, 2, b); bv[0] = b[0]; bv[1] = b[1]; res("di", n, bv, 2);
    n = modbus_read_bits(ctx, 0, 2, b); bv[0] = b[0]; bv[1] = b[1]; res("co", n, bv, 2);
    res("hr", modbus_read_registers(ctx, 0, 5, r), r, 5);
    res("fc5", modbus_write_bit(ctx, 0, 1), NULL, 0);
    res("fc6", modbus_write_register(ctx, 0, 7), NULL, 0);
    res("fc15", modbus_write_bits(ctx, 0, 2, bits), NULL, 0);
    res("fc16", modbus_write_registers(ctx, 0, 5, w), NULL, 0);
    res("fc22", modbus_mask_write_register(ctx, 0, 0x00f0, 0x0003), NULL, 0);
    uint16_t one = 5; res("fc23", modbus_write_and_read_registers(ctx, 0, 1, &one, 0, 1, r), r, 1);
    res("hole", modbus_read_input_registers(ctx, 4, 1, r), r, 1);
    res("fc17", modbus_report_slave_id(ctx, 8, b), NULL, 0);
    modbus_set_slave(ctx, MODBUS_TCP_SLAVE);
    res("unit255", modbus_read_input_registers(ctx, 3, 1, r), r, 1);
    modbus_set_slave(ctx, 9);
    res("unit9", modbus_read_input_registers(ctx, 3, 1, r), r, 1);
    modbus_close(ctx);
    modbus_free(ctx);
    return 0;
}
"""


def _libmodbus_master(tmp: Path) -> tuple[Path | None, str | None]:
    """The compiled libmodbus master, or why there is none (libmodbus-dev and gcc are .ci/install's)."""
    if shutil.which("gcc") is None or not Path("/usr/include/modbus/modbus.h").exists():
        return None, "libmodbus-dev (modbus.h) or gcc missing"
    src, exe = tmp / "master.c", tmp / "master"
    src.write_text(LIBMODBUS_C)
    p = subprocess.run(["gcc", "-O1", "-o", str(exe), str(src), "-I/usr/include/modbus", "-lmodbus"],
                       capture_output=True, text=True, check=False)
    return (exe, None) if p.returncode == 0 else (None, f"gcc failed: {p.stderr[-500:]}")


async def test_libmodbus_master(served, tmp_path):
    """libmodbus (C), the library most C masters and mbpoll use: every served function code including FC 22
    (mask write) and FC 23, an exception for a hole (02), FC 17 (01), unit 255 and an unknown unit (0x0A)."""
    exe, why = _libmodbus_master(tmp_path)
    require(why, "the libmodbus master")
    assert exe is not None
    srv, sink, _ = served
    p = await asyncio.create_subprocess_exec(str(exe), str(srv.port), stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out_b, err_b = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 0, err_b
    got = dict(line.split(" ", 1) for line in out_b.decode().splitlines())
    assert got == {
        "ir": f"ok {0x4366} {0x8000} {(-123) & 0xFFFF} 7", "di": "ok 1 0", "co": "ok 0 1",
        "hr": f"ok 11 {0x3F00} 0 0 2", "fc5": "ok", "fc6": "ok", "fc15": "ok", "fc16": "ok", "fc22": "ok",
        "fc23": "ok 5", "hole": "err 2", "fc17": "err 1", "unit255": "ok 7", "unit9": "err 10",
    }
    assert [c[:2] for c in sink.calls] == [(9, 1.0), (11, 7.0), (9, 1.0), (10, 0.0), (11, 12.0), (12, 1.5),
                                          (13, 20.0), (11, 12 & 0xF0 | 3 & 0x0F), (11, 5.0)]


async def test_many_concurrent_masters(served):
    """40 masters at once, each with its own connection from its own address, interleaving reads and a write
    of its own value: every read answered with the image, every write run exactly once. (From one address,
    40 connections opened in the same moment would be bounded by `[forwarder] opening_max`: test_opening.py.)"""
    srv, sink, _ = served
    port = srv.port

    async def master(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.1.{i + 1}", 0))
        try:
            for k in range(10):
                tid = i * 100 + k
                if k == 5:
                    pdu = bytes.fromhex(f"06 0000 {1000 + i:04x}")
                    writer.write(tid.to_bytes(2, "big") + bytes.fromhex("0000 0006 01") + pdu)
                    assert await asyncio.wait_for(reader.readexactly(12), 10) == \
                        tid.to_bytes(2, "big") + bytes.fromhex("0000 0006 01") + pdu
                else:
                    writer.write(tid.to_bytes(2, "big") + bytes.fromhex("0000 0006 01 04 0003 0001"))
                    assert await asyncio.wait_for(reader.readexactly(11), 10) == \
                        tid.to_bytes(2, "big") + bytes.fromhex("0000 0005 01 04 02 0007")
                await asyncio.sleep(random.random() * 0.01)
        finally:
            writer.close()

    await asyncio.gather(*(master(i) for i in range(40)))
    assert sorted(c[1] for c in sink.calls) == [float(1000 + i) for i in range(40)]


async def test_tshark_every_frame_of_a_session_is_clean(served, tmp_path):
    """A whole session of pyModbusTCP and the libmodbus master (when built), requests and answers:
    tshark's Modbus/TCP dissector finds no malformed packet and no expert warning or error on any frame,
    and every request is matched by an answer with its transaction id."""
    srv, _, _ = served
    port = srv.port
    pcap = tmp_path / "session.pcap"
    exe, _ = _libmodbus_master(tmp_path)
    async with captured(port, pcap):
        await in_thread(lambda: pymodbustcp_session(port))
        if exe is not None:
            p = await asyncio.create_subprocess_exec(str(exe), str(port), stdout=asyncio.subprocess.DEVNULL)
            await asyncio.wait_for(p.wait(), 30)
    out = await tshark(pcap, port, "-Y", "mbtcp")
    assert "Malformed" not in out
    assert "Expert Info (Error" not in out and "Expert Info (Warning" not in out, out
    frames = out.count("Modbus/TCP\n")
    assert frames >= 2 * 24, frames  # pyModbusTCP's 24 answered requests, both ways
    p = await asyncio.create_subprocess_exec(
        "tshark", "-r", str(pcap), "-o", f"mbtcp.tcp.port:{port}", "-Y", "mbtcp", "-T", "fields",
        "-e", "tcp.srcport", "-e", "mbtcp.trans_id", "-e", "tcp.stream", stdout=asyncio.subprocess.PIPE)
    fields = (await p.communicate())[0].decode()
    sent: dict[tuple[str, str], int] = {}
    for line in fields.strip().splitlines():
        src, tids, stream = line.split("\t")
        for tid in tids.split(","):
            sent[(stream, tid)] = sent.get((stream, tid), 0) + (1 if src == str(port) else 2)
    # every request answered once (2 + 1)
    assert set(sent.values()) == {3}, {k: v for k, v in sent.items() if v != 3}
