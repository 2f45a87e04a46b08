"""The Lua scripts of the Redis stores.

Each store operation that reads then writes is one script, so it is atomic on the server (a script
runs alone) and costs one round trip. They run through redis-py's `register_script` (EVALSHA, and
EVAL + SCRIPT LOAD once when the server does not know the script yet, e.g. after a restart): the
same speed as Redis 7 functions (research/infra.md section 2) without a `FUNCTION LOAD` to repeat
on every server start. Scripts see RESP2 replies whatever the client negotiated, so their shapes
below do not depend on redis-py 8's RESP3 default.

Scripts read the clock with `TIME` (the server's), so every process shares one timeline; Redis 7
replicates a script's effects, not the script, so that is safe on replicas too.
"""

from typing import Final

__all__ = [
    "CACHE_DROP",
    "CACHE_DROP_GROUP",
    "CACHE_LIVE_KEYS",
    "CACHE_PUT",
    "CLAIM",
    "DLQ_ADD",
    "DLQ_DELETE",
    "DLQ_LIST",
    "DLQ_PURGE",
    "DLQ_UPDATE",
    "RATE_LIMIT",
    "RELEASE",
    "SAGA_CREATE",
    "SAGA_DELETE",
    "SAGA_EXPIRED",
    "SAGA_LIST",
    "SAGA_SAVE",
]

# ------------------------------------------------------------------------------- idempotency
# A key holds either a claim, "\0" + the claimer's random token, or a result, "\1" + its encoding.

CLAIM: Final = """
-- KEYS[1] the entry; ARGV[1] the claim marker, ARGV[2] the TTL in ms.
-- {0} claimed, {1} in flight, {2, result} completed.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0}
end
local value = redis.call('GET', KEYS[1])
if not value then  -- cannot happen inside a script (SET NX saw a key); claim it to be safe
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {0}
end
if string.byte(value, 1) == 0 then
  return {1}
end
return {2, string.sub(value, 2)}
"""

RELEASE: Final = """
-- KEYS[1] the entry; ARGV[1] the caller's claim marker, or "" for any claim.
-- A result ("\\1...") is never removed; another caller's claim is not removed either.
local value = redis.call('GET', KEYS[1])
if value and string.byte(value, 1) == 0 and (ARGV[1] == '' or value == ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# ------------------------------------------------------------------------------------- cache
# A group is a sorted set `prefix{group}` of its live keys scored by expiry (server ms), and each
# entry a string `prefix{group}:key` with its own PX. The `{group}` hash tag keeps a group in one
# cluster slot.

_NOW_MS: Final = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
"""

CACHE_PUT: Final = (
    """
-- KEYS[1] the group's set, KEYS[2] the entry; ARGV[1] the value, ARGV[2] TTL ms, ARGV[3] the key.
"""
    + _NOW_MS
    + """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
-- Forget keys whose entries expired, so a group never invalidated does not grow for ever.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""
)

_DELETE_ENTRIES: Final = """
local function delete_entries(prefix, keys)
  for i = 1, #keys, 500 do  -- in slices: `unpack` is bounded by Lua's stack
    local batch = {}
    for j = i, math.min(i + 499, #keys) do
      batch[#batch + 1] = prefix .. keys[j]
    end
    redis.call('DEL', unpack(batch))
  end
end
"""

CACHE_DROP_GROUP: Final = (
    _DELETE_ENTRIES
    + """
-- KEYS[1] the group's set; ARGV[1] the entries' key prefix. Returns how many keys it held.
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
delete_entries(ARGV[1], keys)
redis.call('DEL', KEYS[1])
return #keys
"""
)

CACHE_LIVE_KEYS: Final = (
    """
-- KEYS[1] the group's set: the keys whose entries have not expired.
"""
    + _NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""
)

CACHE_DROP: Final = (
    _DELETE_ENTRIES
    + """
-- KEYS[1] the group's set; ARGV[1] the entries' key prefix, ARGV[2..] the keys to drop.
local keys = {}
for i = 2, #ARGV do
  keys[#keys + 1] = ARGV[i]
end
delete_entries(ARGV[1], keys)
for i = 1, #keys, 500 do
  redis.call('ZREM', KEYS[1], unpack(keys, i, math.min(i + 499, #keys)))
end
return #keys
"""
)

# ------------------------------------------------------------------------------- dead letters
# KEYS[1] `order`: a sorted set of record ids scored by an insertion sequence (oldest first);
# KEYS[2] `records`: a hash id -> encoded record; KEYS[3] `seq`: the sequence counter.

DLQ_ADD: Final = """
-- ARGV[1] the id, ARGV[2] the record, ARGV[3] max_size. Returns how many records were evicted.
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], seq, ARGV[1])  -- an id stored already moves to the newest place
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over <= 0 then
  return 0
end
local oldest = redis.call('ZPOPMIN', KEYS[1], over)  -- RESP2 in scripts: member, score, member, ...
for i = 1, #oldest, 2 do
  redis.call('HDEL', KEYS[2], oldest[i])
end
return over
"""

DLQ_LIST: Final = """
-- ARGV[1] the last rank to return (-1: all). The records, oldest first, from one snapshot.
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]))
local records = {}
for i = 1, #ids, 500 do
  local batch = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + 499, #ids)))
  for j = 1, #batch do
    records[#records + 1] = batch[j]
  end
end
return records
"""

DLQ_UPDATE: Final = """
-- ARGV[1] the id, ARGV[2] the record: replaced only while stored; its place is its score, untouched.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
"""

DLQ_DELETE: Final = """
-- ARGV[1] the id. Whether it was stored.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return removed
"""

DLQ_PURGE: Final = """
-- How many records there were. The sequence stays, so later records still sort after.
local count = redis.call('ZCARD', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return count
"""

# ---------------------------------------------------------------------------------- rate limit

RATE_LIMIT: Final = """
-- GCRA: KEYS[1] holds the bucket's "full at" time (µs, server clock), the moment it will hold no
-- tokens; absent = full. ARGV[1] rate (tokens/s), ARGV[2] burst, ARGV[3] tokens wanted.
-- Returns 0 when taken, else the seconds until they are available as a string (Lua numbers are
-- truncated to integers on the way out).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = 1000000 / tonumber(ARGV[1])
local capacity = tonumber(ARGV[2]) * interval
local stored = redis.call('GET', KEYS[1])
local full_at = stored and tonumber(stored) or now
if full_at < now then
  full_at = now
end
local after = full_at + tonumber(ARGV[3]) * interval
if after <= now + capacity then
  -- The key lives until the bucket is full again; then absent means the same.
  redis.call('SET', KEYS[1], string.format('%.3f', after), 'PX', math.ceil((after - now) / 1000) + 1)
  return 0
end
return string.format('%.9f', (after - capacity - now) / 1000000)
"""

# -------------------------------------------------------------------------------------- sagas
# One hash per saga, `prefix` + "s:" + id, with fields `version`, `status` and `state` (the JSON of
# `encode_state`); the indexes are sorted sets of saga ids: `index` (every saga, scored by its
# creation time), `status:<status>` (one per status, same score) and `leases` (the sagas in
# progress, scored by `lease_expires`; `-inf` when they have none). The status sets are passed as
# the last keys, in the order of the statuses given as the last arguments.

_SAGA_INDEX: Final = """
-- Put saga ARGV[1] in the status set of `status` (removing it from the others) and in the lease
-- set when `lease` is not '' (removing it otherwise). `first` is the first status key's index.
local function index_saga(id, created, status, lease, first, first_name)
  redis.call('ZADD', KEYS[2], created, id)
  for i = first, #KEYS do
    if ARGV[first_name + i - first] == status then
      redis.call('ZADD', KEYS[i], created, id)
    else
      redis.call('ZREM', KEYS[i], id)
    end
  end
  if lease == '' then
    redis.call('ZREM', KEYS[3], id)
  else
    redis.call('ZADD', KEYS[3], lease, id)
  end
end
"""

SAGA_CREATE: Final = (
    _SAGA_INDEX
    + """
-- KEYS[1] the saga, KEYS[2] index, KEYS[3] leases, KEYS[4..] the status sets.
-- ARGV[1] id, [2] version, [3] status, [4] state, [5] created score, [6] lease score or '',
-- [7..] the statuses. 1 when stored, 0 when the saga exists (nothing changes).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'status', ARGV[3], 'state', ARGV[4])
index_saga(ARGV[1], ARGV[5], ARGV[3], ARGV[6], 4, 7)
return 1
"""
)

SAGA_SAVE: Final = (
    _SAGA_INDEX
    + """
-- KEYS as SAGA_CREATE. ARGV[1] id, [2] expected version, [3] new version, [4] status, [5] state,
-- [6] created score, [7] lease score or '', [8..] the statuses.
-- 1 when replaced, 0 when the saga is missing or not at the expected version (nothing changes).
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'status', ARGV[4], 'state', ARGV[5])
index_saga(ARGV[1], ARGV[6], ARGV[4], ARGV[7], 4, 8)
return 1
"""
)

SAGA_DELETE: Final = """
-- KEYS[1] the saga, KEYS[2] index, KEYS[3] leases, KEYS[4..] the status sets; ARGV[1] id.
-- Whether the saga was stored.
local removed = redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return removed
"""

_SAGA_STATES: Final = """
-- {id, state, id, state, ...} of `ids` (a saga deleted under the index is left out).
local function saga_states(prefix, ids)
  local found = {}
  for _, id in ipairs(ids) do
    local state = redis.call('HGET', prefix .. id, 'state')
    if state then
      found[#found + 1] = id
      found[#found + 1] = state
    end
  end
  return found
end
"""

SAGA_LIST: Final = (
    _SAGA_STATES
    + """
-- KEYS[1] the index or a status set; ARGV[1] the sagas' key prefix, ARGV[2] the last rank (-1: all).
-- The oldest sagas first, from one snapshot.
return saga_states(ARGV[1], redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2])))
"""
)

SAGA_EXPIRED: Final = (
    _SAGA_STATES
    + """
-- KEYS[1] leases, KEYS[2] index; ARGV[1] the sagas' key prefix, ARGV[2] now (UNIX seconds),
-- ARGV[3] how many (-1: all). The in-progress sagas with no lease or one before `now`, oldest first.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local rows = {}
for i, id in ipairs(ids) do
  rows[i] = {tonumber(redis.call('ZSCORE', KEYS[2], id)) or 0, id}
end
table.sort(rows, function(a, b)
  if a[1] ~= b[1] then
    return a[1] < b[1]
  end
  return a[2] < b[2]
end)
local limit = tonumber(ARGV[3])
local chosen = {}
for i = 1, #rows do
  if limit >= 0 and i > limit then
    break
  end
  chosen[i] = rows[i][2]
end
return saga_states(ARGV[1], chosen)
"""
)
