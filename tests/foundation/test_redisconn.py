"""fepha.redisconn: a command refused inside a pipeline raises Redis's own words, in both redis-py clients
and both pipeline kinds (against a real redis-server)."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio as aredis

import fepha.redisconn  # noqa: F401 - sets how pipeline errors read, for every client of the process
from tests.redisproc import RedisProc

REFUSED = "NOREPLICAS Not enough good replicas to write."


@pytest.fixture
def refusing(redis_master: RedisProc) -> RedisProc:
    """A master that answers every read and refuses every write (no replica for `min-replicas-to-write`)."""
    r = redis_master.client()
    r.config_set("min-replicas-to-write", 1)
    yield redis_master
    r.config_set("min-replicas-to-write", 0)
    r.close()


@pytest.mark.parametrize("transaction", [False, True])
async def test_async_pipeline_refusal_in_redis_words(refusing: RedisProc, transaction: bool) -> None:
    r = aredis.Redis(host=refusing.host, port=refusing.port, decode_responses=True)
    try:
        for n in (19, 26):  # the arguments differ from try to try; the message must not
            pipe = r.pipeline(transaction=transaction)
            pipe.get("x")
            pipe.hincrby("fep:m:test", "count", n)
            with pytest.raises(redis.ResponseError) as err:
                await pipe.execute()
            assert str(err.value) == REFUSED
    finally:
        await r.aclose()


@pytest.mark.parametrize("transaction", [False, True])
def test_sync_pipeline_refusal_in_redis_words(refusing: RedisProc, transaction: bool) -> None:
    r = refusing.client()
    try:
        pipe = r.pipeline(transaction=transaction)
        pipe.get("x")
        pipe.fcall("no_such_function", 0)
        with pytest.raises(redis.ResponseError) as err:
            pipe.execute()
        assert str(err.value) in ("Function not found", REFUSED), str(err.value)
        assert "pipeline" not in str(err.value)
    finally:
        r.close()
