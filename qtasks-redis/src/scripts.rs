//! The Lua scripts that make each step of a task one atomic round trip.
//!
//! Keys (prefix `N` = the app name):
//! - `N:task_queue` (LIST): entries `name:uuid:priority`, pushed by Rust and Python clients
//!   alike, exactly as Python QTasks does.
//! - `N:qtasks:incoming` (LIST): where an idle worker's blocking `BLMOVE` parks an entry; the
//!   next take script moves it on, so a worker that dies in between loses nothing.
//! - `N:qtasks:ready` (ZSET): waiting tasks; score = priority, member = `{seq:020}|{entry}`, so
//!   equal priorities come out in arrival order.
//! - `N:qtasks:leases` (ZSET): tasks being run; score = lease deadline (ms, Redis clock).
//! - `N:qtasks:seq` (STRING): the arrival counter.
//! - `N:qtasks:recovered` (SET): members taken back from a dead worker, until taken again.
//! - `N:qtasks:delayed` (ZSET): entries that may run later (a retry's backoff); score = the
//!   time they may run (ms, Redis clock).
//! - `N:{uuid}` (HASH): the task record, in Python QTasks' layout.

/// Takes up to `ARGV[2]` tasks.
///
/// 1. Expired leases go back to `ready` (their holder died), keeping their place.
/// 2. Entries in `incoming` and `task_queue` move to `ready`.
/// 3. The lowest (priority, seq) members are popped, leased, and their records marked
///    `process` and returned.
///
/// KEYS: task_queue, incoming, ready, seq, leases, recovered, delayed. ARGV: lease_ms, count,
/// prefix, then the record fields to return (`wire::TAKEN_FIELDS`, `status` first).
/// Returns `{[member, record_fields, recovered]..., next_due_ms}`: `record_fields` are the
/// values of those fields (empty when the entry is malformed or its record is missing: the caller fails it),
/// `recovered` is 1 for a task taken back from a dead worker; `next_due_ms` is when the next delayed task may
/// run (or false). A task cancelled while it waited is returned as it is (status `cancel`), not
/// marked `process`; the caller skips it.
pub(super) const TAKE: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))

local function priority_of(entry)
  local p = tonumber(string.match(entry, ':(%-?%d+)$'))
  return p or 0
end

-- Redis takes at most a few thousand arguments per call from Lua: add in chunks.
local function zadd_pairs(key, pairs)
  for i = 1, #pairs, 2000 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 1999, #pairs)))
  end
end

-- 1. Expired leases: their worker died; back to `ready`, keeping their place.
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now_ms)
if #expired > 0 then
  local back = {}
  for _, member in ipairs(expired) do
    back[#back + 1] = priority_of(string.sub(member, 22))
    back[#back + 1] = member
    redis.call('SADD', KEYS[6], member)
  end
  zadd_pairs(KEYS[3], back)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms)
end

-- 2. Due delayed entries and pushed entries move to `ready`, numbered in arrival order.
local entries = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now_ms)
if #entries > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now_ms)
end
for _, list in ipairs({KEYS[2], KEYS[1]}) do
  while true do
    local got = redis.call('LPOP', list, 1000)
    if not got then break end
    for _, entry in ipairs(got) do entries[#entries + 1] = entry end
  end
end
if #entries > 0 then
  local first = redis.call('INCRBY', KEYS[4], #entries) - #entries + 1
  local pairs = {}
  for i, entry in ipairs(entries) do
    pairs[#pairs + 1] = priority_of(entry)
    pairs[#pairs + 1] = string.format('%020d', first + i - 1) .. '|' .. entry
  end
  zadd_pairs(KEYS[3], pairs)
end

-- 3. The lowest (priority, seq) are leased, marked `process` and returned with their record.
local wanted = {unpack(ARGV, 4)}
local taken = redis.call('ZPOPMIN', KEYS[3], tonumber(ARGV[2]))
local out = {}
local leases = {}
local lease_end = now_ms + tonumber(ARGV[1])
local any_recovered = redis.call('SCARD', KEYS[6]) > 0
for i = 1, #taken, 2 do
  local member = taken[i]
  leases[#leases + 1] = lease_end
  leases[#leases + 1] = member
  local uuid = string.match(string.sub(member, 22), '^[^:]+:([^:]+):%-?%d+$')
  local fields = {}
  if uuid then
    local key = ARGV[3] .. ':' .. uuid
    fields = redis.call('HMGET', key, unpack(wanted))
    if not fields[1] then
      fields = {}
    elseif fields[1] ~= 'cancel' then
      redis.call('HSET', key, 'status', 'process', 'updated_at', now_s)
    end
  end
  local recovered = 0
  if any_recovered then recovered = redis.call('SREM', KEYS[6], member) end
  out[#out + 1] = {member, fields, recovered}
end
if #leases > 0 then zadd_pairs(KEYS[5], leases) end
local next_due = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
return {out, next_due[2] or false}
"#;

/// Appends one JSON item to the `returning` list of a running stream task and tells waiters.
/// KEYS: the record. ARGV: item JSON, done channel, uuid.
pub(super) const APPEND_ITEM: &str = r#"
local r = redis.call('HGET', KEYS[1], 'returning')
if (not r) or r == '' or r == 'null' or r == '[]' then
  r = '[' .. ARGV[1] .. ']'
else
  r = string.sub(r, 1, -2) .. ',' .. ARGV[1] .. ']'
end
redis.call('HSET', KEYS[1], 'returning', r)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// Puts every leased member back in `ready` at once, marked recovered; returns how many.
/// KEYS: ready, leases, recovered.
pub(super) const REQUEUE_TAKEN: &str = r#"
local members = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, member in ipairs(members) do
  local p = tonumber(string.match(string.sub(member, 22), ':(%-?%d+)$')) or 0
  redis.call('ZADD', KEYS[1], p, member)
  redis.call('SADD', KEYS[3], member)
end
redis.call('DEL', KEYS[2])
return #members
"#;

/// Extends the leases of the given members that are still leased (a reclaimed one stays
/// reclaimed). KEYS: leases. ARGV: lease_ms, members...
pub(super) const RENEW: &str = r#"
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
end
return renewed
"#;

/// Moves one delayed entry to `task_queue` if it is still delayed (so only one of the timer
/// and a take script moves it). KEYS: delayed, task_queue. ARGV: entry.
pub(super) const RELEASE_DELAYED: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"#;
