-- The node registry: `nodes` (node -> info JSON) and `beats` (node -> last heartbeat ms).
-- ARGV: op, then per op:
--   beat, node, info JSON, forget ms -> heartbeat time (ms); the entries of nodes silent
--                                  for `forget` ms go (a killed node never removes its own)
--   list, max age ms            -> {node, heartbeat, info, ...} of nodes seen within max age;
--                                  entries silent for 100x max age are dropped
--   remove, node                -> 1 if it was registered (its ctl and cancel lists are deleted too)
--   stop, node                  -> push 'stop' to the node's ctl list (kept 60 s): its
--                                  fetcher leaves its BLPOP at once
--   work, node                  -> the same with 'work' (a limited task has room again)
--   read, node, ttl ms, types   -> Redis' time (ms); events of `types` ('*': all, or
--                                  'completed,failed,...') are written for the next ttl ms
--                                  at least (`readers`: node -> until when, `readers:types`:
--                                  node -> types; lapsed ones dropped)
--   unread, node                -> 1 if the node was reading (events stop once nobody is)
--   marks                       -> {task, due ms, ...}: each periodic task's latest
--                                  enqueued due time (`periodic`, kept without expiry)
--   mark, task, due ms          -> 1 if it moved the task's mark on (never back)
local op = ARGV[1]
if op == 'marks' then
  return redis.call('HGETALL', P .. 'periodic')
elseif op == 'mark' then
  local old = tonumber(redis.call('HGET', P .. 'periodic', ARGV[2]) or '')
  if old and old >= tonumber(ARGV[3]) then return 0 end
  redis.call('HSET', P .. 'periodic', ARGV[2], ARGV[3])
  return 1
end
if op == 'beat' then
  local forget = tonumber(ARGV[4] or '')
  if forget then
    local dead = redis.call('ZRANGEBYSCORE', P .. 'beats', '-inf', '(' .. int(now_ms - forget),
      'LIMIT', 0, 100)
    if #dead > 0 then
      redis.call('ZREM', P .. 'beats', unpack(dead))
      redis.call('HDEL', P .. 'nodes', unpack(dead))
    end
  end
  redis.call('HSET', P .. 'nodes', ARGV[2], ARGV[3])
  redis.call('ZADD', P .. 'beats', now_ms, ARGV[2])
  return now_ms
elseif op == 'list' then
  local age = tonumber(ARGV[2])
  local dead = redis.call('ZRANGEBYSCORE', P .. 'beats', '-inf', '(' .. (now_ms - 100 * age))
  for _, node in ipairs(dead) do
    redis.call('ZREM', P .. 'beats', node)
    redis.call('HDEL', P .. 'nodes', node)
  end
  local live = redis.call('ZRANGEBYSCORE', P .. 'beats', now_ms - age, '+inf', 'WITHSCORES')
  local out = {}
  for i = 1, #live, 2 do
    out[#out + 1] = live[i]
    out[#out + 1] = tonumber(live[i + 1])
    out[#out + 1] = redis.call('HGET', P .. 'nodes', live[i]) or '{}'
  end
  return out
elseif op == 'remove' then
  redis.call('ZREM', P .. 'beats', ARGV[2])
  redis.call('ZREM', P .. 'readers', ARGV[2])
  redis.call('HDEL', P .. 'readers:types', ARGV[2])
  redis.call('DEL', P .. 'node:' .. ARGV[2] .. ':ctl', P .. 'node:' .. ARGV[2] .. ':cancel')
  return redis.call('HDEL', P .. 'nodes', ARGV[2])
elseif op == 'stop' or op == 'work' then
  local ctl = P .. 'node:' .. ARGV[2] .. ':ctl'
  redis.call('RPUSH', ctl, op)
  redis.call('PEXPIRE', ctl, 60000)
  return 1
elseif op == 'read' then
  local lapsed = redis.call('ZRANGEBYSCORE', P .. 'readers', '-inf', '(' .. NOW)
  if #lapsed > 0 then
    redis.call('ZREM', P .. 'readers', unpack(lapsed))
    redis.call('HDEL', P .. 'readers:types', unpack(lapsed))
  end
  redis.call('ZADD', P .. 'readers', int(now_ms + tonumber(ARGV[3])), ARGV[2])
  redis.call('HSET', P .. 'readers:types', ARGV[2], ARGV[4] or '*')
  return now_ms
elseif op == 'unread' then
  redis.call('HDEL', P .. 'readers:types', ARGV[2])
  return redis.call('ZREM', P .. 'readers', ARGV[2])
end
return redis.error_reply('nodes: unknown op ' .. tostring(op))
