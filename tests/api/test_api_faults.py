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
    assert next(i for i in r.json()["items"] if i["rtu"] == 1)["handover"] is None


async def test_configuration_loaded_again_after_data_loss_is_served(loaded, feproot, make_api) -> None:
    """Redis restarted empty, then another configuration loaded: generation 1 again, other RTUs. The api
    must not keep serving the configuration it cached for generation 1."""
    from fep_loader.store import replace_config
    from tests.api.conftest import sample_rows

    c = await make_api(node_cfg(loaded))
    assert 3 in [i["id"] for i in (await c.get("/api/v1/rtus")).json()["items"]]
    loaded.restart()
    rows = sample_rows(feproot)
    rows["T004_RTU"] = [r for r in rows["T004_RTU"] if r["RTUID"] != 3]
    rows["T010_CHANNEL"] = [r for r in rows["T010_CHANNEL"] if r["RTUID"] != 3]
    rows["T011_POINT"] = [r for r in rows["T011_POINT"] if r["RTUID"] != 3]
    rows["T036_VTPNT"] = [r for r in rows["T036_VTPNT"] if r["RTUID"] != 3]
    src = {r["PNTID"] for r in rows["T011_POINT"]} | {r["VPID"] for r in rows["T036_VTPNT"]}
    for t in ("T005_ZFAI", "T006_ZFDI", "T007_ZFACC", "T008_ZFDO", "T009_ZFAO"):
        rows[t] = [r for r in rows[t] if r["SRCID"] in src]
    assert replace_config(loaded.client(), rows).gen == 1
    r = await c.get("/api/v1/rtus/3")
    assert r.status_code == 404, r.text


async def test_out_of_file_descriptors_is_503_not_500(loaded, ar, make_api, monkeypatch) -> None:
    """A request that needs a file the process cannot open (EMFILE: its descriptors used up, measured on
    fep-api in tests/faults/test_resources.py: a lazy import of the first query check) is a 503 saying so;
    the next one, descriptors free again, a 200."""
    import errno

    from fep_api import query

    await populate(ar)
    c = await make_api(node_cfg(loaded))
    real = query.rules

    def out_of_fds(*_: object) -> object:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(query, "rules", out_of_fds)
    r = await c.get("/api/v1/points/101")
    assert r.status_code == 503 and r.json()["detail"].startswith("out of file descriptors"), r.text
    monkeypatch.setattr(query, "rules", real)
    assert (await c.get("/api/v1/points/101")).status_code == 200
