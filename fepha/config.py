"""`cfg/fep-ha.cfg` and `cfg/syslod.cfg`: INI files found through $FEPROOT, typed at start-up.

Every value can be overridden by an environment variable ``FEP_<SECTION>_<KEY>`` (upper case), which is
how containers configure a node. A bad value stops the program with one line naming the file, section,
key, the value and what is allowed (`ConfigError`); nothing is silently replaced by a default.
"""

from __future__ import annotations

import argparse
import configparser
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fepha.checks import shown, valid_host, valid_ip
from fepha.semodel.model import POLL_MS_RANGE


class ConfigError(Exception):
    """Configuration values that cannot be used: `problems` holds one line per problem (every problem of
    the files and variables at once, as `sysload check` lists SEMODEL.db's); str() joins them."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems: tuple[str, ...] = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


def feproot() -> Path:
    """The installation root: $FEPROOT, or the source tree this package sits in (development)."""
    env = os.environ.get("FEPROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent


# --- value parsers: each returns the typed value or raises ValueError with what is allowed ------------


TIMER_MIN_S, TIMER_MAX_S = 0.001, 86_400.0
"""The range of a time a seconds setting (every float one) may give. At most one day, as T004_RTU.POLLMS's
longest general interrogation period: '1e10' was taken, and the first socket given such a timeout (`[redis]
socket_timeout_s`) ended sysload and every service with a traceback (OverflowError). At least a millisecond,
since times are kept in Redis in whole ms: a `heartbeat_s` of 0.0001 gave the heartbeat key a lifetime of 0 ms,
which Redis refuses, so no heartbeat was ever written (and a loop on so short a period only spins)."""


def _positive(kind: type, zero: bool = False) -> Callable[[str], Any]:
    """A number > 0 (or 0 as well with `zero`, for periods where 0 means "never"); a float one is a time in
    seconds, TIMER_MIN_S ... TIMER_MAX_S."""
    if kind is float:
        what = (f"expected {'0 or ' if zero else ''}a number of seconds >= {TIMER_MIN_S:g} and "
                f"<= {TIMER_MAX_S:.0f} (one day)")
    else:
        what = f"expected a whole number {'>=' if zero else '>'} 0"

    def parse(s: str) -> Any:
        if kind is int and not _digits(s):  # int() also reads '+12', '1_0', ' 12' and '١٢' (Arabic-Indic 12)
            raise ValueError(what)
        try:
            v = kind(s)
        except ValueError:
            raise ValueError(what) from None
        if not math.isfinite(v) or not (v >= 0 if zero else v > 0):  # 'inf', '1e400': no timer lasts forever
            raise ValueError(what)
        if kind is float and v and not TIMER_MIN_S <= v <= TIMER_MAX_S:
            raise ValueError(what)
        return v
    return parse


def _digits(s: str) -> bool:
    """Only ASCII digits ('٨٠' passes str.isdigit and int() reads it as 80)."""
    return s.isascii() and s.isdigit()


def _port(s: str) -> int:
    if not _digits(s) or not 1 <= int(s) <= 65535:
        raise ValueError("expected a TCP port 1..65535")
    return int(s)


def _node(s: str) -> str:
    if s not in ("A", "B"):
        raise ValueError("expected A or B")
    return s


def _ip(s: str) -> str:
    if not valid_ip(s):
        raise ValueError("expected an IP address")
    return s


def _host(s: str) -> str:
    """The same rule as T010_CHANNEL.HOST (fepha.checks): '999.1.1.1' or '1.2.3' is no host name."""
    if not valid_host(s):
        raise ValueError("expected an IP address or a host name (RFC 1123, the last label not all-numeric)")
    return s


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        if not _digits(s.removeprefix("-")) or not lo <= int(s) <= hi:  # '--5': int() raised its own message
            raise ValueError(f"expected a whole number in {lo}..{hi}")
        return int(s)
    return parse


IEC104_TIMER_MAX_S = 255.0  # IEC 60870-5-104 9.6: every time-out (t0 ... t3) is 1 ... 255 s


def _iec104_timer(s: str) -> float:
    """t0 ... t3 of IEC 104: a number of seconds > 0 (tests shorten them below 1 s) and at most 255."""
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    if not 0 < v <= IEC104_TIMER_MAX_S:  # nan fails too
        raise ValueError(f"expected a number of seconds > 0 and <= {IEC104_TIMER_MAX_S:g}")
    return v


def _bool(s: str) -> bool:
    low = s.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(s: str) -> str:
        if s not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return s
    return parse


def _level(s: str) -> str:
    return _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")(s.upper())


def _text(s: str) -> str:
    return s


def _path(s: str) -> str:
    """A file's path: not empty (an empty one named $FEPROOT itself)."""
    if not s:
        raise ValueError("expected a path")
    return s


TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""`[tls] ciphers`' default (TLS 1.2): ECDHE key exchange (forward secrecy; no RSA key exchange) with an AEAD
cipher (AES-GCM, ChaCha20-Poly1305; no CBC, whose MAC-then-encrypt gave Lucky 13 and its kin). OpenSSL checks
the string when fep-forwarder starts (`fep_forwarder.tlspolicy.tls_context`)."""


def _ciphers(s: str) -> str:
    """An OpenSSL cipher string, not empty (OpenSSL alone knows which select something: checked at start)."""
    if not s.strip():
        raise ValueError("expected an OpenSSL cipher string, e.g. " + TLS_CIPHERS)
    return s


def _nonneg_int(s: str) -> int:
    if not _digits(s):
        raise ValueError("expected a whole number >= 0")
    return int(s)


def opt(section: str, parse: Callable[[str], Any], default: Any, doc: str = "", secret: bool = False) -> Any:
    """A field of a settings dataclass, read from `[section] <field name>`. A `secret`'s value is never
    quoted in a problem, and one that an inline comment would cut is refused (`file_value`)."""
    return field(default=default, metadata={"section": section, "parse": parse, "doc": doc, "secret": secret})


_COMMENT = re.compile(r"(?:^|\s)[;#]")


def file_value(raw: str, secret: bool) -> str:
    """The value of `key = raw` in a .cfg file. A value in double quotes is the text between them, taken
    whole (" ;" and "#" included); no comment may follow it. Otherwise ";" or "#" at the start or after a
    space starts a comment, as the original's INI files have it; in a secret (a password, a token) that
    would cut a value that may hold those characters, so it is refused rather than guessed."""
    v = raw.strip()
    if v.startswith('"'):
        if len(v) < 2 or not v.endswith('"'):
            raise ValueError('a value that starts with a double quote must end with one (a comment after a '
                             'quoted value goes on its own line)')
        return v[1:-1]
    lines = v.split("\n")
    for i, line in enumerate(lines):
        if m := _COMMENT.search(line):
            if secret:
                raise ValueError('";" or "#" at its start or after a space would begin a comment and cut it: '
                                 'write the whole value in double quotes ("...") if they are part of it, or put '
                                 'the comment on its own line')
            lines[i] = line[:m.start()].rstrip()
    return "\n".join(lines).strip()


@dataclass(frozen=True)
class NodeConfig:
    """fep-ha.cfg: this node, the Redis pair and the timers."""

    node_id: str = opt("node", _node, "A", "A or B: which of T020_UNION's IP1 (A) / IP2 (B) this node is")
    ip: str = opt("node", _ip, "127.0.0.1", "this node's address (T020_UNION IP1 or IP2)")
    bind: str = opt("node", _host, "127.0.0.1", "address the forwarding servers listen on (0.0.0.0: all)")
    vip: str = opt("redis", _host, "127.0.0.1", "the VIP: address of the master Redis")
    port: int = opt("redis", _port, 6379, "port of the master Redis on the VIP")
    local_host: str = opt("redis", _host, "127.0.0.1", "this node's own Redis")
    local_port: int = opt("redis", _port, 6379, "port of this node's own Redis")
    password: str = opt("redis", _text, "", "Redis password (requirepass/masterauth), empty for none", secret=True)
    socket_timeout_s: float = opt("redis", _positive(float), 2.0, "timeout of one Redis command")
    channel_switch_s: float = opt("timers", _positive(float), 30.0, "switch channel after this long down (flapping and incomplete polls count as down)")
    takeover_s: float = opt("timers", _positive(float), 90.0, "take over a device its holder has not reached (fully) this long")
    lease_ttl_s: float = opt("timers", _positive(float), 3.0, "a lease not renewed this long lapses (dead holder)")
    lease_tick_s: float = opt("timers", _positive(float), 1.0, "how often each node renews / bids for its leases")
    stop_handover_s: float = opt("timers", _positive(float, zero=True), 5.0,
                                 "at SIGTERM/SIGINT the acquirer hands its leases to the other node and waits "
                                 "this long at most for it to take them; 0: exit at once (leases lapse)")
    stop_drain_s: float = opt("timers", _positive(float, zero=True), 12.0,
                              "at SIGTERM/SIGINT the forwarder refuses new controls and waits this long at most "
                              "for those in flight (each at most until its own deadline) to be answered before "
                              "it closes its masters' connections; 0: close at once; a second signal closes at once")
    role_watch_s: float = opt("timers", _positive(float), 0.2,
                              "how often the acquirer and the forwarder read their local Redis's role "
                              "(a change: the VIP moved)")
    poll_ms: int = opt("timers", _int_in(*POLL_MS_RANGE), 1000,
                       "default poll period when T004_RTU.POLLMS is NULL (10 ... 3,600,000 ms, as POLLMS)")
    heartbeat_s: float = opt("timers", _positive(float), 2.0, "heartbeat period; the key lives 3 periods")
    reconnect_min_s: float = opt("timers", _positive(float), 0.5, "first reconnect backoff")
    reconnect_max_s: float = opt("timers", _positive(float), 5.0, "longest reconnect backoff")
    write_mode: str = opt("writer", _choice("auto", "direct", "batched"), "auto",
                          "auto: direct when the local Redis is the master, batched otherwise")
    # at most 100,000: a batch is one round trip to the master, and a bigger one holds the master's single
    # thread (and every other writer) for tens of milliseconds while it is applied
    batch_size: int = opt("writer", _int_in(1, 100_000), 500,
                          "batched mode: flush after this many changes (1 ... 100,000)")
    # at most 1000 ms: the window is how long a value may wait before it is written, so a longer one delays
    # every value of a batched node by that much (a typo such as 2000000 would hold values for 33 minutes)
    batch_window_ms: int = opt("writer", _int_in(1, 1000), 20,
                               "batched mode: flush at least this often (1 ... 1000 ms; every value waits up "
                               "to this long)")
    # at most 1,000,000 per RTU: the kept changes are held in memory (some 100 bytes each), and a failed
    # write's points are re-sent with their current value past it in any case
    resend_max_changes: int = opt("writer", _int_in(1, 1_000_000), 5000,
                                  "per RTU, changes of failed or timed-out writes kept to be re-sent as they "
                                  "were (1 ... 1,000,000); past it a failed write's points are re-sent with "
                                  "their current value")
    control_timeout_s: float = opt("control", _positive(float), 10.0, "default deadline of a control")
    select_timeout_s: float = opt("control", _positive(float), 30.0, "select-before-operate timeout")
    api_bind: str = opt("api", _host, "127.0.0.1", "address the api listens on")
    api_port: int = opt("api", _port, 8080, "port the api listens on")
    api_token: str = opt("api", _text, "", "bearer token for operator actions; empty: actions disabled",
                         secret=True)
    api_open_reads: bool = opt("api", _bool, True, "read-only endpoints without a token")
    # at most 10,000 clients, each a socket (a file descriptor) and a queue, of 100,000 messages at most: a
    # client further behind than that is better dropped (it resynchronises on reconnecting) than kept
    api_stream_clients: int = opt("api", _int_in(1, 10_000), 50,
                                  "most /api/v1/stream (live dashboard) clients at once (1 ... 10,000); more "
                                  "get 503")
    api_stream_queue: int = opt("api", _int_in(1, 100_000), 256,
                                "messages queued per stream client (1 ... 100,000); a client this far behind "
                                "is dropped")
    api_stream_write_timeout_s: float = opt("api", _positive(float), 30.0,
                                            "a stream client that takes no data this long (its socket's buffers "
                                            "full) is disconnected")
    api_head_timeout_s: float = opt("api", _positive(float), 10.0,
                                    "a request head not whole this long after its first byte (or the connection) "
                                    "is answered 408 and the connection closed")
    semodel: str = opt("paths", _path, "db/SEMODEL.db", "SEMODEL.db, relative to $FEPROOT")
    tls_cert: str = opt("tls", _text, "", "se104s/sefeps TLS certificate (PEM), empty: no TLS; a changed "
                        "file is taken within 10 s for the next handshakes (open sessions kept)")
    tls_key: str = opt("tls", _text, "", "private key of tls_cert")
    tls_ca: str = opt("tls", _text, "", "CA to verify clients with (mutual TLS), empty: no client check; a "
                      "changed file is taken within 10 s, the open sessions it no longer trusts closed")
    tls_crl: str = opt("tls", _text, "", "PEM file of the client CAs' CRLs (needs ca): a master whose "
                       "certificate it revokes is refused, its open sessions closed; a changed file is taken "
                       "within 10 s; empty: no revocation check")
    tls_ciphers: str = opt("tls", _ciphers, TLS_CIPHERS,
                           "OpenSSL cipher string for TLS 1.2 (TLS 1.3's suites are all AEAD, OpenSSL's)")
    tls_min_version: str = opt("tls", _choice("1.2", "1.3"), "1.2", "lowest TLS version accepted: 1.2 or 1.3")
    # IEC 104 acquisition (T004_RTU.PROTOCOL 'iec104'): the acquirer as controlling station
    iec104_k: int = opt("iec104", _positive(int), 12, "k: I frames sent and not yet acknowledged, at most")
    iec104_w: int = opt("iec104", _positive(int), 8, "w: acknowledge received I frames after this many")
    iec104_t0_s: float = opt("iec104", _iec104_timer, 30.0, "t0: connect timeout")
    iec104_t1_s: float = opt("iec104", _iec104_timer, 15.0, "t1: unconfirmed frame timeout (close); T004_RTU.TIMEOUTMS overrides")
    iec104_t2_s: float = opt("iec104", _iec104_timer, 10.0, "t2: acknowledge received I frames at the latest after this")
    iec104_t3_s: float = opt("iec104", _iec104_timer, 20.0, "t3: send TESTFR after this long without a frame")
    iec104_gi_period_s: float = opt("iec104", _positive(float, zero=True), 0.0, "periodic general interrogation; 0: only after STARTDT; T004_RTU.POLLMS overrides")
    iec104_ci_period_s: float = opt("iec104", _positive(float, zero=True), 0.0, "periodic counter interrogation; 0: only after STARTDT, to an RTU with counters")
    iec104_clock_sync_s: float = opt("iec104", _positive(float, zero=True), 0.0, "clock synchronisation after STARTDT and this often; 0: never")
    # se104s operator settings (IEC 60870-5-104 link parameters and the server's limits); every se104s
    # forwarding RTU of the node uses them (fep_forwarder.app passes them as that server's options)
    se104s_k: int = opt("se104s", _positive(int), 12, "IEC 104 k: I-frames sent and not yet acknowledged, at most")
    se104s_w: int = opt("se104s", _positive(int), 8, "IEC 104 w: acknowledge the master's I-frames after this many")
    se104s_t0_s: float = opt("se104s", _iec104_timer, 30.0, "IEC 104 t0 (s): a TLS handshake must end within it")
    se104s_t1_s: float = opt("se104s", _iec104_timer, 15.0, "IEC 104 t1 (s): an unacknowledged I/U frame closes the link")
    se104s_t2_s: float = opt("se104s", _iec104_timer, 10.0, "IEC 104 t2 (s): acknowledge received I-frames at the latest")
    se104s_t3_s: float = opt("se104s", _iec104_timer, 20.0, "IEC 104 t3 (s): idle time before a TESTFR act")
    # queue and buffer at most 10,000,000 events each (held in memory, some hundreds of bytes each: GBs per
    # RTU at the bound); a master that far behind interrogates anyway
    se104s_queue_max: int = opt("se104s", _int_in(1, 10_000_000), 200_000,
                                "events queued per started master before it is closed (1 ... 10,000,000)")
    se104s_buffer_max: int = opt("se104s", _int_in(1, 10_000_000), 200_000,
                                 "events kept while no master is started, oldest dropped (1 ... 10,000,000)")
    # at most 255,000 ms, IEC 104's longest time-out (t1 ... t3 at most 255 s, 9.6): a master has given up on
    # a command long before, so an older one carried out would act on a decision nobody waits for
    se104s_command_max_age_ms: int = opt("se104s", _int_in(1, 255_000), 10_000,
                                         "a time-tagged command older than this is refused; one accepted runs no later "
                                         "than its tag plus this (1 ... 255,000 ms, IEC 104's longest time-out)")
    se104s_untagged_answers: bool = opt("se104s", _bool, False,
                                        "interrogation answers and background scans as the type without time "
                                        "tag (IEC 60870-5-101's table of causes); false: the configured type")
    # modbus_trains: the unit id on which every modbus_trains server of the node serves its points'
    # quality bits (docs/modbus_trains.md, "Quality unit"); fep_forwarder.app passes it as an option
    modbus_trains_quality_unit: int = opt("modbus_trains", _nonneg_int, 0,
                                          "unit id serving each point's quality bits (1 ... 254, not an "
                                          "RTU's ADDRESS); 0: none, a master cannot tell a stale value")
    # modbus_trains: TCP keep-alive on every master's connection (MODBUS Messaging on TCP/IP Implementation
    # Guide V1.0b 4.3.2 recommends it), so that a vanished master's connection is closed
    # (docs/modbus_trains.md, "Connections"); fep_forwarder.app passes it as an option
    # at most 32767, Linux's longest TCP_KEEPIDLE: the kernel refused a longer one at each master's connection
    modbus_trains_keepalive_s: int = opt("modbus_trains", _int_in(0, 32767), 60,
                                         "TCP keep-alive on each master's connection: probes after this many "
                                         "seconds of silence (at most 32767); a master gone without closing is "
                                         "dropped about twice this after its last packet; 0: off")

    # every forwarding server: connections per peer address still in their opening (TLS handshake, then the
    # first se104s frame / sefeps hello / Modbus request), docs/forwarder.md "Connections in their opening";
    # fep_forwarder.app passes it to every server as an option
    forwarder_opening_max: int = opt("forwarder", _int_in(1, 10_000), 16,
                                     "connections from one address still in their opening (TLS handshake, "
                                     "first frame) per forwarding server, at most (1 ... 10,000); more are "
                                     "closed at once, counted and logged")

    # when forwarded values are not topical (NT quality): docs/forwarder.md "Quality"
    quality_replica_down_s: float = opt("quality", _positive(float, zero=True), 0.0,
                                        "NT on every value once the local replica's master link is down this "
                                        "long; 0: 2 x lease_ttl_s")
    # at most 1000 poll periods: beyond, a holder that has stopped polling would practically never be told
    # apart (1000 periods of the longest POLLMS are 41 days)
    quality_stale_polls: int = opt("quality", _int_in(1, 1000), 3, "NT on an RTU's values when its holder has "
                                   "not completed a poll for this many poll periods (1 ... 1000; plus one "
                                   "lease tick)")
    quality_vrrp_alive_file: str = opt("quality", _text, "/run/fep/vrrp.alive",
                                       "keepalived's sign of life on this host, rewritten every second by its "
                                       "track script (docs/ha.md); empty or absent: not checked")
    quality_vrrp_alive_max_age_s: float = opt("quality", _positive(float), 4.0,
                                              "NT on every value when this host holds the VIP and that sign "
                                              "is older than this (keepalived gone, the VIP left behind)")

    def se104s_options(self) -> dict[str, Any]:
        """The [se104s] settings as Se104Server options (k, w, t0 ... t3 in s, ... command_max_age_ms)."""
        return {f.name[len("se104s_"):].removesuffix("_s"): getattr(self, f.name) for f in fields(self)
                if f.name.startswith("se104s_")}

    @property
    def replica_down_s(self) -> float:
        """quality_replica_down_s, its 0 meaning 2 x lease_ttl_s."""
        return self.quality_replica_down_s or 2 * self.lease_ttl_s

    @property
    def peer(self) -> str:
        return "B" if self.node_id == "A" else "A"


@dataclass(frozen=True)
class LogConfig:
    """syslod.cfg: logging."""

    dir: str = opt("log", _text, "log", "log directory, relative to $FEPROOT; empty: no file")
    level: str = opt("log", _level, "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)")
    # at most 10 GB: rotation is there to bound a file, and one of 10 GB already takes hours to read or ship
    max_bytes: int = opt("log", _int_in(1, 10_000_000_000), 10 * 1024 * 1024,
                         "rotate a log file at this size, in bytes (1 ... 10,000,000,000)")
    # at most 1000: each rotation looks for every numbered file up to it (logging's
    # RotatingFileHandler), and 10**9 held the program logging for minutes at each rotation
    backups: int = opt("log", _int_in(0, 1000), 5, "rotated files kept, 0 ... 1000")
    console: bool = opt("log", _bool, True, "also log to stderr")


def _key(f: Any) -> str:
    """INI key of a field: the field name without its section prefix (api_port -> port)."""
    section = f.metadata["section"]
    return f.name[len(section) + 1:] if f.name.startswith(section + "_") else f.name


def _read_ini(path: Path) -> configparser.ConfigParser:
    """`path` parsed; a missing file is an empty one (every default, the environment still applies: how
    containers and benches configure a node), but a file that exists must be readable UTF-8 INI.
    configparser's own `read` skips a file it cannot open and decodes with the locale: an unreadable
    fep-ha.cfg silently meant node A with every default, a non-UTF-8 byte a traceback."""
    parser = configparser.ConfigParser(interpolation=None)  # inline comments: `file_value`
    if not path.exists():
        return parser
    if path.is_fifo():  # reading one waits for a writer: every command hung at its start
        raise ConfigError(f"{path}: is a named pipe (FIFO), not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 "
                          "(save the file as UTF-8)") from None
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(*_syntax_problems(path, text, exc)) from None
    return parser


def _syntax_problems(path: Path, text: str, exc: configparser.Error) -> list[str]:
    """A syntax error as "file line N: what", every bad line of the file (configparser's own message
    leaves the line number on a second line or out)."""
    lines = text.splitlines()

    def quoted(n: int) -> str:
        return shown(lines[n - 1].strip()) if 0 < n <= len(lines) else "''"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return [f"{path} line {exc.lineno}: {quoted(exc.lineno)} comes before any [section]"]
    if isinstance(exc, configparser.ParsingError):
        return [f"{path} line {n}: {quoted(n)} is not 'key = value' or '[section]'" for n, _ in exc.errors]
    if isinstance(exc, configparser.DuplicateOptionError):
        return [f"{path} line {exc.lineno}: [{exc.section}] {exc.option} is set twice"]
    if isinstance(exc, configparser.DuplicateSectionError):
        return [f"{path} line {exc.lineno}: [{exc.section}] appears twice"]
    return [f"{path}: {exc.message.splitlines()[0]}"]


def load_settings(cls: type, path: Path, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None, from_env: dict[str, str] | None = None) -> Any:
    """Read `path` into `cls`, applying FEP_<SECTION>_<KEY> variables of `env`; a missing file is
    allowed (every value has a default). Every problem is collected into one ConfigError. `from_env`, when
    given, receives field name -> variable of each value a variable set."""
    env = os.environ if env is None else env
    parser = _read_ini(path)
    problems: list[str] = []
    known = {(f.metadata["section"], _key(f)) for f in fields(cls)}
    sections = {s for s, _ in known}
    for key in parser.defaults():  # [DEFAULT] would silently apply its keys to every section
        problems.append(f"{path} [DEFAULT] {key}: unknown setting (put it in its own section)")
    for section in parser.sections():
        if section not in sections:
            problems.append(f"{path} [{section}]: unknown section (known: {', '.join(sorted(sections))})")
            continue
        for key in parser[section]:
            if (section, key) not in known and key not in parser.defaults():
                problems.append(f"{path} [{section}] {key}: unknown setting")
    problems += unknown_variables(cls, env)
    values: dict[str, Any] = {}
    for f in fields(cls):
        section, key = f.metadata["section"], _key(f)
        var = f"FEP_{section}_{key}".upper()
        if var in env:
            raw, where = env[var], f"environment {var}"
            if from_env is not None:
                from_env[f.name] = var
        elif parser.has_option(section, key):
            where = f"{path} [{section}] {key}"
            try:
                raw = file_value(parser.get(section, key), f.metadata["secret"])
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
        else:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            problems.append(f"{where}: {exc}" if f.metadata["secret"] else f"{where} = {shown(raw)}: {exc}")
    if problems:
        raise ConfigError(*problems)
    values.update(overrides or {})
    return cls(**values)


def unknown_variables(cls: type, env: Mapping[str, str]) -> list[str]:
    """FEP_<SECTION>_<KEY> variables of a section of `cls` that name no setting, one problem each: a
    misspelt variable (FEP_TIMERS_LEASE_TTL for FEP_TIMERS_LEASE_TTL_S) would otherwise leave the default
    in force without a word, as an unknown key in the file would. Variables outside the sections
    (FEP_RUN, compose's FEP_IMAGE) are not settings and are left alone."""
    known = {f"FEP_{f.metadata['section']}_{_key(f)}".upper() for f in fields(cls)}
    prefixes = tuple(sorted({f"FEP_{f.metadata['section']}_".upper() for f in fields(cls)}))
    return [f"environment {var}: unknown setting (known: {', '.join(sorted(k for k in known if k.startswith(p)))})"
            for var in sorted(env) for p in prefixes if var.startswith(p) and var not in known]


def load_node(root: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> NodeConfig:
    root = root or feproot()
    from_env: dict[str, str] = {}
    cfg = load_settings(NodeConfig, root / "cfg" / "fep-ha.cfg", env, overrides, from_env)
    problems = [f"{root / 'cfg' / 'fep-ha.cfg'} {p}{_set_by(p, from_env)}" for p in cross_problems(cfg)]
    if problems:
        raise ConfigError(*problems)
    return cfg


def _set_by(problem: str, from_env: Mapping[str, str]) -> str:
    """" (from environment FEP_...)" naming the variables that set a value a rule's line names: such a line
    starts "[section] " and names only keys of that section, so the file is not blamed for a variable."""
    section = problem[1:problem.index("]")]
    names = [from_env[f.name] for f in fields(NodeConfig) if f.metadata["section"] == section and f.name in from_env
             and re.search(rf"(?<![\w.]){re.escape(_key(f))}(?![\w.])", problem)]
    return f" (from environment {', '.join(names)})" if names else ""


def cross_problems(cfg: NodeConfig) -> list[str]:
    """The rules across settings, each broken one as "[section] key = value: why"."""
    problems = []
    if cfg.lease_ttl_s <= cfg.lease_tick_s * 2:
        problems.append(f"[timers] lease_ttl_s = {cfg.lease_ttl_s}: must be more than twice lease_tick_s "
                        f"({cfg.lease_tick_s})")
    if 0 < cfg.stop_handover_s <= cfg.lease_tick_s:
        problems.append(f"[timers] stop_handover_s = {cfg.stop_handover_s}: must be 0 or more than lease_tick_s "
                        f"({cfg.lease_tick_s}; the other node takes a handed-over lease at its next tick)")
    if cfg.reconnect_min_s > cfg.reconnect_max_s:
        problems.append(f"[timers] reconnect_min_s = {cfg.reconnect_min_s}: must not exceed reconnect_max_s "
                        f"({cfg.reconnect_max_s})")
    for section in ("iec104", "se104s"):  # the same link parameters, of the acquirer and of the servers
        k, w = getattr(cfg, f"{section}_k"), getattr(cfg, f"{section}_w")
        t1, t2 = getattr(cfg, f"{section}_t1_s"), getattr(cfg, f"{section}_t2_s")
        if not w <= k <= 32767:  # IEC 60870-5-104 9.6: k, w 1 ... 32767
            problems.append(f"[{section}] k = {k}, w = {w}: need w <= k <= 32767 (IEC 104 recommends w at most "
                            "2/3 of k)")
        if t2 >= t1:
            problems.append(f"[{section}] t2_s = {t2}: must be less than t1_s ({t1})")
    for key in ("key", "ca", "crl"):
        if getattr(cfg, f"tls_{key}") and not cfg.tls_cert:
            problems.append(f"[tls] {key} = {shown(getattr(cfg, f'tls_{key}'))}: needs cert (without cert the "
                            "servers run without TLS)")
    if cfg.tls_crl and cfg.tls_cert and not cfg.tls_ca:
        problems.append(f"[tls] crl = {shown(cfg.tls_crl)}: needs ca (a CRL revokes client certificates, which "
                        "only a ca asks for)")
    if cfg.modbus_trains_quality_unit > 254:
        problems.append(f"[modbus_trains] quality_unit = {cfg.modbus_trains_quality_unit}: a unit id is "
                        "1 ... 254 (255 and 0 address the server itself), 0 for none")
    return problems


def load_log(root: Path | None = None, env: Mapping[str, str] | None = None) -> LogConfig:
    root = root or feproot()
    return load_settings(LogConfig, root / "cfg" / "syslod.cfg", env)


def cli_arg(name: str) -> Callable[[str], Any]:
    """The argparse type of a command-line option overriding the NodeConfig field `name`: the field's own
    parser, so that `fep-api --port 99999` is refused as `[api] port = 99999` would be (it was a traceback;
    `--port 0` served on a random port)."""
    parse = next(f.metadata["parse"] for f in fields(NodeConfig) if f.name == name)

    def convert(s: str) -> Any:
        try:
            return parse(s)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{shown(s)}: {exc}") from None
    convert.__name__ = name  # argparse names the option's type by it
    return convert


def semodel_path(cfg: NodeConfig, root: Path | None = None) -> Path:
    p = Path(cfg.semodel)
    return p if p.is_absolute() else (root or feproot()) / p
