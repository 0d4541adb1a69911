"""Table tests of the acquirer's rules: no network."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import random

import pytest

from fep_acquirer.changes import (
    FAILED,
    FENCED,
    OK,
    AtGain,
    ChangeTracker,
    Kept,
    ResendQueue,
    StandbyLog,
    after_replay,
    at_lease_gain,
    held_in_redis,
)
from fep_acquirer.channel import ChannelSwitcher
from fep_acquirer.housekeeping import tick_delay, write_window_ms
from fep_acquirer.lease import LeaseView, reach_window_s, reaches, reaches_fully
from fep_acquirer.plan import decode_block, plan_reads
from fep_acquirer.tasks import cancel_all, cancel_and_wait
from fepha import datatypes as dt
from fepha import points
from fepha.semodel.model import Model, Point


def pt(pid: int, area: str, addr: int, typ: str = "uint16", **kw) -> Point:
    return Point(id=pid, rtu=1, kind="AI", name="", area=area, address=addr, datatype=typ, **kw)


def regs_bytes(regs: list[int]) -> bytes:
    """A read answer's data bytes for these registers (big-endian)."""
    return b"".join(r.to_bytes(2, "big") for r in regs)


def bits_bytes(bits: list[bool]) -> bytes:
    """A read answer's data bytes for these bits (packed LSB first, as Modbus does)."""
    return bytes(sum(1 << j for j, b in enumerate(bits[i:i + 8]) if b) for i in range(0, len(bits), 8))


@pytest.mark.parametrize("points, expected", [
    ([pt(1, "hr", 0), pt(2, "hr", 1), pt(3, "hr", 2, "float32")], [("hr", 0, 4)]),
    ([pt(1, "hr", 0), pt(2, "hr", 20)], [("hr", 0, 1), ("hr", 20, 1)]),            # gap > 8
    ([pt(1, "hr", 0), pt(2, "hr", 9)], [("hr", 0, 10)]),                          # small gap read through
    ([pt(i, "ir", i) for i in range(130)], [("ir", 0, 125), ("ir", 125, 5)]),     # 125-register limit
    ([pt(1, "ir", 123, "uint32"), pt(2, "ir", 0)], [("ir", 0, 1), ("ir", 123, 2)]),
    ([pt(1, "ir", 0), pt(2, "ir", 123, "float32")], [("ir", 0, 1), ("ir", 123, 2)]),
    ([pt(1, "ir", 0), pt(2, "ir", 124, "float32")], [("ir", 0, 1), ("ir", 124, 2)]),  # would be 126
    ([pt(i, "co", i, "bool") for i in range(2001)], [("co", 0, 2000), ("co", 2000, 1)]),
    ([pt(1, "di", 5, "bool"), pt(2, "co", 5, "bool"), pt(3, "ir", 5, "bool", bit=3)],
     [("co", 5, 1), ("di", 5, 1), ("ir", 5, 1)]),
    ([pt(1, "ir", 7, "bool", bit=0), pt(2, "ir", 7, "bool", bit=15)], [("ir", 7, 1)]),  # shared register
])
def test_plan_reads(points, expected):
    blocks = plan_reads(points)
    assert [(b.area, b.start, b.count) for b in blocks] == expected
    assert sorted(p.id for b in blocks for p in b.points) == sorted(p.id for p in points)
    for b in blocks:
        assert b.count <= (2000 if b.area in dt.BIT_AREAS else 125)


@pytest.mark.parametrize("p, value", [
    (pt(1, "hr", 0, "int16"), -1234),
    (pt(1, "hr", 0, "uint16", scale=0.1, offset=-40), 2.0),
    (pt(1, "hr", 0, "int32", wordorder="little"), -70000),
    (pt(1, "hr", 0, "uint32", byteorder="little"), 4_000_000_000),
    (pt(1, "hr", 0, "float32", byteorder="little", wordorder="little"), 3.5),
    (pt(1, "hr", 0, "float32", scale=2.0, offset=1.0), 8.0),
])
def test_decode_registers(p, value):
    regs = [0] * 3 + dt.encode_registers(dt.unscaled(value, p.scale, p.offset), p.datatype, p.byteorder,
                                         p.wordorder)
    p = dataclasses.replace(p, address=3)
    blk = plan_reads([p])[0]
    got = decode_block(blk, regs_bytes(regs[blk.start:blk.start + blk.count]))[p.id]
    assert got == pytest.approx(value)


def test_decode_block_fast_path_matches_the_general_routine():
    """The per-block struct path gives exactly what fepha.datatypes.decode_registers + scaled give."""
    rnd = random.Random(7)
    ps, addr = [], 0
    combos = itertools.product(("int16", "uint16", "int32", "uint32", "float32"), ("big", "little"),
                               ("big", "little"), ((1.0, 0.0), (0.1, -5.0)))
    for i, (typ, bo, wo, (scale, offset)) in enumerate(combos):
        ps.append(pt(i + 1, "hr", addr, typ, byteorder=bo, wordorder=wo, scale=scale, offset=offset))
        addr += dt.span(typ, "hr")
    ps.append(pt(999, "hr", addr, "bool", bit=5))
    (blk,) = plan_reads(ps)
    assert sum(f is not None for f in blk.fast) == 10  # big/big non-bool points take the fast path
    for _ in range(50):
        regs = [rnd.randrange(65536) for _ in range(blk.count)]
        got = decode_block(blk, regs_bytes(regs))
        for p in ps:
            raw = dt.decode_registers(regs[p.address:p.address + dt.span(p.datatype, "hr")], p.datatype,
                                      p.byteorder, p.wordorder, p.bit)
            want = raw if p.datatype == "bool" else dt.scaled(raw, p.scale, p.offset)
            assert got[p.id] == want or (math.isnan(want) and math.isnan(got[p.id])), (p, regs)


def test_decode_bits_and_register_bits():
    ps = [pt(1, "co", 0, "bool"), pt(2, "co", 2, "bool"), pt(3, "ir", 10, "bool", bit=3),
          pt(4, "ir", 10, "bool", bit=4)]
    blocks = {b.area: b for b in plan_reads(ps)}
    assert decode_block(blocks["co"], bits_bytes([True, False, False])) == {1: 1, 2: 0}
    assert decode_block(blocks["ir"], regs_bytes([0b1000])) == {3: 1, 4: 0}


def test_change_tracker_rules():
    t = ChangeTracker(deadband={1: 0.5})
    assert t.changes({1: (10.0, 0), 2: (1, 0)}) == {1: (10.0, 0), 2: (1, 0)}  # never written
    t.committed({1: (10.0, 0), 2: (1, 0)})
    assert t.changes({1: (10.4, 0), 2: (1, 0)}) == {}                          # within deadband
    assert t.changes({1: (10.6, 0), 2: (2, 0)}) == {1: (10.6, 0), 2: (2, 0)}
    assert t.changes({1: (10.0, 0x80), 2: (1, 0)}) == {1: (10.0, 0x80)}        # quality change
    t.failed({2: (2, 0)})
    assert t.changes({1: (10.0, 0), 2: (1, 0)}) == {2: (1, 0)}                 # compensation, same value
    assert t.committed({2: (1, 0)}) == 1
    assert t.changes({1: (10.0, 0), 2: (1, 0)}) == {}
    t.forget()
    assert set(t.changes({1: (10.0, 0), 2: (1, 0)})) == {1, 2}                 # full image


def test_change_tracker_judges_a_write_after_those_sent_ahead_of_it_in_the_same_round_trip():
    """Writes waiting behind a slow one go out together (rtu.py): each is judged as if the ones before it
    were written; a dirty point they re-send is not re-sent again; the outcomes then apply in order."""
    t = ChangeTracker(deadband={1: 0.5})
    t.committed({1: (10.0, 0), 2: (1, 0), 3: (5, 0)})
    t.failed({3: (5, 0)})
    first = t.changes({1: (11.0, 0), 3: (5, 0)})
    assert first == {1: (11.0, 0), 3: (5, 0)}                                   # 3: compensation
    second = t.changes({1: (11.3, 0), 2: (2, 0), 3: (5, 0)}, ahead=first)
    assert second == {2: (2, 0)}                   # 1 within the deadband of what goes ahead; 3 re-sent by it
    assert t.changes({1: (11.3, 0), 3: (5, 0)}) == {1: (11.3, 0), 3: (5, 0)}    # without: as before
    t.failed(first)                                # the first refused, the second written
    assert t.committed(second) == 0
    assert t.changes({1: (11.0, 0), 2: (2, 0), 3: (5, 0)}) == {1: (11.0, 0), 3: (5, 0)}


@pytest.mark.parametrize("held, samples, expected", [
    ({1: (10.0, 0), 2: (1, 0), 3: (0, 0)}, {1: (10.0, 0), 2: (1, 0), 3: (0, 0)}, {}),   # Redis has it all
    ({1: (10.0, 0), 2: (1, 0)}, {1: (10.0, 0), 2: (1, 0), 3: (0, 0)}, {3: (0, 0)}),     # missing there
    ({1: (10.0, 0), 2: (1, 0), 3: (0, 0)}, {1: (10.6, 0), 2: (0, 0), 3: (0, 0)},
     {1: (10.6, 0), 2: (0, 0)}),                                                        # values moved
    ({1: (10.0, 0), 2: (1, 0x80), 3: (0, 0)}, {1: (10.4, 0), 2: (1, 0), 3: (0, 0)},
     {2: (1, 0)}),                                                                      # deadband; IV cleared
    ({}, {1: (10.0, 0), 2: (1, 0)}, {1: (10.0, 0), 2: (1, 0)}),                        # Redis lost its data
])
def test_full_image_writes_what_differs_from_redis(held, samples, expected):
    t = ChangeTracker(deadband={1: 0.5})
    t.committed({1: (3.0, 0), 2: (0, 0), 3: (0, 0)})
    t.forget()
    t.seed(held)
    assert t.changes(samples) == expected


def test_seed_keeps_compensations():
    t = ChangeTracker()
    t.failed({2: (1, 0)})
    t.forget()
    t.seed({1: (5, 0), 2: (1, 0)})
    assert t.changes({1: (5, 0), 2: (1, 0)}) == {2: (1, 0)}  # a failed write is re-sent whatever Redis holds


def test_held_in_redis_and_after_replay():
    raw = {"1": points.encode(7, 0, 1000), "2": points.encode(1, 0x80, 2000), "3": "garbage"}
    held = held_in_redis(raw)
    assert held == {1: ((7, 0), 1000), 2: ((1, 0x80), 2000)}
    after = after_replay(held, [{1: ((8, 0), 3000)}, {1: ((7, 0), 3500), 3: ((4, 0), 3500)}])
    assert after == {1: ((7, 0), 3500), 2: ((1, 0x80), 2000), 3: ((4, 0), 3500)}
    assert held[1] == ((7, 0), 1000)  # left as it was


def test_channel_switch_sequence():
    s = ChannelSwitcher((1, 2), switch_s=30, backoff_min_s=0.5, backoff_max_s=5)
    assert s.next_attempt(0) == (1, 0.0)
    s.connected(0)
    s.failed(100, "reset")
    assert s.next_attempt(100) == (1, 0.5)
    for t, delay in ((101, 1.0), (103, 2.0), (107, 4.0), (120, 5.0)):
        s.failed(t, "refused")
        assert s.next_attempt(t) == (1, delay)
    s.failed(127, "refused")
    assert s.next_attempt(127) == (1, 3.0)          # never waits past the switch time
    assert s.next_attempt(130) == (2, 0.0)          # 30 s without connection: switch
    assert s.info[2].switches == 1
    s.failed(130.1, "refused")
    assert s.next_attempt(160.1) == (1, 0.0)        # neither works: keep alternating
    s.connected(161)
    assert s.state()["active"] == "1" and s.state()["ch1_connected"] == "1"
    assert s.next_attempt(200) == (1, 0.0)


def test_channel_switch_on_monotonic_since_on_wall_clock():
    """Switch timing follows the monotonic `now`; `since` (ch<n>_since_ms, for the api) the wall clock."""
    s = ChannelSwitcher((1, 2), switch_s=30, backoff_min_s=0.5, backoff_max_s=5)
    wall0 = 1_700_000_000.0
    s.connected(5.0, wall=wall0)
    assert s.state()["ch1_since_ms"] == "1700000000000"
    s.failed(10.0, "reset", wall=wall0 - 3600)          # wall clock stepped back an hour: no effect on timing
    assert s.state()["ch1_since_ms"] == str(int((wall0 - 3600) * 1000)) and s.state()["ch1_connected"] == "0"
    assert s.next_attempt(39.9)[0] == 1
    assert s.next_attempt(40.0) == (2, 0.0)             # 30 s of monotonic time, whatever the wall clock did
    s.connected(41.0, wall=wall0 + 5)
    assert s.state()["ch2_since_ms"] == "1700000005000" and s.state()["active"] == "2"


def test_a_flapping_channel_is_switched_as_a_dead_one():
    """A lossy channel 1 connects again after each failure and fails again within the switch time: it
    counts as down from its first failure and is switched after switch_s (it used to stay active, its
    timer reset at every reconnection). A channel that then works switch_s without a failure has
    recovered: its next failure starts a new outage."""
    s = ChannelSwitcher((1, 2), switch_s=3, backoff_min_s=0.05, backoff_max_s=0.2)
    assert s.next_attempt(0) == (1, 0.0)
    s.connected(0)
    for t in (10.0, 11.2, 12.4):              # fails, reconnects 0.1 s later, works ~1 s, fails again
        s.failed(t, "no answer within the timeout")
        assert s.next_attempt(t) == (1, 0.05)
        s.connected(t + 0.1)
    s.failed(13.1, "no answer within the timeout")
    assert s.next_attempt(13.1) == (2, 0.0)    # 3.1 s after the first failure
    assert s.info[2].switches == 1
    s.connected(13.2)
    s.failed(20.0, "reset")                     # channel 2 worked 6.8 s: a new outage, no switch yet
    assert s.next_attempt(20.0) == (2, 0.05)
    s.connected(20.1)
    s.failed(21.0, "reset")
    assert s.next_attempt(22.9)[0] == 2 and s.next_attempt(23.0) == (1, 0.0)


def test_a_channel_whose_polls_go_unanswered_is_switched_though_connected():
    """A device that keeps the connection open but leaves a block unanswered at every poll (or at every
    other poll): the channel has not worked since the first such poll, so after switch_s the runner is
    told to close it (it used to stay for good, no LinkError ever came). Complete polls for a whole
    switch time end the outage; a failure after that starts a new one."""
    s = ChannelSwitcher((1, 2), switch_s=3, backoff_min_s=0.05, backoff_max_s=0.2)
    assert s.next_attempt(0) == (1, 0.0)
    s.connected(0)
    assert not s.polled(0.5, True)
    for t in (1.0, 2.0, 3.0, 3.9):
        assert not s.polled(t, t == 2.0, "hr100+1: no answer")   # every other poll incomplete: no recovery
    assert s.info[1].last_error == "hr100+1: no answer" and s.info[1].connected
    assert s.polled(4.0, False, "hr100+1: no answer")           # 3 s after the first incomplete poll
    s.failed(4.0, "no complete poll for 3 s")
    assert s.next_attempt(4.0) == (2, 0.0) and s.info[2].switches == 1
    s.connected(4.1)
    assert not any(s.polled(t, True) for t in (5.0, 6.0, 7.0, 8.0))
    assert not s.polled(8.5, False, "x")                        # channel 2 worked 4 s: a new outage
    assert not s.polled(11.4, False, "x") and s.polled(11.5, False, "x")


def test_a_block_unanswered_on_every_channel_keeps_alternating_one_on_a_single_channel_never_switches():
    s = ChannelSwitcher((1, 2), switch_s=3, backoff_min_s=0.05, backoff_max_s=0.2)
    s.connected(0)
    assert s.polled(3.0, False) if not s.polled(0.0, False) else False
    s.failed(3.0, "no complete poll")
    assert s.next_attempt(3.0) == (2, 0.0)
    s.connected(3.0)
    assert not s.polled(3.0, False) and s.polled(6.0, False)
    s.failed(6.0, "no complete poll")
    assert s.next_attempt(6.0) == (1, 0.0)
    one = ChannelSwitcher((1,), switch_s=1, backoff_min_s=0.5, backoff_max_s=1)
    one.connected(0)
    assert not any(one.polled(t, False) for t in range(10))


@pytest.mark.parametrize("now, last_ok, last_bad, expected", [
    (10, 9, None, (True, True)),
    (10, 9, 6.9, (True, True)),     # the failure is older than the window
    (10, 9, 8, (True, False)),      # every other poll failing, or a block unanswered at each poll
    (10, 9, 9, (True, False)),
    (10, 6.9, None, (False, False)),
    (10, None, None, (False, False)),
])
def test_reaches_and_reaches_fully(now, last_ok, last_bad, expected):
    assert (reaches(now, last_ok, 3.0), reaches_fully(now, last_ok, last_bad, 3.0)) == expected


def test_the_other_node_reaches_fully_only_after_takeover_s_without_a_failure():
    """The holder is judged over its reach window, the node that would take over over takeover_s: one
    lost poll 60 s ago keeps it from a takeover of a holder that reads the device only in part."""
    assert reaches_fully(100, 99, 40, 3.0) and not reaches_fully(100, 99, 40, 3.0, clean_s=90)
    assert reaches_fully(100, 99, 9, 3.0, clean_s=90) and reaches_fully(100, 99, None, 3.0, clean_s=90)


def test_a_partial_channel_left_for_one_that_fails_is_taken_back_at_once():
    """Channel 1 answers every block but one; channel 2 is dead (not wired). Leaving channel 1 after
    switch_s, the runner must not spend switch_s without any value on channel 2: it goes back to channel 1
    at channel 2's first failure, and tries channel 2 again after another switch_s. A channel 2 that
    answers a poll (even in part) is kept by the normal rules."""
    s = ChannelSwitcher((1, 2), switch_s=3, backoff_min_s=0.05, backoff_max_s=0.2)
    s.connected(0)
    assert not s.polled(0.0, False) and s.polled(3.0, False)
    s.failed(3.0, "no complete poll")
    assert s.next_attempt(3.0) == (2, 0.0)
    s.failed(3.1, "connect refused")
    assert s.next_attempt(3.1) == (1, 0.0)              # back at once, not at 6.0
    assert s.info[1].switches == 1 and s.info[2].switches == 1
    s.connected(3.2)
    assert not s.polled(3.2, False) and not s.polled(6.1, False) and s.polled(6.2, False)
    s.failed(6.2, "no complete poll")
    assert s.next_attempt(6.2) == (2, 0.0)              # channel 2 tried again
    s.connected(6.3)
    assert not s.polled(6.3, False)                     # it answers, in part: the normal rules
    s.failed(6.4, "reset")
    assert s.next_attempt(6.4) == (2, 0.05)             # no going back: down since 6.3, switch at 9.3
    assert s.next_attempt(9.3) == (1, 0.0)
    s.failed(9.4, "refused")                            # a dead channel 1 (not left for partial polls)
    assert s.next_attempt(9.4)[0] == 1


def test_single_channel_never_switches():
    s = ChannelSwitcher((1,), switch_s=1, backoff_min_s=0.5, backoff_max_s=1)
    s.failed(0, "x")
    assert s.next_attempt(100) == (1, 0.5)


def test_lease_view_and_reach():
    v = LeaseView("A")
    assert v.update("A", 1) == "gained"
    assert v.update("A", 1) is None
    assert v.update("B", 2) == "lost"
    assert v.update("B", 2) is None
    assert v.update("A", 4) == "gained"
    assert v.fenced_out("B", 5) == "lost" and not v.held
    w = reach_window_s(1.0, 1.0, 1.0)
    assert w == 3.0 and reach_window_s(0.1, 0.1, 1.0) == 2.0
    assert reaches(10, 8, w) and not reaches(10, 6.9, w) and not reaches(10, None, w)


@pytest.mark.parametrize("mode, role, expected", [
    ("auto", "master", 0), ("auto", "slave", 20), ("direct", "slave", 0), ("batched", "master", 20)])
def test_write_mode(mode, role, expected):
    assert write_window_ms(mode, role, 20) == expected


async def test_cancel_and_wait_survives_a_swallowed_cancel():
    """Python 3.11's asyncio.wait_for may swallow a cancel that coincides with its result; stop() must
    still end the task (a hang here kept fep-acquirer from stopping under 10 ms polls)."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while swallowed < 2:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1  # carries on, as if the cancel had never come
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, step_s=0.02), 2)
    assert task.cancelled() and swallowed == 2


async def test_cancel_all_cancels_its_tasks_even_when_the_caller_is_cancelled_at_once():
    """A stop that cancels the owner in the loop iteration where it starts stopping its children (the
    housekeeping's tick ending as the acquirer stops): gathering cancel_and_wait coroutines alone left a
    child never cancelled (their wrapping tasks were cancelled before their first step)."""
    child = asyncio.create_task(asyncio.Event().wait())
    owner = asyncio.create_task(cancel_all(child))
    await asyncio.sleep(0)  # the owner's first step: cancels, then waits in a gather
    owner.cancel()
    await asyncio.wait([owner], timeout=1)
    await asyncio.sleep(0)
    assert child.cancelled() and owner.cancelled()


async def test_cancel_all_waits_for_its_tasks_when_the_caller_is_cancelled_again():
    """The owner re-cancelled while it waits (its own stop repeats the cancel, `cancel_and_wait`) still
    ends only after its task did: here a task that swallows the first cancels (as a Redis call may on
    Python 3.11) and ends at a repeated one."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        for _ in range(2):  # cancel_all's cancel and cancel_and_wait's first one; the repeat (0.5 s) ends it
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed.set()
        await asyncio.sleep(10)

    child = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    owner = asyncio.create_task(cancel_all(child))
    await swallowed.wait()
    owner.cancel()
    await asyncio.sleep(0.05)
    assert not owner.done() and not child.done()  # the owner waits for its task
    await asyncio.wait_for(cancel_and_wait(owner, step_s=0.1), 3)  # the repeat reaches the task too
    assert child.cancelled() and owner.cancelled()


# --- the standby log: replayed on takeover -------------------------------------------------------------
IV = int(points.Quality.IV)
STANDBY_CASES = {
    # polls seen by the standby (ts, {pid: value}), Redis's values at takeover {pid: (value, ts)}, batches
    "a DI that changed and changed back in the gap is replayed in order": (
        [(100, {1: 0}), (200, {1: 1}), (300, {1: 0})], {1: (0, 150)}, [{1: (1, 200)}, {1: (0, 300)}]),
    "changes the former holder already wrote are not repeated": (
        [(100, {1: 0}), (200, {1: 1}), (300, {1: 0})], {1: (0, 290)}, []),
    "a change written by the holder and seen a poll later by the standby is skipped": (
        [(100, {1: 0}), (210, {1: 1}), (400, {1: 0})], {1: (1, 200)}, [{1: (0, 400)}]),
    "global time order across points, one point per batch at most": (
        [(100, {1: 0, 2: 0}), (200, {1: 1, 2: 1}), (300, {1: 0, 2: 1})], {1: (0, 50), 2: (0, 50)},
        [{1: (1, 200), 2: (1, 200)}, {1: (0, 300)}]),
    "a point Redis never had is replayed from its first change": (
        [(100, {3: 5}), (200, {3: 6})], {}, [{3: (6, 200)}]),
    "deadband: small moves are not logged": (
        [(100, {4: 10.0}), (200, {4: 10.4}), (300, {4: 11.0})], {4: (10.0, 50)}, [{4: (11.0, 300)}]),
    # a holder reading in part, or not at all until its reach window passed: its IV record (last value kept)
    # is newer than changes it never read
    "invalid in Redis: the changes after the holder's last value are replayed, older than the IV record": (
        [(50, {1: 4}), (100, {1: 5}), (200, {1: 6}), (300, {1: 7}), (500, {1: 8})], {1: (5, 350, IV)},
        [{1: (6, 200)}, {1: (7, 300)}, {1: (8, 500)}]),
    "invalid in Redis, its last value not in the log: only what is newer than the IV record": (
        [(50, {1: 5}), (200, {1: 6}), (400, {1: 8})], {1: (5, 350, IV)}, [{1: (8, 400)}]),
    "invalid in Redis, a DI back at its last value before the IV record: from that return on": (
        [(50, {1: 0}), (100, {1: 1}), (300, {1: 0}), (400, {1: 1}), (500, {1: 0})], {1: (1, 450, IV)},
        [{1: (0, 500)}]),
    "invalid in Redis, the device at that value since: it again, good": (
        [(50, {1: 4}), (100, {1: 5})], {1: (5, 350, IV)}, []),
}


@pytest.mark.parametrize("case", list(STANDBY_CASES))
def test_standby_log_replay(case: str) -> None:
    polls, redis_now, expected = STANDBY_CASES[case]
    log = StandbyLog(window_ms=10_000, deadband={4: 0.5})
    for ts, values in polls:
        log.observe({pid: (v, 0) for pid, v in values.items()}, ts)
    got = log.replay({pid: ((v, q[0] if q else 0), ts) for pid, (v, ts, *q) in redis_now.items()})
    assert got == [{pid: ((v, 0), ts) for pid, (v, ts) in b.items()} for b in expected]
    assert not log.entries


def test_standby_log_is_bounded_and_reset_while_holding() -> None:
    log = StandbyLog(window_ms=1000, max_entries=3)
    for i in range(10):
        log.observe({1: (i, 0)}, 1000 + i)
    assert [e[0] for e in log.entries] == [1007, 1008, 1009]
    log.observe({1: (99, 0)}, 5000)
    assert [e[0] for e in log.entries] == [5000]  # older than the window: gone
    log.holding({1: (100, 0)})
    assert not log.entries and log.last == {1: (100, 0)}


@pytest.mark.parametrize(("replay_due", "kept"), [
    (False, []),               # holding, nothing to replay: the log goes
    (True, [(1200, 1, (2, 0)), (2400, 1, (3, 0))]),  # a poll before the gain's replay read the log: kept for it
])
def test_standby_log_kept_while_its_replay_is_due(replay_due: bool, kept: list) -> None:
    log = StandbyLog(window_ms=10_000)
    for ts, v in ((0, 1), (1200, 2), (2400, 3)):
        log.observe({1: (v, 0)}, ts)
    log.holding({1: (4, 0)}, replay_due)
    assert list(log.entries) == kept and log.last == {1: (4, 0)}
    assert log.replay({1: ((1, 0), 100)}) == [{1: ((2, 0), 1200)}, {1: ((3, 0), 2400)}][:len(kept)]


# --- what a new holder writes at the lease gain itself (poll 1000 ms, values not current past 3000 ms) ----
@pytest.mark.parametrize(("poll_age_ms", "reaches", "expected"), [
    (0, True, AtGain(replay=True, image=True)),       # polled just now: replay, then the image of that poll
    (999, True, AtGain(replay=True, image=True)),     # younger than one period: as current as any value between polls
    (1000, True, AtGain(replay=True, image=False)),   # a period old (poll late or slow): the image waits for it
    (3000, True, AtGain(replay=True, image=False)),   # the replay's last values are within the staleness rule
    (3001, True, AtGain(replay=False, image=False)),  # past it: written as good they would look current; wait
    (500, False, AtGain(replay=False, image=False)),  # device not reached (lease taken to invalidate): nothing
    (-1, True, AtGain(replay=False, image=False)),    # never polled
])
def test_at_lease_gain(poll_age_ms: int, reaches: bool, expected: AtGain) -> None:
    assert at_lease_gain(poll_age_ms, 1000, 3000, reaches) == expected


@pytest.mark.parametrize(("node", "ip", "problem"), [
    ("A", "198.18.0.1", None),
    ("B", "198.18.0.2", None),
    ("B", "198.18.0.1", "[node] id is B but ip 198.18.0.1 is T020_UNION IP1, i.e. node A"),
    ("A", "198.18.0.2", "[node] id is A but ip 198.18.0.2 is T020_UNION IP2, i.e. node B"),
    ("A", "198.18.0.9", "[node] ip 198.18.0.9 is neither T020_UNION IP1 (198.18.0.1) nor IP2 (198.18.0.2)"),
])
def test_identity_against_t020_union(node: str, ip: str, problem: str | None) -> None:
    model = Model(rtus={}, ip1="198.18.0.1", ip2="198.18.0.2", gen=1)
    got = model.identity_problem(node, ip)
    assert got == problem if problem is None else got is not None and got.startswith(problem)


@pytest.mark.parametrize(("elapsed", "failing_for", "expected"), [
    (0.01, None, 0.99),   # the last tick went through: the rest of lease_tick_s
    (0.01, 0.0, 0.2),     # refused now (the VIP leads to a Redis not yet promoted): again after role_watch_s
    (0.01, 2.9, 0.2),     # still within lease_ttl_s: the lease may be alive on the new master
    (0.01, 3.0, 0.99),    # past lease_ttl_s: the lease has lapsed anyway, the normal cadence
    (0.9, 0.5, 0.1),      # the rest of the period when shorter
    (1.5, None, 0.05),    # a tick longer than the period: never at once (a refusing master not hammered)
    (0.0, 0.1, 0.2),
])
def test_tick_delay(elapsed, failing_for, expected):
    assert tick_delay(1.0, elapsed, 0.2, failing_for, 3.0) == pytest.approx(expected)


# one round trip: (lease epoch, sizes of the new writes, outcome of each write sent) ->
# (sequences sent in order, those dropped before it, those neither in Redis nor kept after it)
S, F, E = OK, FENCED, FAILED  # written (now or before), fenced out, error or time-out
RESEND = {
    "a failed write is re-sent first, before the newer one": (
        9, [(1, [2], [E]), (1, [1], [S, S])], [([1], [], []), ([1, 2], [], [])], []),
    "still failing: kept in order, all re-sent by each round trip, even one with nothing new": (
        9, [(1, [2], [E]), (1, [1], [E, E]), (1, [], [S, S])],
        [([1], [], []), ([1, 2], [], []), ([1, 2], [], [])], []),
    "the older re-sent and written, the newer failed: only the newer kept": (
        9, [(1, [1], [E]), (1, [1], [S, E]), (1, [], [S])], [([1], [], []), ([1, 2], [], []), ([2], [], [])], []),
    "past the bound a failed write is not kept (the seed's rule); a smaller one that fits is": (
        3, [(1, [2], [E]), (1, [2], [E, E]), (1, [1], [E, E])],
        [([1], [], []), ([1, 2], [], [2]), ([1, 3], [], [])], [1, 3]),
    "fenced: the lease is lost, nothing kept is re-sent": (
        9, [(1, [1], [E]), (1, [1], [F, F]), (1, [1], [S])], [([1], [], []), ([1, 2], [], [1, 2]), ([3], [], [])],
        []),
    "a lease held again under a new epoch: the writes of the former one are dropped, never sent": (
        9, [(1, [1], [E]), (2, [1], [S])], [([1], [], []), ([2], [1], [])], []),
}


@pytest.mark.parametrize("case", list(RESEND))
def test_resend_queue(case):
    bound, trips, expected, kept = RESEND[case]
    q = ResendQueue(max_changes=bound)
    got = []
    for epoch, sizes, outcomes in trips:
        writes, dropped = q.due(epoch)
        writes += [Kept(q.next_seq(), epoch, {i: (0, 0) for i in range(n)}, []) for n in sizes]
        assert len(writes) == len(outcomes), case
        unkept = [u.seq for w, o in zip(writes, outcomes, strict=True) for u in q.settle(w, o)]
        got.append(([w.seq for w in writes], [d.seq for d in dropped], unkept))
    assert got == expected
    assert [k.seq for k in q.kept] == kept and q.size == sum(len(k.changes) for k in q.kept)
