"""A reference SCADA master for the demo and the HA suite (which runs it in its SCADA namespace): one c104
(lib60870) IEC 104 client and one pymodbus client per node, printing what they receive as JSON lines on
stdout (the HA scenarios read them). Needs the test extras (c104).

    fep-scada-probe --db $FEPROOT/db/SEMODEL.db --node A=198.18.0.1 --node B=198.18.0.2

IEC 104: every monitoring point of the se104s RTU, general interrogation at connect (Init.ALL), then
spontaneous data; each received object is one line {"src": "iec104", "node", "ioa", "value", "cot", "t"}
(plus "tt", its CP56 time tag in s, when the type carries one).
Modbus: the modbus_trains RTU's discrete inputs and input registers are read every 200 ms; a line
{"src": "modbus", "node", "kind", "addr", "value", "t"} is printed when a value differs from the last
one read (or the read fails: "value": null). c104 reconnects by itself when a node comes back.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import c104
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from fepha.iec104 import codec
from fepha.semodel import db
from fepha.semodel.model import Model

_out_lock = threading.Lock()


def emit(**rec: Any) -> None:
    rec["t"] = time.time()
    with _out_lock:
        try:
            sys.stdout.write(json.dumps(rec) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (`| head`): nothing left to do
            os._exit(0)


# c104 2.2.1's Connection::setOpen (src/remote/Connection.cpp) queues the STARTDT of a connection just
# opened as a task for the client's thread *before* it sets the state OPEN_MUTED; when that thread runs the
# task first, unmute() finds the connection not open and returns without a byte sent: the connection stays
# OPEN_MUTED for good (no STARTDT, so no data), more often on a busy machine. A reconnect can hit the same
# race. What a SCADA operator would do by hand: send STARTDT again.
STUCK_MUTED_S = 0.5


def unmute_if_stuck(conn: c104.Connection, muted_since: dict[int, float], after_s: float = STUCK_MUTED_S) -> bool:
    """Send STARTDT on `conn` when it has been OPEN_MUTED for `after_s` (c104's lost STARTDT, above);
    `muted_since` (keyed by id(conn)) remembers since when, across calls. True when STARTDT was sent. With
    Init.ALL c104 then sends its general interrogation and clock sync on the STARTDT_CON as usual. Only for
    connections whose init is not Init.MUTED."""
    key = id(conn)
    if conn.state != c104.ConnectionState.OPEN_MUTED:
        muted_since.pop(key, None)
        return False
    since = muted_since.setdefault(key, time.monotonic())
    if time.monotonic() - since < after_s:
        return False
    muted_since[key] = time.monotonic()
    return bool(conn.unmute())


def open_with_retries(client: c104.Client, opened: threading.Event, first_s: float = 4.0,
                      retry_s: float = 6.0, retries: int = 2) -> bool:
    """Start a c104 client and wait until its connection is OPEN (`opened`, set by its state callback),
    sending STARTDT again when c104 lost its own (`unmute_if_stuck`), and reconnecting up to `retries` times
    when even that does not open it. Blocking: from asyncio, run it in a thread."""
    muted_since: dict[int, float] = {}

    def wait(seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not opened.wait(min(0.1, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end:
                return False
            for conn in client.connections:
                unmute_if_stuck(conn, muted_since)
        return True

    client.start()
    if wait(first_s):
        return True
    for _ in range(retries):
        client.reconnect_all()
        if wait(retry_s):
            return True
    return False


def take_untagged_answers(conn: Any, station: Any, handler: Callable[[c104.Point, c104.IncomingMessage], Any]) -> None:
    """Give `handler(point, message)` the objects c104 2.2.1 drops because their type is not the one of
    the point at that IOA (MISMATCHED_TYPE_ID), when it is that type without time tag: IEC 60870-5-101's
    table of causes per type sends interrogated data and background scans without time tag (M_SP_NA_1 for
    a point whose events are M_SP_TB_1), and c104 keeps one type per IOA. `conn` and `station`: c104's
    Connection and Station (its stubs type both as Optional). `message` is positioned on the object (its
    io_address, info and cot), as in c104's on_receive. c104 stops at the first mismatched object of an
    ASDU: the objects after it are handed over too."""
    def on_unexpected(connection: c104.Connection, message: c104.IncomingMessage, cause: c104.Umc) -> None:
        if cause != c104.Umc.MISMATCHED_TYPE_ID:
            return
        got = codec.TYPE_IDS.get(message.type.name)
        dropped = False
        message.first()
        while message.next():
            p = station.get_point(message.io_address)
            want = codec.TYPE_IDS.get(p.type.name) if p is not None else None
            if p is None or want is None or codec.base_type(want) != got:
                continue
            dropped = dropped or want != got
            if dropped:
                handler(p, message)
    conn.on_unexpected_message(on_unexpected)


def forwarding_rtu(model: Model, protocol: str) -> Any:
    return next(r for r in model.rtus.values() if r.protocol == protocol)


def start_iec104(node: str, ip: str, model: Model,
                 command_timeout_ms: int = 3000) -> tuple[c104.Client, c104.Connection, int]:
    rtu = forwarding_rtu(model, "se104s")
    client = c104.Client(tick_rate_ms=50, command_timeout_ms=command_timeout_ms)
    conn = client.add_connection(ip=ip, port=rtu.listen_port, init=c104.Init.ALL)
    station = conn.add_station(rtu.address)

    def on_receive(point: c104.Point, previous_info: c104.Information,
                   message: c104.IncomingMessage) -> c104.ResponseState:
        v, tag = message.info.value, message.info.recorded_at  # tag: the CP56 time of a time-tagged type
        emit(src="iec104", node=node, ioa=point.io_address, cot=message.cot.name,
             value=v if isinstance(v, (int, float, bool)) else str(v), quality=str(message.info.quality),
             **({"tt": tag.timestamp()} if tag is not None else {}))
        return c104.ResponseState.SUCCESS

    for f in rtu.forwards:
        if f.type and f.type.startswith("M_"):
            station.add_point(io_address=f.addr, type=getattr(c104.Type, f.type)).on_receive(on_receive)
    take_untagged_answers(conn, station, lambda p, message: on_receive(p, p.info, message))

    def on_state(connection: c104.Connection, state: c104.ConnectionState) -> None:
        emit(src="iec104-state", node=node, state=state.name)
    conn.on_state_change(on_state)
    client.start()
    return client, conn, rtu.address


def poll_modbus(node: str, ip: str, model: Model, stop: threading.Event) -> None:
    rtu = forwarding_rtu(model, "modbus_trains")
    dis = sorted(f.addr for f in rtu.forwards if f.table == "T006_ZFDI")
    irs = sorted(f.addr for f in rtu.forwards if f.table in ("T005_ZFAI", "T007_ZFACC"))
    last: dict[tuple[str, int], Any] = {}
    client = ModbusTcpClient(ip, port=rtu.listen_port, timeout=1, retries=0)
    while not stop.is_set():
        got: dict[tuple[str, int], Any] = {}
        try:
            if not client.connected:
                client.connect()
            if dis:
                r = client.read_discrete_inputs(dis[0], count=dis[-1] - dis[0] + 1, device_id=rtu.address or 1)
                if not r.isError():
                    for a in dis:
                        got[("di", a)] = int(r.bits[a - dis[0]])
            for a in irs:   # one read per point: modbus_trains refuses a range over unmapped addresses
                r = client.read_input_registers(a, count=2, device_id=rtu.address or 1)
                if not r.isError():
                    got[("ir", a)] = list(r.registers)
        except (ModbusException, OSError):  # a node that is down: report, keep trying
            client.close()
        for key in set(last) | set(got):
            if last.get(key, "missing") != got.get(key):
                emit(src="modbus", node=node, kind=key[0], addr=key[1], value=got.get(key))
        last = got
        stop.wait(0.2)
    client.close()


def main(argv: list[str] | None = None) -> NoReturn:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--node", action="append", required=True, help="ID=IP")
    args = ap.parse_args(argv)
    rows, problems = db.read_rows(args.db)
    assert not problems, problems
    model = Model.from_rows(rows)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    clients, threads = [], []
    iec: list[tuple[str, c104.Connection]] = []
    for spec in args.node:
        node, _, ip = spec.partition("=")
        client, conn, _ca = start_iec104(node, ip, model)
        clients.append(client)
        iec.append((node, conn))
        t = threading.Thread(target=poll_modbus, args=(node, ip, model, stop), daemon=True)
        t.start()
        threads.append(t)
    emit(src="probe", state="started")
    muted_since: dict[int, float] = {}
    while not stop.is_set():
        stop.wait(0.5)
        for node, conn in iec:
            if unmute_if_stuck(conn, muted_since, after_s=2.0):
                emit(src="probe", node=node, state="unmute-stuck-connection")

    def wind_down() -> None:
        for c in clients:
            c.stop()
        for t in threads:
            t.join(1.0)
    # The clients are stopped from a thread given 2 s at most: c104's stop, like freeing the clients
    # (lib60870's CS104_Connection_destroy), can wait on the thread of a connect in progress, which waits
    # out the connect timeout (t0, 10 s) toward a node that does not answer (link cut, node down); a
    # SIGTERM once took over 15 s on a loaded CI. Out at once, the clients still referenced: nothing is
    # left to do, the records are flushed as written.
    closer = threading.Thread(target=wind_down, daemon=True)
    closer.start()
    closer.join(2.0)
    with _out_lock:
        sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
