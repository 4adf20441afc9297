-- Take presence leases of one bucket, and read who is present right after each.
-- KEYS[1] the bucket's lease index (sorted set: "group client key" scored by expiry, ms),
-- KEYS[2] the bucket's groups (set of group_ids with anyone present), KEYS[3..n] the lease
-- counts (hash: client -> number of live leases) of each lease's group; all carry the
-- bucket's hash tag, so they live on one shard of a cluster
-- ARGV[1] the lease length in ms; then for each lease i (1-based): ARGV[3i - 1] the member,
-- ARGV[3i] the client_id, ARGV[3i + 1] the group_id
-- Returns, for each lease, {1 when its client just became present in the group else 0, then
-- the group's present client_ids, unsorted}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local joined = {}
for i = 1, #KEYS - 2 do
  local member, client, group = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local first = 0
  if redis.call('ZADD', KEYS[1], expiry, member) == 1 then
    if redis.call('HINCRBY', KEYS[i + 2], client, 1) == 1 then
      redis.call('SADD', KEYS[2], group)
      first = 1
    end
  end
  local present = redis.call('HKEYS', KEYS[i + 2])
  table.insert(present, 1, first)
  joined[i] = present
end
return joined
