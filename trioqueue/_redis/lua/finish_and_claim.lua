-- finish_and_claim(outcomes, n): the hot path, one call per fetcher round trip.
-- ARGV: rid, events maxlen, result ttl ms (common.lua's ttls), node, lease ms, n (claims wanted),
--   weights high, medium, low, outcomes: a JSON array with per outcome an array of 7
--   strings: id, fence, kind, value, error, traceback, duration (seconds, '' for none),
--   tasks: a JSON array of the task names this node can run ('' for any), or an object
--   of them, each to the most of its jobs this call may claim (-1: no bound; past it the
--   task's jobs are parked as for a task not in `tasks`),
--   held: a JSON array [id, fence, id, fence, ...] of jobs this node claimed and holds
--   without running them (its prefetch buffer, a limited task's line): each is marked
--   in `held` (id -> fence), so that the reaper gives it back uncounted if the node dies
--   ('' or absent: none),
--   started: a JSON array of ids marked held that a worker here has started since: their
--   marks are dropped, the reaper counts their attempt ('' or absent: none).
--   kind: completed (value: result JSON), failed, retry (value: delay ms), cancelled,
--   released (back to the front of its ready list, the attempt stays counted: it ran),
--   unstarted (claimed but never started: back to the front, its attempt uncounted),
--   progress (value: {"fraction", "note"} JSON; the job stays PROCESSING: its record's
--   progress field is set and a progress event written).
-- Reply: {{result per outcome}, {claimed record, ...}, room view (common.lua), {task, ...}:
--   the tasks of the jobs this call parked (not in `tasks`), each once, {id, ...}: the
--   claimed jobs that came back unstarted from a lost node before (`orphaned`: the node
--   makes their start known to Redis before it runs them)}.  A result is 'ok' (applied, or
--   applied already by an earlier send of the same outcome), 'stale' (the job's fence or
--   owner moved on: this node no longer holds it; nothing changed) or 'cancelled' (a
--   retry or release of a job whose cancellation was requested: it was cancelled instead).
-- Jobs put back (released, unstarted) go to the front of their ready list in the order of
-- the outcomes: the first one is taken first.
local rid = ARGV[1]
local maxlen = ARGV[2]
local ttl = ttls(ARGV[3])
local node = ARGV[4]
local lease = tonumber(ARGV[5])
local want = tonumber(ARGV[6])
local weights = {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local OUT = cjson.decode(ARGV[10])
local n_out = #OUT
local known, caps = false, false
if ARGV[11] and ARGV[11] ~= '' then
  known = {}
  local t = cjson.decode(ARGV[11])
  if t[1] ~= nil or next(t) == nil then
    for _, name in ipairs(t) do known[name] = true end
  else
    caps = {}
    for name, cap in pairs(t) do
      known[name] = true
      if cap >= 0 then caps[name] = cap end
    end
  end
end
local HELD = P .. 'held'
local marks = (ARGV[12] and ARGV[12] ~= '') and cjson.decode(ARGV[12]) or {}
local unmarks = (ARGV[13] and ARGV[13] ~= '') and cjson.decode(ARGV[13]) or {}

-- Why a queued record cannot be claimed (the error it ends FAILED with), or nil: the
-- fields this script and the node compute with must be what trioqueue writes (HMGET
-- gives false for a missing field).
local CHECKED = {{'id', 1}, {'task', 2}, {'prio', 4}, {'attempts', 6}, {'max_retries', 7},
  {'fence', 16}}
local function unclaimable(id, r)
  if r[1] == id and r[2] and r[2] ~= '' and PRIO_OF[r[4]] and tonumber(r[6]) and
      tonumber(r[7]) and (not r[16] or tonumber(r[16])) then
    return nil -- (every record trioqueue wrote: the loop below only names the field)
  end
  for _, c in ipairs(CHECKED) do
    local name, v = c[1], r[c[2]]
    local ok
    if name == 'id' then ok = v == id
    elseif name == 'task' then ok = type(v) == 'string' and v ~= ''
    elseif name == 'prio' then ok = PRIO_OF[v] ~= nil
    elseif name == 'fence' then ok = not v or tonumber(v) ~= nil
    else ok = tonumber(v) ~= nil end
    if not ok then return corrupt(id, name, v) end
  end
  return nil
end

local TARGET = {completed = 'completed', failed = 'failed', retry = 'scheduled',
  cancelled = 'cancelled', released = 'queued', unstarted = 'queued',
  progress = 'processing'}

-- Check every outcome before changing anything: a script that fails half way keeps its
-- writes.
for i = 1, n_out do
  local o = OUT[i]
  if type(o) ~= 'table' or #o ~= 7 or not TARGET[o[3]] then
    return redis.error_reply('finish_and_claim: outcome ' .. i .. ': bad shape or kind')
  end
  for k = 1, 7 do
    if type(o[k]) ~= 'string' then
      return redis.error_reply('finish_and_claim: outcome ' .. i .. ': field ' .. k ..
        ' is not a string')
    end
  end
  if o[3] == 'retry' and not tonumber(o[4]) then
    return redis.error_reply('finish_and_claim: outcome ' .. i .. ': retry delay')
  end
end
if type(marks) ~= 'table' or #marks % 2 ~= 0 or type(unmarks) ~= 'table' then
  return redis.error_reply('finish_and_claim: held, started: bad shape')
end
for i = 1, #marks do
  if type(marks[i]) ~= 'string' or (i % 2 == 0 and not tonumber(marks[i])) then
    return redis.error_reply('finish_and_claim: held: item ' .. i .. ' is not an id or fence')
  end
end
for i = 1, #unmarks do
  if type(unmarks[i]) ~= 'string' then
    return redis.error_reply('finish_and_claim: started: item ' .. i .. ' is not an id')
  end
end

-- Held marks, one HSET / HDEL per call whatever the batch (chunks of 1000 arguments).
local function each_chunk(cmd, items)
  local j = 1
  while j <= #items do
    local chunk = {}
    for k = j, math.min(j + 999, #items) do chunk[#chunk + 1] = items[k] end
    redis.call(cmd, HELD, unpack(chunk))
    j = j + 1000
  end
end
each_chunk('HDEL', unmarks)
each_chunk('HSET', marks)

local results = {}
local left = {} -- ids whose lease ends here: one ZREM
local n_woken = 0
for i = 1, n_out do
  local o = OUT[i]
  local id, fence, kind = o[1], o[2], o[3]
  local key = jkey(id)
  local h = redis.call('HMGET', key, 'status', 'fence', 'owner', 'prio', 'task', 'attempts',
    'cancel_requested')
  local status = h[1]
  if not status or h[2] ~= fence or h[3] ~= node then
    results[i] = 'stale'
  elseif not (PRIO_OF[h[4]] and tonumber(h[6])) then
    -- Edited since its claim (by something else): nothing is applied; left to its lease,
    -- and the reaper ends it FAILED, where stopping here would leave this call half done.
    results[i] = 'stale'
  elseif kind == 'progress' then
    if status == 'processing' then
      redis.call('HSET', key, 'progress', o[4])
      emit('progress', id, h[5], tonumber(h[4]), 'processing', tonumber(h[6]), node,
        {'progress', o[4]})
      results[i] = 'ok'
    else
      results[i] = 'stale'
    end
  elseif status ~= 'processing' then
    -- A re-sent outcome finds its own work done; anything else moved the job on.
    results[i] = (status == TARGET[kind]) and 'ok' or 'stale'
  else
    local prio, task, attempt = tonumber(h[4]), h[5], tonumber(h[6])
    local value, err, tb, dur = o[4], o[5], o[6], o[7]
    local extra = {}
    if dur ~= '' then extra = {'duration', dur} end
    if h[7] and (kind == 'retry' or kind == 'released' or kind == 'unstarted') then
      kind = 'cancelled'
    end
    left[#left + 1] = id
    results[i] = 'ok'
    if o[3] == 'unstarted' or kind == 'cancelled' then
      -- Put back or cancelled while held: its held mark (if any) goes with this claim.
      redis.call('HDEL', HELD, id)
    end
    if kind == 'completed' then
      finish(id, 'completed', prio, ttl, {'result', value}, h[7])
      emit('completed', id, task, prio, 'completed', attempt, node, extra)
    elseif kind == 'failed' then
      finish(id, 'failed', prio, ttl, {'error', err, 'traceback', tb}, h[7])
      extra[#extra + 1] = 'error'
      extra[#extra + 1] = err
      emit('failed', id, task, prio, 'failed', attempt, node, extra)
    elseif kind == 'cancelled' then
      if h[7] and o[3] ~= 'cancelled' then results[i] = 'cancelled' end
      finish(id, 'cancelled', prio, ttl, {}, h[7])
      emit('cancelled', id, task, prio, 'cancelled', attempt, node, extra)
    elseif kind == 'retry' then
      local due = now_ms + tonumber(value)
      redis.call('HSET', key, 'status', 'scheduled', 'scheduled_for', int(due), 'error', err,
        'traceback', tb)
      redis.call('ZADD', P .. 'sched', int(due), id)
      count('retried', prio)
      extra[#extra + 1] = 'error'
      extra[#extra + 1] = err
      emit('retrying', id, task, prio, 'scheduled', attempt, node, extra)
    else -- released, unstarted
      if kind == 'unstarted' and attempt > 0 then
        attempt = attempt - 1
        redis.call('HSET', key, 'status', 'queued', 'attempts', int(attempt))
      else
        redis.call('HSET', key, 'status', 'queued')
      end
      redis.call('HDEL', key, 'started_at')
      put_front(prio, task, id) -- (picked before its task's parked jobs: in front of them)
      n_woken = n_woken + 1
      emit('requeued', id, task, prio, 'queued', attempt, node)
    end
  end
end

push_fronts()

if #left > 0 then redis.call('ZREM', P .. 'leases', unpack(left)) end

local claimed = {}
local parked_tasks, parked_seen = {}, {}
-- A record in FIELDS order, read with its `orphaned` count (times it came back
-- unstarted from a lost node), which is not in the reply: such a job's id is listed in
-- `suspect` when it is claimed.
local CLAIM_FIELDS = {unpack(FIELDS)}
CLAIM_FIELDS[#CLAIM_FIELDS + 1] = 'orphaned'
local N_FIELDS = #FIELDS
local suspect = {}
local function claim_record(id)
  local r = redis.call('HMGET', jkey(id), unpack(CLAIM_FIELDS))
  local o = r[N_FIELDS + 1]
  r[N_FIELDS + 1] = nil
  return r, o
end
local hit = cached(rid)
if hit then
  -- Re-sent: hand back what the first send claimed (still ours), claim nothing more.
  for _, id in ipairs(split(hit)) do
    local r, o = claim_record(id)
    if r[5] == 'processing' and r[17] == node then
      claimed[#claimed + 1] = r
      if o then suspect[#suspect + 1] = id end
    end
  end
else
  local ids = {}
  if want > 0 then
    -- len[p]: the jobs of priority p this node may take: its ready list, and the parked
    -- lists of tasks this node has (taken first: their jobs are older).
    local len, mine = {}, {{}, {}, {}}
    for p = 1, 3 do len[p] = redis.call('LLEN', P .. 'ready:' .. PRIO[p]) end
    for _, k in ipairs(parked()) do
      if not known or known[k[2]] then
        local n = redis.call('LLEN', k[3])
        local pl = mine[k[1]]
        pl[#pl + 1] = {key = k[3], member = k[4], n = n, task = k[2]}
        len[k[1]] = len[k[1]] + n
      end
    end
    -- The next id of priority p for this node (false: none after all).
    local function pop(p)
      local pl = mine[p]
      local k = pl[#pl]
      len[p] = len[p] - 1
      if not k then return redis.call('LPOP', P .. 'ready:' .. PRIO[p]) end
      k.n = k.n - 1
      if k.n <= 0 then
        pl[#pl] = nil
        unpark(k.member)
      end
      return redis.call('LPOP', k.key)
    end
    -- A task claimed up to its cap: its parked lists are no longer this call's to take.
    local function drop_mine(task)
      for p = 1, 3 do
        local kept = {}
        for _, k in ipairs(mine[p]) do
          if k.task == task then len[p] = len[p] - k.n else kept[#kept + 1] = k end
        end
        mine[p] = kept
      end
    end
    -- At most PARK_MAX jobs parked a call, so that one call meeting a long run of jobs it
    -- cannot take does not hold Redis while it moves them all: the call ends there, and
    -- the wake tokens left for those jobs bring this node back for the rest.
    local PARK_MAX = 128
    local n_parked = 0
    local raw = redis.call('HMGET', P .. 'swrr', 'high', 'medium', 'low')
    local credit = {tonumber(raw[1]) or 0, tonumber(raw[2]) or 0, tonumber(raw[3]) or 0}
    local before = {credit[1], credit[2], credit[3]}
    local deadline = int(now_ms + lease)
    local leased = {} -- {deadline, id, ...}: one ZADD
    while #ids < want and n_parked < PARK_MAX do
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
      local id, r, orphaned = nil, nil, nil
      while len[best] > 0 and n_parked < PARK_MAX do
        local cand = pop(best)
        if not cand then
          -- (The lengths above are exact within this script: not reached.)
          len[best] = 0
        else
          r, orphaned = claim_record(cand)
          if r[5] == 'queued' then
            local bad = unclaimable(cand, r)
            if bad then
              -- Not a record as trioqueue writes it (edited by something else): it cannot
              -- run anywhere, and claiming it would stop this script midway (after the
              -- LPOPs and claims before it, with no reply and no leases for them).
              finish(cand, 'failed', best - 1, ttl, {'error', bad}, false)
              emit('failed', cand, r[2] or '', best - 1, 'failed', 0, node,
                {'error', bad})
              r = nil
            elseif tonumber(r[6]) > tonumber(r[7]) then
              -- Its last attempt was cut off by a shutdown (released, attempt counted):
              -- it ends FAILED rather than run past its max_retries (as on SQLite).
              local err = 'Interrupted: the queue stopped while attempt ' .. r[6] ..
                ' ran (max_retries=' .. r[7] .. ')'
              finish(cand, 'failed', best - 1, ttl, {'error', err}, false)
              emit('failed', cand, r[2], best - 1, 'failed', tonumber(r[6]), node,
                {'error', err})
              r = nil
            elseif known and not known[r[2]] or caps and caps[r[2]] == 0 then
              -- A task this node cannot run (or no more of it now): parked for a node
              -- that can (woken for it), while this one goes on with the jobs behind it.
              park(best, r[2], cand)
              n_parked = n_parked + 1
              if not parked_seen[r[2]] then
                parked_seen[r[2]] = true
                parked_tasks[#parked_tasks + 1] = r[2]
              end
            else
              local cap = caps and caps[r[2]]
              if cap then
                caps[r[2]] = cap - 1
                if cap == 1 then drop_mine(r[2]) end
              end
              id = cand
              break
            end
          end
        end
      end
      if id then
        -- r is the record in FIELDS order: 5 status, 6 attempts, 11 started_at, 16 fence,
        -- 17 owner.  One HSET writes the claim; the reply is r with the same changes.
        local fence = tonumber(r[16] or '0') + 1
        local attempt = tonumber(r[6]) + 1
        redis.call('HSET', jkey(id), 'status', 'processing', 'owner', node,
          'started_at', NOW, 'fence', int(fence), 'attempts', int(attempt))
        r[5], r[6], r[11], r[16], r[17] = 'processing', attempt, now_ms, fence, node
        leased[#leased + 1] = deadline
        leased[#leased + 1] = id
        ids[#ids + 1] = id
        claimed[#claimed + 1] = r
        if orphaned then suspect[#suspect + 1] = id end
        emit('started', id, r[2], best - 1, 'processing', attempt, node)
      else
        -- The list held nothing claimable: undo the step, look again without it.
        credit = saved
      end
    end
    if #leased > 0 then redis.call('ZADD', P .. 'leases', unpack(leased)) end
    n_woken = n_woken + n_parked
    if credit[1] ~= before[1] or credit[2] ~= before[2] or credit[3] ~= before[3] then
      redis.call('HSET', P .. 'swrr', 'high', credit[1], 'medium', credit[2], 'low', credit[3])
    end
  end
  remember(rid, table.concat(ids, ' '))
end
wake(n_woken)
flush(maxlen)
return {results, claimed, room_view(), parked_tasks, suspect}
