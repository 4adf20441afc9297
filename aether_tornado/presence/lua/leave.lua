-- Drop a presence lease.
-- KEYS[1] the lease index of the group's bucket, KEYS[2] the group's lease counts
-- ARGV[1] the lease member, ARGV[2] the client_id
-- Returns 1 when it was the client's last lease in the group, else 0 (also for an
-- unknown lease, such as one that expire.lua already reaped and reported).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) > 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
