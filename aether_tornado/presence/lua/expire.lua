-- Reap the overdue leases of one bucket; atomic, so each end of presence is reported once.
-- KEYS[1] the bucket's lease index, KEYS[2] the bucket's groups
-- ARGV[1] the key prefix of the bucket's groups' lease counts (they share its hash tag, so
-- its shard), ARGV[2] the most leases to reap
-- Returns the number of leases reaped, then group, client, group, client, ... for each
-- client that left.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local overdue = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local ended = {#overdue}
for _, member in ipairs(overdue) do
  redis.call('ZREM', KEYS[1], member)
  local group, client = string.match(member, '^(%S+) (%S+) ')
  local counts = ARGV[1] .. group
  if redis.call('HINCRBY', counts, client, -1) <= 0 then
    redis.call('HDEL', counts, client)
    if redis.call('EXISTS', counts) == 0 then
      redis.call('SREM', KEYS[2], group)
    end
    table.insert(ended, group)
    table.insert(ended, client)
  end
end
return ended
