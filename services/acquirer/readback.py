"""A Modbus control write whose answer never came: when the device is read back to judge it, and how.

Pure, table-tested (tests/acquirer/test_readback.py); the reads are the runner's (rtu.py `write_point`).

A write that went out and got no answer within `TIMEOUTMS`, or whose connection dropped after it was sent,
may have been executed by the device: only its answer was lost. Reported `failed`, the SCADA master got a
negative ACT_CON for a set-point the device held, and an operator who sent it again wrote it twice
(docs/ha.md). A set-point is a state: the device holding the commanded raw value(s) is what was asked,
whichever way the answer went, so its registers are read back (never written again: a control runs at
most once) before the control's deadline and equal registers make it `done`.

Only set-points (KIND `AO`: holding registers, numeric). Not a `DO` (coil, FC 5, or a bit of a holding
register): the model does not say whether the device latches the output or resets it itself (a pulse:
`T011_POINT` has no such column, and se104s does not interpret IEC 104's qualifier of command), and a
command's effect is not its output's state (a pulse already reset reads 0; an output already at 1 before
a write that never arrived reads 1). Not a write the device refused (an exception answer) or that was
never sent: those are failed as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

SETPOINT_KIND = "AO"
MARGIN_S = 0.02
"""The read-back ends this long before the control's deadline: its own outcome, not the executor's cancel
at the deadline, is then the control's."""


def readback_due(kind: str, area: str, unanswered: bool, left_s: float) -> bool:
    """Whether a failed control write is judged by reading the device back: a set-point (`kind` AO, in
    `hr`) whose write was sent and not answered (`unanswered`: timeout, or the connection lost after the
    send), with time left before the control's deadline (`left_s`, less MARGIN_S)."""
    return kind == SETPOINT_KIND and area == "hr" and unanswered and left_s > MARGIN_S


def confirmed(want: Sequence[int], got: bytes | None) -> bool:
    """Whether the registers read back (`got`: the read's data bytes, big-endian registers; None when
    unreadable) are the raw values the write commanded (`want`)."""
    return got is not None and got == b"".join((w & 0xFFFF).to_bytes(2, "big") for w in want)
