"""What the api answers to inputs an operator (or a script, or a fuzzer) controls: ids and query parameters
that are not what they look like, request bodies that are not JSON, and methods the routes do not name.
Every refused input is a 4xx that says what is wrong and changes nothing."""

from __future__ import annotations

import pytest

from fepha import keyspace as ks
from tests.api.conftest import TOKEN, node_cfg, populate

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("raw", ["1_0", "1.0", "+1", "%201", "1%20", "0x1", "1e1", "%EF%BC%91"])
async def test_an_id_that_is_not_written_in_digits_is_422_not_another_rtu(raw: str, loaded, ar, make_api) -> None:
    # int("1_0") is 10 and int(" 1") is 1: read leniently, a typo names another RTU, and a handover moves it
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    before = await ar.hgetall(ks.lease(1))
    for method, path in (("GET", f"/api/v1/rtus/{raw}"), ("GET", f"/api/v1/points/{raw}"),
                         ("GET", f"/api/v1/rtus/{raw}/forwards"), ("POST", f"/api/v1/rtus/{raw}/handover"),
                         ("GET", f"/api/v1/points?rtu={raw}"), ("GET", f"/api/v1/trends?rtu={raw}"),
                         ("GET", f"/api/v1/events?rtu={raw}"), ("GET", f"/api/v1/points?limit={raw}")):
        r = await c.request(method, path, headers=AUTH)
        assert r.status_code == 422, (method, path, r.status_code, r.text)
        assert "digits" in r.text, r.text
    assert await ar.hgetall(ks.lease(1)) == before


async def test_ids_in_digits_are_answered(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    assert (await c.get("/api/v1/rtus/01")).json()["id"] == 1
    for path in ("/api/v1/rtus/-1", "/api/v1/rtus/0", "/api/v1/points/-0", "/api/v1/rtus/" + "9" * 30,
                 "/api/v1/points?rtu=-5"):
        r = await c.get(path)
        assert r.status_code == 404 and "not in the configuration" in r.json()["detail"], (path, r.text)
    r = await c.get("/api/v1/rtus/" + "9" * 4301)  # past Python's limit on parsing an integer
    assert r.status_code == 422 and "maximum size" in r.text


URL = "/api/v1/rtus/1/handover"


async def _unmoved(ar) -> bool:
    lease = await ar.hgetall(ks.lease(1))
    return lease.get("holder") == "A" and not lease.get("handover")


@pytest.mark.parametrize(("content", "ctype", "status", "says"), [
    (b"\x80\x81\x10\x90", "application/json", 422, "not UTF-8"),          # was a bare 400 "error parsing"
    (b'"\x80"', "application/json", 422, "not UTF-8"),
    (b'{"target": "B"}', "text/plain", 415, "application/json"),       # was 422 "valid dictionary"
    (b"target=B", "application/x-www-form-urlencoded", 415, "application/json"),
    (b'{"target": "A", "target": "B"}', "application/json", 422, "twice"),  # was: the last one won
    (b'{"wait": "yes"}', "application/json", 422, "boolean"),          # was taken as true
    (b'{"window_s": "10"}', "application/json", 422, "number"),
    (b'{"window_s": NaN}', "application/json", 422, "finite"),
    (b'{"window_s": Infinity}', "application/json", 422, "finite"),
    (b"{bad", "application/json", 422, "JSON"),
    (b"[]", "application/json", 422, "object"),
    (b'{"target": "B"}' + b" " * 70_000, "application/json", 413, "bytes"),
], ids=["not-utf8", "not-utf8-string", "text-plain", "form", "duplicate-key", "wait-string", "window-string",
        "nan", "infinity", "not-json", "array", "too-large"])
async def test_a_handover_body_that_is_not_a_json_request_is_refused_and_moves_nothing(
        content: bytes, ctype: str, status: int, says: str, loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    r = await c.post(URL, headers={**AUTH, "Content-Type": ctype}, content=content)
    assert r.status_code == status and says in r.text, r.text
    assert await _unmoved(ar)


async def test_a_handover_body_too_large_without_a_length_is_413(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))

    async def chunks():  # no Content-Length: sent chunked
        yield b'{"target": "B"'
        for _ in range(100):
            yield b" " * 1000
        yield b"}"
    r = await c.post(URL, headers={**AUTH, "Content-Type": "application/json"}, content=chunks())
    assert r.status_code == 413, r.text
    assert await _unmoved(ar)


async def test_a_handover_body_that_is_json_is_taken(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    for ctype in ("application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
        r = await c.post(URL, headers={**AUTH, "Content-Type": ctype}, content=b'{"target": "A", "window_s": 5}')
        assert r.status_code == 200 and r.json()["status"] == "already", r.text
    r = await c.post(URL, headers=AUTH, content=b'{"target": "A"}')  # no Content-Type: read as JSON
    assert r.status_code == 200 and r.json()["status"] == "already", r.text
    r = await c.post(URL, headers={**AUTH, "Content-Type": "application/json"}, content=b"null")
    assert r.status_code == 202 and r.json()["target"] == "B", r.text  # null and no body: the defaults


@pytest.mark.parametrize("path", ["/api/v1/points?quallity=bad", "/api/v1/points?rtu=1&rtu=2",
                                  "/api/v1/points?quality=good&quality=bad", "/api/v1/events?limit=1&limit=2",
                                  "/api/v1/rtus?x=1", "/api/v1/rtus/1?verbose=1", "/metrics?name=x",
                                  "/api/v1/controls?before=1-0&before=2-0",
                                  "/api/v1/stream?values=true&values=false&duration_s=0.2"])
async def test_an_unknown_or_repeated_query_parameter_is_422(path: str, loaded, ar, make_api) -> None:
    # ignored, a misspelt filter answered every point as if filtered; of rtu=1&rtu=2 one was dropped
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    r = await c.get(path)
    assert r.status_code == 422, (path, r.status_code, r.text[:200])
    name = path.split("?")[1].split("=")[0]
    assert r.json()["detail"][0]["loc"] == ["query", name] and name in r.json()["detail"][0]["msg"], r.text


async def test_an_unknown_query_parameter_of_an_action_is_422_and_moves_nothing(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    assert (await c.post(URL + "?target=B")).status_code == 401  # the token is checked first
    r = await c.post(URL + "?target=B", headers=AUTH)  # the target goes in the body
    assert r.status_code == 422 and "unknown query parameter 'target'" in r.text, r.text
    assert await _unmoved(ar)


async def test_known_and_repeatable_query_parameters_are_taken(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    assert (await c.get("/api/v1/points?rtu=1&kind=AI&quality=good&offset=0&limit=5")).status_code == 200
    r = await c.get("/api/v1/stream?rtu=1&rtu=vp&duration_s=0.2")  # rtu of the stream is a list
    assert r.status_code == 200 and r.text.startswith("event: hello")
    assert (await c.get("/health?probe=1")).status_code == 200  # probes answer whatever a prober adds


@pytest.mark.parametrize("open_reads", [True, False])
async def test_the_schema_asks_a_token_where_the_node_asks_one(open_reads: bool, loaded, ar, make_api) -> None:
    # every read listed the bearer scheme and 401/403 although, with open_reads, no read asks a token:
    # a schema checker (schemathesis's ignored_auth) reads that as authentication that is not enforced
    await populate(ar)
    c = await make_api(node_cfg(loaded, api_open_reads=open_reads))
    schema = (await c.get("/openapi.json")).json()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            r = await c.request(method, path.replace("{rtu_id}", "1").replace("{point_id}", "101"),
                                params={"rtu": "1", "duration_s": "0.1"} if path.endswith(("trends", "stream"))
                                else None)
            asks = r.status_code in (401, 403)
            assert asks == bool(op.get("security")), (method, path, r.status_code, op.get("security"))
            assert asks == ("401" in op["responses"]), (method, path, r.status_code)


async def test_the_schema_states_every_bound_in_json_schema_words(loaded, make_api) -> None:
    # Query(ge=...) after a validator came out as "ge"/"le", words JSON Schema does not know: a client
    # generated from the schema (or a fuzzer) took limit=0 for valid and got a 422
    c = await make_api(node_cfg(loaded))
    text = (await c.get("/openapi.json")).text
    for word in ("ge", "le", "gt", "lt"):
        assert f'"{word}":' not in text, word
    limit = next(p for p in (await c.get("/openapi.json")).json()["paths"]["/api/v1/points"]["get"]["parameters"]
                 if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)


async def test_head_answers_as_get_without_a_body(loaded, ar, make_api) -> None:
    # HEAD was 405 on every route but the static files: a monitor checking /health with HEAD saw it fail
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    for path in ("/health", "/ready", "/api/v1/rtus", "/api/v1/rtus/1", "/api/v1/rtus/999", "/metrics", "/",
                 "/api/v1/points?limit=0", "/openapi.json"):
        get, head = await c.get(path), await c.head(path)
        assert head.status_code == get.status_code, (path, head.status_code, get.status_code)
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
    r = await c.head(URL, headers=AUTH)  # HEAD of an action is not the action
    assert r.status_code == 405 and await _unmoved(ar)
    r = await c.request("PUT", "/api/v1/rtus")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", r.headers


async def test_unknown_paths_and_methods_say_which(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    r = await c.get("/api/v1/rtu/1")  # was {"detail": "Not Found"}
    assert r.status_code == 404 and r.json()["detail"].startswith("no such path: /api/v1/rtu/1"), r.text
    r = await c.get("/static/nothing.js")
    assert r.status_code == 404 and "/static/nothing.js" in r.json()["detail"], r.text
    r = await c.delete("/api/v1/rtus/1", headers=AUTH)  # was {"detail": "Method Not Allowed"}
    assert r.status_code == 405 and r.json()["detail"] == "DELETE is not allowed on /api/v1/rtus/1", r.text
    r = await c.post(URL)  # a route's own answer passes unchanged, headers too
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "bearer token" in r.text
    r = await c.get("/x" * 30_000)  # the path is named, not sent back whole (httpx sends at most 64 kB)
    assert r.status_code == 404 and len(r.text) < 400, len(r.text)


async def test_trend_of_a_forwarding_rtu_is_409(loaded, ar, make_api) -> None:
    # was 200 with no series: "no changes", where there is nothing to trend (as /rtus/{id}/forwards is 409
    # for an acquisition RTU)
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    r = await c.get("/api/v1/trends?rtu=10")
    assert r.status_code == 409 and "/api/v1/rtus/10/forwards" in r.json()["detail"], r.text


async def test_the_schema_of_the_handover_body_takes_null(loaded, make_api) -> None:
    # null is taken as no body (the defaults): the schema said an object only (schemathesis: "schema-
    # violating request accepted")
    c = await make_api(node_cfg(loaded))
    op = (await c.get("/openapi.json")).json()["paths"]["/api/v1/rtus/{rtu_id}/handover"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert {"type": "null"} in schema["anyOf"] and op["requestBody"]["required"] is False


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
async def test_a_stream_duration_that_is_not_a_number_says_so(value: str, loaded, make_api) -> None:
    # nan was refused as "should be less than or equal to 86400", which it is not about
    c = await make_api(node_cfg(loaded))
    r = await c.get(f"/api/v1/stream?duration_s={value}")
    assert r.status_code == 422 and "finite number" in r.text, r.text


async def test_a_handover_window_shorter_than_a_lease_tick_is_422(loaded, ar, make_api) -> None:
    # 0.0001 s became a 0 ms window: answered 202 "pending", a move that lapsed as it was marked
    await populate(ar)
    c = await make_api(node_cfg(loaded, lease_tick_s=0.2))
    for w in (0.0001, 0.1):
        r = await c.post(URL, headers=AUTH, json={"target": "B", "window_s": w})
        assert r.status_code == 422 and "shorter than one lease tick" in r.text, r.text
        assert await _unmoved(ar)
    r = await c.post(URL, headers=AUTH, json={"target": "B", "window_s": 0.2})
    assert r.status_code == 202, r.text
    body = (await c.get("/openapi.json")).json()["paths"]["/api/v1/rtus/{rtu_id}/handover"]["post"]["requestBody"]
    window = body["content"]["application/json"]["schema"]["anyOf"][0]["properties"]["window_s"]["anyOf"][0]
    assert (window["minimum"], window["maximum"]) == (0.2, 600)  # the schema says so too


async def test_the_stream_of_an_unknown_rtu_is_404_and_of_a_malformed_one_422(loaded, ar, make_api) -> None:
    # rtu=99 (or abc) was taken: a stream that sent no values, ever, for an RTU that does not exist
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    r = await c.get("/api/v1/stream?rtu=vp&rtu=99&duration_s=0.1")
    assert r.status_code == 404 and "RTU 99 is not in the configuration" in r.text, r.text
    r = await c.get("/api/v1/stream?rtu=abc&duration_s=0.1")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "rtu", 0], r.text
    r = await c.get("/api/v1/stream?rtu=vp&rtu=01&duration_s=0.1")
    assert r.status_code == 200 and r.text.startswith("event: hello")
    store = c._transport.app.state.store  # the filter as the change stream names RTUs
    assert await store.stream_rtus(["01", "vp", "1"]) == frozenset({"1", "vp"})
