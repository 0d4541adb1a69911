"""A SCADA master that reconnects to a restarted forwarder on the same node is resumed, not re-initialised
(docs/forwarder.md "Resuming a master"): real redis-server, fep-plcsim's PLCs, the real `fep-acquirer` and
`fep-forwarder` processes (tests/faults `node`), and a c104 (lib60870) IEC 104 master on se104s RTU 10.

The PLC's values step by one every 100 ms. The forwarder is stopped (SIGTERM, then its successor SIGKILL)
while they go on changing, and a new one starts on the same Redis: the master, reconnecting by itself, gets
every change of the stream after the position it had acknowledged, as a spontaneous event, once, in order,
with its time tag, and no end of initialisation."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time

import c104

from fep_forwarder.resume import parse_id
from fep_tools.scada_probe import unmute_if_stuck
from fepha import keyspace as ks
from fepha.points import decode
from tests.api.test_with_services import exited
from tests.faults.test_single_node import Node, valid
from tests.forwarder.se104s_fixtures import Master, Received, c104_master, in_thread, until

SE104S_RTU, CA = 10, 1
IOA, PID = 1002, 102  # M_ME_TF_1 (short float with time tag) of point 102 (RTU 1, a PLC's input register)


async def ticking(node: Node) -> None:
    while True:
        node.sim.tick()
        await asyncio.sleep(0.1)


def stream_changes(node: Node, after: str) -> list[tuple[str, float, int]]:
    """(entry id, value, ts_ms) of every change of point PID in fep:chg after entry `after`."""
    r = node.redis.client()
    return [(eid, v.value, v.ts_ms) for eid, fields in r.xrange(ks.CHANGES, f"({after}", "+")
            if (rec := fields.get(str(PID), fields.get(str(PID).encode()))) is not None
            for v in [decode(rec)]]


def cursor(node: Node) -> str:
    raw = node.redis.client().hget(ks.fwd_acked(SE104S_RTU), "127.0.0.1")
    assert raw, "no cursor recorded for the master"
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def spontaneous(m: Master, since: int) -> list[Received]:
    return [r for r in m.got[since:] if r.cot == "SPONTANEOUS"]


async def reopened(m: Master, since: int) -> None:
    """Wait until the master's connection is OPEN again (after trace entry `since`), sending STARTDT again
    when c104 lost its own (tools/scada_probe.unmute_if_stuck: c104 2.2.1's race, here about one reconnect
    in two)."""
    end, muted_since = time.monotonic() + 15, dict[int, float]()
    while c104.ConnectionState.OPEN not in m.trace[since:]:
        assert time.monotonic() < end, f"the master did not start data transfer again: {m.trace[since:][-10:]}"
        await in_thread(unmute_if_stuck, m.conn, muted_since)
        await asyncio.sleep(0.02)


def started_in_log(node: Node, n: int) -> bool:
    return node.log("forwarder").count("history filled back") >= n


async def test_master_resumed_by_the_restarted_forwarder(node: Node) -> None:
    port = next(r["LISTENPORT"] for r in node.rows["T004_RTU"] if r["RTUID"] == SE104S_RTU)
    await valid(node, PID)
    ticker = asyncio.create_task(ticking(node))
    try:
        async with c104_master(port, points={IOA: c104.Type.M_ME_TF_1}, ca=CA) as m:
            await until(lambda: len(m.values("SPONTANEOUS")) >= 10, 10, "live events")
            assert len(m.inits) == 1  # new to the system: end of initialisation once, and its interrogation
            for n, sig in enumerate((signal.SIGTERM, signal.SIGKILL), 1):
                fwd = node.procs.pop("forwarder")
                fwd.send_signal(sig)
                assert await exited(fwd, 3.0)
                await asyncio.sleep(0.6)  # six more changes while no forwarder runs
                acked = cursor(node)  # where the master stands: the new forwarder resumes it from here
                seen, inits, states = len(m.got), len(m.inits), len(m.trace)
                t0 = time.monotonic()
                node.start("forwarder")
                await until(lambda n=n: started_in_log(node, n), 10, "the new forwarder's history")
                resumable = time.monotonic() - t0
                await reopened(m, states)
                await asyncio.sleep(0.3)  # the master reconnects, and live changes follow
                want = stream_changes(node, acked)
                image = parse_id(re.findall(r"following the stream from (\S+)", node.log("forwarder"))[-1])
                missed = [w for w in want if parse_id(w[0]) <= image]  # before the new forwarder's image
                assert missed, "no change while the forwarder was down: the test shows nothing"
                k = len(want)
                try:
                    await until(lambda k=k, s=seen: len(spontaneous(m, s)) >= k, 10, "the events at the master")
                except AssertionError as exc:
                    raise AssertionError(f"{sig.name}: {len(spontaneous(m, seen))} of {k} events; "
                                         f"{[x for x in m.trace if not isinstance(x, str)][-6:]} "
                                         f"{[x.cot for x in m.got[seen:]][:30]}\n"
                                         f"{node.log('forwarder')[-3000:]}") from exc
                got = spontaneous(m, seen)[:len(want)]
                assert [round(r.value, 3) for r in got] == [round(v, 3) for _, v, _ in want], \
                    (acked, [r.value for r in got], want)
                assert [round(r.recorded_at.timestamp() * 1000) for r in got] == [ts for _, _, ts in want]
                assert len(m.inits) == inits, "end of initialisation after the restart: not resumed"
                print(f"{sig.name}: {len(missed)} changes of point {PID} made while no forwarder ran (or before "
                      f"its image) recovered as events; resumable {resumable:.2f} s after the start")
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
