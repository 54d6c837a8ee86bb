-- finish_and_claim(outcomes, n): the hot path, one call per fetcher round trip.
-- ARGV: rid, events maxlen, result ttl ms, node, lease ms, n (claims wanted),
--   weights high, medium, low, number of outcomes, then per outcome 7 values:
--   id, fence, kind, value, error, traceback, duration (seconds, '' for none).
--   kind: completed (value: result JSON), failed, retry (value: delay ms), cancelled,
--   released (back to the front of its ready list, the attempt stays counted).
-- Reply: {{result per outcome}, {claimed record, ...}}.  A result is 'ok' (applied, or
--   applied already by an earlier send of the same outcome), 'stale' (the job's fence or
--   owner moved on: this node no longer holds it; nothing changed) or 'cancelled' (a
--   retry or release of a job whose cancellation was requested: it was cancelled instead).
local rid = ARGV[1]
local maxlen = ARGV[2]
local ttl = tonumber(ARGV[3])
local node = ARGV[4]
local lease = tonumber(ARGV[5])
local want = tonumber(ARGV[6])
local weights = {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local n_out = tonumber(ARGV[10])
local B, W = 10, 7

local TARGET = {completed = 'completed', failed = 'failed', retry = 'scheduled',
  cancelled = 'cancelled', released = 'queued'}

local results = {}
local n_woken = 0
for i = 1, n_out do
  local b = B + (i - 1) * W
  local id, fence, kind = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local key = jkey(id)
  local h = redis.call('HMGET', key, 'status', 'fence', 'owner', 'prio', 'task', 'attempts',
    'cancel_requested')
  local status = h[1]
  if not status or h[2] ~= fence or h[3] ~= node then
    results[i] = 'stale'
  elseif status ~= 'processing' then
    -- A re-sent outcome finds its own work done; anything else moved the job on.
    results[i] = (status == TARGET[kind]) and 'ok' or 'stale'
  else
    local prio, task, attempt = tonumber(h[4]), h[5], tonumber(h[6])
    local value, err, tb, dur = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
    local extra = {}
    if dur ~= '' then extra = {'duration', dur} end
    if h[7] and (kind == 'retry' or kind == 'released') then kind = 'cancelled' end
    redis.call('ZREM', P .. 'leases', id)
    results[i] = 'ok'
    if kind == 'completed' then
      finish(id, 'completed', prio, ttl, {'result', value})
      emit('completed', id, task, prio, 'completed', attempt, node, extra)
    elseif kind == 'failed' then
      finish(id, 'failed', prio, ttl, {'error', err, 'traceback', tb})
      extra[#extra + 1] = 'error'
      extra[#extra + 1] = err
      emit('failed', id, task, prio, 'failed', attempt, node, extra)
    elseif kind == 'cancelled' then
      if h[7] and TARGET[ARGV[b + 3]] ~= 'cancelled' then results[i] = 'cancelled' end
      finish(id, 'cancelled', prio, ttl, {})
      emit('cancelled', id, task, prio, 'cancelled', attempt, node, extra)
    elseif kind == 'retry' then
      local due = now_ms + tonumber(value)
      redis.call('HSET', key, 'status', 'scheduled', 'scheduled_for', due, 'error', err,
        'traceback', tb)
      redis.call('ZADD', P .. 'sched', due, id)
      count('retried', prio)
      extra[#extra + 1] = 'error'
      extra[#extra + 1] = err
      emit('retrying', id, task, prio, 'scheduled', attempt, node, extra)
    elseif kind == 'released' then
      redis.call('HSET', key, 'status', 'queued')
      redis.call('HDEL', key, 'started_at')
      redis.call('LPUSH', P .. 'ready:' .. PRIO[prio + 1], id)
      n_woken = n_woken + 1
      emit('requeued', id, task, prio, 'queued', attempt, node)
    else
      return redis.error_reply('finish_and_claim: unknown outcome kind ' .. kind)
    end
  end
end

local claimed = {}
local hit = cached(rid)
if hit then
  -- Re-sent: hand back what the first send claimed (still ours), claim nothing more.
  for _, id in ipairs(split(hit)) do
    local r = record(id)
    if r[5] == 'processing' and r[17] == node then claimed[#claimed + 1] = r end
  end
else
  local ids = {}
  if want > 0 then
    local len = {}
    for p = 1, 3 do len[p] = redis.call('LLEN', P .. 'ready:' .. PRIO[p]) end
    local raw = redis.call('HMGET', P .. 'swrr', 'high', 'medium', 'low')
    local credit = {tonumber(raw[1]) or 0, tonumber(raw[2]) or 0, tonumber(raw[3]) or 0}
    local before = {credit[1], credit[2], credit[3]}
    local deadline = now_ms + lease
    while #ids < want do
      -- One smooth weighted round robin step, as trioqueue/_fairness.py: every priority
      -- with work earns its weight, the richest (ties: more urgent) pays the total back;
      -- a priority without work has its credit cleared; a lone priority clears them all.
      local active = 0
      for p = 1, 3 do if len[p] > 0 then active = active + 1 end end
      if active == 0 then break end
      local saved = {credit[1], credit[2], credit[3]}
      local best = 0
      if active == 1 then
        for p = 1, 3 do
          if len[p] > 0 then best = p end
          credit[p] = 0
        end
      else
        local total, best_credit = 0, 0
        for p = 1, 3 do
          if len[p] > 0 then
            credit[p] = credit[p] + weights[p]
            total = total + weights[p]
            if best == 0 or credit[p] > best_credit then best, best_credit = p, credit[p] end
          else
            credit[p] = 0
          end
        end
        credit[best] = credit[best] - total
      end
      -- Take the first id of that list that is still QUEUED (others are left-overs).
      local list = P .. 'ready:' .. PRIO[best]
      local id = nil
      while len[best] > 0 do
        local cand = redis.call('LPOP', list)
        len[best] = len[best] - 1
        if not cand then
          len[best] = 0
        elseif redis.call('HGET', jkey(cand), 'status') == 'queued' then
          id = cand
          break
        end
      end
      if id then
        local key = jkey(id)
        redis.call('HINCRBY', key, 'fence', 1)
        local attempt = redis.call('HINCRBY', key, 'attempts', 1)
        redis.call('HSET', key, 'status', 'processing', 'owner', node, 'started_at', now_ms)
        redis.call('ZADD', P .. 'leases', deadline, id)
        ids[#ids + 1] = id
        local r = record(id)
        claimed[#claimed + 1] = r
        emit('started', id, r[2], best - 1, 'processing', attempt, node)
      else
        -- The list held nothing claimable: undo the step, look again without it.
        credit = saved
      end
    end
    if credit[1] ~= before[1] or credit[2] ~= before[2] or credit[3] ~= before[3] then
      redis.call('HSET', P .. 'swrr', 'high', credit[1], 'medium', credit[2], 'low', credit[3])
    end
  end
  remember(rid, table.concat(ids, ' '))
end
wake(n_woken)
flush_events(maxlen)
return {results, claimed}
