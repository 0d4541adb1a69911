#!/usr/bin/env bash
# keepalived track script: exit 0 only when the local Redis answers PING with PONG (not LOADING,
# not refused). Checks Redis itself, not only the interface.
ENVFILE=${FEP_ROLE_ENV:-${1:-${FEP_RUN:-/run/fep}/role.env}}
[ -r "$ENVFILE" ] && . "$ENVFILE"
if [ -n "${REDISCLI_AUTH:-}" ]; then export REDISCLI_AUTH; else unset REDISCLI_AUTH; fi
out=$(timeout 2 redis-cli -h "${REDIS_HOST:-${NODE_IP:-127.0.0.1}}" -p "${REDIS_PORT:-6379}" --no-auth-warning ping 2>&1)
[ "$out" = "PONG" ]
