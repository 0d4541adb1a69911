"""A SCADA master sending IEC 104 setpoints (C_SE_NB_1) to one node, run on the SCADA host of the HA lab.

    python -m tests.ha.scada_control --ip 198.18.0.2 --ioa 6001 --values 1001,1002 --go FILE

Connects with c104's client (lib60870), waits for data transfer to be started and for FILE to exist (the
scenario creates it when it kills node A), then sends one command per value, one after the other, at
most every --interval seconds. Each command is one JSON line on stdout: {"value", "sent", "answered",
"ok", "transmit"}; ok is True only for a positive ACT_CON (the device accepted the write), False for a
negative one or no answer within --timeout; answered is the time that answer was seen on the wire, or the
wait ended. Both are read from the frames on the wire (tests.c104wire.command), not from c104's transmit,
which now and then returns False although the positive ACT_CON came: transmit is what it returned.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import c104

from fep_tools.scada_probe import unmute_if_stuck
from tests.c104wire import command, record_wire

_muted_since: dict[int, float] = {}


def started(conn: c104.Connection) -> bool:
    """Data transfer is started (STARTDT confirmed), so a command may be sent: a controlling station sends
    no I frame before (IEC 60870-5-104 5.3; se104s closes a connection that does). c104 2.2.1 sometimes drops
    its own STARTDT (tools/scada_probe.unmute_if_stuck): after 1 s muted it is sent again."""
    if conn.state == c104.ConnectionState.OPEN:
        return True
    unmute_if_stuck(conn, _muted_since, after_s=1.0)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, default=2404)
    ap.add_argument("--ca", type=int, default=1)
    ap.add_argument("--ioa", type=int, required=True)
    ap.add_argument("--values", required=True)
    ap.add_argument("--go", type=Path, required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=15.0)
    args = ap.parse_args(argv)
    client = c104.Client(tick_rate_ms=50, command_timeout_ms=int(args.timeout * 1000))
    conn = client.add_connection(ip=args.ip, port=args.port, init=c104.Init.NONE)
    point = conn.add_station(args.ca).add_point(io_address=args.ioa, type=c104.Type.C_SE_NB_1)
    wire: list[str] = []
    record_wire(conn, wire)
    client.start()
    deadline = time.monotonic() + 60
    while not (started(conn) and args.go.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    print(json.dumps({"state": "go", "connected": conn.is_connected, "t": time.time()}), flush=True)
    for v in (int(x) for x in args.values.split(",")):
        t0 = time.monotonic()
        while not started(conn) and time.monotonic() - t0 < args.timeout:  # reconnected after a failover
            time.sleep(0.02)
        point.info = c104.ScaledCmd(target=c104.Int16(v))
        sent = time.time()
        out = command(point, wire, args.timeout)
        print(json.dumps({"value": v, "sent": sent, "answered": out.answered, "ok": out.ok,
                          "transmit": out.transmit}), flush=True)
        time.sleep(max(0.0, args.interval - (time.monotonic() - t0)))
    client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
