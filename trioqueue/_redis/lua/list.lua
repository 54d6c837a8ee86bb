-- list(status, task, limit, before): newest first.
-- ARGV: status ('' for any), task ('' for any), limit, before (an id, '' for the start),
--   budget (index entries examined at most), max bytes (the page ends once its payloads
--   and results pass them, one job at least; '' for no bound).
-- Reply: {{record, ...}, next id or false}.  Order: by creation, always: no status ->
--   idx:all; completed/failed/cancelled -> idx:<status>, which holds each job's idx:all
--   score; queued, scheduled, processing -> from the ready and parked lists, `sched` and
--   `leases`, sorted by their idx:all scores.  `before` is found by its idx:all score,
--   whatever its status now.  `next` is the `before` of the following page; a page can
--   be short when the budget ran out first.
local status, task, limit, before = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local budget = tonumber(ARGV[5])
local max_bytes = tonumber(ARGV[6] or '') or math.huge
local out = {}
local bytes = 0
local function size(r) return #(r[3] or '') + #(r[13] or '') end

if status == 'queued' or status == 'scheduled' or status == 'processing' then
  local ids = {}
  if status == 'queued' then
    for p = 1, 3 do
      for _, id in ipairs(redis.call('LRANGE', P .. 'ready:' .. PRIO[p], 0, budget - 1)) do
        ids[#ids + 1] = id
      end
    end
    for _, k in ipairs(parked()) do
      if task == '' or k[2] == task then
        for _, id in ipairs(redis.call('LRANGE', k[3], 0, budget - 1)) do ids[#ids + 1] = id end
      end
    end
  else
    local key = P .. (status == 'scheduled' and 'sched' or 'leases')
    ids = redis.call('ZRANGE', key, 0, budget - 1)
  end
  local rows = {}
  for _, id in ipairs(ids) do
    local h = redis.call('HMGET', jkey(id), 'task', 'status')
    if h[2] == status and (task == '' or h[1] == task) then
      -- Creation order as idx:all keeps it (same-millisecond jobs in their order).
      rows[#rows + 1] = {tonumber(redis.call('ZSCORE', P .. 'idx:all', id) or '0'), id}
    end
  end
  table.sort(rows, function(a, b)
    if a[1] ~= b[1] then return a[1] > b[1] end
    return a[2] > b[2]
  end)
  local start = 1
  if before ~= '' then
    start = #rows + 1
    local bc = tonumber(redis.call('ZSCORE', P .. 'idx:all', before) or '')
    for i, row in ipairs(rows) do
      if bc and (row[1] < bc or (row[1] == bc and row[2] < before)) then start = i; break end
    end
  end
  local nxt = false
  for i = start, #rows do
    if #out >= limit or bytes > max_bytes then nxt = out[#out][1]; break end
    local r = record(rows[i][2])
    out[#out + 1] = r
    bytes = bytes + size(r)
  end
  return {out, nxt}
end

local idx = P .. 'idx:' .. (status == '' and 'all' or status)
local rank = 0
if before ~= '' then
  -- Past the cursor's own entry when this index holds it (whatever its score: one
  -- written before idx:<status> held creation orders, or left by a job since made
  -- again); else past the entries created at or after it (idx:all scores are unique).
  local r = redis.call('ZREVRANK', idx, before)
  if r then
    rank = r + 1
  else
    local bc = redis.call('ZSCORE', P .. 'idx:all', before)
    if not bc then return {out, false} end
    rank = redis.call('ZCOUNT', idx, bc, '+inf')
  end
end
-- `budget` counts the records read; entries whose record has expired (reap not there
-- yet) are dropped on the way, up to 10 times as many, and are never the next page's
-- `before` (an entry dropped from idx:all could not be found again).
local examined, dropped = 0, 0
local last = false
while #out < limit and examined < budget and dropped < 10 * budget and bytes <= max_bytes do
  local ids = redis.call('ZREVRANGE', idx, rank, rank + 99)
  if #ids == 0 then return {out, false} end
  for _, id in ipairs(ids) do
    rank = rank + 1
    local r = record(id)
    if not r[1] then
      redis.call('ZREM', idx, id)
      rank = rank - 1
      dropped = dropped + 1
    else
      examined = examined + 1
      last = id
      if (status == '' or r[5] == status) and (task == '' or r[2] == task) then
        out[#out + 1] = r
        bytes = bytes + size(r)
        if #out >= limit or bytes > max_bytes then break end
      end
    end
    if examined >= budget or dropped >= 10 * budget then break end
  end
end
-- More entries after `last`?  Then it is where the next page starts; with none read
-- (every entry met had expired), the same `before` again: those are gone now.
if #redis.call('ZREVRANGE', idx, rank, rank) == 0 then return {out, false} end
if not last and before ~= '' then last = before end
return {out, last}
