-- A stream's last messages, newest first, with its epoch and Redis's time (microseconds).
-- KEYS[1] the stream, KEYS[2] its counter; ARGV[1] how many
-- Returns {epoch, time, entries}, or {} for a stream that has no counter.
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  return {}
end
local now = redis.call('TIME')
return {epoch, now[1] .. string.format('%06d', now[2]), redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[1])}
