-- A page of a stream's last messages within the window, newest first, read a few at a time so
-- that a script stops near its byte limit whatever the messages' sizes.
-- KEYS[1] the stream, KEYS[2] its counter
-- ARGV[1] the most messages, ARGV[2] the most bytes (one message always fits), ARGV[3] messages
-- per read, ARGV[4] the offset to read before ('' for the newest), ARGV[5] the epoch that offset
-- is of ('' for any), ARGV[6] seconds a message stays recoverable
-- Returns {epoch, 1 if older messages within the window remain else 0, entries}, or {} for a
-- stream that has no counter.
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  return {}
end
if ARGV[5] ~= '' and ARGV[5] ~= epoch then
  return {epoch, 0, {}}
end
local time = redis.call('TIME')
local oldest = (tonumber(time[1]) - tonumber(ARGV[6])) * 1000000 + tonumber(time[2])
local most, limit, per = tonumber(ARGV[2]), tonumber(ARGV[1]), tonumber(ARGV[3])
local from = ARGV[4] == '' and '+' or '(' .. ARGV[4] .. '-0'
local taken, bytes = {}, 0
while true do
  local page = redis.call('XREVRANGE', KEYS[1], from, '-', 'COUNT', per)
  for _, entry in ipairs(page) do
    if tonumber(entry[2][2]) < oldest then
      return {epoch, 0, taken}
    end
    local size = #entry[2][#entry[2]]
    if #taken == limit or (#taken > 0 and bytes + size > most) then
      return {epoch, 1, taken}
    end
    bytes = bytes + size
    taken[#taken + 1] = entry
  end
  if #page < per then
    return {epoch, 0, taken}
  end
  from = '(' .. page[#page][1]
end
