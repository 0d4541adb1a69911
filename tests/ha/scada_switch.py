"""A SCADA master that moves from one node to the other, run on the SCADA host of the HA lab (the SCADA
switchover scenario, tests/ha/switchover.py).

    python -m tests.ha.scada_switch --db SEMODEL.db --first A=198.18.0.1 --second B=198.18.0.2 \\
        --switch FILE --stop FILE

One c104 (lib60870) client to the first node (general interrogation at connect, then spontaneous data);
when FILE --switch exists it drops that connection and connects to the second node the same way (as a
SCADA master's redundancy logic does when its node is lost); it stops when --stop exists. Every received
object is one JSON line as fep_tools.scada_probe prints it (src iec104, node, ioa, value, cot, t); an end
of initialisation is a line with src "iec104-init".
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import c104

from fep_tools.scada_probe import emit, start_iec104, unmute_stuck
from fepha.semodel import db
from fepha.semodel.model import Model


def _initialised(node: str) -> Any:
    def on_init(client: c104.Client, station: c104.Station, cause: c104.Coi) -> None:
        emit(src="iec104-init", node=node)
    return on_init


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--first", required=True, help="ID=IP")
    ap.add_argument("--second", required=True, help="ID=IP")
    ap.add_argument("--switch", type=Path, required=True)
    ap.add_argument("--stop", type=Path, required=True)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    rows, problems = db.read_rows(args.db)
    assert not problems, problems
    model = Model.from_rows(rows)
    end = time.monotonic() + args.timeout
    for spec, until in ((args.first, args.switch), (args.second, args.stop)):
        node, _, ip = spec.partition("=")
        client, conn, ca = start_iec104(node, ip, model)
        client.on_station_initialized(_initialised(node))
        muted: dict[str, float] = {}
        while not until.exists() and time.monotonic() < end:
            time.sleep(0.02)
            unmute_stuck(node, conn, ca, muted)
        emit(src="switch", node=node, state="leaving")
        client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
