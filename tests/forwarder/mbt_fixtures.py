"""Shared test data for the modbus_trains tests: one forwarding RTU with every area and data type."""

from __future__ import annotations

import dataclasses

from fep_forwarder.base import ControlOutcome, Update
from fepha.points import Value
from fepha.semodel.model import FWD_KIND, FwdPoint, Rtu


def fp(zfid: int, table: str, addr: int, dtype: str, coef: float = 1.0, src: int = 0) -> FwdPoint:
    return FwdPoint(zfid, table, FWD_KIND[table], 50, src or 1000 + zfid, addr, dtype, coef)


FORWARDS = (
    fp(1, "T005_ZFAI", 0, "float32"),
    fp(2, "T005_ZFAI", 2, "int16", coef=10.0),
    fp(3, "T005_ZFAI", 3, "uint16"),
    fp(4, "T007_ZFACC", 10, "uint32"),
    fp(5, "T007_ZFACC", 12, "int32"),
    fp(6, "T006_ZFDI", 0, "bool"),
    fp(7, "T006_ZFDI", 1, "bool"),
    fp(8, "T006_ZFDI", 5, "bool"),
    fp(9, "T008_ZFDO", 0, "bool"),
    fp(10, "T008_ZFDO", 1, "bool"),
    fp(11, "T009_ZFAO", 0, "uint16"),
    fp(12, "T009_ZFAO", 1, "float32"),
    fp(13, "T009_ZFAO", 3, "int32", coef=0.5),
)
BY_ID = {f.id: f for f in FORWARDS}


def upd(fid: int, value: float, quality: int = 0) -> Update:
    return Update(BY_ID[fid], Value(value, quality, 1_700_000_000_000))


IMAGE = [upd(1, 230.5), upd(2, -12.3), upd(3, 7), upd(4, 70000), upd(5, -2), upd(6, 1), upd(7, 0), upd(8, 1),
         upd(9, 0), upd(10, 1), upd(11, 11), upd(12, 0.5), upd(13, 4)]
"""The image the `served` fixture (conftest.py) loads."""


def rtu(port: int = 0, unit: int = 1, allow: tuple[str, ...] = ()) -> Rtu:
    return Rtu(id=50, name="test trains", rtutype=2, protocol="modbus_trains", listen_port=port, address=unit,
               allow=allow, forwards=FORWARDS)


@dataclasses.dataclass
class ScriptedSink:
    """A plain ControlSink for server-behaviour tests: records controls, answers per source value."""

    calls: list[tuple[int, float, str]] = dataclasses.field(default_factory=list)
    fail_values: dict[float, str] = dataclasses.field(default_factory=dict)  # value -> state

    async def execute(self, fwd: FwdPoint, value: float, origin: str,
                      timeout_ms: int | None = None) -> ControlOutcome:
        self.calls.append((fwd.id, value, origin))
        state = self.fail_values.get(value)
        if state:
            return ControlOutcome(False, state, f"scripted {state}")
        return ControlOutcome(True, "done")
