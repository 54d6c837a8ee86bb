-- cancel(id): QUEUED or SCHEDULED -> CANCELLED now; PROCESSING -> the cancel_requested flag
-- and a `cancel_requested` event; the job id is also pushed onto the owning node's
-- `node:<owner>:cancel` list (kept 60 s), which that node BLPOPs (it acks `cancelled`).
-- ARGV: rid, events maxlen, result ttl ms (common.lua's ttls), id.
-- Reply: {code, record}: cancelled, requested (already requested: the same), missing,
--   finished (already COMPLETED, FAILED or CANCELLED: nothing changed); or {'corrupt',
--   error}: a live record whose priority or attempts are not what trioqueue writes
--   (edited by something else): nothing changed.
local rid, maxlen, ttl, id = ARGV[1], ARGV[2], ttls(ARGV[3]), ARGV[4]
local hit = cached(rid)
if hit then return {hit, record(id)} end
local key = jkey(id)
local h = redis.call('HMGET', key, 'status', 'prio', 'task', 'attempts', 'dslot', 'owner')
local status = h[1]
local code
if not status then
  code = 'missing'
elseif status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' and
    not (PRIO_OF[h[2]] and tonumber(h[4])) then
  if not PRIO_OF[h[2]] then return {'corrupt', corrupt(id, 'prio', h[2])} end
  return {'corrupt', corrupt(id, 'attempts', h[4])}
else
  local prio, task, attempt = tonumber(h[2]), h[3], tonumber(h[4])
  if status == 'queued' then
    unqueue(prio + 1, task, id)
    finish(id, 'cancelled', prio, ttl, {}, false)
    emit('cancelled', id, task, prio, 'cancelled', attempt, '')
    code = 'cancelled'
  elseif status == 'scheduled' then
    redis.call('ZREM', P .. 'sched', id)
    if h[5] then
      redis.call('HDEL', key, 'dslot')
      redis.call('HINCRBY', P .. 'room', 'delayed:' .. PRIO[prio + 1], -1)
    end
    finish(id, 'cancelled', prio, ttl, {}, false)
    emit('cancelled', id, task, prio, 'cancelled', attempt, '')
    code = 'cancelled'
  elseif status == 'processing' then
    redis.call('HSET', key, 'cancel_requested', 1)
    emit('cancel_requested', id, task, prio, 'processing', attempt, h[6])
    if h[6] and h[6] ~= '' then
      local ck = P .. 'node:' .. h[6] .. ':cancel'
      redis.call('RPUSH', ck, id)
      redis.call('LTRIM', ck, -1000, -1)
      redis.call('PEXPIRE', ck, 60000)
    end
    code = 'requested'
  else
    code = 'finished'
  end
end
flush(maxlen)
remember(rid, code)
return {code, record(id)}
