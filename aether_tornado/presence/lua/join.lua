-- Take presence leases, in order, and read who is present right after each.
-- For each lease i (1-based), ARGV[2] keys: its bucket's lease index (sorted set: "group client
-- key" scored by expiry, ms), its bucket's groups (set of group_ids with anyone present), its
-- group's lease counts (hash: client -> number of live leases), and on one Redis its client's
-- index (sorted set: lease keys scored by expiry on the processes' clock). On a cluster the
-- leases of one call share a bucket, whose hash tag puts its keys on one shard, and the
-- clients' indexes, on their own shards, are written apart; one Redis takes it all at once.
-- ARGV[1] the lease length in ms, ARGV[2] keys per lease (3, or 4 with the client's index),
-- ARGV[3] the expiry to give in the clients' indexes; then for each lease i: ARGV[4i] the
-- member, ARGV[4i + 1] the client_id, ARGV[4i + 2] the group_id, ARGV[4i + 3] the lease key
-- Returns, for each lease, {1 when its client just became present in the group else 0, then
-- the group's present client_ids, unsorted}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local joined = {}
for i = 1, #KEYS / per do
  local at = per * (i - 1)
  local leases, groups, counts = KEYS[at + 1], KEYS[at + 2], KEYS[at + 3]
  local member, client, group = ARGV[4 * i], ARGV[4 * i + 1], ARGV[4 * i + 2]
  local first = 0
  if redis.call('ZADD', leases, expiry, member) == 1 then
    if redis.call('HINCRBY', counts, client, 1) == 1 then
      redis.call('SADD', groups, group)
      first = 1
    end
  end
  if per == 4 then
    redis.call('ZADD', KEYS[at + 4], ARGV[3], ARGV[4 * i + 3])
    redis.call('PEXPIRE', KEYS[at + 4], ARGV[1])
  end
  local present = redis.call('HKEYS', counts)
  table.insert(present, 1, first)
  joined[i] = present
end
return joined
