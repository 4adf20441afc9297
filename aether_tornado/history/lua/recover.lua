-- What a client missed in one stream since the position it presents.
-- KEYS[1] the stream, KEYS[2] its counter
-- ARGV[1] the client's epoch ('' for none), ARGV[2] its offset, ARGV[3] how old a missed
-- message may be (seconds), ARGV[4] the most bytes to return, ARGV[5] milliseconds the
-- counter outlives its last use, ARGV[6] the epoch to take if the counter is new (or another
-- master's, as in append.lua), ARGV[7] the replication ID of this master
-- Returns {epoch, top offset, time of the read (microseconds), entries} when every missed message
-- is there, else {epoch, top offset, time of the read}.
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'replid')
local epoch = meta[1]
if not epoch or meta[2] ~= ARGV[7] then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'replid', ARGV[7], 'offset', 0)
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local top = tonumber(redis.call('HGET', KEYS[2], 'offset'))
local now = redis.call('TIME')
local read = now[1] .. string.format('%06d', now[2])
local since = tonumber(ARGV[2])
if epoch ~= ARGV[1] or since > top then
  return {epoch, top, read}
end
if since == top then
  return {epoch, top, read, {}}
end
local entries = redis.call('XRANGE', KEYS[1], (since + 1) .. '-0', '+')
if #entries ~= top - since or entries[1][1] ~= (since + 1) .. '-0' then
  return {epoch, top, read}  -- trimmed, or the stream expired
end
local bytes = 0
for _, entry in ipairs(entries) do
  bytes = bytes + #entry[2][4]
end
local oldest = (tonumber(now[1]) - tonumber(ARGV[3])) * 1000000 + tonumber(now[2])
if tonumber(entries[1][2][2]) < oldest or bytes > tonumber(ARGV[4]) then
  return {epoch, top, read}
end
return {epoch, top, read, entries}
