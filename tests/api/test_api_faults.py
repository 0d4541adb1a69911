"""The api under faults the other api tests do not cover: a hung local Redis (SIGSTOP) answers 503 within
two socket timeouts on every endpoint, then 200 again after SIGCONT; a misspelt field of an operator
action is a 422, never ignored."""

from __future__ import annotations

import time

from tests.api.conftest import TOKEN, node_cfg, populate

AUTH = {"Authorization": f"Bearer {TOKEN}"}
READS = ["/api/v1/node", "/api/v1/rtus", "/api/v1/rtus/1", "/api/v1/leases", "/api/v1/virtual-points",
         "/api/v1/points", "/api/v1/points/101", "/api/v1/controls", "/metrics", "/api/v1/overview",
         "/api/v1/events", "/api/v1/trends?rtu=1", "/api/v1/rtus/10/forwards"]


async def test_hung_redis_is_503_within_two_socket_timeouts(loaded, ar, make_api) -> None:
    await populate(ar)
    cfg = node_cfg(loaded, socket_timeout_s=0.5)
    c = await make_api(cfg)
    for path in READS:
        assert (await c.get(path)).status_code == 200, path  # connections open, the model cached
    loaded.pause()
    try:
        for path in READS:
            t0 = time.monotonic()
            r = await c.get(path)
            took = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["detail"].startswith("Redis unreachable"), (path, r.text)
            assert took < 2 * cfg.socket_timeout_s + 0.5, (path, took)  # redis-py's default retries: ~9 s
        t0 = time.monotonic()
        r = await c.get("/ready")
        assert r.status_code == 503 and time.monotonic() - t0 < 2 * cfg.socket_timeout_s + 0.5
    finally:
        loaded.resume()
    for path in READS:
        assert (await c.get(path)).status_code == 200, path


async def test_operator_action_with_a_misspelt_field_is_422(loaded, ar, make_api) -> None:
    await populate(ar)
    c = await make_api(node_cfg(loaded))
    r = await c.post("/api/v1/rtus/1/handover", headers=AUTH, json={"targt": "A"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "targt"], r.text
    r = await c.get("/api/v1/leases")
    assert [i for i in r.json()["items"] if i["rtu"] == 1][0]["handover"] is None
