-- Record a message in its stream and publish it, in one step, so that the live copy and the
-- recorded one share a position.
-- KEYS[1] the stream, KEYS[2] its counter (a hash: epoch, the last offset, the bytes recorded
-- in this epoch, the replication ID of the master that counts, and two age marks), KEYS[3] the
-- recipient's presence index when the message is a direct one (else KEYS[2] again)
-- ARGV[1] channel, ARGV[2] what precedes the position in the published copy (publisher, time),
-- ARGV[3] the message, ARGV[4] entries kept, ARGV[5] milliseconds kept, ARGV[6] milliseconds the
-- counter outlives its last use, ARGV[7] the epoch to take if the counter is new, ARGV[8] PUBLISH,
-- or SPUBLISH on a cluster (the channel shares the stream's hash tag, so its slot), ARGV[9] the
-- replication ID of this master, ARGV[10] seconds a message stays recoverable
-- Returns {epoch, offset, subscribers that received the published copy}; {'', 0, subscribers}
-- when a direct message was only published: nobody is present under that client_id and its
-- stream is unused, so nobody could ever recover it and Redis keeps nothing for it.
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'replid', 'offset', 'bytes', 'at', 'ao', 'bt', 'bo')
local epoch = meta[1]
if not epoch and KEYS[3] ~= KEYS[2] and redis.call('EXISTS', KEYS[3]) == 0 then
  return {'', 0, redis.call(ARGV[8], ARGV[1], ARGV[2] .. ARGV[3])}
end
if not epoch or meta[2] ~= ARGV[9] then
  -- A new counter, or one another master kept: a replica that took over after a failover may
  -- lack the last messages, and counting on would give their offsets to new ones.
  epoch = ARGV[7]
  redis.call('DEL', KEYS[1], KEYS[2])
  meta = {epoch, ARGV[9], '0', '0', false, false, false, false}
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'replid', ARGV[9])
end
local offset = (tonumber(meta[3]) or 0) + 1
local before = tonumber(meta[4]) or 0
local time = redis.call('TIME')
local now = tonumber(time[1])
-- Age marks, half a window apart: (when, the first offset recorded then). Every message before
-- the older mark is older than the window once that mark is: it is trimmed, so a stream holds
-- no message older than two windows, however few come.
local window = tonumber(ARGV[10])
if not meta[7] or now - tonumber(meta[7]) >= window / 2 then
  if meta[5] and now - tonumber(meta[5]) >= window then
    redis.call('XTRIM', KEYS[1], 'MINID', meta[6] .. '-0')
  end
  redis.call('HSET', KEYS[2], 'at', meta[7] or now, 'ao', meta[8] or offset, 'bt', now, 'bo', offset)
end
redis.call('HSET', KEYS[2], 'offset', offset, 'bytes', before + #ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], offset .. '-0',
  't', time[1] .. string.format('%06d', time[2]), 'c', before, 'm', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local receivers = redis.call(ARGV[8], ARGV[1], ARGV[2] .. '@' .. epoch .. ':' .. offset .. ' ' .. ARGV[3])
return {epoch, offset, receivers}
