"""sefeps wire format, version 1 (docs/sefeps.md): pure functions and small classes, no I/O.

A frame is a 4-byte big-endian length followed by that many bytes of one UTF-8 JSON object; the object's
"t" names the message. JSON was chosen over a compact binary layout because there is no vendor
specification to follow, masters are few and a readable wire helps integration; the length prefix keeps
framing exact, and value arrays keep events small (about 40 bytes per value).

Both the server and the reference client (fep_tools.sefeps_client) use this module, so the protocol is
written once. A vendor codec can replace the server as a whole (ForwardServer), not this module.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from fepha.points import Quality, Value
from fepha.semodel.model import FwdPoint

from ..base import OUT_OF_RANGE
from ..drain import REFUSED

VERSION = 1
SUPPORTED = (1,)
MAX_FRAME = 1 << 20
"""Largest frame body accepted or produced (1 MiB); a bigger length is a malformed frame."""
HEADER = struct.Struct(">I")
COMMAND_KINDS = ("DO", "AO")
SCALED_KINDS = ("AI", "ACC", "AO")

Entry = list  # [addr, value, quality, ts_ms]


class ProtocolError(Exception):
    """The peer broke the protocol; `code` goes into the err message before the connection closes."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


_INT = "int"
_NUM = "num"
_STR = "str"
_BOOL = "bool"
_LIST = "list"
_DICT = "dict"

# message type -> {field: (kind, required)}; "t" is implicit.
CLIENT_MESSAGES: dict[str, dict[str, tuple[str, bool]]] = {
    "hello": {"versions": (_LIST, True), "name": (_STR, False), "resume": (_DICT, False)},
    "cmd": {"id": (_INT, True), "addr": (_INT, True), "value": (_NUM, True)},
    "resume": {"session": (_STR, True), "seq": (_INT, True)},
    "ack": {"seq": (_INT, True)},
    "hb": {},
    "bye": {},
}
SERVER_MESSAGES: dict[str, dict[str, tuple[str, bool]]] = {
    "welcome": {"version": (_INT, True), "session": (_STR, True), "rtu": (_INT, True), "node": (_STR, True),
                "hb_s": (_NUM, True), "points": (_LIST, True), "seq": (_INT, False)},
    "image": {"seq": (_INT, True), "points": (_LIST, True), "more": (_BOOL, True)},
    "ev": {"seq": (_INT, True), "points": (_LIST, True)},
    "res": {"id": (_INT, True), "ok": (_BOOL, True), "state": (_STR, True), "reason": (_STR, True)},
    "hb": {},
    "err": {"code": (_STR, True), "msg": (_STR, True)},
}


def _is(kind: str, v: Any) -> bool:
    if kind == _INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == _NUM:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        try:
            return math.isfinite(v)
        except OverflowError:  # an integer beyond a double's range (JSON has no limit): not a value
            return False
    if kind == _STR:
        return isinstance(v, str)
    if kind == _BOOL:
        return isinstance(v, bool)
    if kind == _LIST:
        return isinstance(v, list)
    return isinstance(v, dict)


def validate(msg: Any, table: dict[str, dict[str, tuple[str, bool]]]) -> dict[str, Any]:
    """The message when it is one of `table` with the right field types; ProtocolError("proto") else.
    Unknown extra fields are ignored (a newer minor peer may add some)."""
    if not isinstance(msg, dict):
        raise ProtocolError("frame", "a frame must hold a JSON object")
    t = msg.get("t")
    fields = table.get(t) if isinstance(t, str) else None
    if fields is None:
        raise ProtocolError("proto", f"unknown message type {t!r}")
    for name, (kind, required) in fields.items():
        if name not in msg:
            if required:
                raise ProtocolError("proto", f"{t}: missing field {name!r}")
            continue
        if not _is(kind, msg[name]):
            raise ProtocolError("proto", f"{t}: field {name!r} must be {kind}")
    if t == "hello":
        if not all(_is(_INT, v) for v in msg["versions"]):
            raise ProtocolError("proto", "hello: versions must be integers")
        r = msg.get("resume")
        if r is not None and not (_is(_STR, r.get("session")) and _is(_INT, r.get("seq"))):
            raise ProtocolError("proto", "hello: resume needs session (str) and seq (int)")
    return msg


def encode(msg: dict[str, Any]) -> bytes:
    """One frame; ValueError when the message is not JSON-able without NaN/Infinity or too big."""
    body = json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


class Decoder:
    """Incremental frame decoder for one connection: feed bytes, get the complete messages."""

    def __init__(self, table: dict[str, dict[str, tuple[str, bool]]], max_frame: int = MAX_FRAME) -> None:
        self.table = table
        self.max_frame = max_frame
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buf += data
        out: list[dict[str, Any]] = []
        while len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            if n == 0 or n > self.max_frame:
                raise ProtocolError("frame", f"frame length {n} outside 1..{self.max_frame}")
            if len(self.buf) < HEADER.size + n:
                break
            body = bytes(self.buf[HEADER.size : HEADER.size + n])
            del self.buf[: HEADER.size + n]
            try:
                obj = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
            except (UnicodeDecodeError, ValueError) as exc:
                raise ProtocolError("frame", f"frame is not UTF-8 JSON: {exc}") from None
            except RecursionError:  # the stdlib parser recurses per nesting level (~1,000 levels)
                raise ProtocolError("frame", "JSON nested too deeply") from None
            out.append(validate(obj, self.table))
        return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def negotiate(offered: Iterable[int], supported: Sequence[int] = SUPPORTED) -> int | None:
    """Highest version both sides speak, None when there is none."""
    common = set(offered) & set(supported)
    return max(common) if common else None


def entry(fwd: FwdPoint, value: Value) -> Entry:
    """[addr, value, quality, ts_ms] of a forwarding point: analog kinds scaled by COEF; a value that is
    not a finite number travels as null with the OV bit."""
    v = value.value
    q = int(value.quality)
    if fwd.kind in SCALED_KINDS and fwd.coef != 1.0:
        v = v * fwd.coef
    if isinstance(v, float) and not math.isfinite(v):
        return [fwd.addr, None, q | int(Quality.OV), int(value.ts_ms)]
    return [fwd.addr, v, q, int(value.ts_ms)]


# Reasons of a `rejected` res, exactly as docs/sefeps.md lists them (the res's id says which command).
REJECT_UNKNOWN = "unknown point"
REJECT_NOT_COMMAND = "not a command point"
REJECT_DO_VALUE = "a DO takes 0 or 1"
REJECT_BUSY = "too many commands in flight"
REJECT_DUPLICATE_ID = "a command with this id is in flight"
REJECT_STOPPING = REFUSED  # sent during the forwarder's planned stop (drain.py)
REJECT_RANGE = OUT_OF_RANGE  # an AO value that divided by COEF is not a finite number (ForwardServer.run_control)
REJECT_REASONS = (REJECT_UNKNOWN, REJECT_NOT_COMMAND, REJECT_DO_VALUE, REJECT_BUSY, REJECT_DUPLICATE_ID,
                  REJECT_STOPPING, REJECT_RANGE)


def command_problem(fwd: FwdPoint | None, value: float, known: bool) -> str | None:
    """Why a cmd on `fwd` (None: no command point at that addr; `known`: the addr is in the catalogue)
    with `value` is refused before reaching the device, None when it may run. A DO is a switch: exactly
    0 (off) or 1 (on); 2 or 0.5 is not a switch position and must not turn the output on."""
    if fwd is None:
        return REJECT_NOT_COMMAND if known else REJECT_UNKNOWN
    if fwd.kind == "DO" and value not in (0, 1):
        return REJECT_DO_VALUE
    return None


def placeholder(addr: int) -> Entry:
    """The image entry of a point that has no value yet: null, IV, ts 0 (docs/sefeps.md)."""
    return [addr, None, int(Quality.IV), 0]


def command_value(fwd: FwdPoint, value: float) -> float:
    """The source point's engineering value a command on `fwd` asks for (inverse of `entry`)."""
    return value / fwd.coef if fwd.kind in SCALED_KINDS else value


# -- message builders -------------------------------------------------------------------------------------
def hello(versions: Sequence[int] = SUPPORTED, name: str = "", resume: tuple[str, int] | None = None
          ) -> dict[str, Any]:
    m: dict[str, Any] = {"t": "hello", "versions": list(versions), "name": name}
    if resume is not None:
        m["resume"] = {"session": resume[0], "seq": int(resume[1])}
    return m


def welcome(version: int, session: str, rtu: int, node: str, hb_s: float, points: Sequence[tuple[int, str]],
            resumed_seq: int | None = None) -> dict[str, Any]:
    """With `resumed_seq`: the master is resumed from its recorded position (another session): the events
    it missed continue from resumed_seq + 1 of this session, then a full image follows (docs/sefeps.md)."""
    m: dict[str, Any] = {"t": "welcome", "version": version, "session": session, "rtu": rtu, "node": node,
                         "hb_s": hb_s, "points": [[a, k] for a, k in points]}
    if resumed_seq is not None:
        m["seq"] = resumed_seq
    return m


def ack(seq: int) -> dict[str, Any]:
    return {"t": "ack", "seq": seq}


def image_messages(seq: int, entries: Sequence[Entry], chunk: int) -> list[dict[str, Any]]:
    """The full image at `seq` in frames of at most `chunk` points; an empty image is one frame."""
    parts = [list(entries[i : i + chunk]) for i in range(0, len(entries), chunk)] or [[]]
    return [{"t": "image", "seq": seq, "points": p, "more": i < len(parts) - 1} for i, p in enumerate(parts)]


def event_messages(events: Sequence[tuple[int, Entry]], chunk: int) -> list[dict[str, Any]]:
    """ev frames for (seq, entry) pairs: each frame holds consecutive seqs starting at its "seq"."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    last = None
    for seq, e in events:
        if cur is None or last is None or seq != last + 1 or len(cur["points"]) >= chunk:
            cur = {"t": "ev", "seq": seq, "points": []}
            out.append(cur)
        cur["points"].append(e)
        last = seq
    return out


def result(cmd_id: int, ok: bool, state: str, reason: str = "") -> dict[str, Any]:
    return {"t": "res", "id": cmd_id, "ok": ok, "state": state, "reason": reason}


def error(code: str, msg: str) -> dict[str, Any]:
    return {"t": "err", "code": code, "msg": msg}


HB: dict[str, Any] = {"t": "hb"}
