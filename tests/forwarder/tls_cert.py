"""Self-signed certificates for 127.0.0.1, made with the real openssl, for the forwarder servers' TLS tests
(one place for the openssl command line both protocols use)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path


def _openssl_req(tmp_path: Path, name: str) -> tuple[list[str], Path, Path]:
    """-> (the openssl command making a fresh self-signed EC certificate `CN=fep-<name>` for IP 127.0.0.1,
    the certificate file, the key file)."""
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    return (["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN=fep-{name}",
             "-addext", "subjectAltName=IP:127.0.0.1"], cert, key)


async def make_cert(tmp_path: Path, name: str = "server") -> tuple[Path, Path]:
    """-> (certificate, key) PEM files of a fresh self-signed EC certificate `CN=fep-<name>` for IP
    127.0.0.1; being self-signed, the certificate is also the CA that verifies it."""
    cmd, cert, key = _openssl_req(tmp_path, name)
    p = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                             stderr=asyncio.subprocess.DEVNULL)
    assert await p.wait() == 0
    return cert, key


def make_cert_now(tmp_path: Path, name: str = "server") -> tuple[Path, Path]:
    """`make_cert` outside an event loop (a module-scoped fixture)."""
    cmd, cert, key = _openssl_req(tmp_path, name)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


async def self_signed_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """-> (a server context holding a fresh certificate for IP 127.0.0.1, the certificate file a client
    trusts with `ssl.create_default_context(cafile=...)`)."""
    cert, key = await make_cert(tmp_path)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    return sctx, cert
