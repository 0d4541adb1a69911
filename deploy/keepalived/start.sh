#!/usr/bin/env bash
# Renders keepalived.conf from the environment and runs keepalived in the foreground, as its child (this
# script stays the container's process). When keepalived ends (SIGTERM/SIGINT to this script are passed
# on; keepalived stopped or killed by its own PID), `redis-role.sh` STOPPED demotes the local Redis to a
# replica of the peer once the peer holds the VIP and the master (docs/ha.md "keepalived stopped").
# Also used by tests/ha, which runs it inside a network namespace.
set -euo pipefail
DEPLOY=${DEPLOY:-$(cd "$(dirname "$0")" && pwd)}
FEP_RUN=${FEP_RUN:-/run/fep}
: "${NODE_ID:?}" "${NODE_IP:?}" "${PEER_IP:?}" "${VIP:?}" "${VRRP_INTERFACE:?}"
VIP_PREFIX=${VIP_PREFIX:-24}; VRRP_ROUTER_ID=${VRRP_ROUTER_ID:-51}; VRRP_PRIORITY=${VRRP_PRIORITY:-100}
mkdir -p "$FEP_RUN"
auth=""
if [ -n "${VRRP_AUTH:-}" ]; then auth="authentication {\\n        auth_type PASS\\n        auth_pass ${VRRP_AUTH:0:8}\\n    }"; fi
conf="$FEP_RUN/keepalived.conf"
sed -e "s|@NODE_ID@|$NODE_ID|g" -e "s|@NODE_IP@|$NODE_IP|g" -e "s|@PEER_IP@|$PEER_IP|g" \
    -e "s|@VIP@|$VIP|g" -e "s|@VIP_PREFIX@|$VIP_PREFIX|g" -e "s|@VRRP_INTERFACE@|$VRRP_INTERFACE|g" \
    -e "s|@VRRP_ROUTER_ID@|$VRRP_ROUTER_ID|g" -e "s|@VRRP_PRIORITY@|$VRRP_PRIORITY|g" \
    -e "s|@VRRP_AUTH_BLOCK@|$auth|g" -e "s|@DEPLOY@|$DEPLOY|g" -e "s|@FEP_RUN@|$FEP_RUN|g" \
    "$DEPLOY/keepalived.conf.tmpl" > "$conf"
# The scripts read these; keepalived does not pass its environment to them.
{
  for v in NODE_ID NODE_IP PEER_IP VIP VRRP_INTERFACE REDIS_PORT REDISCLI_AUTH FEP_RUN STOP_DEMOTE_WAIT_S; do
    printf '%s=%q\n' "$v" "${!v:-}"
  done
} > "$FEP_RUN/role.env"
chmod 600 "$FEP_RUN/role.env"
if [ "${RENDER_ONLY:-}" = 1 ]; then echo "$conf"; exit 0; fi
set +e
keepalived -n -l -D -f "$conf" -p "$FEP_RUN/keepalived.pid" -r "$FEP_RUN/vrrp.pid" &
ka=$!
trap 'kill -TERM "$ka" 2>/dev/null' TERM INT
wait "$ka"; rc=$?
while kill -0 "$ka" 2>/dev/null; do wait "$ka"; rc=$?; done   # a trapped signal interrupts wait
trap - TERM INT
REDIS_ROLE_ONCE=STOPPED "$DEPLOY/redis-role.sh" "$FEP_RUN/keepalived.fifo"
exit "$rc"
