-- renew(node, held, lease): extend the leases this node still holds.
-- ARGV: node, lease ms, held: a JSON array of [id, fence] (strings).
-- Reply: {{lost id, ...}, {id whose cancellation was requested, ...}}.  A job is lost when
--   it is no longer PROCESSING under this node and fence (reaped, or finished elsewhere):
--   the node must stop running it, its result would be refused.
local node = ARGV[1]
local deadline = now_ms + tonumber(ARGV[2])
local lost, cancel = {}, {}
for _, held in ipairs(cjson.decode(ARGV[3])) do
  local id, fence = held[1], held[2]
  local h = redis.call('HMGET', jkey(id), 'status', 'fence', 'owner', 'cancel_requested')
  if h[1] == 'processing' and h[2] == fence and h[3] == node then
    redis.call('ZADD', P .. 'leases', 'XX', deadline, id)
    if h[4] then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancel}
