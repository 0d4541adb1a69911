"""IEC 60870-5-104 link layer (APCI): one connection's state machine, without sockets or clocks.

Both ends of our IEC 104 connections use it: se104s (we are the controlled station, SCADA masters connect
to us), the acquirer's IEC 104 client (we are the controlling station, we connect to RTUs) and the
simulated RTU in tools/. The caller owns the socket and the clock: it feeds received bytes with
`receive(data, now)` and gets events back, calls `tick(now)` when `next_deadline()` is due, queues ASDUs
with `send(asdu, now)` while `window_open`, and writes whatever `data_to_send()` returns. The table tests in
tests/iec104/test_link.py drive it byte by byte.

What it does (IEC 60870-5-104 clause 5):
- I frames: send sequence numbers N(S), receive sequence numbers N(R), both modulo 2^15. A received
  N(S) other than the expected one, or an N(R) acknowledging a frame never sent, is a `ProtocolError`.
- k: at most k sent I frames unacknowledged (`window_open`); w: we acknowledge with an S frame at the latest
  after w received I frames (any I frame we send acknowledges too).
- t1: a sent I frame, TESTFR act, STARTDT act or STOPDT act without acknowledgement / confirmation within t1
  raises `LinkTimeout` (the caller closes the connection). t2: received I frames are acknowledged at the
  latest after t2. t3: after t3 without receiving anything we send TESTFR act. t0 (connection
  establishment) is the transport's: it is here so that all four timers are configured in one place.
- STARTDT / STOPDT / TESTFR: the controlled station (role SERVER) answers STARTDT act and STOPDT act with
  their confirmations and reports `Started` / `Stopped`; the controlling station (role CLIENT) sends them
  with `start()` / `stop()` and reports `Started` / `Stopped` on the confirmation. Both roles answer TESTFR
  act. A U frame only the other role may send is a `ProtocolError`.
- STOPDT act at the controlled station (IEC 60870-5-104 Ed. 2, its state diagram): data transfer stops at
  once (`Stopped`), received (confirmed) I frames not acknowledged yet are acknowledged with an S frame first, and
  STOPDT con waits until the peer acknowledged every I frame we sent ("pending unconfirmed stopped"; t1
  applies: no acknowledgement within t1 is a `LinkTimeout`).
- Data transfer stopped: no I frame is sent (`send` refuses) and a received I frame is a `ProtocolError`
  (the connection is closed), except at a controlling station waiting for its STOPDT con, which still
  takes what the controlled station had sent before it saw the STOPDT act.
- Confirmed before acknowledged: an acknowledgement (S frame, or the N(R) of an I frame we send) covers
  only the received I frames the application confirmed (`confirm`). By default every frame is confirmed as
  it is received (se104s, the simulated RTU); a link built with `confirm_by_caller=True` (the acquirer)
  acknowledges a frame only once the caller has written what it carried (a controlling station may hold
  its acknowledgement up to t2 < the peer's t1). w and t2 count from reception: once w frames are
  confirmed and unacknowledged, or the oldest confirmed one waits t2, the S frame goes; an unconfirmed
  frame is never acknowledged (past the peer's t1 the peer closes the connection and keeps it).
  `confirm(nr, now, at_once=True)` acknowledges what is confirmed now, without waiting for w or t2.
- Each sent I frame may carry a `tag` (whatever the caller needs: the events it holds): `Acked` returns the
  tags of acknowledged frames in order, `release_unacked()` hands back those still unacknowledged (to
  resend them on another connection when this one stops or dies).

The link enforces the window and the started state, not the application rules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import codec as c


class Role(StrEnum):
    SERVER = "server"  # controlled station: answers STARTDT/STOPDT
    CLIENT = "client"  # controlling station: sends STARTDT/STOPDT


class LinkTimeout(Exception):
    """t1 expired: the peer did not acknowledge or confirm in time; the connection must be closed."""


@dataclass(frozen=True, slots=True)
class LinkParams:
    """k, w and the timers (seconds). Defaults are the standard's."""

    k: int = 12
    w: int = 8
    t0: float = 30.0
    t1: float = 15.0
    t2: float = 10.0
    t3: float = 20.0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 32767 or not 1 <= self.w <= 32767:
            raise ValueError(f"k={self.k} and w={self.w} must be 1 .. 32767")
        if min(self.t0, self.t1, self.t2, self.t3) <= 0:
            raise ValueError("t0 .. t3 must be positive")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LinkParams:
        """The parameters present in `options` (keys k, w, t0 .. t3), defaults for the others."""
        d = cls()
        return cls(k=int(options.get("k", d.k)), w=int(options.get("w", d.w)),
                   t0=float(options.get("t0", d.t0)), t1=float(options.get("t1", d.t1)),
                   t2=float(options.get("t2", d.t2)), t3=float(options.get("t3", d.t3)))


@dataclass(frozen=True, slots=True)
class Started:
    """Data transfer started (server: STARTDT act received for the first time since stopped; client:
    STARTDT con received)."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """Data transfer stopped (server: STOPDT act received while started; client: STOPDT con received)."""


@dataclass(frozen=True, slots=True)
class AsduIn:
    """The ASDU of a received I frame, in sequence (parse it with codec.parse_asdu)."""

    asdu: bytes
    ns: int  # its send sequence number N(S): `confirm(ns + 1)` once what it carried is handled


@dataclass(frozen=True, slots=True)
class Acked:
    """The peer acknowledged sent I frames (the k window opened): their tags, oldest first (none for
    frames handed back by `release_unacked`)."""

    tags: tuple[Any, ...]


Event = Started | Stopped | AsduIn | Acked
STARTED, STOPPED = Started(), Stopped()


class Link:
    """One IEC 104 connection's APCI state. `now` is any monotonic clock in seconds."""

    def __init__(self, role: Role, params: LinkParams | None = None, now: float = 0.0,
                 confirm_by_caller: bool = False) -> None:
        self.role = role
        self.confirm_by_caller = confirm_by_caller
        self.params = params or LinkParams()
        self.started = False
        self.vs = 0  # next send sequence number
        self.vr = 0  # next expected receive sequence number
        self.ack = 0  # oldest send sequence number the peer has not acknowledged
        self._unacked: deque[tuple[int, float, Any]] = deque()  # (ns, sent at, tag)
        self.confirmed = 0  # received frames before this sequence number may be acknowledged
        self.rx_acked = 0  # the N(R) we last sent: received frames before it are acknowledged
        self._rx_times: deque[float] = deque()  # reception times of the frames rx_acked .. vr
        self.last_rx = now
        self._test_sent: float | None = None
        self._pending: tuple[int, float] | None = None  # client: (STARTDT/STOPDT act, sent at)
        self._stop_con_since: float | None = None  # server: STOPDT con owed once our I frames are acknowledged
        self._reader = c.FrameReader()
        self._out = bytearray()
        self.frames_in = 0
        self.frames_out = 0

    # --- state -----------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Sent I frames not acknowledged yet."""
        return c.seq_diff(self.vs, self.ack)

    @property
    def rx_unacked(self) -> int:
        """Received I frames we have not acknowledged yet (confirmed or not)."""
        return len(self._rx_times)

    @property
    def rx_unconfirmed(self) -> int:
        """Received I frames the caller has not confirmed yet."""
        return c.seq_diff(self.vr, self.confirmed)

    @property
    def window_open(self) -> bool:
        return self.in_flight < self.params.k

    @property
    def pending(self) -> int | None:
        """The U act (STARTDT_ACT / STOPDT_ACT) a client waits to see confirmed, if any."""
        return self._pending[0] if self._pending else None

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call (write it in this order)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _put(self, frame: bytes) -> None:
        self._out += frame
        self.frames_out += 1

    # --- sending ---------------------------------------------------------------------------------------

    def send(self, asdu: bytes, now: float, tag: Any = None) -> None:
        """Queue one I frame (it also acknowledges what we received). Data transfer must be started and the
        window open."""
        if not self.started:
            raise RuntimeError("data transfer is stopped: no I frame may be sent")
        if not self.window_open:
            raise RuntimeError(f"k window full ({self.in_flight} unacknowledged I frames)")
        self._put(c.i_frame(self.vs, self.confirmed, asdu))
        self._unacked.append((self.vs, now, tag))
        self.vs = (self.vs + 1) & 0x7FFF
        self._acked_up_to_confirmed()

    def confirm(self, nr: int, now: float, at_once: bool = False) -> None:
        """The received I frames before sequence number `nr` are handled (what they carried is written, or
        deliberately not needed): they may be acknowledged, at once if w of them wait or the oldest has
        waited t2, or with `at_once` (the acquirer: every frame handled is acknowledged when its read is
        written, so that the RTU holds as little already written as possible). ValueError for a number not
        received yet; one already confirmed changes nothing."""
        d = c.seq_diff(nr, self.rx_acked)
        if d > c.seq_diff(self.vr, self.rx_acked):
            raise ValueError(f"confirm({nr}): only frames before {self.vr} were received")
        if d > c.seq_diff(self.confirmed, self.rx_acked):
            self.confirmed = nr
        if at_once and self.confirmed != self.rx_acked:
            self._send_s()
        else:
            self._ack_if_due(now)

    def _acked_up_to_confirmed(self) -> None:
        for _ in range(c.seq_diff(self.confirmed, self.rx_acked)):
            self._rx_times.popleft()
        self.rx_acked = self.confirmed

    def _send_s(self) -> None:
        self._put(c.s_frame(self.confirmed))
        self._acked_up_to_confirmed()

    def _ack_if_due(self, now: float) -> None:
        """The S frame w or t2 calls for, covering what is confirmed."""
        n = c.seq_diff(self.confirmed, self.rx_acked)
        if n and (n >= self.params.w or now - self._rx_times[0] >= self.params.t2):
            self._send_s()

    def start(self, now: float) -> None:
        """Client: ask the controlled station to start data transfer (STARTDT act)."""
        self._client_act(c.STARTDT_ACT, now)

    def stop(self, now: float) -> None:
        """Client: ask the controlled station to stop data transfer (STOPDT act); `started` turns False at
        once (send no more commands), `Stopped` comes with the confirmation."""
        self._client_act(c.STOPDT_ACT, now)
        self.started = False

    def _client_act(self, code: int, now: float) -> None:
        if self.role is not Role.CLIENT:
            raise RuntimeError("only the controlling station sends STARTDT / STOPDT act")
        if self._pending is not None:
            raise RuntimeError(f"U frame 0x{self._pending[0]:02x} still waits for its confirmation")
        self._put(c.u_frame(code))
        self._pending = (code, now)

    def release_unacked(self) -> list[Any]:
        """Tags of the sent I frames not acknowledged yet, oldest first, and forget them (their sequence
        numbers stay valid for the peer's acknowledgements; t1 no longer runs for them)."""
        tags = [t for _, _, t in self._unacked]
        self._unacked.clear()
        return tags

    # --- receiving -------------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Feed received octets; returns the events of the complete frames among them, in order. Raises
        codec.ProtocolError for a frame that breaks the standard (close the connection)."""
        self.last_rx = now
        self._test_sent = None  # anything from the peer shows it is alive
        events: list[Event] = []
        for f in self._reader.feed(data):
            self.frames_in += 1
            if f.kind == "U":
                self._on_u(f.code, events, now)
                continue
            self._on_ack(f.nr, events)
            if f.kind == "S":
                continue
            if not self.started and self.pending != c.STOPDT_ACT:
                raise c.ProtocolError("I frame while data transfer is stopped")
            if f.ns != self.vr:
                raise c.ProtocolError(f"send sequence number {f.ns}, expected {self.vr}")
            self.vr = (self.vr + 1) & 0x7FFF
            self._rx_times.append(now)
            if not self.confirm_by_caller:
                self.confirmed = self.vr
                self._ack_if_due(now)
            events.append(AsduIn(f.asdu, f.ns))
        return events

    def _on_ack(self, nr: int, events: list[Event]) -> None:
        outstanding = c.seq_diff(self.vs, self.ack)
        newly = c.seq_diff(nr, self.ack)
        if newly > outstanding:
            raise c.ProtocolError(f"acknowledges {nr}, only {self.ack}..{self.vs} were sent")
        if not newly:
            return
        tags = []
        q = self._unacked
        while q and 0 < c.seq_diff(nr, q[0][0]) <= outstanding:
            tags.append(q.popleft()[2])
        self.ack = nr
        events.append(Acked(tuple(tags)))  # also without tags (released frames): the window opened
        if self._stop_con_since is not None and self.ack == self.vs:
            self._stop_con_since = None
            self._put(c.u_frame(c.STOPDT_CON))

    def _on_u(self, code: int, events: list[Event], now: float) -> None:
        if code == c.TESTFR_ACT:
            self._put(c.u_frame(c.TESTFR_CON))
        elif code == c.TESTFR_CON:
            pass  # _test_sent already cleared by receive()
        elif self.role is Role.SERVER:
            if code == c.STARTDT_ACT:
                self._stop_con_since = None  # started again: the STOPDT con still owed is moot
                self._put(c.u_frame(c.STARTDT_CON))
                if not self.started:
                    self.started = True
                    events.append(STARTED)
            elif code == c.STOPDT_ACT:
                if self.confirmed != self.rx_acked:  # what we received is acknowledged before the confirmation
                    self._send_s()
                if self.started:
                    self.started = False
                    events.append(STOPPED)
                if self.in_flight:  # pending unconfirmed stopped: the con once all we sent is acknowledged
                    if self._stop_con_since is None:
                        self._stop_con_since = now
                else:
                    self._put(c.u_frame(c.STOPDT_CON))
            else:
                raise c.ProtocolError(f"unexpected U frame 0x{code:02x} from a controlling station")
        else:
            want = {c.STARTDT_CON: c.STARTDT_ACT, c.STOPDT_CON: c.STOPDT_ACT}.get(code)
            if want is None or self.pending != want:
                raise c.ProtocolError(f"unexpected U frame 0x{code:02x} from a controlled station")
            self._pending = None
            if code == c.STARTDT_CON:
                self.started = True
                events.append(STARTED)
            else:
                events.append(STOPPED)

    # --- timers ----------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run the timers: may queue an S frame (t2) or TESTFR act (t3); raises LinkTimeout (t1)."""
        p = self.params
        if self._unacked and now - self._unacked[0][1] >= p.t1:
            raise LinkTimeout(f"I frame {self._unacked[0][0]} not acknowledged within t1={p.t1}s")
        if self._test_sent is not None and now - self._test_sent >= p.t1:
            raise LinkTimeout(f"no TESTFR con within t1={p.t1}s")
        if self._pending is not None and now - self._pending[1] >= p.t1:
            raise LinkTimeout(f"U frame 0x{self._pending[0]:02x} not confirmed within t1={p.t1}s")
        if self._stop_con_since is not None and now - self._stop_con_since >= p.t1:
            raise LinkTimeout(f"STOPDT act: our I frames not acknowledged within t1={p.t1}s")
        self._ack_if_due(now)
        if self._test_sent is None and now - self.last_rx >= p.t3:
            self._put(c.u_frame(c.TESTFR_ACT))
            self._test_sent = now

    def next_deadline(self) -> float:
        """The earliest time at which `tick` has something to do (a t1 expiry, t2 ack or t3 test)."""
        p = self.params
        times = [self.last_rx + p.t3 if self._test_sent is None else self._test_sent + p.t1]
        if self._unacked:
            times.append(self._unacked[0][1] + p.t1)
        if self._pending is not None:
            times.append(self._pending[1] + p.t1)
        if self._stop_con_since is not None:
            times.append(self._stop_con_since + p.t1)
        if self.confirmed != self.rx_acked:  # t2 of the oldest confirmed frame (unconfirmed ones wait)
            times.append(self._rx_times[0] + p.t2)
        return min(times)
