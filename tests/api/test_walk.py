"""Every operation of the api's own OpenAPI schema walked with hostile inputs, as an operator's typo, a script
or a fuzzer sends them: each path parameter as an unknown id, negative, 0, 2**70, non-numeric, unicode,
percent-encoded slashes, 10 kB; each query parameter empty, repeated, out of its schema's range, of the wrong
type, 10 kB, missing where required; methods the path does not take; malformed bodies. Run three times: with
Redis up (sample configuration, runtime state), stopped, and restarted empty (no configuration). Every answer is a
4xx whose body says what is wrong, or a documented 503 with its reason; never a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from fepha import keyspace as ks
from tests.api.conftest import TOKEN, node_cfg, populate

AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNKNOWN_IDS = ["99999", "0", "-1", str(2**70)]
"""Path ids in digits that name nothing: a 404 naming the id."""
MALFORMED_IDS = ["abc", "%C3%A9t%C3%A9", "%E2%82%AC", "%00", "1%0A", "1.0", "9" * 10_000]
"""Path ids that are no integer (unicode, a NUL, 10 kB of digits, past Python's limit): a 422 on the parameter."""
SLASHED_IDS = ["1%2F2", "1%2f..%2f2"]
"""A percent-encoded slash is a path separator to the router: no such path (404 naming it)."""
HOSTILE_QUERY = ["", "abc", "-1", "0", str(2**70), "1.5", "nan", "inf", "\x00", "é", "x" * 10_000]
BODIES = [b"{", b"[]", b'"x"', b"1", b'{"target": 1}', b'{"target": "C"}', b'{"window_s": -1}',
          b'{"window_s": 1e308}', b'{"window_s": 601}', b'{"window_s": 1e-400}', b'{"wait": "no"}',
          b'{"target": "A\\u0000"}', b'{"x": 1}', b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000]
"""Handover bodies that are not its fields (the nested ones were a RecursionError: a 500)."""
FORWARDING_RTU = 10
BASE_QUERY = {"/api/v1/trends": {"rtu": "1"}, "/api/v1/stream": {"duration_s": "0.05"}}
OTHER_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
PROBES = ("/health", "/ready")


@dataclass
class Case:
    method: str
    url: str
    params: dict[str, Any] | list[tuple[str, str]] | None = None
    body: bytes | None = None
    expect: int | None = None
    """The status the case must get when Redis is up with the configuration (None: any 4xx or 200)."""
    names: str | None = None
    """For a 422: the parameter its `loc` must name."""
    says: str | None = None
    """What the detail must say (the id not found, the method not allowed)."""


def _base_path(path: str) -> str:
    rid = str(FORWARDING_RTU) if path.endswith("/forwards") else "1"
    return path.replace("{rtu_id}", rid).replace("{point_id}", "101").replace("{ctl_id}", "1")


def _query_cases(url: str, method: str, base: dict[str, str], p: dict[str, Any]) -> Iterator[Case]:
    name, schema = p["name"], p.get("schema", {})
    alts = schema.get("anyOf", [schema])
    types = {a.get("type") for a in alts}
    for v in HOSTILE_QUERY:
        yield Case(method, url, {**base, name: v})
    yield Case(method, url, [*base.items(), (name, "1"), (name, "2")],
               expect=None if "array" in types else 422, names=None if "array" in types else name)
    if p.get("required"):
        yield Case(method, url, {k: v for k, v in base.items() if k != name}, expect=422, names=name)
    for a in alts:
        if a.get("type") == "array":
            a = a.get("items", {})
        if "maximum" in a:
            yield Case(method, url, {**base, name: str(a["maximum"] + 1)}, expect=422, names=name)
        if "minimum" in a:
            yield Case(method, url, {**base, name: str(a["minimum"] - 1)}, expect=422, names=name)
        if "enum" in a:
            yield Case(method, url, {**base, name: "zz"}, expect=422, names=name)
        if a.get("type") == "integer":
            yield Case(method, url, {**base, name: "1.5"}, expect=422, names=name)
        if a.get("type") == "boolean":
            yield Case(method, url, {**base, name: "maybe"}, expect=422, names=name)


def cases(schema: dict[str, Any]) -> Iterator[Case]:
    """The hostile requests of every operation in `schema`."""
    for path, ops in schema["paths"].items():
        url = _base_path(path)
        base = BASE_QUERY.get(path, {})
        for method in OTHER_METHODS:
            if method.lower() not in ops:
                yield Case(method, url, base, expect=405, says=f"{method} is not allowed on {url}")
        for method, op in ops.items():
            method = method.upper()
            if method == "GET":  # the operation as it should be asked (an action's would act)
                yield Case(method, url, base)
            if not path.startswith(PROBES):  # the probes take whatever a prober adds
                yield Case(method, url, {**base, "zz": "1"}, expect=422, names="zz")
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    for v in UNKNOWN_IDS:
                        yield Case(method, path.replace("{" + p["name"] + "}", v), base, expect=404,
                                   says=f" {v} ")
                    for v in MALFORMED_IDS:
                        yield Case(method, path.replace("{" + p["name"] + "}", v), base, expect=422,
                                   names=p["name"])
                    for v in SLASHED_IDS:
                        yield Case(method, path.replace("{" + p["name"] + "}", v), base, expect=404,
                                   says="no such path")
                elif p["in"] == "query":
                    yield from _query_cases(url, method, base, p)
            if "requestBody" in op:
                for b in BODIES:
                    yield Case(method, url, base, body=b, expect=422)


def says_why(r: httpx.Response, case: Case) -> str | None:
    """What is wrong with an error answer's body, None when it says what is wrong."""
    if r.status_code == 503 and r.url.path == "/ready":  # not ready: the checks and their reasons
        return None if r.json()["reasons"] else "not ready without a reason"
    try:
        detail = r.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"no JSON detail: {r.text[:200]!r}"
    if isinstance(detail, str):
        return None if detail.strip() else "an empty detail"
    if not detail or not all(isinstance(e, dict) and e.get("msg") and e.get("loc") for e in detail):
        return f"a detail without loc and msg: {detail!r:.200}"
    if r.status_code == 422 and case.names is not None and case.names not in {str(x) for x in detail[0]["loc"]}:
        return f"a 422 that does not name {case.names!r}: {detail!r:.200}"
    return None


async def walk(c: httpx.AsyncClient, judge: Callable[[Case, httpx.Response], str | None]) -> list[str]:
    """Send every case; the problems found, one line each (`judge`: the mode's own rule)."""
    schema = (await c.get("/openapi.json")).json()
    problems: list[str] = []
    n = 0
    for case in cases(schema):
        n += 1
        headers = {**AUTH, "Content-Type": "application/json"} if case.body is not None else AUTH
        r = await c.request(case.method, case.url, params=case.params, content=case.body, headers=headers)
        what = f"{case.method} {case.url[:60]} {str(case.params)[:60]} {(case.body or b'')[:30]!r}"
        if r.status_code >= 400 and (why := says_why(r, case)) is not None:
            problems.append(f"{what}: {r.status_code} {why}")
        if (why := judge(case, r)) is not None:
            problems.append(f"{what}: {r.status_code} {why}: {r.text[:160]}")
    assert n > 400, n  # the schema was walked, not an empty one
    return problems


async def test_every_operation_answers_hostile_inputs_with_a_4xx_that_says_why(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    lease = await ar.hgetall(ks.lease(1))

    def judge(case: Case, r: httpx.Response) -> str | None:
        if r.status_code >= 500:
            return "a 5xx with Redis up and the configuration loaded"
        if case.expect is not None and r.status_code != case.expect:
            return f"expected {case.expect}"
        if case.says is not None and case.says not in r.json()["detail"]:
            return f"a detail that does not say {case.says!r}"
        return None

    assert (problems := await walk(c, judge)) == [], "\n".join(problems)
    assert await ar.hgetall(ks.lease(1)) == lease  # no hostile body marked a handover


async def test_redis_stopped_is_503_with_its_reason_logged_once(loaded, ar, make_api, caplog) -> None:
    # the outage was logged again after every answer below 500 (a 405, a 422, /health): 37 times in one walk
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    assert (await c.get("/api/v1/rtus")).status_code == 200
    loaded.stop()
    caplog.set_level(logging.INFO, logger="fep_api")

    def judge(case: Case, r: httpx.Response) -> str | None:
        if r.status_code == 503 and not (case.url == "/ready" or r.json()["detail"].startswith("Redis unreachable")):
            return "a 503 that is not 'Redis unreachable'"
        if r.status_code >= 500 and r.status_code != 503:
            return "a 5xx other than 503"
        if r.status_code < 300 and case.url not in ("/health", "/api/v1/events"):  # /events?before=0: empty
            return "an answer without Redis"
        return None

    assert (problems := await walk(c, judge)) == [], "\n".join(problems)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith("redis: unreachable"), warned
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if "recovered" in r.getMessage()]


NEEDS_CONFIGURATION = {"/api/v1/rtus", "/api/v1/rtus/{rtu_id}", "/api/v1/leases", "/api/v1/virtual-points",
                       "/api/v1/points", "/api/v1/points/{point_id}", "/api/v1/rtus/{rtu_id}/forwards",
                       "/api/v1/trends", "/api/v1/rtus/{rtu_id}/handover"}
"""The live stream needs none (its health messages say generation 0) unless asked for an RTU."""


async def test_without_configuration_every_operation_says_so_or_answers_what_it_can(loaded, ar, make_api) -> None:
    # Redis restarted empty: what needs the configuration is 503 "run sysload init"; the rest answers
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    assert (await c.get("/api/v1/rtus")).status_code == 200  # the configuration cached
    loaded.restart()  # empty: no persistence
    assert await ar.dbsize() == 0
    schema = (await c.get("/openapi.json")).json()
    for path, ops in schema["paths"].items():
        for method in ops:
            r = await c.request(method, _base_path(path), params=BASE_QUERY.get(path), headers=AUTH)
            if path in NEEDS_CONFIGURATION:
                assert r.status_code == 503 and "run `sysload init`" in r.json()["detail"], (path, r.text)
            elif path == "/ready":
                assert r.status_code == 503 and "no configuration loaded" in r.text, r.text
            elif path == "/api/v1/controls/{ctl_id}":  # was "ids run from 1 to 0"
                assert r.status_code == 404 and r.json()["detail"] == \
                    "control 1 does not exist: no control has been given yet", r.text
            else:
                assert r.status_code == 200, (path, r.status_code, r.text)
    assert (await c.get("/api/v1/node")).json()["cfg"]["gen"] == 0

    def judge(case: Case, r: httpx.Response) -> str | None:
        if r.status_code >= 500 and not (r.status_code == 503 and ("sysload init" in r.text or case.url == "/ready")):
            return "a 5xx that is not the documented 'no configuration' 503"
        return None

    assert (problems := await walk(c, judge)) == [], "\n".join(problems)
