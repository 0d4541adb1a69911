#!lua name=fepctl
-- Controls: queued in the master Redis per acquisition RTU, executed by that RTU's lease holder, at most
-- once and never after the deadline. Every state change happens here, atomically:
--   queued --ctl_claim--> executing --ctl_finish--> done | failed
--   queued --ctl_claim after deadline / ctl_abandon / ctl_expire--> expired   (never executed)
--   executing --ctl_abandon after deadline--> unknown                    (executor vanished mid-way)
--   executing --ctl_orphan--> unknown        (its executor's process was restarted: its claim can be run no more)
--   unknown --ctl_finish--> done | failed, `answered` = unknown          (its outcome came after the answer)
-- Python side: fepha/controls.py. Keys from fepha/keyspace.py.
-- A deadline is judged only on the clock that set it: a control queued under another clock gen (`fep:clock`,
-- kept by lease_tick in functions.lua: it grows when the master's clock is found behind stamps already
-- written, after an NTP step back or the promotion of a replica whose clock is behind) is expired at its
-- claim, never executed, and abandoned at once; so is one whose created_ms is later than the clock now.
-- FEPHA_LIBRARY_VERSION: 1

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A whole number >= 0 as these functions write one, or nil (as `whole` in functions.lua, another library).
-- A control's `deadline_ms` or `created_ms` that an operator's HSET or a fault left unreadable is taken as
-- a clear state (below) instead of failing on arithmetic with nil at every call.
local function whole(v)
  if type(v) ~= 'string' or #v > 15 or not (v == '0' or string.match(v, '^[1-9]%d*$')) then return nil end
  return tonumber(v)
end

-- The control's end in its hash and the audit (every field of the hash).
local function record(ctl, audit, state, result, now)
  redis.call('HSET', ctl, 'state', state, 'result', result, 'finished_ms', now)
  local flat = redis.call('HGETALL', ctl)
  redis.call('XADD', audit, 'MAXLEN', '~', 10000, '*', unpack(flat))
  redis.call('PEXPIRE', ctl, 86400000)
end

-- The control's final state: recorded, and its one reply to the waiting forwarder.
local function final(ctl, reply, audit, state, result, now)
  record(ctl, audit, state, result, now)
  redis.call('RPUSH', reply, state .. '|' .. result)
  redis.call('PEXPIRE', reply, 60000)
end

-- Why a control (its created_ms and clock_gen) cannot be judged on this clock (`clock`: the fep:clock key or
-- nil); nil when it can.
local function clock_moved(clock, created, gen, now)
  local at = whole(created or '')
  if at ~= nil and now < at then
    return 'the master clock is behind the one that queued it (' .. (at - now) .. ' ms)'
  end
  if not clock then return nil end
  local c = redis.call('HMGET', clock, 'hw_ms', 'gen')
  if (c[2] or '0') ~= (gen or '0') or (tonumber(c[1] or '') ~= nil and now < tonumber(c[1])) then
    return 'the master clock went back since it was queued (NTP step, or a master behind took over)'
  end
  return nil
end

-- ctl_submit(KEYS: ctl, queue[, clock]; ARGV: id, rtu, point, value, origin, timeout_ms) -> deadline_ms
local function ctl_submit(keys, args)
  local now = now_ms()
  local deadline = now + tonumber(args[6])
  redis.call('HSET', keys[1], 'id', args[1], 'rtu', args[2], 'point', args[3], 'value', args[4],
             'origin', args[5], 'created_ms', now, 'deadline_ms', deadline, 'state', 'queued')
  if keys[3] then
    redis.call('HSET', keys[1], 'clock_gen', redis.call('HGET', keys[3], 'gen') or '0')
  end
  redis.call('PEXPIRE', keys[1], 86400000)
  redis.call('RPUSH', keys[2], args[1])
  return deadline
end

-- ctl_claim(KEYS: lease, ctl, queue, reply, audit[, clock[, claimed]]; ARGV: node, epoch, id[, instance])
-- After the holder popped `id` from the queue. Returns {1, point, value, remaining_ms, created_ms} when the holder
-- must execute now, {0, reason} otherwise (a control popped by a node that lost the lease goes back to
-- the head of the queue for the new holder). An unreadable deadline_ms: expired, never executed (when it
-- ends cannot be told). `instance` names the executor's process (its incarnation): written as the control's
-- `instance`, and the id added to `claimed` (the node's set of claims, fep:ctl:claimed:{node}), so that the
-- node's next process can answer the claims this one leaves unfinished (ctl_orphan).
local function ctl_claim(keys, args)
  local lease, ctl, queue, reply, audit = keys[1], keys[2], keys[3], keys[4], keys[5]
  local node, epoch, id, instance = args[1], args[2], args[3], args[4]
  local now = now_ms()
  local c = redis.call('HMGET', ctl, 'state', 'deadline_ms', 'point', 'value', 'created_ms', 'clock_gen')
  if c[1] ~= 'queued' then
    return {0, 'state ' .. tostring(c[1])}
  end
  local l = redis.call('HMGET', lease, 'holder', 'epoch')
  if l[1] ~= node or l[2] ~= epoch then
    redis.call('LPUSH', queue, id)
    return {0, 'not holder'}
  end
  local deadline = whole(c[2] or '')
  if deadline == nil then
    final(ctl, reply, audit, 'expired', 'deadline_ms unreadable: cannot tell whether it passed', now)
    return {0, 'expired'}
  end
  if now >= deadline then
    final(ctl, reply, audit, 'expired', 'deadline passed before execution', now)
    return {0, 'expired'}
  end
  local moved = clock_moved(keys[6], c[5], c[6], now)
  if moved then
    final(ctl, reply, audit, 'expired', 'deadline cannot be judged: ' .. moved, now)
    return {0, 'expired'}
  end
  redis.call('HSET', ctl, 'state', 'executing', 'executor', node, 'epoch', epoch, 'claimed_ms', now)
  if instance and instance ~= '' and keys[7] then
    redis.call('HSET', ctl, 'instance', instance)
    redis.call('SADD', keys[7], id)
    redis.call('PEXPIRE', keys[7], 86400000)
  end
  return {1, c[3], c[4], deadline - now, whole(c[5] or '') or 0}
end

-- ctl_finish(KEYS: ctl, reply, audit[, claimed]; ARGV: ok 1/0, result[, id]) -> 1; 2 if it had been answered
-- `unknown` (its outcome recorded, late); 0 otherwise (not executing: an outcome already taken, or never
-- claimed). A control abandoned while executing (its forwarder answered `unknown` at the deadline) whose
-- executor's outcome comes after that: the device was written or refused all the same, so the hash and the
-- audit get that outcome, with `answered` = unknown (what its master was told); no second reply is pushed.
-- `id` leaves the executor node's set of claims (`claimed`) whatever the state.
local function ctl_finish(keys, args)
  if keys[4] and args[3] then redis.call('SREM', keys[4], args[3]) end
  local state = redis.call('HGET', keys[1], 'state')
  local outcome = args[1] == '1' and 'done' or 'failed'
  if state == 'unknown' then
    redis.call('HSET', keys[1], 'answered', 'unknown')
    record(keys[1], keys[3], outcome, args[2], now_ms())
    return 2
  end
  if state ~= 'executing' then return 0 end
  final(keys[1], keys[2], keys[3], outcome, args[2], now_ms())
  return 1
end

-- ctl_abandon(KEYS: ctl, reply, audit[, clock]) -> final state. Called by the waiting forwarder LATE_S after
-- the deadline by its own clock without an answer: a queued control (ctl_expire at the deadline ended it,
-- unless the library was from before it) can no longer run; an executing one is 'unknown'. Not yet past on
-- the master's clock: left as it is, unless that clock moved (above). An unreadable deadline_ms counts as
-- passed (its submitter's own clock says it has).
local function ctl_abandon(keys, args)
  local c = redis.call('HMGET', keys[1], 'state', 'deadline_ms', 'created_ms', 'clock_gen')
  local now = now_ms()
  if c[1] == false then return 'missing' end
  local deadline = whole(c[2] or '') or 0
  local moved = now < deadline and clock_moved(keys[4], c[3], c[4], now)
  if now < deadline and not moved then return c[1] end
  if c[1] == 'queued' then
    final(keys[1], keys[2], keys[3], 'expired', moved and ('deadline cannot be judged: ' .. moved)
          or 'deadline passed before execution', now)
    return 'expired'
  elseif c[1] == 'executing' then
    final(keys[1], keys[2], keys[3], 'unknown', moved and ('no answer from the executing node, deadline cannot be '
          .. 'judged: ' .. moved) or 'no answer from the executing node before the deadline', now)
    return 'unknown'
  end
  return c[1]
end

-- ctl_orphan(KEYS: ctl, reply, audit, claimed; ARGV: id, node, instance, result) -> the state it leaves
-- ('missing': not held). Called by a node's acquirer as it starts, for each control in its node's set of
-- claims (`claimed`) whose claiming process (`instance`) it found gone from the master (no connection of
-- it left: killed, or stopped without finishing it): a control still `executing` for `node` under that
-- `instance` is answered `unknown` at once (`result`: its claim can be run no more, and whether the device
-- ran it cannot be known), instead of at its deadline. Another process's claim (a live one: another
-- `instance`), or a control no longer executing, is left as it is; the id leaves `claimed` unless it is
-- still executing there.
local function ctl_orphan(keys, args)
  local c = redis.call('HMGET', keys[1], 'state', 'executor', 'instance')
  if c[1] == 'executing' and (c[2] ~= args[2] or c[3] ~= args[3]) then return c[1] end
  redis.call('SREM', keys[4], args[1])
  if c[1] == false then return 'missing' end
  if c[1] ~= 'executing' then return c[1] end
  final(keys[1], keys[2], keys[3], 'unknown', args[4], now_ms())
  return 'unknown'
end

-- ctl_expire(KEYS: ctl, reply, audit) -> the state it leaves ('missing': not held). Called by the waiting
-- forwarder at the deadline as its own monotonic clock counts it (the control's timeout from its submit): a
-- control still queued is expired whatever this clock says, so none is claimed after the deadline its
-- submitter counts, also on a master whose clock is behind the one that set deadline_ms by less than
-- clock_moved can tell (a promoted replica behind by less than the failover time). An executing control is
-- left as it is (its device write may be under way): ctl_abandon ends it LATE_S later.
local function ctl_expire(keys, args)
  local state = redis.call('HGET', keys[1], 'state')
  if state == false then return 'missing' end
  if state ~= 'queued' then return state end
  final(keys[1], keys[2], keys[3], 'expired', 'deadline passed before execution (by its submitter\'s clock)',
        now_ms())
  return 'expired'
end

-- ctl_requeue(KEYS: ctl, queue; ARGV: id, after_ms) -> 1 when put back at the head of the queue, else 0.
-- Called by the waiting forwarder once a second. A control still queued `after_ms` after it was created and
-- in no queue was popped by an executor that never claimed it: the answer to its BLPOP was lost (the
-- executor stopped or starved past its socket timeout, which dropped the connection with the answer
-- unread, or a link cut it). Without this it waited for its deadline while the lease holder was idle. A
-- copy popped twice is harmless: the second ctl_claim finds it executing or final and runs nothing. An
-- unreadable created_ms counts as old enough (put back: its claim then decides, by its deadline).
local function ctl_requeue(keys, args)
  local c = redis.call('HMGET', keys[1], 'state', 'created_ms')
  if c[1] ~= 'queued' or now_ms() - (whole(c[2] or '') or 0) < tonumber(args[2]) then return 0 end
  if redis.call('LPOS', keys[2], args[1]) then return 0 end
  redis.call('LPUSH', keys[2], args[1])
  return 1
end

redis.register_function('ctl_submit', ctl_submit)
redis.register_function('ctl_claim', ctl_claim)
redis.register_function('ctl_finish', ctl_finish)
redis.register_function('ctl_abandon', ctl_abandon)
redis.register_function('ctl_requeue', ctl_requeue)
redis.register_function('ctl_expire', ctl_expire)
redis.register_function('ctl_orphan', ctl_orphan)
