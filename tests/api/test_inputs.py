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
