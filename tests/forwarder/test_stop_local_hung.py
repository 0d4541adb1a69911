"""The forwarder's planned stop with its local Redis hung (SIGSTOP: sockets open, no answer) or killed, the
master healthy.

Real redis-server master and local replica, the forwarder (`app.Forwarder`, its clients built as
fep-forwarder builds them: redis-py's default retry policy on the local Redis) serving the sample's se104s
RTU. The local Redis hangs, or dies, just as the follow loop's configuration check (every CONFIG_CHECK_S)
reads it: a read sent to it is answered (with an error) only after four socket timeouts and up to 2 + 4 + 8
s of backoff, and the exit used to wait for it (14.5-15.2 s measured, at a socket timeout of 1 s and 2 s),
where the blocking read of the change stream was already given up. Checked here: the planned stop gives
that read up too and the forwarder ends within STOP_AT_MOST_S.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from fep_forwarder import app
from fep_loader.store import replace_config
from fepha import cfgstore, redisfns
from tests.redisproc import RedisProc, free_port
from tests.stopping import timed_stop

from .test_runner import node_cfg, se104s_rows, wait_listening

STOP_AT_MOST_S = 2.0
SOCKET_TIMEOUT_S = 1.0


@pytest.mark.parametrize("fault", ["hung", "killed"])
async def test_stop_does_not_wait_on_the_local_redis_read_by_the_configuration_check(
        redis_pair: tuple[RedisProc, RedisProc], feproot: Path, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    master, local = redis_pair
    port = free_port()
    replace_config(master.client(), se104s_rows(feproot, port))
    r = aredis.Redis(host=master.host, port=master.port, decode_responses=True)
    await redisfns.load_async(r)
    local.caught_up(master)
    cfg = dataclasses.replace(node_cfg(master), local_host=local.host, local_port=local.port,
                              socket_timeout_s=SOCKET_TIMEOUT_S)
    fail_next = asyncio.Event()
    checked = cfgstore.stamp_async

    async def stamp_async(client: Any) -> cfgstore.Stamp:
        if fail_next.is_set():  # the fault comes as the check reads: it waits on the Redis that fails
            fail_next.clear()
            local.pause() if fault == "hung" else local.stop()
        return await checked(client)

    monkeypatch.setattr(app.cfgstore, "stamp_async", stamp_async)
    signal = asyncio.Event()
    fwd = app.Forwarder(cfg, signal)
    task = asyncio.create_task(fwd.run())
    try:
        await wait_listening(port)
        fail_next.set()
        fwd.reload.set()  # the next turn of the follow loop checks the configuration
        while fail_next.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        await timed_stop(signal, task, STOP_AT_MOST_S, f"the local Redis {fault} during the configuration check")
    finally:
        local.resume()
        signal.set()
        await asyncio.gather(task, return_exceptions=True)
        await r.aclose()
