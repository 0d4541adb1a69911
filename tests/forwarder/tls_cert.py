"""Self-signed certificates for 127.0.0.1, made with the real openssl, for the forwarder servers' TLS tests
(one place for the openssl command line both protocols use)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path


def _openssl_req(tmp_path: Path, name: str, days: int = 1) -> tuple[list[str], Path, Path]:
    """-> (the openssl command making a fresh self-signed EC certificate `CN=fep-<name>` for IP 127.0.0.1,
    valid `days` from now, the certificate file, the key file)."""
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    return (["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN=fep-{name}",
             "-addext", "subjectAltName=IP:127.0.0.1"], cert, key)


async def make_cert(tmp_path: Path, name: str = "server") -> tuple[Path, Path]:
    """-> (certificate, key) PEM files of a fresh self-signed EC certificate `CN=fep-<name>` for IP
    127.0.0.1; being self-signed, the certificate is also the CA that verifies it."""
    cmd, cert, key = _openssl_req(tmp_path, name)
    p = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                             stderr=asyncio.subprocess.DEVNULL)
    assert await p.wait() == 0
    return cert, key


def make_cert_now(tmp_path: Path, name: str = "server", days: int = 1) -> tuple[Path, Path]:
    """`make_cert` outside an event loop (a module-scoped fixture), valid `days` from now."""
    cmd, cert, key = _openssl_req(tmp_path, name, days)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


async def self_signed_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """-> (a server context holding a fresh certificate for IP 127.0.0.1, the certificate file a client
    trusts with `ssl.create_default_context(cafile=...)`)."""
    cert, key = await make_cert(tmp_path)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    return sctx, cert


def make_signed_now(tmp_path: Path, name: str, ca: str, serial: int) -> tuple[Path, Path]:
    """-> (certificate, key) of a fresh EC client certificate `CN=fep-<name>`, serial number `serial`, signed
    by `<ca>-cert.pem` (one `make_cert_now` made: its certificate is a CA's)."""
    cert, key, csr, ext = (tmp_path / f"{name}-{kind}" for kind in ("cert.pem", "key.pem", "csr.pem", "ext.cnf"))
    ext.write_text("basicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n")
    for cmd in (["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN=fep-{name}"],
                ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(tmp_path / f"{ca}-cert.pem"), "-CAkey",
                 str(tmp_path / f"{ca}-key.pem"), "-set_serial", str(serial), "-days", "1", "-extfile", str(ext),
                 "-out", str(cert)]):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def write_crl(tmp_path: Path, ca: str, revoked: tuple[int, ...] = (), out: str = "crl.pem",
              last: str = "20200101000000Z", next_update: str = "20991231000000Z") -> Path:
    """-> a PEM CRL of `<ca>-cert.pem` (`openssl ca -gencrl`), revoking the serial numbers `revoked`, its
    lastUpdate and nextUpdate `last`, `next_update` (YYYYMMDDHHMMSSZ: one in the past makes an expired CRL),
    written to `out` through a temporary file and a rename (as an operator replaces it)."""
    work = tmp_path / f"{out}.d"
    work.mkdir(exist_ok=True)
    (work / "index.txt").write_text("".join(f"R\t991231000000Z\t200101000000Z\t{s:02X}\tunknown\t/CN=fep-{s}\n"
                                            for s in revoked))
    (work / "ca.cnf").write_text(f"[ca]\ndefault_ca = d\n[d]\ndatabase = {work / 'index.txt'}\ndefault_md = sha256\n")
    subprocess.run(["openssl", "ca", "-gencrl", "-config", str(work / "ca.cnf"), "-keyfile",
                    str(tmp_path / f"{ca}-key.pem"), "-cert", str(tmp_path / f"{ca}-cert.pem"), "-out",
                    str(work / "crl.pem"), "-crl_lastupdate", last, "-crl_nextupdate", next_update],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (work / "crl.pem").rename(tmp_path / out)
    return tmp_path / out


def make_cert_dated(tmp_path: Path, name: str, start: str, end: str) -> tuple[Path, Path]:
    """-> (certificate, key) of a self-signed EC certificate `CN=fep-<name>` for IP 127.0.0.1 valid from
    `start` to `end` (YYYYMMDDHHMMSSZ: an expired one, or one not valid yet), made by `openssl ca -selfsign`
    (`openssl req` takes no dates)."""
    cert, key, work = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem", tmp_path / f"{name}.d"
    work.mkdir(exist_ok=True)
    (work / "index.txt").write_text("")
    (work / "serial").write_text("01\n")
    (work / "ca.cnf").write_text(f"[ca]\ndefault_ca = d\n[d]\ndatabase = {work / 'index.txt'}\nnew_certs_dir = {work}\n"
                                 f"serial = {work / 'serial'}\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n"
                                 "[p]\ncommonName = supplied\n")
    for cmd in (["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(work / "csr.pem"), "-subj", f"/CN=fep-{name}",
                 "-addext", "subjectAltName=IP:127.0.0.1"],
                ["openssl", "ca", "-batch", "-selfsign", "-config", str(work / "ca.cnf"), "-keyfile", str(key),
                 "-in", str(work / "csr.pem"), "-startdate", start, "-enddate", end, "-out", str(cert)]):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def renew_cert_now(tmp_path: Path, name: str, out: str) -> Path:
    """-> `out`: the self-signed certificate `<name>-cert.pem` renewed (the same subject and key, a new serial
    number and validity), as a CA renews its certificate."""
    subprocess.run(["openssl", "req", "-x509", "-new", "-key", str(tmp_path / f"{name}-key.pem"), "-out",
                    str(tmp_path / out), "-days", "2", "-subj", f"/CN=fep-{name}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tmp_path / out
