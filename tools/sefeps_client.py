"""Reference sefeps client (docs/sefeps.md): the master side of the protocol, for tests and operators.

    python -m fep_tools.sefeps_client HOST PORT                 # print the image, then every change
    python -m fep_tools.sefeps_client HOST PORT --command 30 1  # send one command, print its result

As a library: `SefepsClient` keeps the image (addr -> (value, quality, ts_ms)) and the last seq, detects
gaps (asks the server to resume), answers heartbeats, closes on silence, and resumes after a reconnect
when the server still holds the missed events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import ssl
import sys
import time
from typing import Any

from fep_forwarder.sefeps import codec


class SefepsError(Exception):
    """The server answered err, or the connection closed."""


class SefepsClient:
    def __init__(self, host: str, port: int, name: str = "fep_tools.sefeps_client",
                 versions: tuple[int, ...] = codec.SUPPORTED, tls: ssl.SSLContext | None = None,
                 acks: bool = True, local_addr: tuple[str, int] | None = None) -> None:
        self.host, self.port, self.name, self.versions, self.tls = host, port, name, versions, tls
        self.local_addr = local_addr  # the address (and port, 0: any) this end connects from; None: the system's
        self.acks = acks  # send `ack` after each applied frame (a master that never acks: False)
        self.welcome: dict[str, Any] = {}
        self.session = ""
        self.seq = 0  # last seq applied (from an image or an event)
        self.image: dict[int, tuple[Any, int, int]] = {}
        self.images = 0  # full images received
        self.gaps = 0  # gaps detected (each answered with a resume)
        self.changes: asyncio.Queue[tuple[int, int, Any, int, int]] = asyncio.Queue()
        self.image_ready = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.error: dict[str, Any] | None = None
        self._results: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task] = []
        self._partial: list[codec.Entry] = []
        self._resuming: int | None = None  # seq a resume was sent from, while its answer is awaited
        self._last_rx = self._last_tx = 0.0

    # -- connection ------------------------------------------------------------------------------------
    async def connect(self, resume: bool = False, timeout: float = 5.0) -> dict[str, Any]:
        """Connect and say hello; with resume=True ask for the events missed since self.seq. Returns the
        welcome message."""
        self.closed.clear()
        self.image_ready.clear()
        self.error, self.close_reason = None, ""
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.tls, local_addr=self.local_addr), timeout)
        self._last_rx = self._last_tx = time.monotonic()
        dec = codec.Decoder(codec.SERVER_MESSAGES)
        try:
            return await self._hello(dec, resume, timeout)
        except BaseException:
            self._writer.close()
            raise

    async def _hello(self, dec: codec.Decoder, resume: bool, timeout: float) -> dict[str, Any]:
        assert self._reader is not None
        self._send(codec.hello(self.versions, self.name, (self.session, self.seq) if resume and self.session
                               else None))
        msgs: list[dict[str, Any]] = []
        while not msgs:
            data = await asyncio.wait_for(self._reader.read(65536), timeout)
            if not data:
                raise SefepsError("connection closed before welcome")
            msgs = dec.feed(data)
        first = msgs.pop(0)
        if first["t"] == "err":
            raise SefepsError(f"{first['code']}: {first['msg']}")
        if first["t"] != "welcome":
            raise SefepsError(f"expected welcome, got {first['t']}")
        self.welcome = first
        if "seq" in first:  # resumed from our recorded position (another node): our image stays valid for
            # the events that follow, then a full image replaces it
            self.session, self.seq = first["session"], first["seq"]
            self.image_ready.set()
        elif self.session != first["session"]:
            self.session, self.seq = first["session"], 0
        for msg in msgs:
            self._handle(msg)
        self._tasks = [asyncio.create_task(self._read_loop(dec)), asyncio.create_task(self._heartbeat())]
        return self.welcome

    async def close(self) -> None:
        if self._writer is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                self._send({"t": "bye"})
        await self._shutdown("closed by client")

    async def _shutdown(self, reason: str) -> None:
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        self._finish(reason)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    def _finish(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
        for fut in self._results.values():
            if not fut.done():
                fut.set_exception(SefepsError(f"connection closed: {self.close_reason}"))
        self._results.clear()

    def _ack(self) -> None:
        """Tell the server what is applied (once per image or ev frame): it records this master's position
        so that either node resumes it from there (docs/sefeps.md)."""
        if self.acks:
            self._send(codec.ack(self.seq))

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(codec.encode(msg))
        self._last_tx = time.monotonic()

    # -- protocol ----------------------------------------------------------------------------------------
    async def _read_loop(self, dec: codec.Decoder) -> None:
        assert self._reader is not None
        reason = "closed by server"
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                self._last_rx = time.monotonic()
                for msg in dec.feed(data):
                    self._handle(msg)
        except codec.ProtocolError as exc:
            reason = f"protocol error from server: {exc.msg}"
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc!r}"
        self._finish(self.close_reason or reason)
        if self._writer is not None:
            self._writer.close()

    def _handle(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t == "image":
            self._partial += msg["points"]
            if not msg["more"]:
                self.image = {p[0]: (p[1], p[2], p[3]) for p in self._partial}
                self._partial = []
                self.seq = msg["seq"]
                self.images += 1
                self._resuming = None
                self.image_ready.set()
                self._ack()
        elif t == "ev":
            seq = msg["seq"]
            if seq > self.seq + 1:
                # a gap: ask once for the missing events (or a full image) and drop frames until they come
                if self._resuming != self.seq:
                    self.gaps += 1
                    self._resuming = self.seq
                    self._send({"t": "resume", "session": self.session, "seq": self.seq})
                return
            for i, p in enumerate(msg["points"]):
                s = seq + i
                if s <= self.seq:
                    continue  # already applied (a resume can repeat events)
                self.seq = s
                self.image[p[0]] = (p[1], p[2], p[3])
                self.changes.put_nowait((s, p[0], p[1], p[2], p[3]))
            self._ack()
        elif t == "res":
            fut = self._results.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif t == "err":
            self.error = msg
            self.close_reason = f"server error {msg['code']}: {msg['msg']}"

    async def _heartbeat(self) -> None:
        hb = float(self.welcome["hb_s"])
        while not self.closed.is_set():
            await asyncio.sleep(hb / 2)
            now = time.monotonic()
            if now - self._last_rx > 3 * hb:
                await self._shutdown(f"nothing received for {3 * hb:g} s")
                return
            if now - self._last_tx >= hb:
                self._send(codec.HB)

    # -- operations --------------------------------------------------------------------------------------
    async def wait_image(self, timeout: float = 5.0) -> dict[int, tuple[Any, int, int]]:
        await asyncio.wait_for(self.image_ready.wait(), timeout)
        return self.image

    async def next_change(self, timeout: float = 5.0) -> tuple[int, int, Any, int, int]:
        """(seq, addr, value, quality, ts_ms) of the next change."""
        return await asyncio.wait_for(self.changes.get(), timeout)

    async def command(self, addr: int, value: float, timeout: float = 30.0) -> dict[str, Any]:
        """Send a command; returns the res message (ok, state, reason)."""
        cmd_id = next(self._ids)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._results[cmd_id] = fut
        self._send({"t": "cmd", "id": cmd_id, "addr": addr, "value": value})
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._results.pop(cmd_id, None)

    def send_resume(self) -> None:
        self._send({"t": "resume", "session": self.session, "seq": self.seq})

    def send_ack(self, seq: int) -> None:
        """An `ack` of `seq` now (a master acknowledging on its own schedule: set `acks` False first)."""
        self._send(codec.ack(seq))


def _fmt(v: Any) -> str:
    return "null" if v is None else str(v)


async def _run(args: argparse.Namespace) -> int:
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ssl.create_default_context(cafile=args.tls_ca or None)
        if args.tls_cert:
            tls.load_cert_chain(args.tls_cert, args.tls_key or None)
    c = SefepsClient(args.host, args.port, name=args.name, tls=tls)
    try:
        w = await c.connect()
    except (TimeoutError, OSError, SefepsError) as exc:
        print(f"connect failed: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"welcome version={w['version']} rtu={w['rtu']} node={w['node']} session={w['session']} "
              f"hb_s={w['hb_s']} points={len(w['points'])}", flush=True)
        if args.command:
            addr, value = int(args.command[0]), float(args.command[1])
            res = await c.command(addr, value, timeout=args.timeout)
            print(f"result id={res['id']} ok={res['ok']} state={res['state']} reason={res['reason']}")
            return 0 if res["ok"] else 1
        await c.wait_image(args.timeout)
        print(f"image seq={c.seq} points={len(c.image)}")
        for addr in sorted(c.image):
            v, q, ts = c.image[addr]
            print(f"  {addr} {_fmt(v)} q={q} ts={ts}")
        sys.stdout.flush()
        while not c.closed.is_set():
            getter = asyncio.create_task(c.changes.get())
            closed = asyncio.create_task(c.closed.wait())
            done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
            for t in (getter, closed):
                if t not in done:
                    t.cancel()
            if getter in done:
                s, addr, v, q, ts = getter.result()
                print(f"seq={s} {addr} {_fmt(v)} q={q} ts={ts}", flush=True)
        print(f"closed: {c.close_reason}", file=sys.stderr)
        return 1
    finally:
        await c.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sefeps_client", description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--name", default="sefeps_client")
    p.add_argument("--command", nargs=2, metavar=("ADDR", "VALUE"), help="send one command and exit")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--tls-ca", default="", help="connect with TLS, verifying the server with this CA (PEM)")
    p.add_argument("--tls-cert", default="", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", default="", help="key of --tls-cert")
    args = p.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
