-- counts(max age ms) -> counts_reply (common.lua): the nodes are those whose last heartbeat
--   is at most max age old (none when it is absent or 0).
return counts_reply(tonumber(ARGV[1] or '0') or 0)
