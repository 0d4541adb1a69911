"""Resource exhaustion of the running forwarder (one node of tests/faults/test_single_node.py: real Redis,
fep-plcsim, the real `fep-acquirer` and `fep-forwarder` processes): its file descriptors used up by SCADA
connections, and fep-api's by its clients (RLIMIT_NOFILE lowered with prlimit while they run)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack

import httpx

from fep_tools.sefeps_client import SefepsClient
from tests.api.test_with_services import exited
from tests.faults.test_single_node import AI_RTU1, NT, Node, sefeps, topical, valid
from tests.forwarder.test_runner import wait_listening
from tests.redisproc import free_port


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def restart(node: Node, services: tuple[str, ...], **env: str) -> None:
    """Stop `services` (SIGTERM) and start them again with `env` added to the node's settings (the test's
    log file keeps their stderr)."""
    for service in services:
        node.procs[service].send_signal(signal.SIGTERM)
        assert await exited(node.procs[service], 5)
    node.env.update(env)
    for service in services:
        with open(node.log_path(service), "ab") as log:
            node.procs[service] = subprocess.Popen(
                [sys.executable, "-m", f"fep_{service}.cli"], stdout=log, stderr=log,
                env={**os.environ, "FEPROOT": str(node.feproot), "FEP_LOG_DIR": "", **node.env})


def ended(s: socket.socket) -> bool:
    """The server closed this connection (EOF or reset) without it sending anything."""
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


async def next_value(c: SefepsClient, addr: int, want: float, timeout: float) -> float:
    """Wait until `addr` changes to `want`; the time it took."""
    t0 = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - t0)
        assert left > 0, f"address {addr} did not reach {want} within {timeout} s"
        try:
            _, a, v, _, _ = await c.next_change(left)
        except TimeoutError:
            continue
        if a == addr and abs(float(v) - want) < 1e-3:
            return time.monotonic() - t0


async def test_forwarder_out_of_file_descriptors_serves_its_masters_and_recovers(node: Node) -> None:
    """The forwarder's descriptors used up by 200 connections to its sefeps port: the master already
    connected keeps getting changes, the connections beyond the limit are closed at once (they used to wait
    unanswered in the backlog), the process neither exits nor spins, and the log says it once (asyncio
    alone logged a traceback per backlog slot, 5 to 1,868 a second within 10 s); once the connections go, a
    new master is served again."""
    await valid(node, 101)
    c = await sefeps(node)
    fwd = node.procs["forwarder"].pid
    try:
        img = await c.wait_image(10)
        await topical(c, img, AI_RTU1)
        limit = fds(fwd) + 16
        resource.prlimit(fwd, resource.RLIMIT_NOFILE, (limit, limit))
        log_before = len(node.log("forwarder").splitlines())
        with ExitStack() as stack:
            socks = []
            for _ in range(200):
                s = stack.enter_context(socket.socket())
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", node.sefeps_port))
                socks.append(s)
            closed: set[int] = set()
            end = time.monotonic() + 5  # past the listen backlog (100) the kernel drops SYNs: retried after 1 s, 3 s
            while len(closed) < 200 - 16 and time.monotonic() < end:
                await asyncio.sleep(0.1)
                closed |= {i for i, s in enumerate(socks) if i not in closed and ended(s)}
            assert len(closed) >= 200 - 16, f"only {len(closed)} of the connections beyond the limit were closed"
            assert fds(fwd) == limit, (fds(fwd), limit)
            for rtu in (10, 11):  # se104s and modbus_trains, on the same kind of listener
                port = next(r["LISTENPORT"] for r in node.rows["T004_RTU"] if r["RTUID"] == rtu)
                more = [stack.enter_context(socket.socket()) for _ in range(30)]
                for s in more:
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", port))
                end = time.monotonic() + 3
                while not all(ended(s) for s in more):
                    assert time.monotonic() < end, f"RTU {rtu}: connections beyond the limit not closed"
                    await asyncio.sleep(0.1)
            cpu0, t0 = cpu_s(fwd), time.monotonic()
            node.sim.set_value(101, 4321.0)
            took = await next_value(c, AI_RTU1, 4321.0, 5)
            await asyncio.sleep(3.0)
            cpu = (cpu_s(fwd) - cpu0) / (time.monotonic() - t0)
            assert node.procs["forwarder"].poll() is None
            new_lines = node.log("forwarder").splitlines()[log_before:]
            print(f"out of fds: change served in {took:.3f} s, forwarder CPU {cpu:.0%}, "
                  f"{len(new_lines)} log lines in {time.monotonic() - t0:.1f} s")
            assert cpu < 0.3, f"the forwarder spins: {cpu:.0%} CPU while out of descriptors"
            # a warning per listener, and maybe a Redis connection that could not be opened meanwhile (logged
            # once, then "recovered"): no traceback, no flood
            assert len(new_lines) <= 8 and not any("Traceback" in line for line in new_lines), \
                "\n".join(new_lines[:40])
            for what in ("sefeps RTU 12", "se104s RTU 10", "modbus_trains RTU 11"):
                assert sum(f"{what}: out of file descriptors" in line for line in new_lines) == 1, new_lines
        await asyncio.sleep(1.5)
        c2 = SefepsClient("127.0.0.1", node.sefeps_port)
        try:
            await c2.connect(timeout=5)
            img2 = await c2.wait_image(5)
            assert AI_RTU1 in img2
        finally:
            await c2.close()
    finally:
        await c.close()


async def test_api_out_of_file_descriptors_answers_its_clients_and_recovers(node: Node) -> None:
    """fep-api's descriptors used up by 300 idle clients: a client with an open connection keeps getting
    answers, the connections beyond the limit are closed at once, the log says it once, no spin; after, new
    clients are answered again."""
    port = free_port()
    log_path = node.feproot / "api.log"
    env = {**os.environ, "FEPROOT": str(node.feproot), "FEP_LOG_DIR": "", **node.env, "FEP_API_PORT": str(port)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fep_api.cli"], env=env, stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=node.api.headers) as h:
            end = time.monotonic() + 20
            while True:
                try:
                    if (await h.get("/health", timeout=1)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < end and proc.poll() is None, "fep-api did not start"
                await asyncio.sleep(0.1)
            assert (await h.get("/api/v1/points/101", timeout=2)).status_code == 200  # warm (lazy imports)
            limit = fds(proc.pid) + 16
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
            log_before = len(log_path.read_text().splitlines())
            with ExitStack() as stack:
                socks = []
                for _ in range(300):
                    s = stack.enter_context(socket.socket())
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", port))
                    socks.append(s)
                closed: set[int] = set()
                end = time.monotonic() + 6
                while len(closed) < 300 - 16 and time.monotonic() < end:
                    await asyncio.sleep(0.1)
                    closed |= {i for i, s in enumerate(socks) if i not in closed and ended(s)}
                assert len(closed) >= 300 - 16, f"only {len(closed)} of the connections beyond the limit were closed"
                cpu0, t0 = cpu_s(proc.pid), time.monotonic()
                for _ in range(10):  # the client's open (keep-alive) connection is served
                    r = await h.get("/api/v1/points/101", timeout=2)
                    assert r.status_code == 200, log_path.read_text()[-5000:]
                    await asyncio.sleep(0.2)
                cpu = (cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
                new_lines = log_path.read_text().splitlines()[log_before:]
                print(f"api out of fds: CPU {cpu:.0%}, {len(new_lines)} log lines")
                assert cpu < 0.3, f"fep-api spins: {cpu:.0%} CPU while out of descriptors"
                assert len(new_lines) <= 8 and not any("Traceback" in line for line in new_lines), \
                    "\n".join(new_lines[:40])
                assert sum("api: out of file descriptors" in line for line in new_lines) == 1, new_lines
            await asyncio.sleep(1.5)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=node.api.headers) as h2:
                assert (await h2.get("/api/v1/points/101", timeout=2)).status_code == 200
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(5)


async def test_forwarder_and_acquirer_go_on_when_the_log_disk_is_full(node: Node, tmp_path) -> None:
    """Both services restarted with their log files on a 64 KiB tmpfs, which is then filled: values still
    reach the sefeps master, the processes live, stderr gets one line per service saying the file cannot be
    written (not logging's traceback per record), and one when it can again."""
    import subprocess as sp

    from tests.faults.test_single_node import until_quality
    from tests.foundation.test_logfile_full import fill
    from tests.prereq import require

    require(None if os.geteuid() == 0 else "mounting a tmpfs needs root", "the full-disk test")
    disk = tmp_path / "disk"
    disk.mkdir()
    sp.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        await restart(node, ("acquirer", "forwarder"), FEP_LOG_DIR=str(disk / "log"))
        await valid(node, 101)
        c = await sefeps(node)
        try:
            img = await c.wait_image(10)
            await topical(c, img, AI_RTU1)
            for service in ("acquirer", "forwarder"):  # no room left in their files' last pages either
                f = disk / "log" / f"fep-{service}.log"
                with open(f, "ab") as out:
                    out.write(b"#" * (-(f.stat().st_size + 1) % 4096) + b"\n")
            fill(disk / "fill")
            node.sim.cut(1)  # the acquirer logs the device lost, the forwarder the values' NT
            await until_quality(c, {AI_RTU1: True}, 10)
            node.sim.restore(1)
            await until_quality(c, {AI_RTU1: False}, 10)
            node.sim.set_value(101, 777.0)
            await next_value(c, AI_RTU1, 777.0, 5)
            for service in ("acquirer", "forwarder"):
                assert node.procs[service].poll() is None, service
                text = node.log(service)
                assert "Logging error" not in text and text.count("cannot write") == 1, text[-3000:]
            (disk / "fill").unlink()
            node.sim.cut(1)
            await until_quality(c, {AI_RTU1: True}, 10)
            await asyncio.sleep(0.5)
            assert "fep-forwarder.log can be written again" in node.log("forwarder"), node.log("forwarder")[-3000:]
            node.sim.restore(1)
        finally:
            await c.close()
    finally:
        for service in ("acquirer", "forwarder"):
            if node.procs[service].poll() is None:
                node.procs[service].kill()
                node.procs[service].wait(5)
        sp.run(["umount", str(disk)], check=True)


async def test_forwarder_stopped_longer_than_the_timers_and_the_control_timeout(node: Node) -> None:
    """SIGSTOP of the forwarder for 3 s (3 x the sefeps master's silence limit, 2 x the control timeout).
    First with the acquirer frozen meanwhile too: a master whose hello waited in the backlog gets the values
    of the frozen acquirer as NT, not as good (the verdict from before the stop). Then alone: a command the
    master sent during the stop is not run when the forwarder resumes (it waited unread past its deadline);
    one sent after is."""
    from fep_forwarder.sefeps import codec
    from tests.forwarder.test_sefeps_server import read_frames

    await restart(node, ("forwarder",), FEP_CONTROL_TIMEOUT_S="1.5")
    await valid(node, 101, 207)
    fwd, acq = node.procs["forwarder"], node.procs["acquirer"]
    c = await sefeps(node)
    try:
        img = await c.wait_image(10)
        await topical(c, img, AI_RTU1)
        fwd.send_signal(signal.SIGSTOP)
        acq.send_signal(signal.SIGSTOP)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", node.sefeps_port)  # in the backlog
            writer.write(codec.encode(codec.hello()))
            await asyncio.sleep(3.0)
        finally:
            fwd.send_signal(signal.SIGCONT)
        frames = await read_frames(reader, "image", timeout=5)
        image = next(f for f in frames if f["t"] == "image")
        q1 = next(e for e in image["points"] if e[0] == AI_RTU1)[2]
        assert q1 & NT, f"a value of the frozen acquirer served as good after the stop: {image}"
        writer.close()
    finally:
        acq.send_signal(signal.SIGCONT)
        await c.close()
    c = await sefeps(node)
    try:
        img = await c.wait_image(10)
        await topical(c, img, AI_RTU1)
        before = node.sim.value(207)
        fwd.send_signal(signal.SIGSTOP)
        try:
            cmd = asyncio.create_task(c.command(40, before + 1, timeout=10))
            await asyncio.sleep(3.0)
        finally:
            fwd.send_signal(signal.SIGCONT)
        with contextlib.suppress(Exception):  # the master gave up on the silent server (3 heartbeats)
            await asyncio.wait_for(cmd, 5)
        await asyncio.sleep(2.0)  # past the deadline it would have had from its reading
        assert node.sim.value(207) == before, "the command sent during the stop ran after its deadline"
        assert "may have waited" in node.log("forwarder"), node.log("forwarder")[-3000:]
    finally:
        await c.close()
    c = await sefeps(node)
    try:
        await c.wait_image(10)
        r = await c.command(40, before + 2, timeout=5)
        assert r["ok"] and node.sim.value(207) == before + 2, r
    finally:
        await c.close()


async def test_sigkill_in_the_middle_of_a_control(node: Node) -> None:
    """A control queued while the acquirer is frozen (control timeout 1.5 s). The forwarder SIGKILLed with it
    in flight: the master sees its connection closed, and the control runs once, on time, when the
    acquirer resumes (nothing re-sends it). The acquirer SIGKILLed with one queued: the master gets a
    negative answer (`expired`) at the deadline, and the restarted acquirer does not run it."""
    from fepha import keyspace as ks

    await restart(node, ("forwarder",), FEP_CONTROL_TIMEOUT_S="1.5")
    await valid(node, 207)
    fwd, acq = node.procs["forwarder"], node.procs["acquirer"]
    r = node.redis.client()

    async def submitted(seq: int) -> None:
        """Wait until the forwarder submitted the control (the frozen acquirer's BLPOP may hold it already)."""
        end = time.monotonic() + 2
        while int(r.get(ks.CTL_SEQ) or 0) <= seq:
            assert time.monotonic() < end, "the control was not submitted"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    def audited(value: float) -> list[dict]:
        return [f for _, f in r.xrange(ks.CTL_AUDIT) if f.get("point") == "207" and float(f["value"]) == value]

    c = await sefeps(node)
    try:
        await c.wait_image(10)
        before = node.sim.value(207)
        acq.send_signal(signal.SIGSTOP)
        seq = int(r.get(ks.CTL_SEQ) or 0)
        cmd = asyncio.create_task(c.command(40, before + 1, timeout=5))
        await submitted(seq)
        fwd.kill()
        fwd.wait(5)
        await asyncio.wait_for(c.closed.wait(), 3)  # the master sees its connection closed
        assert not cmd.done() or cmd.exception() is not None
        acq.send_signal(signal.SIGCONT)
        end = time.monotonic() + 3
        while node.sim.value(207) != before + 1:
            assert time.monotonic() < end, "the queued control did not run once the acquirer resumed"
            await asyncio.sleep(0.05)
        states = [a["state"] for a in audited(before + 1)]
        assert states == ["done"], states
    finally:
        cmd.cancel()
        await c.close()
    await restart(node, ("forwarder",))
    c = await sefeps(node)
    try:
        await c.wait_image(10)
        acq.send_signal(signal.SIGSTOP)
        seq = int(r.get(ks.CTL_SEQ) or 0)
        t0 = time.monotonic()
        cmd = asyncio.create_task(c.command(40, before + 2, timeout=5))
        await submitted(seq)
        acq.kill()
        acq.wait(5)
        res = await cmd
        took = time.monotonic() - t0
        assert not res["ok"] and res["state"] == "expired" and 1.5 <= took < 3.5, (res, took)
        node.start("acquirer")
        await valid(node, 207)
        await asyncio.sleep(1.0)
        assert node.sim.value(207) == before + 1, "the expired control ran after its deadline"
        assert [a["state"] for a in audited(before + 2)] == ["expired"]
    finally:
        await c.close()


async def test_iec104_master_across_a_forwarder_stop_longer_than_its_t1(node: Node) -> None:
    """An IEC 104 master (our own link layer, t1 1 s, t3 0.5 s) on se104s; the forwarder SIGSTOPped 3 s
    while point 101 changes 5 times (the acquirer runs): the master's TESTFR act goes unanswered, it gives
    up at t1 and connects again; on resume the forwarder serves the new connection from the position the
    master acknowledged: the 5 changes, each once and in order, as spontaneous data."""
    from fepha.iec104 import codec as c
    from fepha.iec104.link import Link, LinkParams, LinkTimeout, Role
    from tests.iec104.rawmaster import RawMaster

    port = next(r["LISTENPORT"] for r in node.rows["T004_RTU"] if r["RTUID"] == 10)
    params = LinkParams(k=12, w=8, t1=1, t2=0.05, t3=0.5)
    await valid(node, 101)  # in Redis: the forwarder may not listen yet (a first connect was refused on CI)
    await wait_listening(port)
    fwd = node.procs["forwarder"]

    async def connect() -> RawMaster:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        m = RawMaster(reader, writer, link=Link(Role.CLIENT, params, time.monotonic()))
        m.tasks = [asyncio.create_task(m._read()), asyncio.create_task(m._timers())]
        await m.start()
        return m

    def changes(m: RawMaster) -> list[float]:
        return [round(v, 3) for _, ioa, v, _, _ in m.values(c.COT_SPONT) if ioa == 1001]

    first = await connect()
    second: RawMaster | None = None
    try:
        first.send(c.interrogation(1))
        end = time.monotonic() + 5
        while not first.values(None):
            assert time.monotonic() < end, "no answer to the interrogation"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # quiet: everything received acknowledged (t2 0.05 s)
        before = len(changes(first))
        fwd.send_signal(signal.SIGSTOP)
        try:
            values = [1000.0 + i for i in range(5)]
            for v in values:
                node.sim.set_value(101, v)
                await asyncio.sleep(0.4)  # several polls: each value acquired
            await asyncio.sleep(1.0)
            gave_up = first.tasks[1]
            assert gave_up.done() and isinstance(gave_up.exception(), LinkTimeout), "the master did not give up at t1"
            first.writer.close()
            second = RawMaster(*await asyncio.open_connection("127.0.0.1", port),
                               link=Link(Role.CLIENT, params, time.monotonic()))  # in the backlog
            second.tasks = [asyncio.create_task(second._read()), asyncio.create_task(second._timers())]
        finally:
            fwd.send_signal(signal.SIGCONT)
        await second.start()
        end = time.monotonic() + 10
        while values[-1] not in changes(second):
            assert time.monotonic() < end, changes(second)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert changes(first)[before:] == []  # nothing reached the connection it gave up
        got = [v for v in changes(second) if v in values]
        print(f"after the stop, on the new connection: {changes(second)}")
        assert got == values, changes(second)
    finally:
        for m in (first, second):
            if m is not None:
                m.closed = True
                m.writer.close()
                for t in m.tasks:
                    t.cancel()
                await asyncio.gather(*m.tasks, return_exceptions=True)
