-- get(id) -> the record (all false when there is no such job).
return record(ARGV[1])
