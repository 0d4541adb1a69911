"""Query parameters the api does not know, or a single-valued one given twice, are a 422.

Ignored, a misspelt filter (`/points?quallity=bad`) answered every point as if filtered, and of
`?rtu=1&rtu=2` one was silently dropped: the operator reads an answer to a question they did not ask. What
an operation takes is what its OpenAPI schema says (the schema is the one source): a name it lists, and
more than once only where it lists an array (`rtu` of /api/v1/stream)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

Rules = dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]]
"""(method, path template) -> (the query names it takes, those it takes more than once)."""


def rules(openapi: dict[str, Any]) -> Rules:
    out: Rules = {}
    for path, ops in openapi.get("paths", {}).items():
        for method, op in ops.items():
            names, many = set(), set()
            for p in op.get("parameters", []):
                if p.get("in") != "query":
                    continue
                names.add(p["name"])
                schema = p.get("schema", {})
                if "array" in {schema.get("type"), *(s.get("type") for s in schema.get("anyOf", []))}:
                    many.add(p["name"])
            out[(method.upper(), path)] = (frozenset(names), frozenset(many))
    return out


def _refuse(name: str, msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name), "msg": msg, "input": None}])


async def known(request: Request) -> None:
    """A router dependency: refuse what the operation's schema does not take (422)."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    table: Rules | None = getattr(request.app.state, "query_rules", None)
    if table is None:
        table = request.app.state.query_rules = rules(request.app.openapi())
    rule = table.get((request.method, path)) if path else None
    if rule is None:
        return
    names, many = rule
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in names:
            takes = ", ".join(sorted(names)) or "none"
            raise _refuse(name, f"unknown query parameter {name!r} (this operation takes: {takes})")
        if name in seen and name not in many:
            raise _refuse(name, f"query parameter {name!r} given more than once: give it once")
        seen.add(name)
