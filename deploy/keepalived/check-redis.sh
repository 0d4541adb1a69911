#!/usr/bin/env bash
# keepalived track script: exit 0 only when the local Redis answers PING with PONG (not LOADING,
# not refused), and not when it has no configuration while the peer's Redis has one (data lost, below).
# Checks Redis itself, not only the interface.
# Usage: check-redis.sh [ROLE_ENV [ALIVE_FILE]]. keepalived's VRRP process runs it every second with
# ALIVE_FILE: it is rewritten first, whatever Redis answers, as that process's sign of life ("NODE_ID
# STATE"), read by the services on this host (fepha.leftbehind): the VIP configured here without a fresh
# sign means keepalived is gone and left it behind (docs/ha.md). The container's healthcheck passes none.
ENVFILE=${FEP_ROLE_ENV:-${1:-${FEP_RUN:-/run/fep}/role.env}}
[ -r "$ENVFILE" ] && . "$ENVFILE"
if [ -n "${2:-}" ]; then
  printf '%s %s\n' "${NODE_ID:-}" "$(cat "$(dirname "$2")/state" 2>/dev/null || echo unknown)" > "$2.tmp" \
    && chmod 644 "$2.tmp" && mv -f "$2.tmp" "$2"
fi
if [ -n "${REDISCLI_AUTH:-}" ]; then export REDISCLI_AUTH; else unset REDISCLI_AUTH; fi
LOCAL=${REDIS_HOST:-${NODE_IP:-127.0.0.1}}
out=$(timeout 2 redis-cli -h "$LOCAL" -p "${REDIS_PORT:-6379}" --no-auth-warning ping 2>&1)
[ "$out" = "PONG" ] || exit 1
# A Redis that lost its data (restarted without its files) while the peer's still holds a configuration
# must not hold the VIP: promoted, it would wipe the peer's copy by resync. Failing here moves the VIP to
# the peer, whose Redis is then promoted and resyncs this one (redis-role.sh refuses the promotion too).
# The peer is asked only when the local Redis has no configuration: never on a healthy node.
if [ -n "${PEER_IP:-}" ] && [ "$(timeout 2 redis-cli -h "$LOCAL" -p "${REDIS_PORT:-6379}" --no-auth-warning exists fep:cfg:gen 2>/dev/null)" = 0 ] \
   && [ "$(timeout 1 redis-cli -h "$PEER_IP" -p "${PEER_REDIS_PORT:-${REDIS_PORT:-6379}}" --no-auth-warning exists fep:cfg:gen 2>/dev/null)" = 1 ]; then
  exit 1
fi
exit 0
