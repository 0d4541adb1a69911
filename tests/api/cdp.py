"""A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so a test can watch one page live (no
reload) without a WebSocket library: evaluate expressions, wait for conditions, take screenshots."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


class Browser:
    def __init__(self, profile: Path, size: tuple[int, int] = (1400, 1000)) -> None:
        self.loop = asyncio.get_running_loop()
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends on fds 3 (commands) and 4 (answers)
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.session: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 65536)
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    self.loop.call_soon_threadsafe(self._answer, msg)

    def _answer(self, msg: dict[str, Any]) -> None:
        fut = self._waiting.pop(msg["id"], None)
        if fut is not None and not fut.done():
            if "error" in msg:
                fut.set_exception(RuntimeError(f"CDP error: {msg['error']}"))
            else:
                fut.set_result(msg.get("result", {}))

    async def call(self, method: str, params: dict[str, Any] | None = None, session: bool = True,
                   timeout: float = 30) -> Any:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        fut = self.loop.create_future()
        self._waiting[self._next] = fut
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        return await asyncio.wait_for(fut, timeout)

    async def open(self, url: str) -> None:
        target = (await self.call("Target.createTarget", {"url": "about:blank"}, session=False))["targetId"]
        self.session = (await self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                        session=False))["sessionId"]
        await self.call("Page.enable")
        await self.call("Page.navigate", {"url": url})

    async def eval(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait(self, expression: str, timeout: float = 10.0, what: str = "") -> Any:
        """Poll `expression` (every 50 ms) until it is truthy; returns its value."""
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            try:
                last = await self.eval(expression)
            except RuntimeError as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what or expression} not true within {timeout} s (last: {last!r})")

    async def key(self, key: str, code: int) -> None:
        """Press and release one key (e.g. "Tab", 9; "ArrowDown", 40) in the focused element."""
        for kind in ("rawKeyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key,
                                                       "windowsVirtualKeyCode": code})

    async def screenshot(self, path: Path) -> None:
        h = await self.eval("document.documentElement.scrollHeight")
        await self.call("Emulation.setDeviceMetricsOverride",
                        {"width": 1400, "height": int(h), "deviceScaleFactor": 1, "mobile": False})
        data = (await self.call("Page.captureScreenshot", {"format": "png"}))["data"]
        path.write_bytes(base64.b64decode(data))
        await self.call("Emulation.clearDeviceMetricsOverride")

    async def close(self) -> None:
        try:
            await self.call("Browser.close", session=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        end = time.monotonic() + 5
        while self.proc.poll() is None and time.monotonic() < end:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self._to_chrome)
        self._reader.join(2)
        os.close(self._from_chrome)


RENDERED = "document.body.dataset.rendered === '1'"


async def rendered_dom(url: str, profile: Path, timeout: float = 20.0, shot: Path | None = None) -> str:
    """The dashboard's DOM once its first view is on screen (`data-rendered="1"` on the body: the snapshot
    from the REST endpoints rendered), waited for against a real-time deadline; `shot` gets a screenshot.
    `--dump-dom --virtual-time-budget` counted virtual time instead, which headless Chromium advances at
    once while the page only waits for the live stream's first message: on a busy machine it dumped a page
    still "loading…" (3 runs in 30)."""
    b = Browser(profile)
    try:
        await b.open(url)
        await b.wait(RENDERED, timeout, "the dashboard's first view (data-rendered)")
        if shot is not None:
            await b.screenshot(shot)
        return str(await b.eval("document.documentElement.outerHTML"))
    finally:
        await b.close()
