"""The TLS policy of the se104s and sefeps servers (`[tls]`, docs/forwarder.md "TLS"): the server context
(`tls_context`: TLS 1.2 or 1.3 at least, the TLS 1.2 cipher list, no renegotiation, mutual TLS with `ca`, the
client CAs' CRLs with `crl`), and `TlsPolicy`, which takes changed `[tls]` files (cert, key, ca, crl) while the
forwarder runs: a new context for the next handshakes, and the open sessions of a certificate the new CRLs
revoke or the new CAs no longer trust closed (IEC 62351-3); and says when the server certificate, a CA
certificate of `ca` or a CRL expires.

The CRLs are read twice: by OpenSSL, which checks them (their signature, their time) at every handshake, and
here (`read_crls`, a few DER fields of each: issuer, nextUpdate, revoked serial numbers) to refuse a file that
holds anything but CRLs or an expired one at start, to say when one expires, and to find the open sessions a
new one revokes (Python's ssl module reads no CRL; the `cryptography` package is not a dependency)."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fepha.config import ConfigError, NodeConfig, feproot

log = logging.getLogger("fep_forwarder")

TLS_CHECK_S = 10.0
"""How often the forwarder looks at the `[tls]` files, cert, key, ca and crl (their mtime, size and inode; a
stat each): a changed file is read, checked and taken within this (`TlsPolicy.refresh`)."""

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)-----END \1-----", re.S)


# --- a few DER fields of a CRL and of a certificate --------------------------------------------------------


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """The DER element at `i`: -> (its tag, where its content starts, where it ends)."""
    tag, n = der[i], der[i + 1]
    i += 2
    if n & 0x80:
        size = n & 0x7F
        n = int.from_bytes(der[i:i + size], "big")
        i += size
    if i + n > len(der):
        raise ValueError("truncated DER")
    return tag, i, i + n


def _children(der: bytes, start: int, end: int) -> Iterable[tuple[int, int, int, int]]:
    """The elements inside [start, end): (tag, their first octet, content start, end)."""
    while start < end:
        tag, c, e = _tlv(der, start)
        yield tag, start, c, e
        start = e


def _time(der: bytes, tag: int, c: int, e: int) -> dt.datetime:
    text = der[c:e].decode("ascii")
    if tag == 0x17:  # UTCTime, RFC 5280 4.1.2.5.1: YY >= 50 is 19YY
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Crl:
    issuer: bytes  # the DER of its issuer's Name, as in the certificates that CA issued
    this_update: dt.datetime
    next_update: dt.datetime | None
    revoked: frozenset[int]  # serial numbers

    def issuer_text(self) -> str:
        """The issuer's CN (or the DER's length), for a line."""
        return _cn(self.issuer)


def _cn(name: bytes) -> str:
    """The CN of the DER of a Name (or its length), for a line."""
    m = re.search(rb"\x06\x03\x55\x04\x03[\x0c\x13](.)(.*)", name, re.S)
    return m[2][:m[1][0]].decode("utf-8", "replace") if m else f"({len(name)} octets)"


def parse_crl(der: bytes) -> Crl:
    """CertificateList (RFC 5280 5.1): its issuer, nextUpdate and revoked serial numbers."""
    _, c, _ = _tlv(der, 0)
    _, tc, te = _tlv(der, c)  # tbsCertList
    items = list(_children(der, tc, te))
    if items and items[0][0] == 0x02:  # version
        items = items[1:]
    issuer = der[items[1][1]:items[1][3]]
    this_update = _time(der, items[2][0], items[2][2], items[2][3])
    rest = items[3:]  # after signature, issuer, thisUpdate
    next_update = None
    if rest and rest[0][0] in (0x17, 0x18):
        next_update = _time(der, rest[0][0], rest[0][2], rest[0][3])
        rest = rest[1:]
    revoked: set[int] = set()
    if rest and rest[0][0] == 0x30:
        for _, _, ec, _ in _children(der, rest[0][2], rest[0][3]):
            _, sc, se = _tlv(der, ec)
            revoked.add(int.from_bytes(der[sc:se], "big", signed=True))
    return Crl(issuer, this_update, next_update, frozenset(revoked))


def _tbs(der: bytes) -> list[tuple[int, int, int, int]]:
    """The fields of a certificate's tbsCertificate (RFC 5280 4.1) after its version: serialNumber,
    signature, issuer, validity, subject, subjectPublicKeyInfo, ..."""
    _, c, _ = _tlv(der, 0)
    _, tc, te = _tlv(der, c)  # tbsCertificate
    items = list(_children(der, tc, te))
    return items[1:] if items[0][0] == 0xA0 else items  # [0] version


def cert_serial_issuer(der: bytes) -> tuple[int, bytes]:
    """A certificate's (serial number, DER of its issuer's Name) (RFC 5280 4.1)."""
    items = _tbs(der)
    serial = int.from_bytes(der[items[0][2]:items[0][3]], "big", signed=True)
    return serial, der[items[2][1]:items[2][3]]


def cert_subject_key(der: bytes) -> tuple[bytes, bytes]:
    """A certificate's (DER of its subject's Name, DER of its subjectPublicKeyInfo): what a certificate it
    issued is checked against (its issuer's Name, and a signature by that key)."""
    items = _tbs(der)
    return der[items[4][1]:items[4][3]], der[items[5][1]:items[5][3]]


@dataclass(frozen=True)
class Cert:
    """The few fields of the server certificate the policy says something about."""

    subject: bytes
    not_before: dt.datetime
    not_after: dt.datetime

    def subject_text(self) -> str:
        return _cn(self.subject)


def parse_cert(der: bytes) -> Cert:
    items = _tbs(der)
    times = list(_children(der, items[3][2], items[3][3]))  # validity: notBefore, notAfter
    return Cert(der[items[4][1]:items[4][3]], _time(der, times[0][0], times[0][2], times[0][3]),
                _time(der, times[1][0], times[1][2], times[1][3]))


def read_crls(data: bytes) -> list[Crl]:
    """The CRLs of a PEM file; ValueError when it holds none, or anything else (a certificate there would
    be taken by OpenSSL as one more trusted CA)."""
    blocks = _PEM.findall(data)
    others = sorted({kind.decode() for kind, _ in blocks if kind != b"X509 CRL"})
    if others:
        raise ValueError(f"holds {', '.join(others)}, not only X509 CRLs")
    if not blocks:
        raise ValueError("holds no PEM X509 CRL")
    try:
        return [parse_crl(base64.b64decode(body)) for _, body in blocks]
    except (ValueError, IndexError) as exc:
        raise ValueError(f"a CRL in it is not valid DER: {exc}") from None


def _newest(crls: list[Crl]) -> list[Crl]:
    """The CRL of each issuer that is valid the longest (OpenSSL takes the newest too)."""
    end = lambda c: c.next_update or dt.datetime.max.replace(tzinfo=dt.UTC)
    newest: dict[bytes, Crl] = {}
    for crl in crls:
        if crl.issuer not in newest or end(crl) > end(newest[crl.issuer]):
            newest[crl.issuer] = crl
    return list(newest.values())


def expired(crls: list[Crl], now: dt.datetime) -> list[Crl]:
    """The CRLs past their nextUpdate, of the issuers that have no CRL newer than that."""
    return [c for c in _newest(crls) if c.next_update is not None and c.next_update <= now]


def not_yet_valid(crls: list[Crl], now: dt.datetime) -> list[Crl]:
    """The CRLs whose thisUpdate is still ahead (a clock behind the CA's, or a CRL issued for later): OpenSSL
    refuses every handshake checked against one (`CRL is not yet valid`), with no tolerance."""
    return [c for c in crls if c.this_update > now]


EXPIRY_WARNING = dt.timedelta(days=1)
"""A CRL this close to its nextUpdate (or within the last quarter of its validity, when that is shorter) is
said to expire soon (`TlsPolicy.refresh`): time to put the next one there."""


def expiring(crls: list[Crl], now: dt.datetime) -> list[Crl]:
    """The CRLs whose nextUpdate is near (EXPIRY_WARNING) but not passed, of issuers with no newer one."""
    return [c for c in _newest(crls) if c.next_update is not None
            and _near(c.this_update, c.next_update, EXPIRY_WARNING, now)]


CERT_EXPIRY_WARNING = dt.timedelta(days=7)
"""A server certificate, or a CA certificate of `[tls] ca`, this close to its notAfter (or within the last
quarter of its validity, when that is shorter) is said to expire soon (`TlsPolicy.refresh`). A week: SCADA
operators renew certificates once a year, through a change in the control room that takes days; a day's notice
would come too late for it."""


def _near(start: dt.datetime, end: dt.datetime, warning: dt.timedelta, now: dt.datetime) -> bool:
    """`end` (a CRL's nextUpdate, a certificate's notAfter) is near (within `warning`, or the last quarter of
    the validity from `start` when that is shorter), not passed."""
    return end - min(warning, (end - start) / 4) <= now < end


def _when(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "never"


def _say_expiry(said: str, cert: Cert, now: dt.datetime, what: str, noun: str, renew: str, refused: str) -> str:
    """Say (WARNING, once per state: `said` is the state said last) that `cert` (the `noun` of the setting
    `what`) expires soon (CERT_EXPIRY_WARNING: `renew`, what to do) or has expired (`refused`: who refuses
    what since): -> the state now ("expiring", "expired"; `said` while its notAfter is not near)."""
    if cert.not_after <= now:
        state = "expired"
    elif _near(cert.not_before, cert.not_after, CERT_EXPIRY_WARNING, now):
        state = "expiring"
    else:
        return said
    if said == state:
        return state
    if state == "expiring":
        log.warning("%s: the %s of %s expires at %s (its notAfter): %s", what, noun, cert.subject_text(),
                    _when(cert.not_after), renew)
    else:
        log.warning("%s: the %s of %s expired at %s (its notAfter): %s until a renewed one is put in that file "
                    "(taken within %.0f s); the sessions open are kept", what, noun, cert.subject_text(),
                    _when(cert.not_after), refused, TLS_CHECK_S)
    return state


# --- the server context ---------------------------------------------------------------------------------------


def _path(root: Path | None, p: str) -> str:
    return str(p if os.path.isabs(p) else (root or feproot()) / p)


def load_crls(cfg: NodeConfig, root: Path | None = None,
              now: dt.datetime | None = None) -> list[Crl]:
    """`[tls] crl`'s CRLs, checked: ConfigError (one line) when the file cannot be read, holds anything but
    CRLs, or holds one past its nextUpdate or before its thisUpdate. While running (`TlsPolicy.refresh`) a
    replacement refused for that is looked at again every TLS_CHECK_S, so it is taken once its time comes."""
    where = _path(root, cfg.tls_crl)
    what = f"[tls] crl = {cfg.tls_crl!r}"
    try:
        if Path(where).is_fifo():
            raise ConfigError(f"{what}: {where} is a named pipe (FIFO), not a file")
        data = Path(where).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot load {where}: {exc.strerror or exc}") from None
    try:
        crls = read_crls(data)
    except ValueError as exc:
        raise ConfigError(f"{what}: cannot load {where}: {exc}") from None
    now = now or dt.datetime.now(dt.UTC)
    for crl in expired(crls, now):
        raise ConfigError(f"{what}: {where}: the CRL of {crl.issuer_text()} expired at {_when(crl.next_update)} "
                          "(its nextUpdate): put a newer one there")
    for crl in not_yet_valid(crls, now):
        raise ConfigError(f"{what}: {where}: the CRL of {crl.issuer_text()} is not valid before "
                          f"{_when(crl.this_update)} (its thisUpdate; this host's clock reads {_when(now)}): "
                          "OpenSSL would refuse every master until then; check this host's clock and the CA's")
    return crls


def tls_context(cfg: NodeConfig, root: Path | None = None) -> ssl.SSLContext | None:
    """Server TLS context from [tls] cert/key (and ca for mutual TLS, crl, ciphers, min_version), None when no
    certificate is set. A file or value that cannot be used: ConfigError, one line (exit 2 at start)."""
    return _context(cfg, root)[0] if cfg.tls_cert else None


def load_cert(cfg: NodeConfig, root: Path | None = None, now: dt.datetime | None = None) -> Cert:
    """`[tls] cert`'s certificate (the first of the file: OpenSSL's too), checked: ConfigError (one line) when it
    is past its notAfter or before its notBefore (masters refuse it, as OpenSSL's clients do). While running
    (`TlsPolicy.refresh`) a replacement refused for that is looked at again every TLS_CHECK_S."""
    where = _path(root, cfg.tls_cert)
    what = f"[tls] cert = {cfg.tls_cert!r}"
    try:
        der = next(base64.b64decode(body) for kind, body in _PEM.findall(Path(where).read_bytes())
                   if kind == b"CERTIFICATE")
        cert = parse_cert(der)
    except (OSError, StopIteration, ValueError, IndexError) as exc:  # OpenSSL took it: rewritten since
        raise ConfigError(f"{what}: cannot load {where}: {exc or 'no PEM CERTIFICATE'}") from None
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_after <= now:
        raise ConfigError(f"{what}: {where}: the certificate of {cert.subject_text()} expired at "
                          f"{_when(cert.not_after)} (its notAfter): masters refuse it; put a renewed one there")
    if cert.not_before > now:
        raise ConfigError(f"{what}: {where}: the certificate of {cert.subject_text()} is not valid before "
                          f"{_when(cert.not_before)} (its notBefore; this host's clock reads {_when(now)}): masters "
                          "refuse it until then; check this host's clock and the CA's")
    return cert


def _context(cfg: NodeConfig, root: Path | None,
             now: dt.datetime | None = None) -> tuple[ssl.SSLContext, list[Crl], Cert]:
    """`tls_context`, the CRLs it holds and its certificate."""
    path = lambda p: _path(root, p)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.tls_min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    # a TLS 1.2 renegotiation costs a handshake's CPU at the peer's will: refused (OpenSSL 3's default for a
    # server; set so that an older OpenSSL does the same), docs/forwarder.md "TLS"
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.set_ciphers(cfg.tls_ciphers)  # TLS 1.2 and below only; TLS 1.3's suites are all AEAD
    except ssl.SSLError:
        raise ConfigError(f"[tls] ciphers = {cfg.tls_ciphers!r}: OpenSSL selects no cipher from it "
                          "(an OpenSSL cipher string, e.g. the default ECDHE+AESGCM:ECDHE+CHACHA20)") from None
    # a missing or broken file is a configuration error (one line, exit 2), not a traceback at start
    what = f"[tls] cert = {cfg.tls_cert!r}, key = {cfg.tls_key!r}"
    for key in ("cert", "key", "ca"):  # OpenSSL reading a named pipe waits for a writer: the forwarder hung
        if (v := getattr(cfg, f"tls_{key}")) and Path(path(v)).is_fifo():
            raise ConfigError(f"[tls] {key} = {v!r}: {path(v)} is a named pipe (FIFO), not a file")
    try:
        ctx.load_cert_chain(path(cfg.tls_cert), path(cfg.tls_key) if cfg.tls_key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: cannot load {path(cfg.tls_cert)}: {exc.strerror or exc}") from None
    cert = load_cert(cfg, root, now)  # not expired, not before its time
    if cfg.tls_ca:
        try:
            ctx.load_verify_locations(path(cfg.tls_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[tls] ca = {cfg.tls_ca!r}: cannot load {path(cfg.tls_ca)}: "
                              f"{exc.strerror or exc}") from None
        if not ctx.cert_store_stats()["x509"]:  # CRLs only: OpenSSL takes the file, and refuses every master
            raise ConfigError(f"[tls] ca = {cfg.tls_ca!r}: {path(cfg.tls_ca)} holds no certificate: every master "
                              "would be refused")
        ctx.verify_mode = ssl.CERT_REQUIRED
    crls = []
    if cfg.tls_crl:
        crls = load_crls(cfg, root, now)  # only CRLs, none expired
        try:
            ctx.load_verify_locations(path(cfg.tls_crl))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[tls] crl = {cfg.tls_crl!r}: cannot load {path(cfg.tls_crl)}: "
                              f"{exc.strerror or exc}") from None
        # the master's own certificate against its issuer's CRL (LEAF), not every CA of its chain (CHAIN
        # would refuse every master as soon as one CA of [tls] ca has no CRL in the file): docs/forwarder.md
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx, crls, cert


# --- the [tls] files taken anew while running -----------------------------------------------------------

FILES = ("cert", "key", "ca", "crl")
"""The `[tls]` settings naming a file the policy watches (those set)."""
REVOKED = ("certificate revoked: the new [tls] crl lists it", "certificate revoked by the new [tls] crl")
UNTRUSTED = ("certificate no longer trusted: the new [tls] ca holds no certificate of its issuer",
             "certificate not trusted by the new [tls] ca")
"""Why `TlsPolicy.distrusts` closes an open session: (the WARNING's words, the protocol's `left (...)`)."""


def _anchors(cfg: NodeConfig, root: Path | None) -> dict[tuple[bytes, bytes], Cert | None]:
    """The certificates of [tls] ca by (subject, public key), the one valid the longest of each (a CA renewed
    with the same key, the former one left in the file: OpenSSL takes the one valid; None: its validity could
    not be read here, it is still a CA the sessions are checked against), read here:
    `SSLContext.get_ca_certs` lists only those marked CA, and a master's own self-signed certificate may be
    there too."""
    out: dict[tuple[bytes, bytes], Cert | None] = {}
    try:
        blocks = _PEM.findall(Path(_path(root, cfg.tls_ca)).read_bytes()) if cfg.tls_ca else []
    except OSError:
        blocks = []  # OpenSSL read it a moment ago: rewritten since, and read again at the next look
    for kind, body in blocks:
        try:
            if kind == b"CERTIFICATE":
                der = base64.b64decode(body)
                anchor = cert_subject_key(der)
                out.setdefault(anchor, None)
                cert, known = parse_cert(der), out[anchor]
                if known is None or cert.not_after > known.not_after:
                    out[anchor] = cert
        except (ValueError, IndexError):
            continue
    return out


class TlsPolicy:
    """The servers' TLS context (`context`, None without [tls] cert) and its files watched (cert, key, ca,
    crl, those set): `refresh` (every TLS_CHECK_S) builds a new context when one of them changed, and `apply`
    gives it to the servers (their next handshakes) and closes their sessions whose certificate the new CRLs
    revoke or the new CAs no longer trust (`distrusts`); the sessions open keep the server certificate they
    got. A change that cannot be used (a file half written, a key that does not match the certificate, a
    certificate expired or not valid yet, CRLs expired) leaves the context as it was, said once (WARNING)
    until a file changes again, and is looked at again every TLS_CHECK_S (one not valid yet is taken once its
    time comes). A CRL near its nextUpdate (EXPIRY_WARNING), the server certificate or a CA certificate of
    [tls] ca near its notAfter (CERT_EXPIRY_WARNING) is said once (WARNING; each CA apart), and once more when
    it passes: an expired CRL makes OpenSSL refuse every new handshake (`CRL has expired`), an expired server
    certificate every master that checks it, an expired CA every master whose certificate chains to it, until
    a newer one is taken; the sessions open are kept."""

    def __init__(self, cfg: NodeConfig, root: Path | None = None) -> None:
        self.cfg = cfg
        self.root = root
        self.context: ssl.SSLContext | None = None
        self.crls: list[Crl] = []
        self.cert: Cert | None = None
        if cfg.tls_cert:
            self.context, self.crls, self.cert = _context(cfg, root)
        self.cas = _anchors(cfg, root) if self.context is not None else {}
        self._before = self.anchors  # the CAs trusted before the last change (`distrusts`)
        self._seen = self._stat()
        self._refused: dict[str, Any] | None = None  # the files' stats whose problem was logged
        self._said = ""  # "expiring", "expired": the state of the CRLs taken last said (once per state)
        self._cert_said = ""  # the same, of the server certificate
        self._ca_said: dict[tuple[bytes, bytes], str] = {}  # the same, of each CA certificate (`cas`)

    @property
    def anchors(self) -> frozenset[tuple[bytes, bytes]]:
        """(subject, public key) of each CA certificate of [tls] ca taken (`cas`)."""
        return frozenset(self.cas)

    def _stat(self) -> dict[str, Any]:
        if not self.cfg.tls_cert:
            return {}
        seen: dict[str, Any] = {}
        for key in FILES:
            if name := getattr(self.cfg, f"tls_{key}"):
                try:
                    st = os.stat(_path(self.root, name))
                    seen[key] = (st.st_mtime_ns, st.st_size, st.st_ino)
                except OSError as exc:
                    seen[key] = ("error", exc.errno)
        return seen

    def refresh(self, now: dt.datetime | None = None) -> bool:
        """Look at the [tls] files: True when a new context was built from them (`apply` it)."""
        if self.context is None:
            return False
        now = now or dt.datetime.now(dt.UTC)
        st = self._stat()
        if st != self._seen:
            try:
                ctx, crls, cert = _context(self.cfg, self.root, now)
            except ConfigError as exc:
                if st != self._refused:
                    self._refused = st
                    log.warning("%s: the changed file is not taken, the [tls] files taken before still apply", exc)
                self._expiry(now)  # of what still applies
                return False
            changed = [k for k in FILES if st.get(k) != self._seen.get(k)]
            self._before, self.cas = self.anchors, _anchors(self.cfg, self.root)
            self.context, self.crls, self.cert, self._seen, self._refused = ctx, crls, cert, st, None
            self._said = self._cert_said = ""
            self._ca_said = {}
            self._taken(changed)
            return True
        self._expiry(now)
        return False

    def _taken(self, changed: list[str]) -> None:
        """One INFO line for each kind of file taken (`refresh`)."""
        what = lambda key: f"[tls] {key} = {getattr(self.cfg, f'tls_{key}')!r}"
        if ("cert" in changed or "key" in changed) and self.cert is not None:
            log.info("%s: new certificate taken (%s, valid until %s): the next handshakes present it, the sessions "
                     "open keep theirs", what("cert"), self.cert.subject_text(), _when(self.cert.not_after))
        if "ca" in changed:
            log.info("%s: new CA certificates taken (%d): the next handshakes are checked against them", what("ca"),
                     len(self.anchors))
        if "crl" in changed:
            log.info("%s: new CRLs taken (%s): the next handshakes are checked against them", what("crl"),
                     "; ".join(f"{c.issuer_text()}: {len(c.revoked)} revoked, next update {_when(c.next_update)}"
                               for c in self.crls))

    def _expiry(self, now: dt.datetime) -> None:
        """Say (once per state) that the CRLs, the server certificate or a CA certificate taken expire soon, or
        have expired."""
        what = f"[tls] crl = {self.cfg.tls_crl!r}"
        if gone := expired(self.crls, now):
            if self._said != "expired":
                log.warning("%s: the CRL of %s expired at %s (its nextUpdate): every new TLS handshake is refused "
                            "(CRL has expired) until a newer one is put in that file; the sessions open are kept",
                            what, gone[0].issuer_text(), _when(gone[0].next_update))
            self._said = "expired"
        elif soon := expiring(self.crls, now):
            if self._said != "expiring":
                log.warning("%s: the CRL of %s expires at %s (its nextUpdate): put a newer one in that file "
                            "before, or every new TLS handshake will be refused", what, soon[0].issuer_text(),
                            _when(soon[0].next_update))
            self._said = "expiring"
        if self.cert is not None:
            self._cert_said = _say_expiry(self._cert_said, self.cert, now, f"[tls] cert = {self.cfg.tls_cert!r}",
                                          "server certificate", "put a renewed one (and its key) in place before, "
                                          "or masters will refuse the handshakes",
                                          "every master that checks it refuses the next handshakes")
        for anchor, ca in self.cas.items():
            if ca is not None:
                self._ca_said[anchor] = _say_expiry(
                    self._ca_said.get(anchor, ""), ca, now, f"[tls] ca = {self.cfg.tls_ca!r}", "CA certificate",
                    "put a renewed one in that file before, or every master whose certificate chains to it will "
                    "be refused", "every master whose certificate chains to it is refused at its next handshake")

    def expiries(self) -> list[dict[str, Any]]:
        """When what is taken expires, for the heartbeat (`tls_expiry`) and so /metrics
        (`fep_tls_expiry_timestamp_seconds`): the server certificate's and each CA certificate's notAfter, the
        nextUpdate of each issuer's newest CRL (none: no end), as `{"file": "cert" | "ca" | "crl", "cn": its
        CN (a CRL's issuer), "ms": epoch ms}`; what the WARNINGs of `_expiry` say a week (a day) before, an
        alarm can say earlier."""
        ms = lambda t: int(t.timestamp() * 1000)
        out = [{"file": "cert", "cn": self.cert.subject_text(), "ms": ms(self.cert.not_after)}] if self.cert else []
        out += [{"file": "ca", "cn": ca.subject_text(), "ms": ms(ca.not_after)} for ca in self.cas.values() if ca]
        out += [{"file": "crl", "cn": c.issuer_text(), "ms": ms(c.next_update)} for c in _newest(self.crls)
                if c.next_update is not None]
        return out

    def revoked(self, der: bytes) -> bool:
        """True when the CRLs taken revoke the certificate `der` (a master's, as its session presented it)."""
        try:
            serial, issuer = cert_serial_issuer(der)
        except (ValueError, IndexError):
            return False
        return any(c.issuer == issuer and serial in c.revoked for c in self.crls)

    def untrusted(self, der: bytes) -> bool:
        """True when the CAs taken last no longer trust the certificate `der` (a master's, as its session
        presented it, checked against the CAs before): none of them has the name and public key of the CA
        that issued it. A certificate whose issuer was no CA of [tls] ca (an intermediate CA the master sent
        with it: Python 3.11 gives no session's chain) is not judged: kept."""
        try:
            _, issuer = cert_serial_issuer(der)
        except (ValueError, IndexError):
            return False
        was = {a for a in self._before if a[0] == issuer}
        return bool(was) and not any(a in self.cas for a in was)

    def distrusts(self, der: bytes) -> tuple[str, str] | None:
        """Why an open session whose master presented `der` is closed now (REVOKED, UNTRUSTED), or None."""
        return REVOKED if self.revoked(der) else UNTRUSTED if self.untrusted(der) else None

    def apply(self, servers: Iterable[Any]) -> int:
        """The current context to those of `servers` that speak TLS, and their sessions whose certificate
        is now revoked or no longer trusted closed: -> how many were closed."""
        closed = 0
        for srv in servers:
            if srv.tls is not None:
                srv.tls = self.context
                closed += srv.close_distrusted(self.distrusts)
        return closed
