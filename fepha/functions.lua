#!lua name=fepha
-- fep-ha's Redis Functions: the writes that must be decided inside Redis (leases, fenced values,
-- virtual points). Functions, unlike scripts loaded with SCRIPT LOAD, are replicated and persisted, so
-- the replica has them the moment it becomes master. Loaded by fepha.redisfns; keys from fepha.keyspace.
-- Times come from the master's clock (TIME), never from the nodes, so node clocks need not agree. The
-- masters' clocks may (a promoted replica whose clock differs, an NTP step): see "Clocks" in docs/ha.md.
-- FEPHA_LIBRARY_VERSION: 1

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- --- clock steps (docs/ha.md "Clocks") ---------------------------------------------------------------
-- `fep:clock` {hw_ms, gen}: hw_ms is the latest TIME a lease tick saw (rewritten at most every 50 ms, so
-- a tick costs no write most of the time). A TIME below it means this master's clock is now behind the one
-- that wrote the stamps in Redis: an NTP step back, or a promoted replica whose clock is behind the former
-- master's. `gen` then grows (logged once, in Redis's log) and hw_ms restarts at the new time; controls
-- queued under another gen are never executed (controls.lua), as their deadlines came from another clock.
-- Returns the hw_ms it found (nil: none, or unreadable).
local function clock_check(key, now)
  if not key then return nil end
  local c = redis.call('HMGET', key, 'hw_ms', 'gen')
  local hw = tonumber(c[1] or '')
  if hw ~= nil and now < hw then
    local gen = (tonumber(c[2] or '') or 0) + 1
    redis.call('HSET', key, 'hw_ms', now, 'gen', gen)
    redis.log(redis.LOG_WARNING, 'fep-ha: the master clock is ' .. (hw - now) .. ' ms behind stamps already '
              .. 'written (clock stepped back, or a master behind took over): clock gen ' .. gen .. '; controls '
              .. 'queued before are expired, lease and link stamps ahead of this clock are set back to it')
  elseif hw == nil or now >= hw + 50 then
    redis.call('HSET', key, 'hw_ms', now)
  end
  return hw
end

-- A stamp `field` of hash `h` (and `key`) later than `limit` was written by a clock ahead of this one: it
-- is set to `limit`, the latest this clock allows (so it is set back once, not at every call).
local function clamp(key, h, field, limit)
  local v = tonumber(h[field] or '')
  if v ~= nil and v > limit then
    redis.call('HSET', key, field, limit)
    h[field] = tostring(limit)
  end
end

-- HSET and XADD the pid/record pairs args[from..] in chunks: Lua's unpack() has a stack limit of a few
-- thousand values, and a full image may hold more. One stream record per chunk.
local CHUNK = 2000
local function put_pairs(hash, stream, maxlen, source, args, from)
  local i = from
  while i <= #args do
    local j = math.min(i + CHUNK - 1, #args)
    redis.call('HSET', hash, unpack(args, i, j))
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'r', source, unpack(args, i, j))
    i = j + 1
  end
end

-- A whole number >= 0 as these functions write one (decimal digits, no sign, no leading zero, at most 15
-- digits, exact in Lua's numbers), or nil. A field an operator's HSET or a fault left as 'x', '', '-1',
-- '1e3' or '07' is unreadable: each function takes that as a state of its own (below) instead of failing on
-- arithmetic with nil, which made it fail at every call, on both nodes, for good.
local function whole(v)
  if type(v) ~= 'string' or #v > 15 or not (v == '0' or string.match(v, '^[1-9]%d*$')) then return nil end
  return tonumber(v)
end

-- The fields of hash `h` among `names` that are present and not whole numbers, as "name = 'value'" (cut
-- at 40 characters) joined by ', '; nil when every one present is readable.
local function unreadable(h, names)
  local bad = {}
  for _, f in ipairs(names) do
    if h[f] and not whole(h[f]) then
      local v = h[f]
      if #v > 40 then v = string.sub(v, 1, 40) .. '...' end
      table.insert(bad, f .. " = '" .. v .. "'")
    end
  end
  if #bad == 0 then return nil end
  return table.concat(bad, ', ')
end

-- An error reply naming the first of the arguments args[i] (i in `at`) that is not a number, nil when all
-- are. Checked before anything is written: a function that fails midway keeps its writes so far (a
-- write_values given a bad maxlen had updated the values hash and then failed before the stream record).
local function bad_args(fn, args, at)
  for _, i in ipairs(at) do
    if tonumber(args[i] or '') == nil then
      return redis.error_reply('fep-ha ' .. fn .. ': argument ' .. i .. " is not a number: '" .. tostring(args[i])
                               .. "'")
    end
  end
  return nil
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

-- lease_tick(KEYS: lease, events[, clock[, epochs]]; ARGV: rtu, node, reaches 0/1/2, ttl_ms, takeover_ms[, polled_age_ms[,
-- written[, replid]]])
-- Called by both nodes for every acquisition RTU, every lease tick. Returns {holder, epoch, changed}, and to the
-- holder renewing a record marked rolled back (below) {holder, epoch, 0, 1}.
-- Rolled back: `write_values` counts the writes applied under the record (`wn`) and answers the count; the
-- holder passes the highest it was answered under its epoch as `written`. A record whose count is below it is
-- older than a write the holder saw applied: the data set was rolled back (Redis restarted from an older
-- copy; a promoted replica that missed the last writes). The tick stamps `rolled_back_ms` (kept while it lasts),
-- sets `wn` to `written` and answers 1 while the stamp is there: the holder writes every value again that
-- differs from the master's, then clears it (`lease_synced`). Readers take the RTU's values as not current
-- while it is there (fepha.freshness.rtu_reason).
-- `replid`: the master's replication id (INFO replication master_replid) as the holder last read it, kept as the
-- lease's `replid` by its renewals. A Redis restarted gets a new one, and a replica shares its master's, so a
-- record a reader finds under another id than its local Redis's (`master_replid`, or `master_replid2`: the id
-- a promoted replica took over) was not renewed since this copy was loaded: not current until it is.
-- Stamps later than this clock allows (expires_ms beyond now + ttl, reached_ms, answered_ms or polled_ms beyond now:
-- written by a clock ahead of this one) are first set back to those limits, so a dead holder's lease
-- lapses one TTL later, not when this clock reaches the old stamp (minutes, if it is that far behind).
-- Rules (seed "load balancing"): a missing lease goes to the first node that ticks while it reaches the
-- device (a node that has not polled yet, or cannot reach it, must not grab it: the other node would
-- otherwise take it over at once, since the holder never reached the device); a lapsed lease (its holder
-- died) goes to the first node that reaches the device, or, once lapsed for one more TTL, to whoever ticks
-- (then someone marks the points invalid; a node that was just restarted and has not polled yet does not
-- grab a lease that is only lapsed because the master moved); the holder
-- renews and records when it last reached the device (and, given polled_age_ms, its last complete poll as
-- polled_ms, which forwarders judge staleness by); the other node takes over only if it reaches the
-- device and the holder has not for takeover_ms, or if a handover to it is pending; nobody steals back.
-- reaches: 1 fully, 2 in part (a poll failed or left a block unanswered: the holder within its reach
-- window, the other node within takeover_ms). The holder stamps reached_ms when it reaches the device
-- fully, answered_ms when it reaches it at all. The other node takes over when it reaches the device and
-- the holder has not at all for takeover_ms (answered_ms; as before), or when it reaches it fully and the
-- holder has not fully for takeover_ms (reached_ms): a holder that reads the device only in part (every
-- other poll lost, a block never answered) is replaced by a node that has read all of it for takeover_ms,
-- which it cannot take back while it reads only in part; two nodes that both lose polls now and then
-- (a lossy device) never move the lease, since neither goes takeover_ms without a failure.
-- Unreadable record: a lease whose epoch or a stamp (LEASE_NUMBERS) is present but not a whole number
-- (`whole`), or that has no epoch, is as good as no holder: every tick answers that nobody holds it, write_values refuses every
-- write, and the first node that ticks while it reaches the device (as for an absent lease) is granted it
-- on a fresh record, with event reason 'unreadable' and `detail` naming the fields and their values. The
-- new epoch must be one no writer can still hold: the readable epoch + 1 when only a stamp was bad (every
-- epoch granted is at most it); when the epoch itself cannot be read, above everything readable: the
-- master's clock in ms (ordinary epochs count up from 1, one per grant, and would need ~10^12 grants to get
-- there), the clock's high-water mark `fep:clock` hw_ms as this tick found it (before a step back of the
-- clock set it back) and every epoch of this RTU still in the lease events (the last grants, among them
-- those of earlier recoveries, which counted on from a clock that may since have been stepped back).
-- Epoch high-water (KEYS[4], `fep:lease:epochs`, field rtu): the highest epoch granted for each RTU,
-- written by every grant in the same call, kept apart from the lease hash. Every grant's epoch is above
-- it and above the record's (`next_epoch`), so an epoch is never granted twice for one RTU, also when the
-- lease hash was deleted outright (an operator's DEL, a key lost): a fenced writer still holding (node, 1)
-- from an earlier tenure never matches the record that replaces it. A missing lease with a high-water is
-- granted with event reason 'record missing' (`detail`: the high-water) and a line in Redis's log; a
-- high-water that is unreadable makes the epoch one above everything readable (as an unreadable epoch:
-- `recovered_epoch`), with `detail` naming it, logged, and rewritten by that grant. Read at grants only:
-- a renewal, or a tick that grants nothing, costs nothing more. Both gone (FLUSHALL): epoch 1 again.
local LEASE_NUMBERS = {'epoch', 'expires_ms', 'reached_ms', 'answered_ms', 'polled_ms', 'since_ms',
                       'handover_until_ms'}

-- What makes lease record `l` unreadable (a field present and not `whole`, or a record without an epoch:
-- every grant writes one), nil when it is readable or absent.
local function lease_unreadable(l)
  if next(l) ~= nil and l['epoch'] == nil then return 'epoch missing' end
  return unreadable(l, LEASE_NUMBERS)
end

-- Above every epoch granted for `rtu`, when one of the two places it is kept is unreadable: above the
-- master's clock in ms, the clock's high-water `hw`, the readable one of `floor` (record epoch, epoch
-- high-water) and every epoch of this RTU still in the lease events.
local function recovered_epoch(events, hw, rtu, now, floor)
  local top = math.max(now, hw or 0, floor)
  for _, entry in ipairs(redis.call('XRANGE', events, '-', '+')) do
    local f = entry[2]
    for i = 1, #f - 1, 2 do
      if f[i] == 'rtu' and f[i + 1] ~= rtu then break end
      if f[i] == 'epoch' then top = math.max(top, whole(f[i + 1]) or 0) end
    end
  end
  return top + 1
end

-- The epoch high-water of `rtu` in hash `epochs`: (number or nil when absent, what makes it unreadable
-- or nil). No key given (a caller of before): none.
local function epoch_high_water(epochs, rtu)
  if not epochs then return nil, nil end
  local v = redis.call('HGET', epochs, rtu)
  if not v then return nil, nil end
  local e = whole(v)
  if e then return e, nil end
  return nil, unreadable({['high-water'] = v}, {'high-water'})
end

-- The epoch of a grant: one above the record's `epoch` (0: no record; nil: unreadable) and the
-- high-water `top` (nil: none), or, when either is unreadable, `recovered_epoch`.
local function next_epoch(epoch, top, top_bad, events, hw, rtu, now)
  if epoch ~= nil and not top_bad then return math.max(epoch, top or 0) + 1 end
  return recovered_epoch(events, hw, rtu, now, math.max(epoch or 0, top or 0))
end

-- The lease granted to `node` at `epoch`, recorded as an event (`why`: its reason and any other fields).
-- `epochs`: the high-water hash (nil: not kept), set to `epoch` in the same call.
local function grant(lease, events, epochs, rtu, from, node, epoch, now, ttl, reaches, polled, why)
  if epochs then redis.call('HSET', epochs, rtu, epoch) end
  redis.call('HSET', lease, 'holder', node, 'epoch', epoch, 'since_ms', now, 'expires_ms', now + ttl,
             'reached_ms', reaches and now or 0, 'answered_ms', reaches and now or 0)
  if polled ~= nil then
    redis.call('HSET', lease, 'polled_ms', polled >= 0 and now - polled or 0)
  end
  redis.call('HDEL', lease, 'handover', 'handover_until_ms')
  redis.call('XADD', events, 'MAXLEN', '~', 10000, '*', 'rtu', rtu, 'from', from, 'to', node,
             'epoch', epoch, unpack(why))
  return {node, epoch, 1}
end

local function lease_tick(keys, args)
  local err = bad_args('lease_tick', args, {4, 5})
  if err then return err end
  local lease, events = keys[1], keys[2]
  local rtu, node = args[1], args[2]
  local reaches, fully = args[3] == '1' or args[3] == '2', args[3] == '1'
  local ttl, takeover = tonumber(args[4]), tonumber(args[5])
  local polled = tonumber(args[6] or '')  -- ms since the node's last complete poll; -1: none yet
  local now = now_ms()
  local hw = clock_check(keys[3], now)
  local l = hgetall(lease)
  local bad = lease_unreadable(l)
  if bad then
    if not reaches then return {'', 0, 0} end
    local top, top_bad = epoch_high_water(keys[4], rtu)
    if top_bad then bad = bad .. ', ' .. top_bad end
    redis.log(redis.LOG_WARNING, 'fep-ha: lease of RTU ' .. rtu .. ' unreadable (' .. bad .. '): granted anew')
    redis.call('DEL', lease)  -- nothing of it is kept, so no bad field is left behind
    local from = l['holder'] or ''
    local epoch = next_epoch(whole(l['epoch'] or ''), top, top_bad, events, hw, rtu, now)
    return grant(lease, events, keys[4], rtu, from, node, epoch, now, ttl, reaches, polled,
                 {'reason', 'unreadable', 'ts_ms', now, 'detail', bad})
  end
  clamp(lease, l, 'expires_ms', now + ttl); clamp(lease, l, 'reached_ms', now); clamp(lease, l, 'polled_ms', now)
  clamp(lease, l, 'answered_ms', now)
  local holder, epoch = l['holder'], tonumber(l['epoch'] or '0')
  local expires, reached = tonumber(l['expires_ms'] or '0'), tonumber(l['reached_ms'] or '0')
  local answered = tonumber(l['answered_ms'] or l['reached_ms'] or '0')
  local reason = nil
  if holder == node then
    local rolled = l['rolled_back_ms']
    local claim = whole(args[7] or '')  -- the holder's last applied write under this epoch (`wn`), if any
    if claim and (whole(l['wn'] or '0') or 0) < claim then
      -- this record is older than a write the holder saw applied: the data set was rolled back (a restart
      -- from an older copy, writes lost in a failover). Its values are not current until the holder has
      -- written them again (`lease_synced`); the count goes on from the holder's
      rolled = rolled or tostring(now)
      redis.call('HSET', lease, 'rolled_back_ms', rolled, 'wn', claim)
      redis.log(redis.LOG_WARNING, 'fep-ha: lease of RTU ' .. rtu .. ': values older than the last write of '
                .. node .. ' (write ' .. claim .. ', record at ' .. (l['wn'] or 'none') .. '): rolled back, '
                .. 'not current until it writes them again')
    end
    local fields = {'expires_ms', now + ttl}
    local rid = args[8]  -- the master's replication id as the holder last read it: readers compare (`replid`)
    if rid and rid ~= '' and l['replid'] ~= rid then
      table.insert(fields, 'replid'); table.insert(fields, rid)
    end
    if fully then
      table.insert(fields, 'reached_ms'); table.insert(fields, now)
    end
    if reaches then
      table.insert(fields, 'answered_ms'); table.insert(fields, now)
    end
    if polled ~= nil and polled >= 0 then  -- issue 10b: the holder's last complete poll, master clock
      table.insert(fields, 'polled_ms'); table.insert(fields, now - polled)
    end
    redis.call('HSET', lease, unpack(fields))
    if rolled then return {holder, epoch, 0, 1} end
    return {holder, epoch, 0}
  end
  if holder == nil or holder == '' then
    if reaches then reason = 'initial' end
  elseif now > expires and (reaches or now > expires + ttl) then
    reason = 'lapsed'
  elseif reaches and l['handover'] == node and now <= tonumber(l['handover_until_ms'] or '0') then
    reason = 'handover'
  elseif (reaches and now - answered >= takeover) or (fully and now - reached >= takeover) then
    reason = 'takeover'
  end
  if reason == nil then
    return {holder or '', epoch, 0}
  end
  local top, top_bad = epoch_high_water(keys[4], rtu)
  local new = next_epoch(epoch, top, top_bad, events, hw, rtu, now)
  local why = {'reason', reason, 'ts_ms', now}
  if next(l) == nil and (top or top_bad) then
    why[2] = 'record missing'
    table.insert(why, 'detail'); table.insert(why, top_bad or string.format('high-water = %d', top))
    redis.log(redis.LOG_WARNING, 'fep-ha: lease of RTU ' .. rtu .. ' missing (deleted or lost; ' .. why[6]
              .. '): granted anew at epoch ' .. string.format('%d', new))
  elseif top_bad then
    table.insert(why, 'detail'); table.insert(why, top_bad)
    redis.log(redis.LOG_WARNING, 'fep-ha: epoch high-water of RTU ' .. rtu .. ' unreadable (' .. top_bad
              .. '): lease granted at epoch ' .. string.format('%d', new) .. ', above every epoch readable')
  end
  return grant(lease, events, keys[4], rtu, holder or '', node, new, now, ttl, reaches, polled, why)
end

-- lease_handover(KEYS: lease; ARGV: target node, window_ms)
-- Marks a planned move: the target takes the lease at its next tick if it reaches the device within
-- window_ms. Returns {holder, epoch, status} with status 'pending', 'already' (target holds) or 'none'
-- (no holder, or an unreadable record: as good as none, the next tick grants it anew).
local function lease_handover(keys, args)
  local err = bad_args('lease_handover', args, {2})
  if err then return err end
  local lease, target, window = keys[1], args[1], tonumber(args[2])
  local l = hgetall(lease)
  if l['holder'] == nil or lease_unreadable(l) then return {'', 0, 'none'} end
  local epoch = whole(l['epoch'] or '0')
  if l['holder'] == target then return {l['holder'], epoch, 'already'} end
  redis.call('HSET', lease, 'handover', target, 'handover_until_ms', now_ms() + window)
  return {l['holder'], epoch, 'pending'}
end

-- write_values(KEYS: lease, values, changes; ARGV: node, epoch, maxlen, rtu, wtok, wseq, pid1, rec1, ...)
-- The fenced write of one poll's changes: applied only if `node` holds the lease at `epoch`, as one hash
-- update plus one change-stream record. `wtok`/`wseq` (empty/0: not checked) make it idempotent: the
-- writer's token (one per acquisition runner) and its write sequence, growing with every write. The lease
-- keeps the last applied pair (fields `wtok`, `wseq`); a write of the same token whose sequence is not
-- above it was applied already (a write that timed out, re-sent) or is older than one applied (a late
-- copy): it is not applied again. Another token starts its own sequence (a new holder, a restarted
-- acquirer). Returns {1, n, wn} when written, {2, 0, wn} when already applied, {0, holder, epoch} when fenced
-- out; `wn`: the writes applied under this lease record so far, this one included (the lease's `wn`, which
-- `lease_tick` compares with the holder's count to find a data set rolled back; an unreadable one counts on
-- from 0).
-- Only an exact (node, epoch) match writes, and never while the lease record is unreadable (lease_tick:
-- it has no holder then; fenced out, with epoch 0 if the epoch itself is unreadable; the next lease tick of
-- a node reaching the device grants it anew). An unreadable `wseq` is as none: the write is applied (at
-- worst the same values once more) and the pair rewritten.
local function write_values(keys, args)
  local err = bad_args('write_values', args, {3, 6})
  if err then return err end
  local lease, values, changes = keys[1], keys[2], keys[3]
  local node, epoch, tok, seq = args[1], args[2], args[5], tonumber(args[6])
  local l = redis.call('HMGET', lease, 'holder', 'epoch', 'wtok', 'wseq', 'wn', unpack(LEASE_NUMBERS))
  local h = {}
  for i, f in ipairs(LEASE_NUMBERS) do h[f] = l[5 + i] or nil end
  if l[1] ~= node or l[2] ~= epoch or lease_unreadable(h) then
    return {0, l[1] or '', whole(l[2] or '0') or 0}
  end
  local wn = whole(l[5] or '0') or 0  -- unreadable: counted on from 0 (the holder's next tick sets it right)
  if tok ~= '' then
    if l[3] == tok and seq <= (whole(l[4] or '0') or -1) then
      return {2, 0, wn}
    end
    redis.call('HSET', lease, 'wtok', tok, 'wseq', seq, 'wn', wn + 1)
  else
    redis.call('HSET', lease, 'wn', wn + 1)
  end
  put_pairs(values, changes, tonumber(args[3]), args[4], args, 7)
  return {1, (#args - 6) / 2, wn + 1}
end

-- lease_synced(KEYS: lease; ARGV: node, epoch) -> 1 when the mark `rolled_back_ms` was cleared, 0 when there
-- was none or `node` does not hold the lease at `epoch`. Called by the holder once it has written again every
-- value the rolled-back data set held older than its own (lease_tick set the mark): they are current again.
local function lease_synced(keys, args)
  local l = redis.call('HMGET', keys[1], 'holder', 'epoch', 'rolled_back_ms')
  if l[1] ~= args[1] or l[2] ~= args[2] or not l[3] then return 0 end
  redis.call('HDEL', keys[1], 'rolled_back_ms')
  return 1
end

-- --- link state with liveness (issue 10a) ----------------------------------------------------------
-- A node's link state counts only while that node keeps reporting it: `link_set` stamps `seen_a`/`seen_b`
-- with the master's TIME at every report (each lease tick). A state of 1 whose stamp is older than live_ms
-- (the lease TTL) is decayed to 0 by the next evaluation, so a node whose acquirer died, hangs (SIGSTOP)
-- or is cut off from the master stops counting as reaching the device within live_ms plus one evaluation
-- period. Evaluations: every `link_set` (both acquirers, each tick) and `link_refresh` (every forwarder,
-- once a second), so the decay is written even when both acquirers are dead.
local LINK_NODES = {'a', 'b'}

-- The operator timeline (fepha/events.py), when the caller passes its key: one node's link changed.
local function link_event(events, link, node, state, was, now, why)
  if events then
    redis.call('XADD', events, 'MAXLEN', '~', 10000, '*', 'kind', 'link', 'node', string.upper(node),
               'rtu', string.match(link, '(%d+)$') or '', 'ts_ms', now, 'up', state, 'was', was or '',
               'reason', why)
  end
end

-- Decays stale node states in `l` (and the hash), recomputes val = vala || valb, writes the virtual
-- points (hash + change record) when val changes or a point has no value yet. Returns {vala, valb, val}.
local function link_eval(link, vpoints, changes, events, maxlen, live, now, l, args, from)
  for _, n in ipairs(LINK_NODES) do
    clamp(link, l, 'seen_' .. n, now)  -- a report stamped by a clock ahead counts from now, not from then
    local seen = whole(l['seen_' .. n] or '0')  -- unreadable: not reporting (its next report rewrites it)
    if l['val' .. n] == '1' and (seen == nil or now - seen > live) then
      redis.call('HSET', link, 'val' .. n, '0', 'since_' .. n, now)
      l['val' .. n] = '0'
      link_event(events, link, n, '0', '1', now, seen and 'not reporting' or 'not reporting (seen_' .. n
                 .. ' unreadable)')
    end
  end
  local val = ((l['vala'] == '1') or (l['valb'] == '1')) and '1' or '0'
  local changed = l['val'] ~= val
  if changed then
    redis.call('HSET', link, 'val', val, 'since', now)
  end
  local rec = val .. '|0|' .. now
  local out = {}
  for i = from, #args do
    if changed or redis.call('HEXISTS', vpoints, args[i]) == 0 then
      table.insert(out, args[i]); table.insert(out, rec)
    end
  end
  put_pairs(vpoints, changes, maxlen, 'vp', out, 1)
  return {l['vala'] or '0', l['valb'] or '0', val}
end

-- link_set(KEYS: link, vpoints, changes[, events]; ARGV: node A|B, state 0/1, maxlen, live_ms, vpid1, ...)
-- Records one node's link state to an RTU (and that the node is alive: seen_<node>) and recomputes the
-- virtual points' val in the same step, so val is never out of step with its inputs.
local function link_set(keys, args)
  local err = bad_args('link_set', args, {3, 4})
  if err then return err end
  local link, vpoints, changes = keys[1], keys[2], keys[3]
  local node, state, maxlen, live = string.lower(args[1]), args[2], tonumber(args[3]), tonumber(args[4])
  local now = now_ms()
  local l = hgetall(link)
  local field = 'val' .. node
  if l[field] ~= state then
    redis.call('HSET', link, field, state, 'since_' .. node, now, 'seen_' .. node, now)
    link_event(keys[4], link, node, state, l[field], now, 'reported')
    l[field] = state
  else
    redis.call('HSET', link, 'seen_' .. node, now)
  end
  l['seen_' .. node] = tostring(now)
  return link_eval(link, vpoints, changes, keys[4], maxlen, live, now, l, args, 5)
end

-- link_refresh(KEYS: link, vpoints, changes[, events]; ARGV: maxlen, live_ms, vpid1, ...)
-- The same evaluation without a report: decays the states of nodes that stopped reporting. A link no
-- node ever reported is left alone (returns {'', '', ''}).
local function link_refresh(keys, args)
  local err = bad_args('link_refresh', args, {1, 2})
  if err then return err end
  local link, vpoints, changes = keys[1], keys[2], keys[3]
  local l = hgetall(link)
  if next(l) == nil then return {'', '', ''} end
  return link_eval(link, vpoints, changes, keys[4], tonumber(args[1]), tonumber(args[2]), now_ms(), l, args, 3)
end
-- --- end of link state ------------------------------------------------------------------------------

redis.register_function('lease_tick', lease_tick)
redis.register_function('lease_handover', lease_handover)
redis.register_function('write_values', write_values)
redis.register_function('lease_synced', lease_synced)
redis.register_function('link_set', link_set)
redis.register_function('link_refresh', link_refresh)
