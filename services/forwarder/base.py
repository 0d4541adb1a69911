"""The interface every forwarding protocol server implements (se104s, modbus_trains, sefeps).

The forwarder's runner owns Redis: it loads the full image and follows the change stream, and hands each
server only the values of its own forwarding points, in stream order. A server owns its sockets and its
protocol; for a control it calls `ControlSink.execute` and answers its master with the result. A vendor
codec for sefeps can replace ours by implementing this same class.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import socket
import ssl
import struct
import termios
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from fepha.controls import time_left_ms
from fepha.logsetup import OnceLogger
from fepha.points import Value
from fepha.semodel.model import FwdPoint, Model, Rtu

from .allow import Allowlist, peer_host, peer_name
from .drain import CLOSE, REFUSED, SINK_MARGIN_S, WAIT, Drain
from .resume import ZERO, Sid, parse_id, prune_floor, sid_text

OUT_OF_RANGE = "value out of range"
"""The reason of a control refused because its value in the source's units (the master's divided by COEF)
is not a finite number: nothing such reaches the device (`ForwardServer.run_control`)."""

CATCH_UP_S = 2.0
"""How long a master that resumes from its cursor waits for this node's runner to reach the change stream's
head as it stood at the master's start (`ForwardServer.caught_up`): the runner reads on at once, so this takes
milliseconds unless it has a backlog; bounded so that a stuck runner delays a master's start, never stops
it (it is then resumed as before, the entries not yet read reaching it after its image)."""


@dataclass(frozen=True, slots=True)
class Update:
    """A new value of a forwarding point (the source point's value; the server applies COEF/type)."""

    fwd: FwdPoint
    value: Value
    sid: Sid = ZERO
    """The change-stream entry it came from ((0, 0) in a full image): what masters' cursors count."""


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    ok: bool
    state: str  # done, failed, expired, unknown, rejected
    reason: str = ""


class ControlSink(Protocol):
    async def execute(self, fwd: FwdPoint, value: float, origin: str,
                      timeout_ms: int | None = None) -> ControlOutcome:
        """Run a control on the source point of `fwd` (a ZFDO/ZFAO row) through the lease holder;
        `value` is in engineering units of the source point. Never raises for a failed control."""
        ...


class StallWatch:
    """When was this process last able to read its sockets? A request read right after the event loop was
    stalled (the process SIGSTOPped, starved of CPU, swapped out) may have waited in the kernel's socket
    buffer for the whole stall: its master sent it that long ago, may have given up on it and closed the
    connection, and its control must not run as if it had just arrived. A timer chain ticks every TICK_S; a gap
    over STALL_S between two ticks is a stall. `possible_age_s()` is how long a request being handled now
    may have waited unread: the stall still going on (the ticker not yet run after it), or one that ended
    within GRACE_S (requests read in the burst after it), else 0."""

    TICK_S = 0.1
    STALL_S = 1.0
    GRACE_S = 0.5

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.stall: tuple[float, float] | None = None  # (start, end) of the last stall
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listeners: list[Callable[[float], None]] = []
        """Called with the stall's length when one is seen: from the loop's first timers after it, so before
        the requests read after it are handled (their handling starts in the next iteration)."""

    def ensure_running(self) -> None:
        """Start ticking on the running loop (a chain of call_later, not a task: nothing to stop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or loop.is_closed():
            self._loop, self.last, self.stall = loop, time.monotonic(), None
            loop.call_later(self.TICK_S, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # a loop of the past (tests run one per test)
        now = time.monotonic()
        stalled = now - self.last > self.STALL_S
        if stalled:
            self.stall = (self.last, now)
        self.last = now
        loop.call_later(self.TICK_S, self._tick, loop)
        if stalled:
            for listener in list(self.listeners):
                listener(now - self.stall[0])  # type: ignore[index]

    def possible_age_s(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if now - self.last > self.STALL_S:
            return now - self.last
        if self.stall is not None and now - self.stall[1] <= self.GRACE_S:
            return now - self.stall[0]
        return 0.0


STALLS = StallWatch()
"""The process's one watch (every server's run_control asks it)."""


def closed_during_stall(writer: asyncio.StreamWriter) -> bool:
    """True for a request read right after a stall (`STALLS.possible_age_s()`) from a connection whose master
    has closed it meanwhile: its FIN (or a reset) waits in the socket behind what was read. That master gave
    up on the request (an IEC 104 master closes at t1 when its command is not acknowledged, and t1 can be
    shorter than the control timeout) and nobody can be told its outcome: run, it could run twice when the
    operator sends it again on a new connection. Only asked after a stall: one peek at the socket."""
    if not STALLS.possible_age_s():
        return False
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:  # asyncio's own socket object forbids recv
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # nothing more sent, the connection open
    except OSError:
        return True  # reset, or already closed


PEER_LOG_EVERY_S = 60.0
"""A connection closed for a peer's fault (a failed TLS handshake, one over `[forwarder] opening_max`) is logged
at most once per peer address and reason in this time (`PeerFailureLog`)."""


class PeerFailureLog:
    """The log lines of one server's connections closed for one kind of fault of their peer (`event`: "TLS
    handshake failed", "refused"). Each closes its one connection; a line (naming the peer and why) is
    written for the first one of an address for a reason, then at most once per PEER_LOG_EVERY_S for that
    address and reason, saying how many were not logged since: a peer retrying every few seconds, or a scan
    opening thousands of connections, does not fill the log, and a failure for another reason is not hidden
    behind it. WARNING, but INFO for a peer that closed before the handshake ended (`quiet`: a TCP port probe
    connects and closes without a word). At most MAX_KEYS (address, reason) are remembered (a flood of
    addresses: the oldest are forgotten)."""

    MAX_KEYS = 1000

    def __init__(self, log: logging.Logger, what: str, event: str) -> None:
        self.log = log
        self.what = what  # "se104s RTU 10"
        self.event = event  # "TLS handshake failed"
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}  # (host, why) -> (last logged, not logged since)

    def failed(self, peer: str, why: str, now: float | None = None, quiet: bool = False) -> None:
        now = time.monotonic() if now is None else now
        key = (peer.rsplit(":", 1)[0], why)
        last, unlogged = self.seen.pop(key, (-math.inf, 0))
        if now - last < PEER_LOG_EVERY_S:
            self.seen[key] = (last, unlogged + 1)
            return
        while len(self.seen) >= self.MAX_KEYS:
            del self.seen[next(iter(self.seen))]
        self.seen[key] = (now, 0)
        more = f" ({unlogged} more from {key[0]} since its last such line)" if unlogged else ""
        self.log.log(logging.INFO if quiet else logging.WARNING, "%s: master %s: %s (%s): connection closed%s",
                     self.what, peer, self.event, why, more)


class Opening:
    """The connections of one server still in their opening, per peer address, at most `limit` at once
    (`[forwarder] opening_max`): from the accept to the end of the TLS handshake and then of the protocol's
    opening (se104s: the master's first complete frame; sefeps: its hello; modbus_trains: its first complete
    request). A connection that would be one more from its address is closed at once, before its handshake
    (`enter` returns None: the caller aborts it), counted (`connections_opening_refused`) and logged by
    `refusals` (one line per address a minute). A peer, or a scan, that opens thousands of silent connections
    so holds at most `limit` sockets of this process, until its handshakes time out (t0, handshake_s) or
    the protocol's own timers close them; the masters of other addresses are served meanwhile."""

    def __init__(self, limit: int, counts: Counters, refusals: PeerFailureLog) -> None:
        self.limit = limit
        self.counts = counts
        self.refusals = refusals
        self.held: dict[str, int] = {}  # host -> its connections in their opening

    def enter(self, host: str, peer: str) -> OpeningSlot | None:
        """A slot for a connection just accepted from `host` (`peer`: address:port, for the line), None when
        `host` holds `limit` already (counted, logged: the caller closes the connection at once)."""
        n = self.held.get(host, 0)
        if n >= self.limit:
            self.counts.connections_opening_refused += 1
            self.refusals.failed(peer, f"{n} connections from {host} in their opening already, "
                                 "[forwarder] opening_max")
            return None
        self.held[host] = n + 1
        return OpeningSlot(self, host)

    def leave(self, host: str) -> None:
        n = self.held.get(host, 0) - 1
        if n > 0:
            self.held[host] = n
        else:
            self.held.pop(host, None)


class OpeningSlot:
    """One connection's place among its address's openings: `done()` frees it (idempotent), when its protocol
    says the opening is over or the connection ends, whichever comes first."""

    __slots__ = ("host", "opening")

    def __init__(self, opening: Opening | None, host: str) -> None:
        self.opening = opening
        self.host = host

    def done(self) -> None:
        if self.opening is not None:
            self.opening.leave(self.host)
            self.opening = None

    @property
    def open(self) -> bool:
        """True while the connection is still in its opening."""
        return self.opening is not None


CRL_VERIFY_ERRORS = {
    23: "certificate revoked: [tls] crl lists it",  # X509_V_ERR_CERT_REVOKED
    3: "no CRL of its certificate's issuer in [tls] crl",  # X509_V_ERR_UNABLE_TO_GET_CRL
    12: "[tls] crl has expired (its nextUpdate passed): a newer CRL is needed",  # X509_V_ERR_CRL_HAS_EXPIRED
    11: "[tls] crl is not yet valid (its thisUpdate is ahead of this clock)",  # X509_V_ERR_CRL_NOT_YET_VALID
    8: "a CRL in [tls] crl has a bad signature (not signed by its CA?)",  # X509_V_ERR_CRL_SIGNATURE_FAILURE
}
"""The reasons of a client certificate refused by the CRL check (`[tls] crl`), by OpenSSL's verify code."""


def tls_failure(exc: BaseException, timeout_s: float, bound: str,
                minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> str:
    """Why a server-side TLS handshake failed, for an operator (`ForwardServer.tls_accept`; `minimum`: the
    context's lowest TLS version, `[tls] min_version`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if (why := CRL_VERIFY_ERRORS.get(exc.verify_code)) is not None:
            return why
        return f"its certificate was not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "it sent no client certificate, and [tls] ca requires one"
        if reason in ("UNSUPPORTED_PROTOCOL", "WRONG_SSL_VERSION", "TLSV1_ALERT_PROTOCOL_VERSION"):
            return f"it offered only a TLS version below {'1.3' if minimum == ssl.TLSVersion.TLSv1_3 else '1.2'}"
        if reason == "NO_SHARED_CIPHER":
            return "it offered no cipher suite that [tls] ciphers allows"
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL",
                      "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"):
            return f"what it sent is not TLS (a master without TLS?): {reason}"
        if reason.startswith("TLSV1_ALERT_") or reason.startswith("SSLV3_ALERT_"):
            return f"it aborted the handshake with an alert: {reason}"
        return f"{reason or exc.__class__.__name__}: {exc.strerror or exc}"
    if isinstance(exc, ConnectionAbortedError):  # asyncio's handshake timeout
        return f"not completed within {timeout_s:g} s ({bound})"
    if isinstance(exc, (ConnectionError, EOFError)):
        return "the master closed the connection during the handshake"
    return f"{exc.__class__.__name__}: {exc}"


def close_once(writer: asyncio.StreamWriter) -> None:
    """`writer.close()` unless its transport is closing already. Python 3.11's TLS transport forgets its
    connection at a second close() (or a close() after it failed on its own: garbage from the peer): its
    get_write_buffer_size() then raises AttributeError and its abort() does nothing."""
    if not writer.transport.is_closing():
        writer.close()


OPENING_MAX = 16
"""`[forwarder] opening_max`'s default: a server given no `opening_max` option bounds its openings so."""


@dataclass
class Counters:
    """Monotonic counters of one server since it started; the field names are the metric names of
    docs/keyspace.md. The runner adds their increases to the node's metrics hash once a second."""

    events_sent: int = 0
    events_buffered: int = 0  # se104s: events kept while no master had started data transfer
    events_dropped: int = 0
    controls: int = 0
    controls_ok: int = 0
    control_latency_ms_sum: int = 0
    connections_refused: int = 0  # peers not in T004_RTU.ALLOW
    connections_opening_refused: int = 0  # over [forwarder] opening_max from their address (`Opening`)
    tls_handshakes_failed: int = 0  # failed or timed out (`ForwardServer.tls_accept`)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class ForwardServer(abc.ABC):
    """One forwarding RTU's server on this node.

    Common to every protocol: `counts` (one `Counters`), `admit` (the ALLOW check at accept) and
    `run_control` (count, time and run one control through the ControlSink)."""

    protocol: ClassVar[str]
    log: ClassVar[logging.Logger] = logging.getLogger("fep_forwarder")

    def __init__(self, rtu: Rtu, model: Model, bind: str, controls: ControlSink, node: str,
                 tls: ssl.SSLContext | None = None, **options: Any) -> None:
        self.rtu = rtu
        self.model = model
        self.bind = bind
        self.controls = controls
        self.node = node
        self.tls = tls
        self.options = options
        self.counts = Counters()
        self.once = OnceLogger(self.log)
        self.allowlist = Allowlist(rtu.allow)
        self.control_timeout_ms: int | None = options.get("control_timeout_ms")
        self._acked: dict[str, Sid] = {}  # newest cursor per master identity seen by this server
        self._dirty: dict[str, Sid] = {}  # not yet taken by the runner
        self._known: dict[str, Sid] = {}  # read from Redis by the runner
        self.draining: Drain | None = None  # the planned stop's drain, once started (`drain`)
        self._in_flight: dict[object, float] = {}  # controls handed to the sink -> their deadline (monotonic)
        self.image_ready = asyncio.Event()  # set by the first image (the history starts there)
        self._moved = asyncio.Event()  # set whenever `position` moves; `caught_up` clears it, then waits on it
        self.tls_failures = PeerFailureLog(self.log, f"{self.protocol} RTU {rtu.id}", "TLS handshake failed")
        self.opening = Opening(int(options.get("opening_max") or OPENING_MAX), self.counts,
                               PeerFailureLog(self.log, f"{self.protocol} RTU {rtu.id}", "refused"))
        self._handshakes: set[asyncio.Task[Any]] = set()  # connections in their TLS handshake (`tls_accept`)
        self._tls_sessions: dict[asyncio.StreamWriter, str] = {}  # connections past it -> their peer (`close_distrusted`)
        self._distrusted: dict[asyncio.StreamWriter, str] = {}  # those `close_distrusted` closed -> why (`left_why`)
        self._distrusts: Callable[[bytes], tuple[str, str] | None] | None = None  # the last `close_distrusted` check

    def admit(self, host: str) -> bool:
        """The ALLOW check of a just-accepted connection from `host`: False (counted, and logged once
        per address) when the caller must close it without reading anything."""
        if self.allowlist.permits(host):
            return True
        self.counts.connections_refused += 1
        if (line := self.allowlist.first_refusal(host)) is not None:
            self.log.warning("%s RTU %s: %s", self.protocol, self.rtu.id, line)
        return False

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The handler of each connection of a streams server (se104s, sefeps): `T004_RTU.ALLOW` (`admit`),
        a place among its address's openings (`opening`; none left: closed at once, before any handshake),
        the TLS handshake (`tls_accept`, bounded by `handshake_bound`), then the protocol (`serve`), which
        frees the place (`slot.done()`) when its opening is over; freed here at the latest, when the
        connection ends."""
        peername = writer.get_extra_info("peername")
        host = peer_host(peername)
        if not self.admit(host):  # T004_RTU.ALLOW
            writer.transport.abort()
            return
        peer = peer_name(peername)
        slot = self.opening.enter(host, peer)
        if slot is None:  # [forwarder] opening_max: counted, logged
            writer.transport.abort()
            return
        try:
            if (tls := self.tls) is not None:
                if not await self.tls_accept(writer, peer, *self.handshake_bound()):
                    return  # closed, logged
                self._tls_sessions[writer] = peer
                if self.tls is not tls and self._distrust(writer, peer):
                    return  # its handshake checked against the files before a change made meanwhile
            await self.serve(reader, writer, slot)
        finally:
            slot.done()
            self._tls_sessions.pop(writer, None)
            self._distrusted.pop(writer, None)

    def handshake_bound(self) -> tuple[float, str]:
        """How long a TLS handshake may take here, and the setting that says so (`accept`)."""
        raise NotImplementedError

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: OpeningSlot) -> None:
        """A streams server's protocol on a connection admitted (and through TLS, with TLS): calls `slot.done()`
        once the connection's opening is over (its first complete frame, its hello)."""
        raise NotImplementedError

    async def tls_accept(self, writer: asyncio.StreamWriter, peer: str, timeout_s: float, bound: str) -> bool:
        """The TLS handshake of a connection just accepted (and admitted: a refused address costs no
        handshake), run in its handler, bounded by `timeout_s` (the setting `bound` names). True when it
        succeeded (the writer and its reader speak through TLS from now on). False when it failed, timed
        out, or the server stopped meanwhile (`stop_handshakes`): the connection is then closed, a failure
        logged by `tls_failures` (its peer and why, never a traceback). Run here rather than by
        `start_server(ssl=...)`, which drops a failed handshake without a word (asyncio logs those only in
        debug mode), after the ALLOW check instead of before it, and leaves it running at `stop`.
        Race-free on CPython's event loop: the handler's first step runs before the connection's first
        read callback, and `start_tls` pauses reading before it yields, so the ClientHello reaches TLS."""
        tls = self.tls  # the context of this connection (a new [tls] crl replaces it for the next ones)
        assert tls is not None
        task = asyncio.current_task()
        if task is not None:
            self._handshakes.add(task)
        try:
            await writer.start_tls(tls, ssl_handshake_timeout=timeout_s)
            return True
        except asyncio.CancelledError:  # the server stops; a stream handler that ends cancelled is logged
            writer.transport.abort()  # as an error by asyncio (3.11): this one returns
            return False
        except Exception as exc:  # noqa: BLE001 - ssl.SSLError, a reset, the timeout: that connection only
            quiet = isinstance(exc, (ConnectionResetError, EOFError))  # it went away (a port probe does)
            self.counts.tls_handshakes_failed += 1
            self.tls_failures.failed(peer, tls_failure(exc, timeout_s, bound, tls.minimum_version), quiet=quiet)
            writer.transport.abort()
            return False
        finally:
            if task is not None:
                self._handshakes.discard(task)

    def tls_on_plain_port(self, first: bytes) -> str | None:
        """Why a master is closed whose first octets `first` start a TLS handshake (a ClientHello) at this
        server without TLS; None for anything else (the protocol's own error applies)."""
        if self.tls is None and len(first) >= 2 and first[0] == 0x16 and first[1] == 0x03:
            return "a TLS ClientHello: this server has no [tls] cert and speaks plain TCP"
        return None

    @staticmethod
    def tls_read_failure(exc: ssl.SSLError) -> str:
        """Why reading an established TLS connection failed (what the line closing it says)."""
        reason = exc.reason or str(exc)
        if "_ALERT_" in reason:  # the peer's fatal alert (a master giving up, e.g. on its refused renegotiation)
            return f"the master ended TLS with a fatal alert: {reason}"
        return f"TLS record not valid: {reason}"

    def close_distrusted(self, distrusts: Callable[[bytes], tuple[str, str] | None]) -> int:
        """Close the TLS sessions whose master's certificate `distrusts` says is no longer accepted (revoked by
        a new [tls] crl, no longer trusted by a new [tls] ca: IEC 62351-3, such a certificate's sessions end),
        one WARNING each (`distrusts`' first words): -> how many."""
        self._distrusts = distrusts  # a handshake in progress meanwhile is checked by it once done (`accept`)
        return sum(self._distrust(writer, peer) for writer, peer in list(self._tls_sessions.items()))

    def _distrust(self, writer: asyncio.StreamWriter, peer: str) -> bool:
        """Close the TLS session of `writer` when the last `close_distrusted` check says its master's certificate
        is no longer accepted (one WARNING): True when it did."""
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        why = self._distrusts(der) if der and self._distrusts is not None else None
        if why is None or writer.transport.is_closing():
            return False
        self.log.warning("%s RTU %s: master %s: %s: connection closed", self.protocol, self.rtu.id, peer, why[0])
        self._distrusted[writer] = why[1]
        writer.transport.abort()
        return True

    def left_why(self, writer: asyncio.StreamWriter, why: str) -> str:
        """Why the connection of `writer` ended, for the protocol's line that says its master left: `why`,
        unless `close_distrusted` closed it (the master then seems to have closed it)."""
        return self._distrusted.get(writer, why)

    async def stop_handshakes(self) -> None:
        """Close the connections still in their TLS handshake (`stop`): their handlers return."""
        tasks = list(self._handshakes)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run_control(self, fwd: FwdPoint, value: float, origin: str,
                          timeout_ms: int | None = None, not_after_ms: int | None = None) -> ControlOutcome:
        """Run one control on `fwd`'s source point (engineering units) through the ControlSink, counting
        it (controls, controls_ok, control_latency_ms_sum). Never raises but for cancellation: a sink
        that raises is logged once and answered as failed, so the master always gets an answer.
        `timeout_ms`: what is left of the request's time (default: the server's control timeout);
        `not_after_ms`: a wall-clock limit (a time-tagged command's tag + its maximum age), which cuts it."""
        self.counts.controls += 1
        t0 = time.monotonic()
        if not math.isfinite(value):  # a finite command value divided by a COEF below 1 can overflow
            self.log.warning("%s RTU %s control %s=%s from %s: refused: %s", self.protocol, self.rtu.id, fwd.id,
                             value, origin, OUT_OF_RANGE)
            return ControlOutcome(False, "rejected", OUT_OF_RANGE)
        if self.draining is not None:  # planned stop: answered negatively at once, never queued
            self.log.info("%s RTU %s control %s=%s from %s: refused: %s", self.protocol, self.rtu.id, fwd.id,
                          value, origin, REFUSED)
            return ControlOutcome(False, "rejected", REFUSED)
        if timeout_ms is None:
            timeout_ms = self.control_timeout_ms or getattr(self.controls, "timeout_ms", None)
        timeout_ms = time_left_ms(timeout_ms, not_after_ms, int(time.time() * 1000))
        late = "its time tag's maximum age passed before it could be run"
        stalled_s = STALLS.possible_age_s(t0)
        if stalled_s and timeout_ms is not None and timeout_ms > 0:
            # read right after the process was stalled: it may have waited unread that long; only what is
            # left of its time (if anything) is given to it, so it never runs after its deadline
            timeout_ms -= int(stalled_s * 1000)
            late = (f"it may have waited {stalled_s:.1f} s unread while this forwarder was stalled (stopped or "
                    "starved), past its deadline")
        if timeout_ms is not None and timeout_ms <= 0:
            out = ControlOutcome(False, "expired", f"not run: {late}")
            self.log.warning("%s RTU %s control %s=%s from %s: %s", self.protocol, self.rtu.id, fwd.id, value,
                             origin, out.reason)
            return out
        token = object()  # in flight until its outcome: a planned stop waits for it (`drain`)
        self._in_flight[token] = (t0 + timeout_ms / 1000 + SINK_MARGIN_S) if timeout_ms is not None else math.inf
        try:
            out = await self.controls.execute(fwd, value, origin, timeout_ms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  a sink must not raise; the master still gets an answer
            self.once.problem(f"{self.protocol} RTU {self.rtu.id} controls", f"control sink raised {exc!r}")
            out = ControlOutcome(False, "failed", "internal error")
        finally:
            del self._in_flight[token]
            if self.draining is not None:
                self.draining.outcome(time.monotonic())
        self.counts.control_latency_ms_sum += int((time.monotonic() - t0) * 1000)
        if out.ok:
            self.counts.controls_ok += 1
        else:
            self.log.info("%s RTU %s control %s=%s from %s: %s %s", self.protocol, self.rtu.id, fwd.id, value,
                          origin, out.state, out.reason)
        return out

    async def drain(self, bound_s: float) -> str:
        """The planned stop (SIGTERM): from now on refuse every new control (`run_control`), and wait for the
        controls in flight to get their outcome and for their answers to be sent, as `Drain` rules (each
        control at most until its own deadline, the whole at most `bound_s`). Values keep flowing
        meanwhile; the runner calls `stop` afterwards, or cancels it at a second signal. Returns why the wait
        ended (logged)."""
        rule = self.draining = Drain(time.monotonic(), bound_s)
        try:
            while (v := rule.verdict(time.monotonic(), list(self._in_flight.values()),
                                     self.unanswered())).action == WAIT:
                await asyncio.sleep(DRAIN_POLL_S)
        except asyncio.CancelledError:  # a second signal: the runner closes at once
            self.log.warning("%s RTU %s: planned stop cut short by a second signal after %.2f s: %d control(s) in "
                             "flight and %d answer(s) unsent, their outcome unknown to their masters", self.protocol,
                             self.rtu.id, time.monotonic() - rule.started, len(self._in_flight), self.unanswered())
            raise
        took = time.monotonic() - rule.started
        (self.log.info if v.action == CLOSE else self.log.warning)(
            "%s RTU %s: planned stop: %s after %.2f s", self.protocol, self.rtu.id, v.why, took)
        return v.why

    def unanswered(self) -> int:
        """Answers to controls queued and not yet written to their master's socket (the drain waits for
        them); a server that writes an answer as soon as its control's outcome is known has none."""
        return 0

    @abc.abstractmethod
    async def start(self) -> None:
        """Bind and listen; raise OSError when the port cannot be bound."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close the listener and every connection; leave no task running."""

    @abc.abstractmethod
    def load_image(self, updates: Sequence[Update]) -> None:
        """Replace the whole image (start, reconnect, stream gap). Not spontaneous data: masters get it
        by interrogation (or, for sefeps, as a full image message)."""

    @abc.abstractmethod
    def apply(self, updates: Sequence[Update]) -> None:
        """Changes in stream order: update the image and send them as spontaneous data."""

    @abc.abstractmethod
    def clients(self) -> dict[str, dict[str, Any]]:
        """Connected masters: peer address -> state (for the api and metrics)."""

    def queue_depth(self) -> int:
        """Events waiting to be sent, summed over connections and buffers."""
        return 0

    on_clients_changed: Callable[[], None] | None = None
    """Set by the runner: a server that calls it when a master connects or leaves gets its client list
    written at once; others are picked up by the runner's once-a-second housekeeping."""

    # --- where masters stand in the change stream (fep_forwarder.resume, docs/forwarder.md) ---------------

    position: Sid = ZERO
    """The newest change-stream entry the runner has handed this server (set by `advance`)."""
    on_acked: Callable[[], None] | None = None
    """Set by the runner: called when a master's cursor moved, so the runner writes it at once."""
    cursor_source: Callable[[int, str], Awaitable[Sid | None]] | None = None
    """Set by the runner: the cursor of (rtu, master identity) recorded in Redis, None when it has none."""
    stream_head: Callable[[], Awaitable[Sid | None]] | None = None
    """Set by the runner: the newest entry of the change stream in the local Redis now, None when it cannot
    be read (or the stream is empty)."""

    def advance(self, entry_id: str) -> None:
        """The runner has handed over everything up to stream entry `entry_id` (after each batch of
        entries, and before a full image with the image's position)."""
        self.position = max(self.position, parse_id(entry_id))
        self.advanced()
        self._moved.set()

    def image_at(self, entry_id: str, updates: Sequence[Update], past: Sequence[Update] = (),
                 since: Sid | None = None) -> None:
        """A full image as of stream entry `entry_id` (start, stream gap, Redis reconnect): the position
        moves to the image's entry first (the server's history starts there), then `load_image`, then the
        `advanced` hook. In that order a master with nothing outstanding does not follow the position to
        the image's entry before the image is its own (the entries before it were never sent to it): it
        has the image outstanding (sefeps) or its changed values queued (se104s) by then.

        `past`: the changes of the stream entries after `since` up to the image's (`resume.backfill_from`,
        read back by the runner), in stream order: they fill the history behind the image (`backfill`), so a
        master whose cursor is at or after `since` is resumed with them as events, as if this server had
        been running then."""
        self.position = max(self.position, parse_id(entry_id))
        self.load_image(updates)
        if since is not None:
            self.backfill(since, past)
        self.image_ready.set()
        self.advanced()
        self._moved.set()

    def history_max(self) -> int:
        """How many events this server's history keeps (0: none, nothing to resume): what the runner reads
        back from the stream for it at most."""
        return 0

    def backfill(self, since: Sid, past: Sequence[Update]) -> int:
        """Hook: fill the history, just started or reset by an image, with the changes `past` of the stream
        entries after `since` up to the image (stream order), encoded as the live path encodes them, not
        sent to anyone (connected masters have them, or get the image). Returns how many events it kept."""
        return 0

    def advanced(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Hook: the position moved (a server whose idle masters' cursors follow it updates them)."""

    forget_on_ack = False
    """`record_ack` prunes the history (`forget_acknowledged`), not only the once-a-second read (se104s:
    pruned once a second, the history of masters that keep up held a second of events, 10,000 at 10,000
    changes/s, dropped at once, a stall of milliseconds in the event loop). Not sefeps: a master resuming its session may
    go back behind its last `ack` and gets those events again from the history (docs/sefeps.md)."""

    def record_ack(self, identity: str, cursor: Sid) -> None:
        """A master's cursor moved forward: keep it for the runner to write (latest value wins); with
        `forget_on_ack`, forget at once what every known master has now (`forget_acknowledged`)."""
        if cursor > self._acked.get(identity, ZERO) and cursor > self._known.get(identity, ZERO):
            self._acked[identity] = cursor
            self._dirty[identity] = cursor
            if self.forget_on_ack:
                self.forget_acknowledged()
            if self.on_acked is not None:
                self.on_acked()

    def take_acked(self) -> dict[str, Sid]:
        """The cursors that moved since the last call (the runner writes them to `fep:fwd:ack:{rtu}`)."""
        dirty, self._dirty = self._dirty, {}
        return dirty

    def known_cursors(self) -> dict[str, Sid]:
        """Every known master's cursor: Redis's (`set_known`) merged with the newest ones of this server."""
        known = dict(self._known)
        for ident, c in self._acked.items():
            if c > known.get(ident, ZERO):
                known[ident] = c
        return known

    def set_known(self, cursors: dict[str, Sid]) -> None:
        """The runner's once-a-second read of `fep:fwd:ack:{rtu}` (local Redis)."""
        self._known = cursors
        self.forget_acknowledged()

    def forget_acknowledged(self) -> None:
        """Forget what every known master acknowledged (`resume.prune_floor`): on each acknowledgement
        that moves a cursor (`forget_on_ack`), on the once-a-second read of the recorded cursors, and when
        the history is full (`make_room`). A known master that is away keeps its events."""
        self.prune(prune_floor(self.known_cursors().values(), self.position))

    def prune(self, floor: Sid) -> None:  # noqa: B027 - an optional hook, empty by default
        """Hook: forget buffered events every known master acknowledged (sid <= floor)."""

    def make_room(self) -> None:
        """The history is full: forget what every known master has now (another node's masters' cursors
        are read once a second, and may be up to a second behind), before anything is dropped."""
        self.forget_acknowledged()

    async def master_cursor(self, identity: str) -> Sid | None:
        """The cursor of `identity`: Redis's (asked now, the freshest) or this server's, the newer."""
        fetched = None
        if self.cursor_source is not None:
            fetched = await self.cursor_source(self.rtu.id, identity)
        local = self._acked.get(identity)
        got = [c for c in (fetched, local) if c is not None]
        return max(got) if got else None

    async def resume_cursor(self, identity: str, wait_s: float = 5.0) -> Sid | None:
        """`master_cursor` of a master that starts now; when it has one, once the first image and the
        history behind it are loaded (at most `wait_s`): a master that starts in the moment between this
        server's listening and its image is resumed, not re-initialised. One without a cursor waits for
        nothing (it gets end of initialisation, or an image, anyway)."""
        cursor = await self.master_cursor(identity)
        if cursor is not None and not self.image_ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.image_ready.wait(), wait_s)
        if cursor is not None:
            await self.caught_up(identity)
        return cursor

    async def caught_up(self, identity: str, wait_s: float = CATCH_UP_S) -> bool:
        """Wait until this server has been handed the change stream up to its head as it stands now (the
        local Redis's newest entry, `stream_head`), at most `wait_s`. A master that resumes from its cursor
        (another node, or before a restart) missed the entries written meanwhile; those this node's runner
        has not read yet are not in the history, and would reach the master only later, as live changes,
        after (sefeps: dropped for) the image that follows the resumed events: their values would reach it
        only as the image's latest, the intermediate ones lost. True when caught up (or there is nothing to
        wait for: no head readable, Redis down, as before); False when `wait_s` passed first (logged)."""
        head = await self.stream_head() if self.stream_head is not None else None
        if head is None or self.position >= head:
            return True
        t0 = time.monotonic()
        end = t0 + wait_s
        while self.position < head:
            left = end - time.monotonic()
            if left <= 0:
                self.log.warning("%s RTU %s: master %s resumes before this node read the change stream up to %s "
                                 "(it is at %s after %g s): the changes not read yet reach it after its image",
                                 self.protocol, self.rtu.id, identity, sid_text(head), sid_text(self.position),
                                 wait_s)
                return False
            self._moved.clear()  # set again by the next move (no await since `position` was read)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), left)
        self.log.info("%s RTU %s: master %s resumes once this node read the change stream up to %s (%.3f s)",
                      self.protocol, self.rtu.id, identity, sid_text(head), time.monotonic() - t0)
        return True

    def counters(self) -> dict[str, int]:
        """`counts` as a dict (names from docs/keyspace.md); the runner adds their increases to the
        metrics hash."""
        return self.counts.as_dict()


SERVERS: dict[str, str] = {
    "se104s": "fep_forwarder.se104s:Se104Server",
    "modbus_trains": "fep_forwarder.modbus_trains:ModbusTrainsServer",
    "sefeps": "fep_forwarder.sefeps:SefepsServer",
}
"""Forwarding protocol (T004_RTU.PROTOCOL) -> "module:class" of its ForwardServer, imported on use so a
protocol's module is loaded only when a configuration has an RTU of it."""


def server_class(protocol: str) -> type[ForwardServer]:
    """The ForwardServer class of a protocol; KeyError for a protocol the validator would have rejected."""
    import importlib

    module, _, name = SERVERS[protocol].partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, ForwardServer)
    return cls


DRAIN_POLL_S = 0.02
"""How often a draining server looks at its controls in flight and its unsent answers."""

UNFLUSHED_GRACE_S = 1.0
"""How long a closed connection's unsent bytes may wait for the master to read them before the socket is
aborted (a master that never reads would otherwise hold it, and its buffer, for ever)."""


def abort_unflushed(writer: asyncio.StreamWriter, grace_s: float = UNFLUSHED_GRACE_S) -> None:
    """After `writer.close()`: abort the transport if what it still has to send is not gone in `grace_s`
    (asyncio's close() waits for the peer to read it, as long as the peer lives)."""
    transport = writer.transport
    if transport.get_write_buffer_size() > 0:
        asyncio.get_running_loop().call_later(grace_s, transport.abort)


def unsent_bytes(transport: asyncio.WriteTransport) -> int:
    """What `transport` still has to get to its peer: its own buffer plus the kernel's send queue (Linux
    TIOCOUTQ: bytes not yet acknowledged by the peer), so that a peer reading slowly behind megabytes of
    kernel buffer is seen making progress long before the kernel lets asyncio write again."""
    n = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return n


async def drain_unless_stalled(writer: asyncio.StreamWriter, stall_s: float) -> bool:
    """`writer.drain()`, False when nothing of what waits unsent (`unsent_bytes`) reached the peer for
    `stall_s` (the peer does not read). A slow peer that reads (a narrow link taking a large image) keeps
    making progress and is waited for."""
    transport = writer.transport
    left = unsent_bytes(transport)
    since = time.monotonic()
    while True:
        try:
            await asyncio.wait_for(writer.drain(), min(stall_s, 0.5))
            return True
        except TimeoutError:
            now_left = unsent_bytes(transport)
            if now_left < left:
                left, since = now_left, time.monotonic()
            elif time.monotonic() - since >= stall_s:
                return False
