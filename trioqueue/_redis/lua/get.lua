-- get(id) -> the record (all false when there is no such job).
-- get(id, id, ...) with more than one id -> a list of such records, in the same order.
if #ARGV == 1 then return record(ARGV[1]) end
local out = {}
for i = 1, #ARGV do out[i] = record(ARGV[i]) end
return out
