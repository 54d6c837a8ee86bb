-- Prepended to every script.  KEYS[1] is the queue's prefix "tq:{<queue>}:"; every key a
-- script touches is that prefix plus a suffix, so all of them hash to one Cluster slot.
local P = KEYS[1]
local PRIO = {'high', 'medium', 'low'} -- a record's prio field is 0, 1, 2: PRIO[prio + 1]
-- A record's prio field as its number, nil when it is not one trioqueue writes (the
-- record was edited by something else).
local PRIO_OF = {['0'] = 0, ['1'] = 1, ['2'] = 2}
local FIELDS = {'id', 'task', 'payload', 'prio', 'status', 'attempts', 'max_retries',
  'timeout', 'created_at', 'scheduled_for', 'started_at', 'finished_at', 'result', 'error',
  'traceback', 'fence', 'owner', 'cancel_requested', 'progress'}

-- One clock for every node: Redis' own, in milliseconds.
local now_ms
do
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Numbers go to redis.call as strings made here: Redis formats a Lua number argument with
-- snprintf("%.17g"), which cost ~10 % of Redis' instructions per job (callgrind); '%d' is
-- the same text for the integers the scripts pass.
local function int(n) return string.format('%d', n) end
local NOW = int(now_ms)

local function jkey(id) return P .. 'job:' .. id end

local function record(id) return redis.call('HMGET', jkey(id), unpack(FIELDS)) end

-- The error a job ends FAILED with when its record's field `name` holds `v` (false:
-- missing), which is not what trioqueue writes.
local function corrupt(id, name, v)
  return "CorruptRecord: job '" .. id .. "': " .. name .. ': ' ..
    (v and cjson.encode(v) or 'missing') .. ', not what trioqueue writes'
end

-- A queued job that a node took from its ready list but cannot run (its task is not
-- registered there) waits in `park:<p>:<task>` (p: 1 high, 2 medium, 3 low), oldest
-- first, named in the set `parked` as '<p>:<task>' while that list holds any, so that
-- the jobs behind it flow on.  A parked job counts as queued in its priority, and a node
-- that has its task takes it before the ready list of that priority.
-- parked(): {{p, task, key, member}, ...}, read once per script until it changes.
local parked_now = nil
local function parked()
  if not parked_now then
    parked_now = {}
    for _, m in ipairs(redis.call('SMEMBERS', P .. 'parked')) do
      parked_now[#parked_now + 1] = {tonumber(string.sub(m, 1, 1)), string.sub(m, 3),
        P .. 'park:' .. m, m}
    end
  end
  return parked_now
end

local function park(p, task, id)
  local m = int(p) .. ':' .. task
  redis.call('RPUSH', P .. 'park:' .. m, id)
  if redis.call('SADD', P .. 'parked', m) > 0 then parked_now = nil end
end

-- A parked list emptied: no longer named.
local function unpark(m)
  redis.call('SREM', P .. 'parked', m)
  parked_now = nil
end

-- Jobs going back to the front of their queue, the first one taken first: in front of
-- their priority's ready list, or of their task's parked list where it has one (claims
-- take those first, as older).  put_front(p, task, id) (p 0-2; task false or '' for a
-- record without one: the ready list) collects them in order; push_fronts() pushes
-- them, LPUSH last first, in chunks of 1,000 (unpack's bound).
local fronts, front_keys = {}, {}
local function put_front(p, task, id)
  local key = P .. 'ready:' .. PRIO[p + 1]
  if type(task) == 'string' and task ~= '' then
    local m = int(p + 1) .. ':' .. task
    if redis.call('SISMEMBER', P .. 'parked', m) == 1 then key = P .. 'park:' .. m end
  end
  local f = fronts[key]
  if not f then
    f = {}
    fronts[key] = f
    front_keys[#front_keys + 1] = key
  end
  f[#f + 1] = id
end
local function push_fronts()
  for _, key in ipairs(front_keys) do
    local f = fronts[key]
    local j = #f
    while j > 0 do
      local chunk = {}
      while j > 0 and #chunk < 1000 do
        chunk[#chunk + 1] = f[j]
        j = j - 1
      end
      redis.call('LPUSH', key, unpack(chunk))
    end
  end
  fronts, front_keys = {}, {}
end

-- Takes a queued id out of its priority's ready list or, failing that, out of its parked
-- list; p is 1-3.
local function unqueue(p, task, id)
  if redis.call('LREM', P .. 'ready:' .. PRIO[p], 1, id) > 0 or not task then return end
  local m = int(p) .. ':' .. task
  local key = P .. 'park:' .. m
  if redis.call('LREM', key, 1, id) > 0 and redis.call('LLEN', key) == 0 then unpark(m) end
end

-- Queued jobs per priority: its ready list and its parked lists.
local function queued_lengths()
  local q = {}
  for p = 1, 3 do q[p] = redis.call('LLEN', P .. 'ready:' .. PRIO[p]) end
  for _, k in ipairs(parked()) do q[k[1]] = q[k[1]] + redis.call('LLEN', k[3]) end
  return q
end

-- The queue's counts: {queued high, medium, low, scheduled, processing, {stats...},
-- {room...}, {node, info JSON, ...}}, the nodes being those whose last heartbeat is at
-- most age ms old (none for 0).  counts.lua's reply, and part of find.lua's.
local function counts_reply(age)
  local q = queued_lengths()
  local nodes = {}
  if age > 0 then
    local live = redis.call('ZRANGEBYSCORE', P .. 'beats', now_ms - age, '+inf')
    for _, node in ipairs(live) do
      nodes[#nodes + 1] = node
      nodes[#nodes + 1] = redis.call('HGET', P .. 'nodes', node) or '{}'
    end
  end
  return {q[1], q[2], q[3], redis.call('ZCARD', P .. 'sched'),
    redis.call('ZCARD', P .. 'leases'), redis.call('HGETALL', P .. 'stats'),
    redis.call('HGETALL', P .. 'room'), nodes}
end

-- Events are written as they happen, numbered from the queue's `seq` (read once, at the
-- first event, and stored once by flush()): `seq` increases by one per event across the
-- whole queue, so a reader that skipped entries (trimmed by MAXLEN) knows exactly how
-- many.  The stream is trimmed once per script, in flush().
-- They are written only while some node reads them, and only of the types some reader
-- takes: a reading node keeps its entry in `readers` (node -> until when, ms) in the
-- future and its types in `readers:types` (node -> 'completed,failed,...' or '*': all;
-- nodes.lua 'read').  The numbers count on all the same (replies carry them as the
-- version of what they show), but nothing else is done: the XADDs were about a third of
-- Redis' time per job.
local seq_first, seq_n = nil, 0
local EVENTS = P .. 'events'
local wanted -- false: nobody reads; true: every type; else the set of types read
local written = 0
local function read_types()
  local live = redis.call('ZRANGEBYSCORE', P .. 'readers', NOW, '+inf')
  if #live == 0 then return false end
  local types = redis.call('HMGET', P .. 'readers:types', unpack(live))
  local set = {}
  for _, t in ipairs(types) do
    if not t or t == '*' then return true end -- (no types recorded: every type)
    for w in string.gmatch(t, '[^,]+') do set[w] = true end
  end
  return set
end
local function emit(kind, id, task, prio, status, attempt, node, extra)
  if not seq_first then
    seq_first = tonumber(redis.call('HGET', P .. 'stats', 'seq') or '0')
    wanted = read_types()
  end
  seq_n = seq_n + 1
  if not (wanted == true or (wanted and wanted[kind])) then return end
  written = written + 1
  local n_extra = extra and #extra or 0
  if n_extra == 0 then
    redis.call('XADD', EVENTS, '*', 'seq', int(seq_first + seq_n), 'at', NOW, 'type', kind,
      'job_id', id, 'task', task or '', 'priority', PRIO[prio + 1] or '', 'status', status,
      'attempt', int(attempt or 0), 'node', node or '')
  elseif n_extra == 2 then
    redis.call('XADD', EVENTS, '*', 'seq', int(seq_first + seq_n), 'at', NOW, 'type', kind,
      'job_id', id, 'task', task or '', 'priority', PRIO[prio + 1] or '', 'status', status,
      'attempt', int(attempt or 0), 'node', node or '', extra[1], extra[2])
  else
    local e = {'seq', int(seq_first + seq_n), 'at', NOW, 'type', kind, 'job_id', id,
      'task', task or '', 'priority', PRIO[prio + 1] or '', 'status', status,
      'attempt', int(attempt or 0), 'node', node or ''}
    for i = 1, n_extra do e[#e + 1] = extra[i] end
    redis.call('XADD', EVENTS, '*', unpack(e))
  end
end

-- Counters too are summed in the script and written once per field at the end.
local pending_counts = {}
local pending_idx = {} -- status -> {score, id, ...} for idx:<status>
local pending_ended = {} -- status -> {finish time, id, ...} for ended:<status>
local function count(name, prio, by)
  local field = name .. ':' .. PRIO[prio + 1]
  pending_counts[field] = (pending_counts[field] or 0) + (by or 1)
end

-- Write the index entries, counters and events of this call (every script ends with it):
-- one ZADD per index and one HINCRBY per counter, whatever the batch.
local function flush(maxlen)
  for status, idx in pairs(pending_idx) do
    redis.call('ZADD', P .. 'idx:' .. status, unpack(idx))
  end
  for status, ended in pairs(pending_ended) do
    redis.call('ZADD', P .. 'ended:' .. status, unpack(ended))
  end
  for field, by in pairs(pending_counts) do
    redis.call('HINCRBY', P .. 'stats', field, by)
  end
  if seq_n == 0 then return end
  redis.call('HSET', P .. 'stats', 'seq', int(seq_first + seq_n))
  if written > 0 then redis.call('XTRIM', EVENTS, 'MAXLEN', '~', maxlen) end
end

-- Wake tokens are hints for idle fetchers (BLPOP); at most 64 are kept.
local function wake(n)
  if n <= 0 then return end
  if n > 64 then n = 64 end
  local t = {}
  for i = 1, n do t[i] = '1' end
  redis.call('RPUSH', P .. 'wake', unpack(t))
  redis.call('LTRIM', P .. 'wake', -64, -1)
end

-- How long a finished record stays, in ms, by its status, from a script's "result ttl"
-- argument: "<ms>" for every status, or "<ms> <failed ms>" when a FAILED job (a dead
-- letter, kept for `retention`) stays longer than a completed or cancelled one.
local function ttls(arg)
  local done, failed = string.match(arg, '^(%d+) (%d+)$')
  if done then return {completed = tonumber(done), cancelled = tonumber(done),
    failed = tonumber(failed)} end
  local ms = tonumber(arg)
  return {completed = ms, cancelled = ms, failed = ms}
end

-- A job reaches COMPLETED, FAILED or CANCELLED: it expires after its status' TTL (`ttl`,
-- from ttls), is listed in idx:<status> in creation order (its idx:all score, as the
-- listings of every status go) and in ended:<status> by finish time, where reap finds
-- the entries of expired records to drop from both.
local function finish(id, status, prio, ttl, fields, flagged)
  local key = jkey(id)
  redis.call('HSET', key, 'status', status, 'finished_at', NOW, unpack(fields))
  if flagged then redis.call('HDEL', key, 'cancel_requested') end
  redis.call('PEXPIRE', key, int(ttl[status]))
  local idx, ended = pending_idx[status], pending_ended[status]
  if not idx then
    idx, ended = {}, {}
    pending_idx[status], pending_ended[status] = idx, ended
  end
  idx[#idx + 1] = redis.call('ZSCORE', P .. 'idx:all', id) or int(now_ms * 1000)
  idx[#idx + 1] = id
  ended[#ended + 1] = NOW
  ended[#ended + 1] = id
  count(status, prio)
end

-- Replies of a request id are kept 30 s (beyond the client's 15 s reply timeout), so a
-- command the client re-sends after a lost connection or a timeout gets the first
-- execution's answer instead of running twice.
local function cached(rid)
  if rid == '' then return false end
  return redis.call('GET', P .. 'rid:' .. rid)
end

local function remember(rid, value)
  if rid ~= '' then redis.call('SET', P .. 'rid:' .. rid, value, 'PX', 30000) end
end

local function split(s)
  local out = {}
  for w in string.gmatch(s, '%S+') do out[#out + 1] = w end
  return out
end

-- The room a node's enqueue_nowait checks, after this call: per priority its queued jobs,
-- then the delayed jobs waiting, then the last event number (the view's version: a node
-- keeps the view of the highest one).  Call it after flush().
local function room_view()
  local room = redis.call('HMGET', P .. 'room', 'delayed:high', 'delayed:medium',
    'delayed:low')
  local v = {}
  local q = queued_lengths()
  for p = 1, 3 do
    v[p] = q[p]
    v[p + 3] = tonumber(room[p]) or 0
  end
  v[7] = tonumber(redis.call('HGET', P .. 'stats', 'seq') or '0')
  return v
end
