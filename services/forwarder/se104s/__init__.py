"""se104s: our own IEC 60870-5-104 server (codec: pure coding; server: asyncio I/O)."""

from .server import Se104Server

__all__ = ["Se104Server"]
