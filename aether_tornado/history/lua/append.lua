-- Record a message in its stream and publish it, in one step, so that the live copy and the
-- recorded one share a position.
-- KEYS[1] the stream, KEYS[2] its counter (a hash: epoch, offset, and the replication ID of the
-- master that counts)
-- ARGV[1] channel, ARGV[2] what precedes the position in the published copy (publisher, time),
-- ARGV[3] the message, ARGV[4] entries kept, ARGV[5] milliseconds kept, ARGV[6] milliseconds the counter
-- outlives its last use, ARGV[7] the epoch to take if the counter is new, ARGV[8] PUBLISH, or
-- SPUBLISH on a cluster (the channel shares the stream's hash tag, so its slot), ARGV[9] the
-- replication ID of this master
-- Returns {epoch, offset, subscribers that received the published copy}.
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'replid')
local epoch = meta[1]
if not epoch or meta[2] ~= ARGV[9] then
  -- A new counter, or one another master kept: a replica that took over after a failover may
  -- lack the last messages, and counting on would give their offsets to new ones.
  epoch = ARGV[7]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'replid', ARGV[9], 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local now = redis.call('TIME')
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], offset .. '-0', 't', now[1] .. string.format('%06d', now[2]), 'm', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local receivers = redis.call(ARGV[8], ARGV[1], ARGV[2] .. '@' .. epoch .. ':' .. offset .. ' ' .. ARGV[3])
return {epoch, offset, receivers}
