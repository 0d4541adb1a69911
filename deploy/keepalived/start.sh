#!/usr/bin/env bash
# Renders keepalived.conf from the environment and runs keepalived in the foreground, as its child (this
# script stays the container's process). When keepalived ends (SIGTERM/SIGINT to this script are passed
# on; keepalived stopped or killed by its own PID), `redis-role.sh` STOPPED demotes the local Redis to a
# replica of the peer once the peer holds the VIP and the master (docs/ha.md "keepalived stopped").
# The VIP follows a live keepalived only: one left configured on this host is removed before keepalived
# starts (a previous instance killed with its VRRP process, container restarted) and after it ended (its
# VRRP process killed too, which would otherwise leave it here beside the peer's), one log line each.
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
  # the python that has fepha (the role script's audit copy, fepha.splitaudit): keepalived gives no PATH
  printf 'FEP_PYTHON=%q\n' "${FEP_PYTHON:-$(command -v python3)}"
} > "$FEP_RUN/role.env"
chmod 600 "$FEP_RUN/role.env"
if [ "${RENDER_ONLY:-}" = 1 ]; then echo "$conf"; exit 0; fi
set +e
LOG=${ROLE_LOG:-/dev/stderr}
log() { echo "$(date -u +%FT%T.%3NZ) start.sh: $*" >> "$LOG"; }
# the VIP's addresses (with their prefix) configured on the VRRP interface
vip_here() {
  ip -o -4 addr show dev "$VRRP_INTERFACE" 2>/dev/null \
    | awk -v vip="$VIP/" '{ for (i = 1; i < NF; i++) if ($i == "inet" && index($(i + 1), vip) == 1) print $(i + 1) }'
}
drop_vip() {   # $1: why
  local a
  for a in $(vip_here); do
    if ip addr del "$a" dev "$VRRP_INTERFACE" 2>/dev/null; then
      log "$1: removed the VIP $a from $VRRP_INTERFACE (it follows a live keepalived only)"
    else
      log "$1: could not remove the VIP $a from $VRRP_INTERFACE"
    fi
  done
}
# process $1 is a keepalived that runs (a zombie, killed and not yet reaped, does not)
is_keepalived() {
  local pid comm st
  read -r pid comm st _ < "/proc/$1/stat" 2>/dev/null || return 1
  [ "$comm" = "(keepalived)" ] && [ "$st" != Z ]
}
# a keepalived process named in one of this FEP_RUN's pid files, still running
ka_running() {
  local f p
  for f in "$FEP_RUN/keepalived.pid" "$FEP_RUN/vrrp.pid"; do
    p=$(head -n 1 "$f" 2>/dev/null) || continue
    case "$p" in ''|*[!0-9]*) continue ;; esac
    is_keepalived "$p" && { echo "$p"; return 0; }
  done
  return 1
}
if other=$(ka_running); then
  log "a keepalived (pid $other) already runs for $FEP_RUN: the VIP is left as it is"
else
  # a VIP configured here now was left by a previous keepalived (killed with its VRRP process): nobody
  # holds it legitimately; keepalived starts clean, in BACKUP, and takes the VIP again only by VRRP
  drop_vip "before keepalived starts"
fi
keepalived -n -l -D -f "$conf" -p "$FEP_RUN/keepalived.pid" -r "$FEP_RUN/vrrp.pid" &
ka=$!
trap 'kill -TERM "$ka" 2>/dev/null' TERM INT
wait "$ka"; rc=$?
while kill -0 "$ka" 2>/dev/null; do wait "$ka"; rc=$?; done   # a trapped signal interrupts wait
trap - TERM INT
# keepalived's VRRP process may outlive its parent for a moment: on its way out (SIGTERM, or its parent
# gone) it sends a priority-0 advert and gives the VIP away itself, which moves it to the peer at once.
# Give it 2 s, then SIGTERM it (its own stop path) and give it 2 s more, then SIGKILL it.
vrrp=$(ka_running)
if [ -n "$vrrp" ]; then
  for step in wait term; do
    end=$(( $(date +%s%3N) + 2000 ))
    while is_keepalived "$vrrp" && [ "$(date +%s%3N)" -lt "$end" ]; do sleep 0.05; done
    is_keepalived "$vrrp" || break
    if [ "$step" = wait ]; then
      log "keepalived ended but its VRRP process $vrrp runs on: SIGTERM"; kill -TERM "$vrrp"
    else   # hung: its adverts would keep the peer BACKUP while the VIP is removed below (no holder at all)
      log "keepalived's VRRP process $vrrp still runs after SIGTERM: SIGKILL"; kill -KILL "$vrrp"
    fi
  done
fi
# Still configured: the VRRP process was killed too (SIGKILL), nobody gives the VIP away and the peer
# takes it after 3 missed adverts: two holders of one address. Nobody here holds it legitimately any more.
drop_vip "keepalived ended"
REDIS_ROLE_ONCE=STOPPED "$DEPLOY/redis-role.sh" "$FEP_RUN/keepalived.fifo"
exit "$rc"
