"""The forwarder when its Redis's data is wiped under it (FLUSHALL, or a restart without persistence) and
a configuration is loaded again: the generation counts from 1 again, and the new configuration must still
be applied (cfgstore: a configuration is identified by generation and content)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fep_loader.store import replace_config

from .se104s_fixtures import in_thread
from .test_runner import forwarder, node_cfg, se104s_rows, setup, wait_listening  # noqa: F401 (fixture)
from tests.redisproc import free_port


async def test_configuration_loaded_again_after_a_wipe_is_applied(setup: Any, feproot: Path) -> None:
    proc, r, port = setup
    port2 = free_port()
    async with forwarder(node_cfg(proc)):
        await wait_listening(port)
        await r.flushall()  # connections stay: only the pub/sub announcement says a configuration came
        rows = se104s_rows(feproot, port)
        rows["T004_RTU"].append({"RTUID": 13, "NAME": "second 104", "RTUTYPE": 2, "PROTOCOL": "se104s",
                                 "POLLMS": None, "TIMEOUTMS": None, "LISTENPORT": port2, "ADDRESS": 2,
                                 "ALLOW": None})
        assert (await in_thread(replace_config, proc.client(), rows)).gen == 1
        await wait_listening(port2)
