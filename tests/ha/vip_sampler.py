"""Run in a node's namespace (tests/ha/test_vip_move_writes.py): samples that node's Redis every 10 ms and
prints one JSON line whenever its role or an RTU's lease (holder, epoch, expires_ms, polled_ms) changes,
with the wall time of the sample. Bounded: it exits after --seconds."""

from __future__ import annotations

import argparse
import json
import time

import redis


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--password", default="")
    ap.add_argument("--rtus", default="1,2")
    ap.add_argument("--seconds", type=float, default=60.0)
    a = ap.parse_args()
    r = redis.Redis(host=a.host, password=a.password or None, socket_timeout=1, decode_responses=True)
    rtus = [int(x) for x in a.rtus.split(",")]
    last: dict[str, object] = {}
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            p = r.pipeline(transaction=False)
            p.execute_command("ROLE")
            for rtu in rtus:
                p.hmget(f"fep:lease:{rtu}", "holder", "epoch", "expires_ms", "polled_ms")
            res = p.execute()
            now = {"role": str(res[0][0]), **{str(rtu): v for rtu, v in zip(rtus, res[1:], strict=True)}}
        except redis.RedisError as exc:
            now = {"error": type(exc).__name__}
        if now != last:
            print(json.dumps({"t": time.time(), **now}), flush=True)
            last = now
        time.sleep(0.01)


if __name__ == "__main__":
    main()
