"""A SCADA master that moves from one node to the other, run on the SCADA host of the HA lab (the SCADA
switchover scenario, tests/ha/switchover.py; the rolling upgrade, tests/containers/test_two_nodes.py).

    python -m tests.ha.scada_switch --db SEMODEL.db --first A=198.18.0.1 --second B=198.18.0.2 \\
        --switch FILE --stop FILE [--follow] [--control-ioa IOA --control-every S --control-timeout S]

One c104 (lib60870) client to the first node (general interrogation at connect, then spontaneous data);
when FILE --switch exists it drops that connection and connects to the second node the same way (as a
SCADA master's redundancy logic does when its node is lost); it stops when --stop exists. With --follow
there is no switch file: the master moves to the other node whenever its connection has been down for
--follow-s (or never opened within 10 s), back and forth, as a redundancy group does. With --control-ioa
it also sends a set-point (C_SE_NB_1, values 1001, 1002, ...) every --control-every seconds on its open
connection, one at a time, and prints each as {"src": "control", "node", "value", "sent", "answered", "ok",
"transmit", "connected"} (ok: a positive ACT_CON within --control-timeout; answered: the time that answer
was seen on the wire, or the wait ended; both read from the frames on the wire as tests/ha/scada_control.py
does, transmit: what c104's transmit returned; connected: the connection was still open when the answer
came, or the wait ended: False is a command whose connection was lost meanwhile). Every received object is
one JSON line as fep_tools.scada_probe prints it (src iec104, node, ioa, value, cot, t); an end of initialisation is a line
with src "iec104-init".
"""

import argparse
import itertools
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import c104

from fep_tools.scada_probe import emit, start_iec104, unmute_if_stuck
from fepha.semodel import db
from fepha.semodel.model import Model
from tests.c104wire import command, record_wire

NEVER_OPENED_S = 10.0


def _initialised(node: str) -> Any:
    def on_init(client: c104.Client, station: c104.Station, cause: c104.Coi) -> None:
        emit(src="iec104-init", node=node)
    return on_init


class Follow:
    """--follow: the connection counts as lost once it has been down for `down_s` after being open, or
    was opened again meanwhile (c104 reconnects by itself: while the master waited for a command's answer
    the node's server may have gone and come back), or when it never opened within NEVER_OPENED_S."""

    def __init__(self, down_s: float) -> None:
        self.down_s = down_s
        self.start = time.monotonic()
        self.opened: Any = None       # connected_at of the first opening
        self.down_since: float | None = None

    def lost(self, conn: c104.Connection) -> bool:
        now = time.monotonic()
        if conn.is_connected:
            if self.opened is None:
                self.opened = conn.connected_at
            self.down_since = None
            return conn.connected_at != self.opened
        if self.opened is None:
            return now - self.start >= NEVER_OPENED_S
        self.down_since = self.down_since or now
        return now - self.down_since >= self.down_s


def send_controls(node: str, conn: c104.Connection, point: c104.Point, values: Iterator[int], every: float,
                  timeout: float, leaving: threading.Event) -> None:
    """A set-point every `every` seconds while the connection is open, one at a time, until `leaving`; each
    answered within `timeout` (c104's command timeout too), read from the frames on the wire."""
    wire: list[str] = []
    record_wire(conn, wire)
    while not leaving.wait(0.02):
        if conn.state != c104.ConnectionState.OPEN:
            continue
        t0, value = time.monotonic(), next(values)
        point.info = c104.ScaledCmd(target=c104.Int16(value))
        sent = time.time()
        out = command(point, wire, timeout, lambda: conn.is_connected and not leaving.is_set())
        emit(src="control", node=node, value=value, sent=sent, answered=out.answered, ok=out.ok,
             transmit=out.transmit, connected=out.then)
        leaving.wait(max(0.0, every - (time.monotonic() - t0)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--first", required=True, help="ID=IP")
    ap.add_argument("--second", required=True, help="ID=IP")
    ap.add_argument("--switch", type=Path)
    ap.add_argument("--stop", type=Path, required=True)
    ap.add_argument("--follow", action="store_true", help="move to the other node when the connection is lost")
    ap.add_argument("--follow-s", type=float, default=0.2)
    ap.add_argument("--control-ioa", type=int)
    ap.add_argument("--control-every", type=float, default=1.0)
    ap.add_argument("--control-timeout", type=float, default=15.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    if not args.follow and args.switch is None:
        ap.error("--switch FILE or --follow")
    rows, problems = db.read_rows(args.db)
    assert not problems, problems
    model = Model.from_rows(rows)
    end = time.monotonic() + args.timeout
    specs = (args.first, args.second)
    values = itertools.count(1001)
    for i in range(10**6 if args.follow else 2):
        if args.stop.exists() or time.monotonic() >= end:
            break
        node, _, ip = specs[i % 2].partition("=")
        client, conn, ca = start_iec104(node, ip, model, command_timeout_ms=int(args.control_timeout * 1000))
        client.on_station_initialized(_initialised(node))
        leaving = threading.Event()
        if args.control_ioa:   # its own thread: c104 blocks while it waits for an answer, the move must not
            point = conn.get_station(ca).add_point(io_address=args.control_ioa, type=c104.Type.C_SE_NB_1)
            threading.Thread(target=send_controls, args=(node, conn, point, values, args.control_every,
                                                         args.control_timeout, leaving), daemon=True).start()
        until = args.stop if args.follow or i else args.switch
        follow = Follow(args.follow_s) if args.follow else None
        muted: dict[int, float] = {}
        while not until.exists() and time.monotonic() < end and not (follow and follow.lost(conn)):
            time.sleep(0.02)
            if unmute_if_stuck(conn, muted, after_s=2.0):
                emit(src="probe", node=node, state="unmute-stuck-connection")
        emit(src="switch", node=node, state="leaving")
        leaving.set()      # the sender ends after the answer it may be waiting for: not waited for here
        client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
