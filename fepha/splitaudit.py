"""The control audit of the loser of a split brain, copied to the winner before its Redis is demoted.

During a split brain both Redis are masters and each node's forwarder runs the controls its SCADA masters
send through its own Redis (no replica attached: the claim's barrier lets them run). At the heal the loser's
Redis becomes a replica of the winner's and the full resync discards its audit (`ks.CTL_AUDIT`). Just before
that demotion (keepalived's role script, `deploy/keepalived/redis-role.sh`, when the local Redis is a master
and the peer's is the master to follow) `python -m fepha.splitaudit` copies to the winner's audit the
entries the loser wrote that the winner does not hold, each with two fields added: `from_split` (the loser's
node id) and `split_id` (its stream id in the loser's audit; the copy gets a new id from the winner).

Which entries (`to_copy`, a plain function): the audit is replicated, so until the split both streams hold
the same entries under the same ids. Walking the loser's audit from its newest entry back, the first entry
the winner holds with the same id and the same fields is the last one both hold; every entry after it is
the loser's own (written during the split, or before it and never replicated). One already in the winner's
audit (`split_id` with this node's `from_split`) is not copied again: a repeated notify copies nothing twice.
At most `TAIL` entries of the loser are examined: none of them held by the winner (its audit lost or
trimmed past them) means all of them are copied, since the winner holds none of them.

Bounded: everything is given `WAIT_S` (1 s; each Redis call 0.5 s at most, none started later: at most
1.5 s; the role script kills it at 2 s, python's start included): the demotion waits for it, and
until then the loser's Redis is a master nobody writes to (the VIP left it). A winner that cannot be reached
or does not answer in time never blocks the demotion: one line says what is lost, and the script demotes.
The I/O (`keep`) is at the edge; it prints one line for the role script's log, or nothing when there was
nothing to copy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fepha import keyspace as ks

MARK = "from_split"   # field added to a copy: the node whose Redis ran the control during the split
SPLIT_ID = "split_id"  # field added to a copy: the entry's id in that node's audit
TAIL = 1000           # the loser's newest entries examined at most (a split does not run 1000 controls)
PAGE = 50             # looked up on the winner per round trip, newest first
WAIT_S = 1.0          # the whole copy; the demotion waits this long at most
CALL_S = 0.5          # one Redis call

Entry = tuple[str, dict[str, str]]


def already_copied(winner_entries: Iterable[Mapping[str, str]], node: str) -> set[str]:
    """The loser's ids (`split_id`) the winner's audit already holds copies of, from this node."""
    return {f[SPLIT_ID] for f in winner_entries if f.get(MARK) == node and SPLIT_ID in f}


def to_copy(loser: Sequence[Entry], held: Mapping[str, Mapping[str, str]], copied: Collection[str],
            node: str) -> list[Entry]:
    """The loser's audit entries to copy to the winner's, oldest first, marked.

    `loser`: the loser's newest entries, oldest first. `held`: the winner's entries found under ids of
    `loser` (an id absent: the winner has no entry with that id, or it was not looked up because a newer
    one was found held). `copied`: `already_copied` from the winner's entries after the last one both hold.
    """
    start = 0
    for i in range(len(loser) - 1, -1, -1):
        sid, fields = loser[i]
        if held.get(sid) == fields:
            start = i + 1
            break
    return [(sid, {**fields, MARK: node, SPLIT_ID: sid}) for sid, fields in loser[start:] if sid not in copied]


def _client(host: str, port: int, password: str | None) -> redis.Redis:
    """Never a command sent again (redis-py's default re-sends after a backoff of up to seconds): within
    `WAIT_S`, and a copy whose answer was lost is found by the next run (`split_id`), not added twice."""
    return redis.Redis(host=host, port=port, password=password or None, decode_responses=True,
                       socket_timeout=CALL_S, socket_connect_timeout=CALL_S, health_check_interval=0,
                       retry=Retry(NoBackoff(), 0))


def keep(local: redis.Redis, winner: redis.Redis, node: str, wait_s: float = WAIT_S) -> str:
    """Copy this node's own audit entries to the winner's audit; one line saying what was done or lost
    ("" when there was nothing to copy). Never raises for a Redis that fails or is too slow."""
    end = time.monotonic() + wait_s

    def in_time() -> None:   # no call starts after `wait_s`: at most wait_s + CALL_S in all
        if time.monotonic() > end:
            raise TimeoutError(f"no answer within {wait_s:g} s")
    try:
        loser = list(reversed(cast(list[Entry], local.xrevrange(ks.CTL_AUDIT, "+", "-", count=TAIL))))
    except redis.RedisError as e:
        return f"audit of the split: the local Redis could not be read ({e}): nothing copied"
    if not loser:
        return ""
    try:
        held: dict[str, dict[str, str]] = {}
        common: str | None = None
        for hi in range(len(loser), 0, -PAGE):
            in_time()
            page = loser[max(0, hi - PAGE):hi]
            pipe = winner.pipeline(transaction=False)
            for sid, _ in page:
                pipe.xrange(ks.CTL_AUDIT, sid, sid, count=1)
            for (sid, _), got in zip(page, pipe.execute(), strict=True):
                if got:
                    held[sid] = got[0][1]
            common = next((sid for sid, fields in reversed(page) if held.get(sid) == fields), None)
            if common is not None:
                break
        in_time()
        after = cast(list[Entry], winner.xrange(ks.CTL_AUDIT, f"({common}", "+", count=ks.CTL_AUDIT_MAXLEN)
                     if common is not None else winner.xrevrange(ks.CTL_AUDIT, "+", "-", count=ks.CTL_AUDIT_MAXLEN))
        copies = to_copy(loser, held, already_copied((f for _, f in after), node), node)
        if not copies:
            return ""
        in_time()
        pipe = winner.pipeline(transaction=True)
        for _, fields in copies:
            pipe.xadd(ks.CTL_AUDIT, fields, maxlen=ks.CTL_AUDIT_MAXLEN, approximate=True)  # type: ignore[arg-type]
        pipe.execute()
    except (redis.RedisError, TimeoutError) as e:
        mine = [sid for sid, _ in loser if sid not in held]
        return (f"audit of the split: the winner's Redis failed ({e}): this node's audit entries it does not "
                f"hold are lost at the resync, unless a copy sent reached it ({len(mine)} of the newest "
                f"{len(loser)} were not found there, newest {loser[-1][0]}; ids not looked up count as not found)")
    ids = ", ".join(sid for sid, _ in copies)
    return f"audit of the split: copied {len(copies)} entries of this node's audit to the winner's ({ids})"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fepha.splitaudit", description=__doc__.splitlines()[0])
    p.add_argument("--local", required=True, metavar="HOST:PORT", help="this node's Redis (the loser's)")
    p.add_argument("--winner", required=True, metavar="HOST:PORT", help="the peer's Redis, the master to follow")
    p.add_argument("--node", required=True, help="this node's id, written as from_split")
    a = p.parse_args(argv)
    password = os.environ.get("REDISCLI_AUTH")  # the role script's, from role.env (never on the command line)
    lh, _, lp = a.local.rpartition(":")
    wh, _, wp = a.winner.rpartition(":")
    line = keep(_client(lh, int(lp), password), _client(wh, int(wp), password), a.node)
    if line:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
