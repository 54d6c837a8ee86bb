-- counts() -> {queued high, medium, low, scheduled, processing, {stats...}, {room...}}
local q = {}
for p = 1, 3 do q[p] = redis.call('LLEN', P .. 'ready:' .. PRIO[p]) end
return {q[1], q[2], q[3], redis.call('ZCARD', P .. 'sched'), redis.call('ZCARD', P .. 'leases'),
  redis.call('HGETALL', P .. 'stats'), redis.call('HGETALL', P .. 'room')}
