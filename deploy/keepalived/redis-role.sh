#!/usr/bin/env bash
# keepalived notify_fifo_script: sets the local Redis's role from keepalived's state, in order.
#   MASTER          -> REPLICAOF NO ONE, but only if this node really holds the VIP right now, and never
#                      an empty Redis (no fep:cfg:gen) while the peer's has a configuration
#   BACKUP/FAULT/.. -> REPLICAOF <peer> <port>, but only if the peer's Redis is a master (never chain
#                      onto a replica, never let a booting or empty peer that is not master wipe us)
# Every second without a new line the last state is applied again (reconcile), so a restarted Redis,
# which boots as a replica of the peer, is put back in its role, and a BACKUP waiting for its peer to
# become master attaches as soon as it has. Usage: redis-role.sh FIFO  (keepalived passes the FIFO).
# REDIS_ROLE_ONCE=STATE applies one state and exits (tests, manual use).
# REDIS_ROLE_ONCE=STOPPED is start.sh's step after keepalived ended (stopped, or killed: its VRRP process
# then gives the VIP away): the local Redis, if still a master, becomes a replica of the peer once the peer
# has taken over (see stopped()), waiting at most STOP_DEMOTE_WAIT_S (5) seconds.
set -u
# keepalived gives scripts no environment: role.env sits beside the FIFO (written by start.sh)
ENVFILE=${FEP_ROLE_ENV:-$(dirname "${1:-/run/fep/x}")/role.env}
[ -r "$ENVFILE" ] && . "$ENVFILE"
if [ -n "${REDISCLI_AUTH:-}" ]; then export REDISCLI_AUTH; else unset REDISCLI_AUTH; fi
PORT=${REDIS_PORT:-6379}
LOCAL=${REDIS_HOST:-${NODE_IP:-127.0.0.1}}
PEER_PORT=${PEER_REDIS_PORT:-$PORT}
LOG=${ROLE_LOG:-/dev/stderr}

log() { echo "$(date -u +%FT%T.%3NZ) redis-role: $*" >> "$LOG"; }
rcli() { timeout 2 redis-cli --no-auth-warning "$@" 2>/dev/null; }
have_vip() { ip -o addr show 2>/dev/null | grep -qw "inet ${VIP}/[0-9]*"; }
# "master" or "slave <host> <port>" or "" when unreachable
role_of() { rcli -h "$1" -p "$2" role | head -n 3 | tr '\n' ' ' | awk '{ if ($1=="slave") print $1, $2, $3; else print $1 }'; }

# the local Redis has no configuration (restarted without its data) and the peer's Redis has one
lost_data() {
  [ "$(rcli -h "$LOCAL" -p "$PORT" exists fep:cfg:gen)" = 0 ] \
    && [ "$(timeout 1 redis-cli --no-auth-warning -h "$PEER_IP" -p "$PEER_PORT" exists fep:cfg:gen 2>/dev/null)" = 1 ]
}

# This Redis, a master, is about to become a replica of the peer's (the master to follow): its full resync
# discards what only this Redis holds. The control audit entries it wrote that the peer's does not hold (the
# controls this node ran during a split brain) are copied to the peer's audit first, marked from_split
# (fepha.splitaudit: 1 s, a call started by then 0.5 s more; killed after 2 s, python's start included).
# Whatever happens there the demotion goes on; what was copied or lost is logged.
keep_audit() {
  local out rc
  out=$(timeout 2 "${FEP_PYTHON:-python3}" -m fepha.splitaudit --local "$LOCAL:$PORT" \
        --winner "$PEER_IP:$PEER_PORT" --node "${NODE_ID:-$LOCAL}" 2>&1); rc=$?
  [ -n "$out" ] && log "$(echo "$out" | tail -n 1)"
  [ "$rc" = 0 ] || [ -n "$out" ] || log "audit of the split: the copy to the winner failed (rc $rc): this node's audit entries of the split are lost at the resync"
  return 0
}

apply() {
  local state=$1 mine peer
  mine=$(role_of "$LOCAL" "$PORT")
  [ -z "$mine" ] && return 1          # local Redis down: the track script puts us in FAULT anyway
  case "$state" in
    MASTER)
      if ! have_vip; then log "MASTER but VIP $VIP not on this host: not promoting"; return 1; fi
      if [ "$mine" != master ] && lost_data; then
        log "MASTER but the local Redis has no configuration and the peer's has: not promoting (it would wipe the peer's copy); check-redis.sh fails, the VIP moves to the peer"
        return 1
      fi
      if [ "$mine" != master ]; then
        rcli -h "$LOCAL" -p "$PORT" replicaof no one >/dev/null && log "promoted (was: $mine)"
      fi ;;
    BACKUP|FAULT|STOP)
      [ "$mine" = "slave $PEER_IP $PEER_PORT" ] && return 0
      peer=$(role_of "$PEER_IP" "$PEER_PORT")
      if [ "$peer" != master ]; then
        [ "$mine" = master ] || return 1
        log "$state: peer Redis is '${peer:-unreachable}', staying master until it is a master"; return 1
      fi
      [ "$mine" = master ] && keep_audit
      rcli -h "$LOCAL" -p "$PORT" replicaof "$PEER_IP" "$PEER_PORT" >/dev/null \
        && log "$state: now replica of $PEER_IP:$PEER_PORT (was: $mine)" ;;
  esac
}

run_id() { rcli -h "$1" -p "$2" info server | tr -d '\r' | sed -n 's/^run_id://p'; }

# keepalived is no longer running here. A local Redis left a master would run beside the peer's, promoted
# when the VIP moved, and nobody would write to it any more. Demote it only when every guard holds, each
# re-checked at every try: this host does not hold the VIP (a keepalived killed with its VRRP process
# leaves it here: then this Redis may still be the one written to), the peer's Redis is a master (never
# both replicas, never chained), and the VIP leads to that very Redis (same INFO run_id: the services write
# there, so nothing this Redis holds is still written or read as current). The peer's Redis unreachable:
# nobody took over, stay as is. Not taken over within the wait: stay as is (the services detect a master
# left behind, docs/ha.md).
stopped() {
  local mine peer vip_id peer_id end
  end=$(( $(date +%s%3N) + ${STOP_DEMOTE_WAIT_S:-5} * 1000 ))   # whole seconds
  while :; do
    mine=$(role_of "$LOCAL" "$PORT")
    [ -z "$mine" ] && { log "keepalived ended: local Redis unreachable, nothing to do"; return 1; }
    [ "$mine" = master ] || return 0
    if have_vip; then log "keepalived ended but the VIP $VIP is still on this host: not demoting"; return 1; fi
    peer=$(role_of "$PEER_IP" "$PEER_PORT")
    [ -z "$peer" ] && { log "keepalived ended: peer Redis unreachable, staying master"; return 1; }
    if [ "$peer" = master ]; then
      vip_id=$(run_id "$VIP" "$PEER_PORT"); peer_id=$(run_id "$PEER_IP" "$PEER_PORT")
      if [ -n "$vip_id" ] && [ "$vip_id" = "$peer_id" ]; then
        keep_audit
        rcli -h "$LOCAL" -p "$PORT" replicaof "$PEER_IP" "$PEER_PORT" >/dev/null \
          && { log "keepalived ended: now replica of $PEER_IP:$PEER_PORT, which holds the VIP (was: master)"; return 0; }
      fi
    fi
    if [ "$(date +%s%3N)" -ge "$end" ]; then
      log "keepalived ended: the peer did not take over within ${STOP_DEMOTE_WAIT_S:-5} s (peer Redis: $peer), staying master"
      return 1
    fi
    sleep 0.2
  done
}

if [ "${REDIS_ROLE_ONCE:-}" = STOPPED ]; then stopped; exit $?; fi
if [ -n "${REDIS_ROLE_ONCE:-}" ]; then apply "$REDIS_ROLE_ONCE"; exit $?; fi

FIFO=${1:?usage: redis-role.sh FIFO}
state=BACKUP
echo "$state" > "${FEP_RUN:-/run/fep}/state" 2>/dev/null
exec 3<> "$FIFO"                     # read+write: never sees EOF when keepalived reopens it
# bash reads a pipe byte by byte and checks read -t's deadline before each byte: a line that arrives just
# before the deadline (or while this script waits for the CPU) is cut after its first bytes, which read
# consumes and hands back, failing. They are kept in $part and the line completed by the next read;
# dropped, its rest ('NSTANCE ...') would be skipped and that state (MASTER) never applied.
part=""
while true; do
  if IFS= read -r -t 1 more <&3; then
    line=$part$more; part=""
    read -r kind name st _ <<< "$line"
    [ "$kind" = INSTANCE ] || continue
    state=$st
    echo "$state" > "${FEP_RUN:-/run/fep}/state" 2>/dev/null
    log "keepalived: $name $state"
  else
    part=$part$more                   # timed out (nothing, or a line cut at the deadline)
  fi
  apply "$state"
done
