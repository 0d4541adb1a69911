"""A single node's Redis hung (SIGSTOP: sockets open, no answer) longer than the timeouts, then resumed:
every value served to SCADA gets NT within `replica_down_s` plus one socket timeout (docs/forwarder.md,
"Quality", rule 1: a local Redis that does not answer), and NT clears after SIGCONT."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aredis

from fep_loader.store import replace_config
from fepha import redisfns
from tests.redisproc import RedisProc, free_port

from .se104s_fixtures import until
from .test_runner import se104s_rows
from .test_runner_quality import TICK_S, WATCHED, quality_cfg, rule1_scene, spont_q


async def test_hung_local_redis_sets_nt_within_its_limit_then_clears(redis_master: RedisProc, feproot: Path) -> None:
    port = free_port()
    replace_config(redis_master.client(), se104s_rows(feproot, port))
    r = aredis.Redis(host=redis_master.host, port=redis_master.port, decode_responses=True)
    await redisfns.load_async(r)
    limit_s = 1.5
    cfg = quality_cfg(redis_master, quality_replica_down_s=limit_s)  # socket_timeout_s 2.0
    try:
        async with rule1_scene(r, cfg, port) as (_h, m):
            t0 = time.monotonic()
            redis_master.pause()
            try:
                await until(lambda: all(spont_q(m, i) and spont_q(m, i)[-1][1] for i in WATCHED), 30,
                            "NT on every watched value")
                took = time.monotonic() - t0
            finally:
                redis_master.resume()
            # redis-py's default retries (three, with backoff) made the first failed check last
            # ~9 s more before the forwarder even started counting
            assert took <= limit_s + cfg.socket_timeout_s + TICK_S + 1.0, took
            assert spont_q(m, 1001)[-1] == (pytest.approx(7.0), True)
            for i in WATCHED:
                await until(lambda i=i: not spont_q(m, i)[-1][1], 15, f"NT cleared on {i}")
    finally:
        await r.aclose()


def test_unreachable_counts_from_the_request_that_found_it() -> None:
    from fep_forwarder.freshness import ReplicaWatch

    w = ReplicaWatch()
    assert w.observe(None, 5000, 3000) == 2000  # sent at 3000, timed out at 5000: cut off since 3000
    assert w.observe(None, 7000, 6800) == 4000  # later requests do not move the start
    assert w.observe({"role": "master"}, 8000, 7900) == 0
    assert w.observe(None, 9000) == 0  # without asked_ms: from this observation, as before
