-- Extend leases of one bucket; re-create those that were already reaped.
-- KEYS[1] the bucket's lease index, KEYS[2] the bucket's groups, KEYS[3..n] the lease counts
-- of each lease's group (all in the bucket)
-- ARGV[1] the lease length in ms; then for each lease i (1-based): ARGV[2i] the member,
-- ARGV[2i+1] the client_id
-- Returns the indexes (1-based) of leases that made their client present again.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local back = {}
for i = 1, #KEYS - 2 do
  local member, client = ARGV[2 * i], ARGV[2 * i + 1]
  if redis.call('ZADD', KEYS[1], expiry, member) == 1 then
    if redis.call('HINCRBY', KEYS[i + 2], client, 1) == 1 then
      redis.call('SADD', KEYS[2], string.match(member, '^(%S+) '))
      table.insert(back, i)
    end
  end
end
return back
