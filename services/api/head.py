"""HEAD on every GET resource (RFC 9110 §9.3.2: the same status and headers as GET, no body).

FastAPI answers HEAD on its routes with 405, so a monitor that checks /health or /ready with HEAD (many
uptime checkers and load balancers do) saw a live node as failing. This middleware runs a HEAD as the GET
and sends the head of its answer only; once that is sent, the app's `receive` reports the client gone, so
a response that never ends by itself (the live stream) ends at once and frees its place. A 405's `Allow`
that names GET names HEAD too."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "HEAD":
            await self.app(scope, receive, _allow_head(send))
            return
        sent = asyncio.Event()

        async def head_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                await _allow_head(send)(msg)
            elif msg["type"] == "http.response.body":
                if not sent.is_set():
                    sent.set()
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send(msg)

        async def head_receive() -> Message:
            if sent.is_set():
                return {"type": "http.disconnect"}
            got: asyncio.Future[Any] = asyncio.ensure_future(receive())
            done = asyncio.ensure_future(sent.wait())
            await asyncio.wait({got, done}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            if got.done():
                return got.result()
            got.cancel()
            return {"type": "http.disconnect"}

        await self.app(dict(scope, method="GET"), head_receive, head_send)


def _allow_head(send: Send) -> Send:
    async def wrapped(msg: Message) -> None:
        if msg["type"] == "http.response.start" and msg.get("status") == 405:
            headers = []
            for k, v in msg.get("headers", []):
                if k.lower() == b"allow":
                    methods = [m.strip() for m in v.split(b",")]
                    if b"GET" in methods and b"HEAD" not in methods:
                        v = b", ".join([*methods, b"HEAD"])
                headers.append((k, v))
            msg = dict(msg, headers=headers)
        await send(msg)
    return wrapped
