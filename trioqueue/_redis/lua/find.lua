-- find(max age ms, id, ...) -> {{record, ...}, counts}: get.lua's record of each id (all
-- false when there is no such job), in order, and counts.lua's reply as of the same moment,
-- so that a node's metrics after a lookup are at least as new as what the lookup showed,
-- in one round trip.
local out = {}
for i = 2, #ARGV do out[i - 1] = record(ARGV[i]) end
return {out, counts_reply(tonumber(ARGV[1]) or 0)}
