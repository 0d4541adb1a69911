"""The acquirer restarted while a slow device holds a control (tests/faults/test_single_node.py's `node`: real
redis-server, fep-plcsim, fep-acquirer and fep-forwarder, a sefeps master): the claim its killed process left
can be run no more and its outcome cannot be known, so the node's next acquirer process answers it `unknown`
as it starts (`controls.answer_orphans`), not at the deadline; a live process's claim is left alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import redis

from fep_tools.plcsim import REQUEST
from fepha import controls
from fepha import keyspace as ks
from tests.api.test_with_services import COMMANDS, exited
from tests.faults.test_single_node import Node, sefeps, valid
from tests.stays import astays

AO, AO_ADDR = 207, 40  # RTU 2's set-point (hr 50) and its sefeps address
SOON_S = 2.0
"""How long after the new process starts the master may wait for its answer (before: the 10 s deadline)."""


@contextlib.asynccontextmanager
async def slow_control(node: Node) -> AsyncIterator[tuple[asyncio.Task[dict[str, Any]], dict[str, str]]]:
    """A set-point sent by a sefeps master to RTU 2, which takes writes of hr 50 and never answers (nor the
    reads back of it): the control stays `executing` until its deadline (10 s), never written to the device.
    -> (the master's command, the control's hash once claimed)."""
    await valid(node, AO)
    r = node.redis.client()
    c = await sefeps(node)
    cmd = None
    try:
        await c.wait_image(10)
        node.sim.lose(2, "hr", 50, REQUEST)
        node.sim.silence(2, "hr", 50)
        seq = int(r.get(ks.CTL_SEQ) or 0)
        cmd = asyncio.create_task(c.command(AO_ADDR, node.sim.value(AO) + 1, timeout=15))
        end = time.monotonic() + 3
        while (h := r.hgetall(ks.control(seq + 1))).get("state") != "executing":
            assert time.monotonic() < end, f"control {seq + 1} not claimed: {h}"
            await asyncio.sleep(0.02)
        yield cmd, h
    finally:
        if cmd is not None:
            cmd.cancel()
        await c.close()


def audited(r: redis.Redis, ctl_id: str) -> list[dict[str, str]]:
    return [f for _, f in r.xrange(ks.CTL_AUDIT) if f.get("id") == ctl_id]


async def test_a_claim_left_by_a_killed_acquirer_is_answered_unknown_as_its_next_process_starts(node: Node) -> None:
    r = node.redis.client()
    async with slow_control(node) as (cmd, claim):
        old = node.procs["acquirer"]
        old.kill()  # SIGKILL, by PID
        old.wait(5)
        node.start("acquirer")
        t0 = time.monotonic()
        done, _ = await asyncio.wait([cmd], timeout=SOON_S)
        took = time.monotonic() - t0
        assert done, f"the master had no answer {took:.2f} s after the new acquirer started (deadline 10 s)"
        res = cmd.result()
        assert not res["ok"] and res["state"] == "unknown" and res["reason"] == controls.RESTARTED, res
        entries = audited(r, claim["id"])
        assert [(e["state"], e["result"], e["instance"]) for e in entries] == [
            ("unknown", controls.RESTARTED, claim["instance"])], entries
        assert not r.sismember(ks.control_claims("A"), claim["id"])
        node.sim.unmute(2, "hr", 50)  # the device answers again: the new process runs nothing of it
        await astays(lambda: (r.hget(ks.control(claim["id"]), "claimed_ms") == claim["claimed_ms"]
                              and not [w for w in node.sim.writes if w[:3] == (2, "hr", 50)]
                              and len(audited(r, claim["id"])) == 1),
                     0.5, "not claimed again, not written to the device, one audit entry")


async def test_a_claim_of_a_live_acquirer_of_the_same_node_is_left_to_it(node: Node) -> None:
    """Two acquirers of one node by mistake: the second, as it starts, does not answer the first's claim (that
    process is alive: its named connection is there); the first answers it at the deadline as before."""
    r = node.redis.client()
    second: subprocess.Popen[bytes] | None = None
    async with slow_control(node) as (cmd, claim):
        try:
            with open(node.log_path("acquirer"), "ab") as log:
                second = subprocess.Popen([sys.executable, "-m", COMMANDS["acquirer"]], stdout=log, stderr=log,
                                          env={**os.environ, "FEPROOT": str(node.feproot), "FEP_LOG_DIR": "",
                                               **node.env})
            prefix = controls.presence_name("A", "")
            end = time.monotonic() + 5
            while len({n for n in (x.get("name", "") for x in r.client_list()) if n.startswith(prefix)}) < 2:
                assert time.monotonic() < end, "the second acquirer did not connect"
                await asyncio.sleep(0.05)
            await astays(lambda: (r.hget(ks.control(claim["id"]), "state") == "executing" and not cmd.done()
                                  and r.sismember(ks.control_claims("A"), claim["id"])),
                         SOON_S, "the live acquirer's claim left executing (what the first test allows the answer)")
        finally:
            if second is not None:
                second.kill()
                await exited(second, 5)
