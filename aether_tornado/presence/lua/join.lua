-- Take presence leases, in order, and read who is present right after each.
-- For each lease i (1-based): KEYS[3i - 2] its bucket's lease index (sorted set: "group client
-- key" scored by expiry, ms), KEYS[3i - 1] its bucket's groups (set of group_ids with anyone
-- present), KEYS[3i] its group's lease counts (hash: client -> number of live leases). On a
-- cluster the leases of one call share a bucket, whose hash tag puts its keys on one shard;
-- one Redis takes leases of any buckets together.
-- ARGV[1] the lease length in ms; then for each lease i: ARGV[3i - 1] the member,
-- ARGV[3i] the client_id, ARGV[3i + 1] the group_id
-- Returns, for each lease, {1 when its client just became present in the group else 0, then
-- the group's present client_ids, unsorted}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local joined = {}
for i = 1, #KEYS / 3 do
  local leases, groups, counts = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local member, client, group = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local first = 0
  if redis.call('ZADD', leases, expiry, member) == 1 then
    if redis.call('HINCRBY', counts, client, 1) == 1 then
      redis.call('SADD', groups, group)
      first = 1
    end
  end
  local present = redis.call('HKEYS', counts)
  table.insert(present, 1, first)
  joined[i] = present
end
return joined
