-- List groups of one bucket whose group_id starts with a prefix, with how many are present.
-- KEYS[1] the bucket's groups
-- ARGV[1] the key prefix of the bucket's groups' lease counts, ARGV[2] a SSCAN MATCH pattern,
-- ARGV[3] the most groups to return
-- Returns the number of groups in the bucket, then group, count, group, count, ... A group
-- nobody is in any more (one a process of an older version left last) is dropped here.
local found = {redis.call('SCARD', KEYS[1])}
local limit = tonumber(ARGV[3])
local cursor = '0'
repeat
  local page = redis.call('SSCAN', KEYS[1], cursor, 'MATCH', ARGV[2], 'COUNT', 1000)
  cursor = page[1]
  for _, group in ipairs(page[2]) do
    if #found < 2 * limit + 1 then
      local present = redis.call('HLEN', ARGV[1] .. group)
      if present == 0 then
        redis.call('SREM', KEYS[1], group)
      else
        table.insert(found, group)
        table.insert(found, present)
      end
    end
  end
until cursor == '0' or #found >= 2 * limit + 1
return found
