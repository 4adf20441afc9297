-- Drop a presence lease.
-- KEYS[1] the lease index of the group's bucket, KEYS[2] the group's lease counts, KEYS[3]
-- the bucket's groups
-- ARGV[1] the lease member, ARGV[2] the client_id, ARGV[3] the group_id
-- Returns 1 when it was the client's last lease in the group, else 0 (also for an
-- unknown lease, such as one that expire.lua already reaped and reported).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) > 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[3])
end
return 1
