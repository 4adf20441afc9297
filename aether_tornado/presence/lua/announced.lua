-- The announcements of the processes that are up: those whose last one has not run out.
-- KEYS[1] the processes' announcements, KEYS[2] when each runs out
-- Returns the announcements, in no particular order.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local up = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')
if #up == 0 then
  return {}
end
local found = {}
for _, announcement in ipairs(redis.call('HMGET', KEYS[1], unpack(up))) do
  if announcement then
    table.insert(found, announcement)
  end
end
return found
