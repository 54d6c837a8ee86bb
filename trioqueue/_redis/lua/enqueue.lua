-- enqueue(batch): admit new jobs, one call per batch.
-- ARGV: rid, events maxlen, capacity, whole ('1': all or nothing), count_rejected ('1'),
--   jobs: a JSON array with per job an array of 8 strings: id, digest, task, prio (0-2),
--   payload (JSON text), max_retries, timeout (seconds, '' for none), delay_ms ('0': not
--   delayed).  One argument instead of 8 per job: the client pays per argument.
--   ARGV[7] (optional): a JSON array [high, medium, low] of refusals made by the node
--   itself (enqueue_nowait's QueueFull from its local view) to count in rejected:<p>.
-- Reply: {created_at ms, {code per job}, {record or false per job}, {room view}}: the
--   room view is, after this call, per priority its queued jobs (high, medium, low),
--   then the delayed jobs waiting (high, medium, low), then
--   the last event number (room_view in common.lua).  Codes: accepted,
--   existing (same id and digest; its record is returned unless it is an earlier job of
--   this batch), duplicate (same id, other digest), full (its priority has no room),
--   aborted (whole batch refused because of another job's duplicate).
local rid = ARGV[1]
local maxlen = ARGV[2]
local capacity = tonumber(ARGV[3])
local whole = ARGV[4] == '1'
local count_rejected = ARGV[5] == '1'
local J = cjson.decode(ARGV[6])
local n = #J
-- Check the whole batch before writing anything (a failing script keeps its writes).
for i = 1, n do
  local j = J[i]
  if type(j) ~= 'table' or #j ~= 8 then
    return redis.error_reply('enqueue: job ' .. i .. ': expected 8 fields')
  end
  for k = 1, 8 do
    if type(j[k]) ~= 'string' then
      return redis.error_reply('enqueue: job ' .. i .. ': field ' .. k .. ' is not a string')
    end
  end
  if not PRIO[(tonumber(j[4]) or -1) + 1] or not tonumber(j[6]) or not tonumber(j[8]) then
    return redis.error_reply('enqueue: job ' .. i .. ': prio, max_retries or delay')
  end
end

local hit = cached(rid)
if hit then
  local words = split(hit)
  local codes, recs = {}, {}
  for i = 1, n do
    codes[i] = words[i + 1]
    recs[i] = false
    if codes[i] == 'existing' then
      local r = record(J[i][1])
      if r[1] then recs[i] = r end
    end
  end
  return {tonumber(words[1]), codes, recs, {}}
end

local codes, recs = {}, {}
local seen = {}
local need, dneed = {0, 0, 0}, {0, 0, 0}
local any_dup = false
for i = 1, n do
  local j = J[i]
  local id, digest = j[1], j[2]
  local p = tonumber(j[4]) + 1
  recs[i] = false
  if seen[id] then
    codes[i] = (seen[id] == digest) and 'existing' or 'duplicate'
  else
    local d = redis.call('HGET', jkey(id), 'digest')
    if d then
      if d == digest then
        codes[i] = 'existing'
        recs[i] = record(id)
      else
        codes[i] = 'duplicate'
      end
    else
      codes[i] = 'new'
      seen[id] = digest
      if tonumber(j[8]) > 0 then dneed[p] = dneed[p] + 1 else need[p] = need[p] + 1 end
    end
  end
  if codes[i] == 'duplicate' then any_dup = true end
end

-- Room per priority: the ready list's bound (due jobs enter past it: then there is none);
-- delayed jobs have their own bound, like the engine's.
local room, droom = {}, {}
local queued = nil
for p = 1, 3 do
  if need[p] > 0 then
    queued = queued or queued_lengths()
    room[p] = capacity - queued[p]
  end
  if dneed[p] > 0 then
    droom[p] = capacity - tonumber(redis.call('HGET', P .. 'room', 'delayed:' .. PRIO[p]) or '0')
  end
end

local refused = {0, 0, 0}
if whole then
  local fits = true
  for p = 1, 3 do
    if (need[p] > 0 and need[p] > room[p]) or (dneed[p] > 0 and dneed[p] > droom[p]) then
      fits = false
    end
  end
  if any_dup or not fits then
    for i = 1, n do
      if codes[i] == 'new' then
        codes[i] = fits and 'aborted' or 'full'
        if not fits then
          local p = tonumber(J[i][4]) + 1
          refused[p] = refused[p] + 1
        end
      end
    end
  end
else
  for i = 1, n do
    if codes[i] == 'new' then
      local p = tonumber(J[i][4]) + 1
      local r = (tonumber(J[i][8]) > 0) and droom or room
      if r[p] > 0 then
        r[p] = r[p] - 1
      else
        codes[i] = 'full'
        refused[p] = refused[p] + 1
      end
    end
  end
end
if ARGV[7] and ARGV[7] ~= '' then
  local extra = cjson.decode(ARGV[7])
  for p = 1, 3 do
    local k = tonumber(extra[p]) or 0
    if k > 0 then count('rejected', p - 1, k) end
  end
end
if count_rejected then
  for p = 1, 3 do
    if refused[p] > 0 then count('rejected', p - 1, refused[p]) end
  end
end

local ready = {{}, {}, {}}
local n_ready = 0
-- idx:all orders jobs by creation: now (microseconds' worth of room per ms) but always
-- above the last job's, so jobs made in the same millisecond keep their creation order.
local order = tonumber(redis.call('HGET', P .. 'stats', 'order') or '0')
local order_moved = false
for i = 1, n do
  if codes[i] == 'new' then
    codes[i] = 'accepted'
    local j = J[i]
    local id, digest, task = j[1], j[2], j[3]
    local prio = tonumber(j[4])
    local delay = tonumber(j[8])
    local key = jkey(id)
    local fields = {'id', id, 'task', task, 'payload', j[5], 'prio', int(prio),
      'attempts', '0', 'max_retries', j[6], 'created_at', NOW, 'digest', digest,
      'fence', '0'}
    if j[7] ~= '' then
      fields[#fields + 1] = 'timeout'
      fields[#fields + 1] = j[7]
    end
    if delay > 0 then
      local due = now_ms + delay
      redis.call('HSET', key, 'status', 'scheduled', 'scheduled_for', int(due), 'dslot', '1',
        unpack(fields))
      redis.call('ZADD', P .. 'sched', int(due), id)
      redis.call('HINCRBY', P .. 'room', 'delayed:' .. PRIO[prio + 1], 1)
      emit('scheduled', id, task, prio, 'scheduled', 0, '')
    else
      redis.call('HSET', key, 'status', 'queued', unpack(fields))
      local list = ready[prio + 1]
      list[#list + 1] = id
      n_ready = n_ready + 1
      emit('enqueued', id, task, prio, 'queued', 0, '')
    end
    order = math.max(now_ms * 1000, order + 1)
    order_moved = true
    redis.call('ZADD', P .. 'idx:all', int(order), id)
    count('enqueued', prio)
  end
end
for p = 1, 3 do
  if #ready[p] > 0 then redis.call('RPUSH', P .. 'ready:' .. PRIO[p], unpack(ready[p])) end
end
if order_moved then redis.call('HSET', P .. 'stats', 'order', string.format('%.0f', order)) end
wake(n_ready)
flush(maxlen)
remember(rid, now_ms .. ' ' .. table.concat(codes, ' '))
return {now_ms, codes, recs, room_view()}
