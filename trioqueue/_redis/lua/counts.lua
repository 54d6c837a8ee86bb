-- counts(max age ms) -> {queued high, medium, low, scheduled, processing, {stats...},
--   {room...}, {node, info JSON, ...}}: the nodes are those whose last heartbeat is at most
--   max age old (none when it is absent or 0).
local q = {}
for p = 1, 3 do q[p] = redis.call('LLEN', P .. 'ready:' .. PRIO[p]) end
local nodes = {}
local age = tonumber(ARGV[1] or '0') or 0
if age > 0 then
  local live = redis.call('ZRANGEBYSCORE', P .. 'beats', now_ms - age, '+inf')
  for _, node in ipairs(live) do
    nodes[#nodes + 1] = node
    nodes[#nodes + 1] = redis.call('HGET', P .. 'nodes', node) or '{}'
  end
end
return {q[1], q[2], q[3], redis.call('ZCARD', P .. 'sched'), redis.call('ZCARD', P .. 'leases'),
  redis.call('HGETALL', P .. 'stats'), redis.call('HGETALL', P .. 'room'), nodes}
