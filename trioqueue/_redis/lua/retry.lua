-- retry(id): FAILED or CANCELLED -> QUEUED at the back of its priority with a fresh set of
-- attempts, if its priority has room (its queued jobs, ready and parked, under the
-- capacity).
-- ARGV: rid, events maxlen, capacity, id.
-- Reply: {code, record}: requeued, full, missing, invalid (any other status); or
--   {'corrupt', error}: its priority is not what trioqueue writes: nothing changed.
local rid, maxlen, capacity, id = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local hit = cached(rid)
if hit then return {hit, record(id)} end
local key = jkey(id)
local h = redis.call('HMGET', key, 'status', 'prio', 'task')
local status = h[1]
local code
if not status then
  code = 'missing'
elseif status ~= 'failed' and status ~= 'cancelled' then
  code = 'invalid'
elseif not PRIO_OF[h[2]] then
  return {'corrupt', corrupt(id, 'prio', h[2])}
else
  local prio, task = tonumber(h[2]), h[3]
  local list = P .. 'ready:' .. PRIO[prio + 1]
  if queued_lengths()[prio + 1] >= capacity then
    code = 'full'
  else
    redis.call('PERSIST', key)
    redis.call('ZREM', P .. 'idx:' .. status, id)
    redis.call('ZREM', P .. 'ended:' .. status, id)
    redis.call('HSET', key, 'status', 'queued', 'attempts', 0)
    redis.call('HDEL', key, 'finished_at', 'scheduled_for', 'result', 'started_at',
      'cancel_requested', 'progress', 'orphaned')
    redis.call('RPUSH', list, id)
    emit('requeued', id, task, prio, 'queued', 0, '')
    wake(1)
    code = 'requeued'
  end
end
flush(maxlen)
remember(rid, code)
return {code, record(id)}
