"""The acquirer started with its local Redis hung (SIGSTOP: sockets open, no answer), the master healthy.

Real redis-server master and local replica, the acquirer built as fep-acquirer builds it (redis-py's default
retry policy on the local Redis). The housekeeping's first tick reads the local Redis's role itself when the
role watch has not read it yet; that read had no time limit of its own: the tick, hence the next lease tick
and the heartbeat, waited for redis-py's socket timeouts and retries while "lease tick waiting on the master
Redis" was logged, the master being fine. Checked here: the tick waits for the role at most role_watch_s
(`RoleWatch.confirm`), the heartbeat goes out, the log names the local Redis and what waits for it; and once
the local Redis answers, the configuration is read and RTU 1 is polled and its lease taken.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fepha import keyspace as ks
from tests.acquirer.helpers import until
from tests.acquirer.test_stop_local_hung import running_a

HUNG_S = 2.5


async def test_a_hung_local_redis_at_start_holds_neither_the_ticks_nor_the_heartbeat(redis_pair, feproot,
                                                                                     caplog) -> None:
    caplog.set_level(logging.INFO, logger="acquirer")
    master, local = redis_pair
    async with running_a(feproot, master, local, hung_at_start=True, socket_timeout_s=1.0) as (acq, _, _):
        t0 = time.monotonic()  # it has just started
        await until(lambda: acq.master.exists(ks.heartbeat("acquirer", "A")), HUNG_S - 0.5)  # not after the hang
        beat = time.monotonic() - t0
        said = [r.getMessage() for r in caplog.records]
        assert any("local Redis" in m and "role not read within role_watch_s" in m for m in said), said
        assert not any("waiting on the master Redis" in m for m in said), said
        await asyncio.sleep(HUNG_S - (time.monotonic() - t0))
        local.resume()
        tr = time.monotonic()
        await until(lambda: acq.runners and acq.runners[1].lease.held, 3)
        print(f"heartbeat {beat:.2f} s after the start, RTU 1's lease taken {time.monotonic() - tr:.2f} s after "
              "the local Redis answered again")
