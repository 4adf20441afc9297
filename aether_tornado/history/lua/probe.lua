-- What a client missed in one stream since the position it presents, told without reading it:
-- the first missing message is looked up by its offset, and the bytes of everything after it
-- follow from the counter. What a script costs Redis does not grow with the stream.
-- KEYS[1] the stream, KEYS[2] its counter (see append.lua)
-- ARGV[1] the client's epoch ('' for none), ARGV[2] its offset, ARGV[3] how old a missed
-- message may be (seconds), ARGV[4] milliseconds the counter outlives its last use, ARGV[5] the
-- epoch to take if the counter is new (or another master's, as in append.lua), ARGV[6] the
-- replication ID of this master
-- Returns {epoch, top offset, time of the probe (microseconds), bytes of the messages missed},
-- the bytes -1 when not every missed message is there to replay.
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'replid', 'offset', 'bytes')
local epoch = meta[1]
if not epoch or meta[2] ~= ARGV[6] then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'replid', ARGV[6], 'offset', 0, 'bytes', 0)
  meta = {epoch, ARGV[6], '0', '0'}
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local top = tonumber(meta[3])
local time = redis.call('TIME')
local read = time[1] .. string.format('%06d', time[2])
local since = tonumber(ARGV[2])
if epoch ~= ARGV[1] or since > top then
  return {epoch, top, read, -1}
end
if since == top then
  return {epoch, top, read, 0}
end
local first = redis.call('XRANGE', KEYS[1], (since + 1) .. '-0', (since + 1) .. '-0')
if #first == 0 or first[1][2][3] ~= 'c' then
  return {epoch, top, read, -1}  -- trimmed, expired, or recorded before streams counted bytes
end
local oldest = (tonumber(time[1]) - tonumber(ARGV[3])) * 1000000 + tonumber(time[2])
if tonumber(first[1][2][2]) < oldest then
  return {epoch, top, read, -1}
end
return {epoch, top, read, tonumber(meta[4]) - tonumber(first[1][2][4])}
