"""A c104 (lib60870) master's IEC 104 exchange read from the frames on the wire, for the tests and the HA
lab's SCADA scripts (tests/ha/scada_control.py, tests/ha/scada_switch.py, which run it as `tests.c104wire`).

c104 2.2.1 now and then loses a confirmation it received: `point.transmit(cause=ACTIVATION)` returns False
after its command timeout although the server's positive ACT_CON came within milliseconds (its wait misses
an answer that came before it began to wait, and under load its "Potential Deadlock: mutex ... > 100ms"
drops one; docs/se104s.md). So the outcome of a command is read from the raw frames c104 reports
(`record_wire`), not from transmit's return value."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import c104

from fepha.iec104 import codec as c

AFTER_TRANSMIT_S = 1.0
"""How long `command` still looks for the answer once c104's transmit returned: its raw-frame callbacks
can come after it (one thread runs them from a queue)."""


class Raw(str):
    """A raw frame as c104 reported it: ">> " (sent) or "<< " (received), then its bytes in hex; `at`: the
    time (time.time()) it was recorded."""

    at: float


def raw(direction: str, data: bytes) -> Raw:
    entry = Raw(direction + data.hex())
    entry.at = time.time()
    return entry


def record_wire(conn: Any, trace: list[Any]) -> None:
    """Append every frame c104's connection `conn` receives and sends to `trace` (Raw entries)."""
    def on_raw_in(connection: c104.Connection, data: bytes) -> None:
        trace.append(raw("<< ", data))

    def on_raw_out(connection: c104.Connection, data: bytes) -> None:
        trace.append(raw(">> ", data))

    conn.on_receive_raw(on_raw_in)
    conn.on_send_raw(on_raw_out)


def _i_frames(trace: list[Any]) -> list[tuple[Any, str, c.Asdu]]:
    out: list[tuple[Any, str, c.Asdu]] = []
    for entry in list(trace):
        if not isinstance(entry, str) or entry[:3] not in (">> ", "<< "):
            continue
        data = bytes.fromhex(entry[3:])
        if len(data) < 6 or data[0] != c.START:
            continue
        frame = c.parse_apdu(data[2:])
        if frame.kind == "I":
            out.append((entry, entry[:2], c.parse_asdu(frame.asdu)))
    return out


def i_frames(trace: list[Any]) -> list[tuple[str, c.Asdu]]:
    """(">>" sent / "<<" received, ASDU) of every I frame among the raw frames of a trace."""
    return [(d, a) for _, d, a in _i_frames(trace)]


def _command_objects(trace: list[Any], addr: int) -> list[tuple[Any, tuple[str, int, bool, bool], bytes]]:
    out: list[tuple[Any, tuple[str, int, bool, bool], bytes]] = []
    for entry, d, a in _i_frames(trace):
        if a.type_id not in c.COMMAND_BASE:
            continue
        for ioa, elem in a.objects:
            if ioa == addr:
                out.append((entry, (d, a.cause, a.negative, c.decode_command(a.type_id, elem).select),
                            bytes([a.type_id]) + bytes(elem)))
    return out


def command_frames(trace: list[Any], addr: int) -> list[tuple[str, int, bool, bool]]:
    """(">>" sent / "<<" received, cause, negative, select) of every command object for IOA `addr` among
    the raw frames of a trace, decoded with our codec."""
    return [o for _, o, _ in _command_objects(trace, addr)]


def execute_answer_at(trace: list[Any], addr: int) -> tuple[bool, float | None] | None:
    """The ACT_CON to the last execute (an activation without the select bit) sent for IOA `addr` in a
    trace, with the time it was recorded (`record_wire`; None for a trace recorded otherwise): (True
    positive or False negative, time.time()), None when there is none (yet). An ACT_CON mirrors its
    command (type and object): one that does not mirror the last execute answers an earlier command (a
    late answer crossing the next command on the wire) and is not taken for its answer, as c104 takes it."""
    answer: tuple[bool, float | None] | None = None
    execute: bytes | None = None
    for entry, (d, cause, negative, select), obj in _command_objects(trace, addr):
        if d == ">>" and cause == c.COT_ACT and not select:
            answer, execute = None, obj
        elif d == "<<" and cause == c.COT_ACTCON and not select and obj == execute:
            answer = not negative, getattr(entry, "at", None)
    return answer


def execute_answer(trace: list[Any], addr: int) -> bool | None:
    """`execute_answer_at` without the time: True positive, False negative, None none (yet)."""
    got = execute_answer_at(trace, addr)
    return None if got is None else got[0]


@dataclass
class Outcome:
    """What came of one command: `answer` True for a positive ACT_CON to its execute, False for a negative
    one, None for none within the wait; `answered`: the time (time.time()) that answer was recorded, or the
    wait ended; `transmit`: what c104's transmit returned (False although `answer` is True: c104 lost it);
    `then`: what `command`'s `at_answer` returned at that moment."""

    answer: bool | None
    answered: float
    transmit: bool
    then: Any = None

    @property
    def ok(self) -> bool:
        return self.answer is True


def command(point: c104.Point, trace: list[Any], timeout: float,
            at_answer: Callable[[], Any] | None = None) -> Outcome:
    """Send `point`'s command once, by c104's transmit (cause ACTIVATION, `point.info` and
    `point.command_mode` as set) in a thread of its own, and read its answer from `trace`
    (`record_wire` on the point's connection): the wait ends at the ACT_CON to the execute, at `timeout`
    s, or AFTER_TRANSMIT_S after transmit returned (c104 gave up: the command was not sent, its connection
    closed, or c104's own command timeout, which should be `timeout`, passed). Never sent again. Blocking;
    returns once transmit did too (c104 waits for one answer per point at a time: when it lost the answer,
    at its command timeout); `at_answer` is called when the wait ends (Outcome.then)."""
    addr = point.io_address
    seen = len(trace)
    returned: list[bool] = []
    sender = threading.Thread(target=lambda: returned.append(bool(point.transmit(cause=c104.Cot.ACTIVATION))),
                              daemon=True, name=f"transmit-{addr}")
    sender.start()
    end = time.monotonic() + timeout
    gave_up: float | None = None
    while (got := execute_answer_at(trace[seen:], addr)) is None and time.monotonic() < end:
        if returned and gave_up is None:
            gave_up = time.monotonic()
        if gave_up is not None and time.monotonic() - gave_up >= AFTER_TRANSMIT_S:
            break
        time.sleep(0.01)
    answered = got[1] if got and got[1] is not None else time.time()
    then = at_answer() if at_answer else None
    sender.join()
    return Outcome(got[0] if got else None, answered, returned[0], then)
