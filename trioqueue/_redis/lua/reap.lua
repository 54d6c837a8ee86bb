-- reap(max_n): requeue the jobs whose lease expired (their node died or stalled), and
-- trim the terminal indexes of records that have expired.
-- ARGV: events maxlen, result ttl ms (common.lua's ttls), max_n, trim_n (index entries
--   dropped per status), unstarted_max (default 5).
-- Reply: {{requeued id, ...}, {failed id, ...}, {cancelled id, ...}, {id, ...}: those of
--   the requeued that came back unstarted, behind: 1 when an index had trim_n expired
--   entries or more (the caller reaps again soon), else 0}.
-- Fence+1 makes the old owner's late ack and renew fail.  A requeued job goes to the FRONT
-- of its priority, or of its task's parked list where there is one (it was admitted
-- already: no capacity check), its attempt counted; those of one call keep the order of
-- their lease deadlines (equal ones, as of one claim, by id), the first taken first.  A
-- job that used all its attempts this way ends FAILED: the poison-job guard.  A job whose
-- cancellation was requested ends CANCELLED.
-- A job its node had marked held under this claim (`held`: id -> fence; claimed, not
-- started: a prefetch buffer, a limited task's line) comes back unstarted instead: its
-- attempt taken back, as a node's own `unstarted` does, and its `orphaned` count + 1.  At
-- most unstarted_max times: a job started just before its node died can still look held
-- (its "started" had not reached Redis), and a job that kills its node as it starts
-- must not come back for ever; past that its attempt counts as any other's.
local maxlen = ARGV[1]
local ttl = ttls(ARGV[2])
local max_n = tonumber(ARGV[3])
local trim_n = tonumber(ARGV[4])
local unstarted_max = tonumber(ARGV[5] or '5')
local HELD = P .. 'held'
local requeued, failed, cancelled, unstarted = {}, {}, {}, {}
local n_woken = 0
-- Back to the FRONT of its queue as QUEUED (pushed with the others at the end: common.lua's
-- put_front), a `recovered` event.
local function requeue(id, key, prio, task, attempt, owner)
  redis.call('HSET', key, 'status', 'queued')
  redis.call('HDEL', key, 'started_at')
  put_front(prio, task, id)
  count('recovered', prio)
  n_woken = n_woken + 1
  emit('recovered', id, task, prio, 'queued', attempt, owner)
  requeued[#requeued + 1] = id
end
local expired = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now_ms, 'LIMIT', 0, max_n)
for _, id in ipairs(expired) do
  redis.call('ZREM', P .. 'leases', id)
  local key = jkey(id)
  local h = redis.call('HMGET', key, 'status', 'prio', 'task', 'attempts', 'max_retries',
    'owner', 'cancel_requested', 'fence', 'orphaned')
  local mark = redis.call('HGET', HELD, id)
  if mark then redis.call('HDEL', HELD, id) end
  if h[1] == 'processing' then
    local prio, task, attempt = PRIO_OF[h[2]], h[3], tonumber(h[4])
    local max_retries = tonumber(h[5])
    if not (prio and attempt and max_retries) or (h[8] and not tonumber(h[8])) then
      -- Edited since its claim (by something else): it can be neither requeued nor
      -- counted as it was; it ends FAILED (counted as medium if its prio is the fault).
      local err = "CorruptRecord: job '" .. id .. "': its lease expired and its record " ..
        'cannot be requeued (prio, attempts, max_retries or fence not a number)'
      prio = prio or 1
      redis.call('HSET', key, 'fence', '0')
      finish(id, 'failed', prio, ttl, {'error', err, 'traceback', ''}, false)
      emit('failed', id, task or '', prio, 'failed', attempt or 0, h[6] or '',
        {'error', err})
      failed[#failed + 1] = id
    else
      redis.call('HINCRBY', key, 'fence', 1)
      local orphaned = tonumber(h[9]) or 0
      if h[7] then
        finish(id, 'cancelled', prio, ttl, {}, true)
        count('recovered', prio)
        emit('cancelled', id, task, prio, 'cancelled', attempt, h[6])
        cancelled[#cancelled + 1] = id
      elseif mark and mark == h[8] and orphaned < unstarted_max then
        -- Claimed and held, never started (as far as Redis knows): back uncounted.
        if attempt > 0 then attempt = attempt - 1 end
        redis.call('HSET', key, 'attempts', int(attempt), 'orphaned', int(orphaned + 1))
        requeue(id, key, prio, task, attempt, h[6])
        unstarted[#unstarted + 1] = id
      elseif attempt >= max_retries + 1 then
        local err = 'LeaseExpired: lease expired (worker lost) during attempt ' .. attempt ..
          ' (max_retries=' .. max_retries .. ')'
        if orphaned > 0 then
          err = err .. '; it had come back unstarted from ' .. orphaned .. ' lost node' ..
            (orphaned > 1 and 's' or '') .. ' before'
        end
        finish(id, 'failed', prio, ttl, {'error', err, 'traceback', ''}, false)
        count('recovered', prio)
        emit('failed', id, task, prio, 'failed', attempt, h[6], {'error', err})
        failed[#failed + 1] = id
      else
        requeue(id, key, prio, task, attempt, h[6])
      end
    end
  end
end
push_fronts()
-- Terminal records expire by themselves; drop their index entries once they have.  A
-- record still there in its old status, its expiry at most a second away, is the one
-- that expires: its expiry was set a moment after the time its entry holds, and it goes
-- now, with its idx:all entry, which nothing would drop once it had gone by itself.  (A
-- job made again under its id and finished since has moved its ended: entry past the
-- cutoff; one kept longer, by a node with a longer TTL, keeps its record and idx:all
-- entry.)
local behind = 0
for _, status in ipairs({'completed', 'failed', 'cancelled'}) do
  local idx, ended = P .. 'idx:' .. status, P .. 'ended:' .. status
  -- Entries written before ended:<status> existed held the finish time (ms, below any
  -- creation order, which is ms x 1000): the finish time moves to ended:, and the entry
  -- takes its job's creation order (or goes, with no idx:all entry to take it from).
  local legacy = redis.call('ZRANGEBYSCORE', idx, '-inf', '(1e14', 'WITHSCORES', 'LIMIT', 0,
    trim_n)
  for i = 1, #legacy, 2 do
    local id = legacy[i]
    redis.call('ZADD', ended, legacy[i + 1], id)
    local made = redis.call('ZSCORE', P .. 'idx:all', id)
    if made then redis.call('ZADD', idx, made, id) else redis.call('ZREM', idx, id) end
  end
  if #legacy >= 2 * trim_n then behind = 1 end
  local cutoff = now_ms - ttl[status]
  local old = redis.call('ZRANGEBYSCORE', ended, '-inf', '(' .. int(cutoff), 'LIMIT', 0,
    trim_n)
  for _, id in ipairs(old) do
    redis.call('ZREM', ended, id)
    redis.call('ZREM', idx, id)
    local key = jkey(id)
    local left = redis.call('PTTL', key)
    if left >= 0 and left <= 1000 and redis.call('HGET', key, 'status') == status then
      redis.call('DEL', key)
      left = -2
    end
    if left == -2 then redis.call('ZREM', P .. 'idx:all', id) end
  end
  -- A held mark left behind (a node's late mark of a job reaped meanwhile) goes with it.
  if #old > 0 then redis.call('HDEL', HELD, unpack(old)) end
  if #old >= trim_n then behind = 1 end
end
wake(n_woken)
flush(maxlen)
return {requeued, failed, cancelled, unstarted, behind}
