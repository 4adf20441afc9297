-- A process says it is up, and what it holds; processes that stopped saying so are forgotten.
-- KEYS[1] the processes' announcements (hash: node_id -> JSON), KEYS[2] when each runs out
-- (sorted set: node_id scored by expiry, ms of Redis's clock)
-- ARGV[1] the node_id, ARGV[2] its announcement, ARGV[3] how long it holds, in ms
-- Returns the node_ids of the processes that are up, this one included.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], gone)
  redis.call('ZREM', KEYS[2], gone)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
return redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')
