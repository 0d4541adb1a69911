"""Shared pieces of the se104s tests: a forwarding RTU with every type, a recording ControlSink, our server
on a free port and a real c104 (lib60870) client that records what it receives."""



import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import c104

from fep_forwarder.base import ControlOutcome, Update
from fep_forwarder.se104s import Se104Server
from fep_tools.scada_probe import open_with_retries, take_untagged_answers
from fepha.iec104 import codec as c
from fepha.points import Value
from fepha.semodel.model import FWD_KIND, FwdPoint, Model, Rtu
from tests.c104wire import command_frames, execute_answer, i_frames, record_wire


def fp(zfid: int, table: str, addr: int, type_: str, coef: float = 1.0) -> FwdPoint:
    return FwdPoint(zfid, table, FWD_KIND[table], 10, 100 + zfid, addr, type_, coef)


MONITOR = (
    fp(1, "T005_ZFAI", 1001, "M_ME_NC_1"),
    fp(2, "T005_ZFAI", 1002, "M_ME_TF_1", 10.0),
    fp(3, "T005_ZFAI", 1003, "M_ME_NB_1", 10.0),
    fp(4, "T005_ZFAI", 1004, "M_ME_NA_1", 0.01),
    fp(5, "T006_ZFDI", 1, "M_SP_TB_1"),
    fp(6, "T006_ZFDI", 2, "M_SP_NA_1"),
    fp(7, "T006_ZFDI", 3, "M_DP_NA_1"),
    fp(8, "T006_ZFDI", 4, "M_DP_TB_1"),
    fp(9, "T007_ZFACC", 3001, "M_IT_TB_1"),
    fp(10, "T007_ZFACC", 3002, "M_IT_NA_1"),
)
COMMANDS = (
    fp(21, "T008_ZFDO", 5001, "C_SC_NA_1"),
    fp(22, "T008_ZFDO", 5002, "C_DC_NA_1"),
    fp(23, "T008_ZFDO", 5003, "C_SC_TA_1"),
    fp(24, "T008_ZFDO", 5004, "C_DC_TA_1"),
    fp(25, "T009_ZFAO", 6001, "C_SE_NA_1", 0.01),
    fp(26, "T009_ZFAO", 6002, "C_SE_NB_1", 10.0),
    fp(27, "T009_ZFAO", 6003, "C_SE_NC_1"),
    fp(28, "T009_ZFAO", 6004, "C_SE_TA_1", 0.01),
    fp(29, "T009_ZFAO", 6005, "C_SE_TB_1"),
    fp(30, "T009_ZFAO", 6006, "C_SE_TC_1"),
)
BY_ADDR = {f.addr: f for f in MONITOR + COMMANDS}
C104_TYPE = {f.addr: getattr(c104.Type, f.type or "") for f in MONITOR + COMMANDS}
CA = 7


def rtu(port: int = 0) -> Rtu:
    return Rtu(id=10, name="test 104", rtutype=2, protocol="se104s", listen_port=port, address=CA,
               forwards=MONITOR + COMMANDS)


def now_ms() -> int:
    return int(time.time() * 1000)


def upd(addr: int, value: float, quality: int = 0, ts_ms: int | None = None) -> Update:
    return Update(BY_ADDR[addr], Value(value, quality, now_ms() if ts_ms is None else ts_ms))


@dataclass
class Sink:
    """Records controls (source point id, value); the device refuses the source value 99."""

    calls: list[tuple[int, float]] = field(default_factory=list)
    delay_s: float = 0.0

    async def execute(self, fwd: FwdPoint, value: float, origin: str,
                      timeout_ms: int | None = None) -> ControlOutcome:
        await asyncio.sleep(self.delay_s)
        self.calls.append((fwd.src, value))
        if round(value, 6) == 99:
            return ControlOutcome(False, "failed", "device refused the write")
        return ControlOutcome(True, "done")


@contextlib.asynccontextmanager
async def se104_server(sink: Any = None, **options: Any) -> AsyncIterator[Se104Server]:
    srv = Se104Server(rtu(0), Model({}, "", ""), "127.0.0.1", sink or Sink(), "A", **options)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@contextlib.asynccontextmanager
async def measured_server(n: int) -> AsyncIterator[Se104Server]:
    """Our server for an RTU of `n` measured values (M_ME_NC_1, IOA 10,000 on), each 1.0."""
    fwds = tuple(fp(i, "T005_ZFAI", 10_000 + i, "M_ME_NC_1") for i in range(n))
    srv = Se104Server(Rtu(id=10, name=f"{n} points", rtutype=2, protocol="se104s", listen_port=0, address=CA,
                          forwards=fwds), Model({}, "", ""), "127.0.0.1", Sink(), "A")
    await srv.start()
    try:
        srv.load_image([Update(f, Value(1.0, 0, now_ms())) for f in fwds])
        yield srv
    finally:
        await srv.stop()


def deactivate_on_act_con(link: Any) -> Callable[[c.Asdu], bool]:
    """For a RawMaster's `mute_after` (called on each ASDU it reads, before it acknowledges any): on the
    ACT_CON of a station interrogation, queue the DEACT of it on the master's `link`, so that it goes out
    with the master's first acknowledgement. Mutes nothing."""
    def on_asdu(a: c.Asdu) -> bool:
        if (a.type_id, a.cause, a.negative) == (c.C_IC_NA_1, c.COT_ACTCON, False):
            link.send(c.interrogation(CA, a.objects[0][1][0], c.COT_DEACT), time.monotonic())
        return False
    return on_asdu


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call (c104, raw sockets) in a thread of its own that is gone when this returns
    (asyncio.to_thread's executor would outlive the test)."""
    ex = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return await asyncio.get_running_loop().run_in_executor(ex, fn, *args)
    finally:
        ex.shutdown(wait=True)


@dataclass
class Received:
    ioa: int
    value: Any
    cot: str
    quality: Any
    recorded_at: Any


@dataclass
class Master:
    """A c104 client with one station holding every point of the test RTU."""

    client: c104.Client
    conn: c104.Connection
    station: c104.Station
    got: list[Received] = field(default_factory=list)
    inits: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    trace: list[Any] = field(default_factory=list)
    """Connection states and raw frames ("<< " in, ">> " out, hex), in the order c104 reported them."""

    def point(self, addr: int) -> c104.Point:
        p = self.station.get_point(addr)
        assert p is not None
        return p

    def values(self, cot: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.got if cot is None or r.cot == cot]

    async def interrogate(self, ca: int, qualifier: Any = c104.Qoi.STATION, counter: bool = False) -> bool:
        """A (counter) interrogation through c104; True once the server confirmed it (ACT_CON) and terminated it
        (ACT_TERM), False at a negative ACT_CON or when that did not come within c104's command timeout (3 s).
        Read from the frames on the wire, as `command` does, not from c104's blocking call: c104 2.2.1's
        wait (Connection::awaitCommandSuccess) registers the command, sends it, then waits on a condition
        variable without first looking whether the answer is already in. When the calling thread is
        descheduled for a moment after the send (a loaded machine), our server's ACT_CON and ACT_TERM arrive
        and are recorded meanwhile, their notification goes to nobody, and the call returns False after
        exactly its timeout although both answers came within milliseconds."""
        type_id = c.C_CI_NA_1 if counter else c.C_IC_NA_1
        seen = len(self.trace)
        ask = self.conn.counter_interrogation if counter else self.conn.interrogation
        sent = await in_thread(lambda: ask(ca, qualifier=qualifier, wait_for_response=False))
        assert sent, "interrogation not sent"
        qual = int(qualifier)
        outcome: list[bool] = []

        def answered() -> bool:
            got = [(cause, neg) for d, t, cause, neg, q in station_frames(self.trace[seen:])
                   if d == "<<" and t == type_id and q & 0x3F == qual & 0x3F]
            if (c.COT_ACTCON, True) in got:
                outcome.append(False)
            elif (c.COT_ACTCON, False) in got and (c.COT_ACTTERM, False) in got:
                outcome.append(True)
            return bool(outcome)
        with contextlib.suppress(AssertionError):
            await until(answered, 3, f"the answer to the interrogation {type_id}/{qual}")
        return bool(outcome and outcome[0])

    async def command(self, addr: int, info: Any, select: bool = False) -> bool:
        """One command through c104; True when the server confirmed its execution positively (ACT_CON), and
        then only once its ACT_TERM came too. The outcome is read from the frames on the wire, not from
        c104's return value: c104 2.2.1 now and then loses a confirmation it received (transmit then returns
        False after its timeout although the server's positive ACT_CON is in the trace: its wait misses an
        answer that came before it began, see `interrogate`, and under load its "Potential Deadlock: mutex
        ... > 100ms" drops one), and sometimes never sends the execute after a confirmed select (then the
        select is sent again, once: a select runs nothing).

        The wait for ACT_TERM: a next command on the same IOA sent before it crosses it on the wire, and
        c104 takes that late ACT_TERM for the answer to the new command."""
        p = self.point(addr)
        p.command_mode = c104.CommandMode.SELECT_AND_EXECUTE if select else c104.CommandMode.DIRECT
        p.info = info
        seen = len(self.trace)
        await in_thread(p.transmit, c104.Cot.ACTIVATION)
        await self._answered(addr, seen)
        frames = self.trace[seen:]
        seq = command_frames(frames, addr)
        # sent again only when, after waiting for it, the trace shows a confirmed select and neither an
        # execute sent nor an answer to one: c104's raw-frame callbacks can come after transmit returns, so
        # an execute not yet in the trace may have been sent (and run) all the same
        if (select and execute_answer(frames, addr) is None and ("<<", c.COT_ACTCON, False, True) in seq
                and not any(d == ">>" and not sel for d, _, _, sel in seq)):
            seen = len(self.trace)
            await in_thread(p.transmit, c104.Cot.ACTIVATION)
            await self._answered(addr, seen)
        ok = bool(execute_answer(self.trace[seen:], addr))
        if ok:
            await until(lambda: ("<<", c.COT_ACTTERM, False, False) in command_frames(self.trace[seen:], addr), 3,
                        f"ACT_TERM of IOA {addr}")
        return ok

    async def _answered(self, addr: int, seen: int) -> None:
        """Wait (3 s at most) until the trace from `seen` on holds an answer to an execute: c104 may return
        before its raw-frame callback recorded it."""
        with contextlib.suppress(AssertionError):
            await until(lambda: execute_answer(self.trace[seen:], addr) is not None, 3,
                        f"ACT_CON of IOA {addr}")


def station_frames(trace: list[Any]) -> list[tuple[str, int, int, bool, int]]:
    """(">>" sent / "<<" received, type, cause, negative, qualifier) of every interrogation and counter
    interrogation among the raw frames of a trace, decoded with our codec."""
    out: list[tuple[str, int, int, bool, int]] = []
    for d, a in i_frames(trace):
        if a.type_id in (c.C_IC_NA_1, c.C_CI_NA_1) and a.objects:
            out.append((d, a.type_id, a.cause, a.negative, a.objects[0][1][0]))
    return out


async def until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def c104_master(port: int, init: Any = c104.Init.ALL, wait_open: bool = True,
                      points: dict[int, Any] | None = None, ca: int = CA,
                      command_timeout_ms: int = 3000) -> AsyncIterator[Master]:
    """A started c104 client with one station (`ca`) holding `points` (IOA -> c104.Type, default: the test
    RTU's); monitoring points (types M_*) record what they receive."""
    client = c104.Client(tick_rate_ms=50, command_timeout_ms=command_timeout_ms)
    conn = client.add_connection(ip="127.0.0.1", port=port, init=init)
    station = conn.add_station(ca)
    m = Master(client, conn, station)

    def on_receive(point: c104.Point, previous_info: c104.Information,
                   message: c104.IncomingMessage) -> c104.ResponseState:
        with m.lock:
            m.got.append(Received(point.io_address, message.info.value, message.cot.name, message.info.quality,
                                  message.info.recorded_at))
        return c104.ResponseState.SUCCESS

    for addr, t in (C104_TYPE if points is None else points).items():
        p = station.add_point(io_address=addr, type=t)
        if t.name.startswith("M_"):
            p.on_receive(on_receive)
    take_untagged_answers(conn, station, lambda p, message: on_receive(p, p.info, message))

    def on_init(client: c104.Client, station: c104.Station, cause: c104.Coi) -> None:
        m.inits.append(cause)

    client.on_station_initialized(on_init)
    opened = threading.Event()

    states = m.trace

    def on_state(connection: c104.Connection, state: c104.ConnectionState) -> None:
        states.append(state)
        if state == c104.ConnectionState.OPEN:
            opened.set()

    conn.on_state_change(on_state)

    record_wire(conn, states)
    try:
        # Wait on the callback: polling conn.state right after start() can stall lib60870's connect. Now and
        # then c104 drops its own STARTDT and stays OPEN_MUTED; open_with_retries sends it again.
        if wait_open:
            assert await in_thread(open_with_retries, client, opened), \
                f"c104 connection did not open: {states[-30:]} {conn.state}"
        else:
            client.start()
        yield m
    finally:
        await in_thread(client.stop)
