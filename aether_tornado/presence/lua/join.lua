-- Take a presence lease, and read who is present right after.
-- KEYS[1] the lease index of the group's bucket (sorted set: "group client key" scored by
-- expiry, ms), KEYS[2] the group's lease counts (hash: client -> number of live leases),
-- KEYS[3] the bucket's groups (set of group_ids with anyone present); all carry the bucket's
-- hash tag, so they live on one shard of a cluster
-- ARGV[1] the lease member, ARGV[2] the client_id, ARGV[3] the lease length in ms, ARGV[4]
-- the group_id
-- Returns 1 when the client just became present in the group, else 0; then the group's
-- present client_ids, unsorted.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local first = 0
if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
    redis.call('SADD', KEYS[3], ARGV[4])
    first = 1
  end
end
local joined = redis.call('HKEYS', KEYS[2])
table.insert(joined, 1, first)
return joined
