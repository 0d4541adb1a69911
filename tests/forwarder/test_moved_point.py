"""A point moved to another acquisition RTU by a reload (cfgfuzz): its old RTU's values hash still holds the
value that RTU's device gave it, and the forwarder's full image took a point from every hash it read, the
higher RTU id's last: SCADA was served the old device's value, at every full image, until the point changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import c104
import pytest

from fep_loader.store import replace_config
from tests.forwarder.se104s_fixtures import c104_master, in_thread, until
from tests.forwarder.test_runner import (
    SAMPLE_POINTS,
    Writer,
    forwarder,
    node_cfg,
    se104s_rows,
    setup,
    spont,
    wait_listening,
)

__all__ = ["setup"]  # the fixture


async def test_a_moved_point_is_served_from_its_new_rtu(setup: Any, feproot: Path) -> None:
    proc, r, port = setup
    w = Writer(r)
    await w.write(2, p201=7.0)  # RTU 2's device, while point 201 was its point
    rows = se104s_rows(feproot, port)
    next(p for p in rows["T011_POINT"] if p["PNTID"] == 201)["RTUID"] = 1
    # RTU 2 keeps a forwarded point, so the image still reads its values hash
    rows["T005_ZFAI"].append({"ZFID": 9, "RTUID": 10, "SRCID": 202, "ADDR": 1009, "TYPE": "M_ME_NC_1", "COEF": None})
    await in_thread(replace_config, proc.client(), rows)
    await w.write(1, p201=3.0)  # its new RTU's device
    async with forwarder(node_cfg(proc)):
        await wait_listening(port)
        async with c104_master(port, points={**SAMPLE_POINTS, 1009: c104.Type.M_ME_NC_1}, ca=1) as m:
            gi = {x.ioa: x.value for x in m.values("INTERROGATED_BY_STATION")}
            assert float(gi[1004]) == pytest.approx(0.3, abs=1e-3)  # COEF 0.1 of 3.0; 0.7: the old device's
            # an acquirer not reloaded yet still writes the point under its old RTU: not forwarded either
            await w.write(2, p201=9.0)
            await w.write(1, p101=5.0)  # after it in the stream
            await until(lambda: spont(m, 1001), what="the change after it")
            assert spont(m, 1004) == []
