"""The Lua scripts that move task records between states, each one atomic step in Redis.

The key names they are given come from names.py, which puts all keys of one cluster under
one hash tag: the scripts run unchanged on a Redis Cluster.
"""

from __future__ import annotations

from ..task import RESULT_FIELDS

# Bookkeeping fields a finished record sheds, in the order the transition script reads them.

BOOKKEEPING = ("_claimed_key", "_pending_key", "_inbox", "_notify", "_seq", "_ticket")

# Any number of state changes in one call, applied in order. KEYS[1] = scheduler backlog;
# ARGV[1] = status-index key prefix; then per change: task key, task id, allowed current states
# (comma list), new state, the claimed-set key of the engine that claims (or must hold the claim
# to finish or release), the engine's index key
# ('' for none; a release removes the task from it), the number of field/value pairs, the pairs.
# With KEYS[2] (the heartbeat set), ARGV[2] is the engine that claims and the changes start at
# ARGV[3]: an engine that is not in the set was declared dead, and its claims are refused
# ('dead'), since a reaper may already have handed its work to others.
# Returns, per change, {'ok'|'refused'|'missing'|'dead', previous state, attempts}.
TRANSITION = """
local prefix = ARGV[1]
local out = {}
local i = 2
local claimant_dead = false
if KEYS[2] then
  claimant_dead = redis.call('ZSCORE', KEYS[2], ARGV[2]) == false
  i = 3
end
-- The record's bookkeeping fields, then its result fields (positions in R, from 7 on).
local R = {RESULT_POSITIONS}
while i <= #ARGV do
  local task, tid, allowed, new, ck, eidx = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local first, n = i + 7, tonumber(ARGV[i + 6])
  i = first + 2 * n
  local m = redis.call('HMGET', task, BOOKKEEPING_LUA, RESULT_FIELDS_LUA)
  local st, attempts = m[R.status], m[R.attempts] or '0'
  -- The claimed-set key in the record says who holds the claim (kept with the set's membership).
  local ours = ck ~= '' and m[1] == ck
  if not st then
    out[#out + 1] = {'missing', ''}
  elseif new == 'running' and claimant_dead then
    out[#out + 1] = {'dead', st}
  elseif new == 'running' and st == 'running' and ours then
    -- Our own claim, repeated after a lost reply: still ours.
    out[#out + 1] = {'ok', st, attempts}
  elseif new ~= 'running' and st == 'running' and ck ~= '' and not ours then
    -- Only the claim's holder starts, finishes or releases it.
    out[#out + 1] = {'refused', st}
  elseif new == 'started' then
    -- A claimed task begins to run (claims are taken a few at a time, ahead of running).
    if st ~= 'running' then
      out[#out + 1] = {'refused', st}
    else
      local set = {'HSET', task}
      for j = first, first + 2 * n - 1 do set[#set + 1] = ARGV[j] end
      if n > 0 then redis.call(unpack(set)) end
      out[#out + 1] = {'ok', st, attempts}
    end
  elseif not string.find(',' .. allowed .. ',', ',' .. st .. ',', 1, true) then
    out[#out + 1] = {'refused', st}
  else
    local set, given = {'HSET', task, 'status', new}, {}
    for j = first, first + 2 * n - 1, 2 do
      set[#set + 1] = ARGV[j]
      set[#set + 1] = ARGV[j + 1]
      given[ARGV[j]] = ARGV[j + 1]
    end
    if new == 'running' then
      -- A stored count that is not a number (a Redis writer's doing) counts as none.
      attempts = tostring((tonumber(attempts) or 0) + 1)
      set[#set + 1] = 'attempts'
      set[#set + 1] = attempts
      set[#set + 1] = '_claimed_key'
      set[#set + 1] = ck
    elseif given['attempts'] then
      attempts = given['attempts']
    end
    redis.call(unpack(set))
    redis.call('SREM', prefix .. st, tid)
    redis.call('SADD', prefix .. new, tid)
    if st == 'running' and m[1] then redis.call('SREM', m[1], tid) end
    if eidx ~= '' then
      if new == 'pending' then redis.call('SREM', eidx, tid) else redis.call('SADD', eidx, tid) end
    end
    if new == 'running' then
      redis.call('SADD', ck, tid)
    elseif new == 'pending' then
      if m[1] then redis.call('HDEL', task, '_claimed_key') end
    else
      if m[2] then redis.call('SREM', m[2], tid) end
      if m[3] then
        -- The client's inbox gets the finished record itself (its result fields, each as
        -- <length>:<bytes>, or - when absent), unless it is large: then just the task id.
        local entry, parts, size = tid, {'\\0'}, 0
        given['status'], given['attempts'] = new, attempts
        for k = 7, #m do
          local v = given[RESULT_NAMES[k - 6]] or m[k]
          if v then
            parts[#parts + 1] = #v .. ':' .. v
            size = size + #v
          else
            parts[#parts + 1] = '-'
          end
        end
        if size <= INLINE_MAX then entry = table.concat(parts) end
        if redis.call('LPUSH', m[3], entry) == 1 then redis.call('EXPIRE', m[3], INBOX_TTL) end
      end
      if m[4] then redis.call('LPUSH', m[4], tid) end
      if m[5] then redis.call('ZREM', KEYS[1], tid) end
      -- Bookkeeping a finished record no longer needs (keeps finished records small).
      local drop = {'HDEL', task}
      local names = {BOOKKEEPING_LUA}
      for k = 1, 6 do if m[k] then drop[#drop + 1] = names[k] end end
      if #drop > 2 then redis.call(unpack(drop)) end
    end
    out[#out + 1] = {'ok', st, attempts}
  end
end
return out
"""
# A finished record rides in its client's inbox when its result fields are this small.

INLINE_MAX = 4096
# Only a live client reads its inbox (a new Client has a new one, and finds older results by
# their status): entries nobody popped within this long are garbage.
INBOX_TTL_S = 3600
TRANSITION = (TRANSITION.replace("RESULT_FIELDS_LUA", ", ".join(f"'{f}'" for f in RESULT_FIELDS))
               .replace("BOOKKEEPING_LUA", ", ".join(f"'{f}'" for f in BOOKKEEPING))
               .replace("RESULT_POSITIONS", ", ".join(f"{f} = {n + 7}" for n, f in enumerate(RESULT_FIELDS)))
               .replace("INLINE_MAX", str(INLINE_MAX)).replace("INBOX_TTL", str(INBOX_TTL_S)))
TRANSITION = TRANSITION.replace("local R = {", "local RESULT_NAMES = {" + ", ".join(
    f"'{f}'" for f in RESULT_FIELDS) + "}\nlocal R = {", 1)

# Back to the scheduler: a load-balanced task that failed with retries left, whose depend
# did not hold on its engine, or whose engine was lost. KEYS: task, scheduler pending zset,
# scheduler events list (the task stays known to the scheduler from now on).
# ARGV: 1 task id, 2 status-index prefix, 3 attempts delta (-1 when the task never really
# ran), 4 engine id to add to the list named by 5 ('failed_on', 'unmet' or 'lost_on'),
# 6.. field/value pairs to set.
REQUEUE = """
local task, tid = KEYS[1], ARGV[1]
local st = redis.call('HGET', task, 'status')
if st ~= 'pending' and st ~= 'running' then return 0 end
if st == 'running' then
  local rk = redis.call('HGET', task, '_claimed_key')
  if rk then redis.call('SREM', rk, tid) end
end
local pk = redis.call('HGET', task, '_pending_key')
if pk then redis.call('SREM', pk, tid) end
-- The next attempt's output replaces this one's.
redis.call('HDEL', task, '_pending_key', '_claimed_key', 'stdout', 'stderr')
if tonumber(ARGV[3]) ~= 0 then
  local n = math.max((tonumber(redis.call('HGET', task, 'attempts')) or 0) + tonumber(ARGV[3]), 0)
  redis.call('HSET', task, 'attempts', n)
end
if ARGV[5] ~= '' then
  local prev = redis.call('HGET', task, ARGV[5])
  redis.call('HSET', task, ARGV[5], (prev and prev ~= '') and (prev .. ',' .. ARGV[4]) or ARGV[4])
end
for i = 6, #ARGV, 2 do redis.call('HSET', task, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', task, 'status', 'pending')
redis.call('SREM', ARGV[2] .. st, tid)
redis.call('SADD', ARGV[2] .. 'pending', tid)
if not tonumber(redis.call('HGET', task, '_seq')) then
  redis.call('HSET', task, '_seq', tonumber(redis.call('HGET', task, 'submitted')) or 0)
end
redis.call('ZADD', KEYS[2], tonumber(redis.call('HGET', task, '_seq')), tid)
redis.call('HSET', task, '_notify', KEYS[3])
redis.call('LPUSH', KEYS[3], tid)
return 1
"""

# The scheduler routes a task to an engine (before publishing it). KEYS: task, scheduler
# pending zset, engine pending set, registry hash, heartbeat zset. ARGV: task id, engine id.
# Returns 1 when assigned, 0 when the task is no longer pending, -1 when the engine is gone.
ASSIGN = """
local task, tid = KEYS[1], ARGV[1]
local st = redis.call('HGET', task, 'status')
if st ~= 'pending' then
  redis.call('ZREM', KEYS[2], tid)
  return 0
end
if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 0 or redis.call('ZSCORE', KEYS[5], ARGV[2]) == false then
  return -1
end
local old = redis.call('HGET', task, '_pending_key')
if old and old ~= KEYS[3] then redis.call('SREM', old, tid) end
redis.call('SADD', KEYS[3], tid)
redis.call('HSET', task, '_pending_key', KEYS[3])
redis.call('ZREM', KEYS[2], tid)
return 1
"""


# The states of tasks that others depend on; a task not finished yet is told to notify the
# scheduler when it does (so dependants are looked at again then). KEYS: the tasks. ARGV[1]:
# the scheduler's events list. Returns, per task, {status or '', engine id or ''}.
WATCH = """
local out = {}
for i, key in ipairs(KEYS) do
  local st, engine = unpack(redis.call('HMGET', key, 'status', 'engine_id'))
  if st and st ~= 'completed' and st ~= 'failed' and st ~= 'aborted' then
    redis.call('HSET', key, '_notify', ARGV[1])
  end
  out[i] = {st or '', engine or ''}
end
return out
"""


# Fresh dispatch tickets for tasks still pending. KEYS: the tasks. ARGV: their sealed tickets,
# in the same order. (One call for many tasks rather than a pipeline of calls: a Redis Cluster
# client pipelines no scripts.)
RENEW = """
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'pending' then redis.call('HSET', key, '_ticket', ARGV[i]) end
end
return 0
"""
# Tasks whose tickets one call renews.
RENEW_BATCH = 500


# The scheduler took a submitted task. KEYS: task, scheduler pending zset, engines' version.
# ARGV: id, order, dispatch ticket. Returns {1 queued | 2 queued already | 0 not pending,
# the engines' version}. A task aborted before the scheduler saw it, or already routed, is
# not queued again.
ENQUEUE = """
local version = tonumber(redis.call('GET', KEYS[3])) or 0
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' or redis.call('HEXISTS', KEYS[1], '_pending_key') == 1 then
  return {0, version}
end
if not tonumber(redis.call('HGET', KEYS[1], '_seq')) then
  redis.call('HSET', KEYS[1], '_seq', ARGV[2])
elseif redis.call('ZSCORE', KEYS[2], ARGV[1]) ~= false then
  return {2, version}
end
redis.call('HSET', KEYS[1], '_ticket', ARGV[3])
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], '_seq'), ARGV[1])
return {1, version}
"""


# New pending records. ARGV: history key, pending-index key; then per task: task key, task
# id, submitted time, the target engine's pending and index keys ('' for load-balanced), the
# number of field/value pairs, the pairs.
CREATE = """
local i = 3
while i <= #ARGV do
  local task, tid, submitted, epk, eidx, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5])
  local set = {'HSET', task}
  for j = i + 6, i + 5 + 2 * n do set[#set + 1] = ARGV[j] end
  i = i + 6 + 2 * n
  redis.call(unpack(set))
  redis.call('ZADD', ARGV[1], submitted, tid)
  redis.call('SADD', ARGV[2], tid)
  if epk ~= '' then
    redis.call('SADD', epk, tid)
    redis.call('SADD', eidx, tid)
  end
end
return 1
"""
