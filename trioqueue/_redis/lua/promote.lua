-- promote(max_n): move due SCHEDULED jobs (delays, retry backoff) into their ready lists,
-- full or not: a job accepted already is never refused, and new jobs find its priority
-- full until it drains below the capacity (as in the engine).  Safe from every node at once.
-- ARGV: events maxlen, max_n, result ttl ms (common.lua's ttls).
-- Reply: {promoted, next due ms or false}: `next due` is the earliest entry not due yet.
local maxlen = ARGV[1]
local max_n = tonumber(ARGV[2])
local ttl = ttls(ARGV[3])
local moved = {{}, {}, {}}
local promoted = 0
local due = redis.call('ZRANGEBYSCORE', P .. 'sched', '-inf', now_ms, 'LIMIT', 0, max_n)
for _, id in ipairs(due) do
  local key = jkey(id)
  local h = redis.call('HMGET', key, 'status', 'prio', 'task', 'attempts', 'dslot')
  if h[1] ~= 'scheduled' then
    redis.call('ZREM', P .. 'sched', id) -- a left-over: the job moved on
  elseif not PRIO_OF[h[2]] then
    -- Its priority edited (by something else): it has no ready list to go to, and
    -- stopping here would leave the jobs moved before it in no list at all.  (A delayed
    -- slot it held stays counted: which priority's is what cannot be read.)
    local err = corrupt(id, 'prio', h[2])
    redis.call('ZREM', P .. 'sched', id)
    if h[5] then redis.call('HDEL', key, 'dslot') end
    finish(id, 'failed', 1, ttl, {'error', err, 'traceback', ''}, false)
    emit('failed', id, h[3] or '', 1, 'failed', tonumber(h[4]) or 0, '', {'error', err})
  else
    local p = tonumber(h[2]) + 1
    redis.call('ZREM', P .. 'sched', id)
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'scheduled_for')
    if h[5] then
      redis.call('HDEL', key, 'dslot')
      redis.call('HINCRBY', P .. 'room', 'delayed:' .. PRIO[p], -1)
    end
    moved[p][#moved[p] + 1] = id
    promoted = promoted + 1
    emit('enqueued', id, h[3], p - 1, 'queued', tonumber(h[4]), '')
  end
end
for p = 1, 3 do
  if #moved[p] > 0 then redis.call('RPUSH', P .. 'ready:' .. PRIO[p], unpack(moved[p])) end
end
-- A queue written by a version that left due jobs in 'sched' while their list was full
-- kept their count here, which enqueue no longer reads: drop it (nothing is written when
-- the fields are gone, so a promote on an idle queue writes no key at all).
redis.call('HDEL', P .. 'room', 'blocked:high', 'blocked:medium', 'blocked:low')
local nxt = redis.call('ZRANGEBYSCORE', P .. 'sched', '(' .. now_ms, '+inf', 'WITHSCORES',
  'LIMIT', 0, 1)
wake(promoted)
flush(maxlen)
local next_due = false
if nxt[2] then next_due = tonumber(nxt[2]) end
return {promoted, next_due}
