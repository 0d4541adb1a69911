"""The request body of an operator action, read by the api itself rather than by FastAPI, so that every
body that is not a JSON object of the action's fields gets an answer that says what is wrong and changes
nothing:

- larger than `MAX_BYTES` (whether or not it says its length): 413, read no further (FastAPI reads any
  body into memory whole, before the token is even checked);
- a `Content-Type` other than JSON (`application/json`, `application/*+json`): 415 (FastAPI passed the
  raw text on and answered "Input should be a valid dictionary");
- not UTF-8: 422 (FastAPI answered a bare 400 "There was an error parsing the body", in no schema);
- nested deeper than the JSON decoder recurses (`[[[[…` a few thousand deep, well under 64 KiB): 422 (the
  decoder's RecursionError was a 500);
- not JSON, a name given twice (`{"target": "A", "target": "B"}`: the last one won), or fields the model
  refuses (strict: `"wait": "yes"` is not true): 422 in FastAPI's format (`detail`: a list with `loc`).
An empty body or `null` is no body: the action's defaults.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

MAX_BYTES = 64 * 1024
"""Far more than any action's fields; what is larger is refused unread."""

M = TypeVar("M", bound=BaseModel)


def _invalid(kind: str, msg: str, loc: tuple[Any, ...] = ("body",)) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg, "input": None}])


def _is_json(content_type: str | None) -> bool:
    if content_type is None:  # a client that names no type (curl -d names a form): taken as JSON, as FastAPI does
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the field {k!r} is given twice")
        out[k] = v
    return out


async def read(request: Request, model: type[M]) -> M | None:
    """The body of `request` as `model`, None when there is none (see the module for the answers)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BYTES):
        raise HTTPException(413, f"the body is larger than {MAX_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BYTES:
            raise HTTPException(413, f"the body is larger than {MAX_BYTES} bytes")
    if not raw.strip():
        return None
    if not _is_json(request.headers.get("content-type")):
        raise HTTPException(415, f"the body must be JSON (Content-Type: application/json), not "
                                 f"{request.headers.get('content-type')!r}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid("json_invalid", f"the body is not UTF-8 (byte {exc.start}): send it as UTF-8 JSON") from exc
    try:
        data = json.loads(text, object_pairs_hook=_unique)
    except json.JSONDecodeError as exc:
        raise _invalid("json_invalid", f"the body is not JSON: {exc.msg} at character {exc.pos}") from exc
    except ValueError as exc:  # a name given twice
        raise _invalid("json_invalid", f"{exc}: give each field once") from exc
    except RecursionError as exc:  # `[` * 5000: json's decoder recurses per level
        raise _invalid("json_invalid", "the body is nested too deeply to be read: send a flat JSON object") from exc
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _invalid("model_attributes_type", f"the body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors(include_url=False, include_context=False,
                                                                         include_input=False)]) from exc
