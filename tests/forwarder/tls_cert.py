"""Self-signed certificates for 127.0.0.1, made with the real openssl, for the forwarder servers' TLS tests
(one place for the openssl command line both protocols use)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path


async def make_cert(tmp_path: Path, name: str = "server") -> tuple[Path, Path]:
    """-> (certificate, key) PEM files of a fresh self-signed EC certificate `CN=fep-<name>` for IP
    127.0.0.1; being self-signed, the certificate is also the CA that verifies it."""
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    p = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN=fep-{name}",
        "-addext", "subjectAltName=IP:127.0.0.1", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    assert await p.wait() == 0
    return cert, key


async def self_signed_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """-> (a server context holding a fresh certificate for IP 127.0.0.1, the certificate file a client
    trusts with `ssl.create_default_context(cafile=...)`)."""
    cert, key = await make_cert(tmp_path)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    return sctx, cert
