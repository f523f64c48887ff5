//! The Lua scripts that make each step of a task atomic. The keys a script touches are passed
//! in KEYS, but for a few the scripts build from the app's prefix: the take the records of the
//! tasks it marks and the `ready` of a queue whose expired lease it reclaims (see [`TAKE`], and
//! [`REQUEUE_EXPIRED`]). Every key of an app starts with its prefix; on a Redis Cluster the
//! prefix is a hash tag (`{app}`), so the keys a script builds share the slot of those it is
//! given.
//!
//! Keys (prefix `N` = the app name):
//! - `N:task_queue` (LIST): entries `name:uuid:priority`, pushed by Rust and Python clients
//!   alike, exactly as Python QTasks does.
//! - `N:qtasks:incoming` (LIST): where an idle worker's blocking `BLMOVE` parks an entry; the
//!   next take script moves it on, so a worker that dies in between loses nothing.
//! - `N:qtasks:ready` (ZSET): waiting tasks; score = priority, member = `{seq:020}|{entry}`, so
//!   equal priorities come out in arrival order.
//! - `N:qtasks:leases` (ZSET): tasks being run; member = the delivery token (32 characters)
//!   followed by the `ready` member, score = lease deadline (ms, Redis clock). The token fences
//!   the delivery: only a call that names the whole member, token included, may renew the lease,
//!   record the outcome or hand the task back, and once the lease ran out and was reclaimed no
//!   call can.
//! - `N:qtasks:seq` (STRING): the arrival counter.
//! - `N:qtasks:recovered` (SET): members taken back from a dead worker, until taken again.
//! - `N:qtasks:delayed` (ZSET): entries that may run later (a retry's backoff); score = the
//!   time they may run (ms, Redis clock).
//! - `N:qtasks:dead` (LIST): dead letters, JSON `{"entry","reason","at"}`.
//! - `N:qtasks:stats` (HASH): counters the scripts keep for `stats`: `success`, `error`,
//!   `cancel`, `retry` (finished since the last flush), `queued:{priority}` (entries pushed
//!   by Rust clients and not yet sorted into `ready`) and `cancelled:{priority}` (tasks
//!   cancelled while they waited, still queued until a take drops them); and
//!   `t:{second}:{status}`, tasks finished in that second, for the last minute (then folded
//!   into the status totals).
//! - `N:qtasks:workers` (ZSET) and `N:qtasks:worker:{id}` (STRING, JSON with a time to live):
//!   the workers' descriptions; score = when the description expires (ms).
//! - `N:qtasks:claim:{key}` (STRING with a time to live): one claim (a schedule's slot:
//!   `schedule:{name}:{slot ms}`), set with `SET NX` by the first worker to fire it.
//! - `N:GlobalConfig:qtasks_schedules` and `N:GlobalConfig:qtasks_schedules_paused` (HASH): the
//!   schedules as workers recorded them (JSON), and the paused ones.
//! - `N:qtasks:items:{uuid}` (LIST): the items of a running stream task, appended under its
//!   delivery's lease; removed when it ends (its record's `returning` holds them then).
//! - `N:qtasks:cancel_requests` (HASH): uuid → reason, cancels asked of running tasks; the
//!   holder sees them at its next renewal, and its finish stores `cancel` and removes the entry.
//! - `N:qtasks:gone` (SET): uuids of tasks cancelled while they waited whose records were
//!   deleted before a take dropped their entries; the take drops such an entry quietly (rather
//!   than failing a task nobody knows any more) and removes the uuid.
//! - `N:{uuid}` (HASH): the task record, in Python QTasks' layout, plus fields of ours (the
//!   original shows them as extra fields): `deliveries`, how many times a take handed the task
//!   out (written 0 when qtasks adds the task while the records' index is kept: a record
//!   without it was written by another producer, or with the index off, and is indexed at its
//!   first mark); `marked_by` and `finished_by`, the delivery tokens that marked it `process` and
//!   recorded its outcome; `queued_cancel`, on a task cancelled while its entry still waits,
//!   until a take drops the entry (its value: the record's time to live then, ms; 0 keeps it).
//!
//! When the storage is paired with another broker (RabbitMQ keeps the queue), the records are
//! written by [`INSERT`] and [`TRANSITION`], which keep counters of their own:
//! - `N:qtasks:records:stats` (HASH): `w:{priority}` (records `new`), `running` (records
//!   `process`), and the finished counts and `t:{second}:{status}` buckets as above.
//! - `N:qtasks:records:waiting` (ZSET): the `new` records by their creation time, for the age
//!   of the oldest.

/// The Lua function the counting scripts share: `count_ended(stats, bucket, by)` counts `by`
/// finished tasks (default 1) in their bucket, `t:{second}:{status}`: one command per bucket,
/// so a batch of outcomes of one second and status costs one. The first count of a bucket
/// also folds the buckets older than a minute into the status totals (`success`, `error`, ...),
/// so the hash holds at most about 61 buckets per status and the folding runs at most once a
/// second per status. The finish script gets its bucket from the worker (its clock's second:
/// `TIME` in a script costs more than the count itself); the rarer scripts read Redis's.
/// The Lua functions every script that reads a queue entry's priority shares:
/// `priority_of(entry)`, the number after the entry's last `:` (0 when there is none), as the
/// entry `name:uuid:priority` and the members that end with it carry it; `priority_score(entry)`,
/// the same for a score, as it is written when it is short (a Lua number handed to Redis is
/// formatted with `%.17g` each time, which cost more than the sorted-set insert it feeds).
/// Also `number_of(text)`, `tonumber` with the one-digit texts looked up: Lua reads a number
/// with `strtod`, which cost more per task than a command (a field count, a delivery count,
/// a priority: nearly always one digit).
macro_rules! priorities {
    () => {
        r#"
local one_digit = {['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6, ['7'] = 7, ['8'] = 8, ['9'] = 9}
local function number_of(text)
  return one_digit[text] or tonumber(text)
end
local function priority_digits(entry)
  -- Anchored, so the match starts once (not at every character) and backs off to the last `:`.
  return string.match(entry, '^.*:(%-?%d+)$')
end
local function priority_of(entry)
  return number_of(priority_digits(entry)) or 0
end
-- For a score: the digits as written when they are few (Redis reads them exactly as the
-- number); a longer priority goes through the number (`inf` past a double's range, a score
-- Redis accepts, where the digits would be refused and fail the whole take).
local function priority_score(entry)
  local digits = priority_digits(entry)
  if digits and #digits <= 15 then return digits end
  return tonumber(digits) or 0
end
"#
    };
}

/// The Lua function that hands a delivery whose lease the caller released back to its
/// queue's `delayed` (`DEFER`, `ADMIT`): `hand_back(t, entry, uuid, due_ms, ttl_ms, channel,
/// count)` puts `entry` in `delayed` due at `due_ms`, sets the record `new` again (one more
/// `hand_backs` when `count`) and takes the take out of its `deliveries` (the task did not die
/// with a worker). A cancel requested while it was held wins: the record ends `cancel` (kept
/// `ttl_ms`, 0: kept), its waiters are told on `channel`, and it answers true. `t` is the
/// script's `TIME`. KEYS[2..5]: the queue's delayed, record, cancel requests, stats. Needs
/// [`counting!`].
macro_rules! handing_back {
    () => {
        r#"
local function hand_back(t, entry, uuid, due_ms, ttl_ms, channel, count)
  local now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  local is_hash = redis.call('TYPE', KEYS[3])['ok'] == 'hash'
  local reason = redis.call('HGET', KEYS[4], uuid)
  if reason then
    redis.call('HDEL', KEYS[4], uuid)
    if is_hash then
      redis.call('HSET', KEYS[3], 'status', 'cancel', 'cancel_reason', reason, 'updated_at', now_s, 'finished_at', now_s)
      local ttl = tonumber(ttl_ms)
      if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
      count_ended(KEYS[5], bucket_now('cancel'))
      redis.call('PUBLISH', channel, uuid)
    end
    return true
  end
  redis.call('ZADD', KEYS[2], due_ms, entry)
  if is_hash then
    redis.call('HSET', KEYS[3], 'status', 'new', 'updated_at', now_s)
    if count then redis.call('HINCRBY', KEYS[3], 'hand_backs', 1) end
    if (tonumber(redis.call('HGET', KEYS[3], 'deliveries') or '0') or 0) > 0 then
      redis.call('HINCRBY', KEYS[3], 'deliveries', -1)
    end
  end
  return false
end
"#
    };
}

macro_rules! counting {
    () => {
        r#"
local function count_ended(stats, bucket, by)
  by = by or 1
  if redis.call('HINCRBY', stats, bucket, by) == by then
    local sec = tonumber(string.match(bucket, '^t:(%d+):')) or 0
    for _, field in ipairs(redis.call('HKEYS', stats)) do
      local at, old_status = string.match(field, '^t:(%d+):(%a+)$')
      if at and tonumber(at) < sec - 60 then
        local count = tonumber(redis.call('HGET', stats, field) or '0')
        redis.call('HINCRBY', stats, old_status, count)
        redis.call('HDEL', stats, field)
      end
    end
  end
end
local function bucket_now(status)
  return 't:' .. redis.call('TIME')[1] .. ':' .. status
end
"#
    };
}

/// The Lua function both take scripts share to mark one taken task (see [`MARK`] for what it
/// answers): `mark_one(leases, stats, gone, index, leased, key, now, check_lease, with_fields,
/// fresh)` marks the record at `key` `process` for the delivery `leased` (token and member).
/// `check_lease` first checks that the lease is still `leased`'s (the separate mark call; the
/// take that leased it in the same script knows). `fresh` says the token is new to this call
/// (a take's first send), so the record cannot carry it yet. `with_fields` reads the record
/// whole (one `HGETALL`) and answers it; without, the mark reads only the fields it decides by
/// (`HMGET` of `status` and `deliveries`, and `marked_by` unless `fresh`; the rarer fields only
/// where they matter) and, for a task to run, answers its delivery count alone (a number, not
/// `{'run', false, count}`: the table and the nested reply cost more than the record's read);
/// the worker then reads the record itself: a record carried through Lua (into the script, then out in its answer) costs Redis about twice what
/// the mark itself does, which a big batch pays per task and a lone task pays in a round trip.
/// `index` is the records' index, or nil when it is not kept. Needs [`priorities!`].
macro_rules! marking {
    () => {
        r#"
local final_statuses = {success = true, error = true, cancel = true, retry = true}
-- The first counts as text: `string.format` per mark cost more than a field of the record.
local count_texts = {'1', '2', '3', '4'}

-- A task cancelled while it waited leaves the waiting tasks' count now that its entry goes.
local function uncount_cancelled(stats, leased)
  local field = 'cancelled:' .. priority_of(leased)
  if tonumber(redis.call('HGET', stats, field) or '0') > 0 then
    redis.call('HINCRBY', stats, field, -1)
  end
end

local function mark_one(leases, stats, gone, index, leased, key, now, check_lease, with_fields, fresh)
  if check_lease and not redis.call('ZSCORE', leases, leased) then
    return {'lost'}
  end
  -- One read for all it needs; a key that holds no hash fails it, and only then is its type
  -- read, for the reason. (An absent field is nil from the first read, false from the second.)
  local flat = false
  local status, marked_by, deliveries_text, queued_cancel, created_text
  if with_fields then
    flat = redis.pcall('HGETALL', key)
    if flat['err'] then
      return {'bad', 'its record key holds a ' .. redis.call('TYPE', key)['ok'] .. ', not a hash'}
    end
    for i = 1, #flat, 2 do
      local name = flat[i]
      if name == 'status' then status = flat[i + 1]
      elseif name == 'marked_by' then marked_by = flat[i + 1]
      elseif name == 'deliveries' then deliveries_text = flat[i + 1]
      elseif name == 'queued_cancel' then queued_cancel = flat[i + 1]
      elseif name == 'created_at' then created_text = flat[i + 1]
      end
    end
  else
    -- Each field looked up scans the record, so only what decides this mark is read:
    -- `marked_by` only where this delivery may have marked it before (`fresh`: its token is new
    -- to this call), `queued_cancel` only in a final record, and `created_at` only in a record
    -- another producer wrote (no `deliveries`: it is indexed here).
    local got
    if fresh then
      got = redis.pcall('HMGET', key, 'status', 'deliveries')
    else
      got = redis.pcall('HMGET', key, 'status', 'deliveries', 'marked_by')
    end
    if got['err'] then
      return {'bad', 'its record key holds a ' .. redis.call('TYPE', key)['ok'] .. ', not a hash'}
    end
    status, deliveries_text, marked_by = got[1], got[2], got[3]
    if status and final_statuses[status] then queued_cancel = redis.call('HGET', key, 'queued_cancel') end
    if index and not deliveries_text then created_text = redis.call('HGET', key, 'created_at') end
  end
  if not status then
    if redis.call('EXISTS', key) == 0 and redis.call('SREM', gone, string.sub(key, -36)) == 1 then
      redis.call('ZREM', leases, leased)
      uncount_cancelled(stats, leased)
      return {'ended'}
    end
    return {'missing'}
  elseif final_statuses[status] then
    redis.call('ZREM', leases, leased)
    -- Cancelled while it waited: its entry goes now, and its time to live starts.
    if queued_cancel then
      redis.call('HDEL', key, 'queued_cancel')
      uncount_cancelled(stats, leased)
      if (tonumber(queued_cancel) or 0) > 0 then redis.call('PEXPIRE', key, tonumber(queued_cancel)) end
    end
    return {'ended'}
  end
  -- Counted once per delivery: a mark sent again (its reply lost) finds its own token.
  local token = string.sub(leased, 1, 32)
  local deliveries = number_of(deliveries_text)
  if deliveries_text and not (deliveries and deliveries >= 0 and deliveries < 1e15 and deliveries == math.floor(deliveries)) then
    return {'bad', 'its deliveries field is not a count: ' .. deliveries_text}
  end
  if marked_by == token then
    redis.call('HSET', key, 'status', 'process', 'updated_at', now)
    deliveries = deliveries or 1
  else
    deliveries = (deliveries or 0) + 1
    redis.call('HSET', key, 'status', 'process', 'updated_at', now, 'marked_by', token, 'deliveries', count_texts[deliveries] or string.format('%d', deliveries))
  end
  -- qtasks's own records carry `deliveries` from their add, and were indexed then; another
  -- producer's (the Python original's) enter the index at their first mark.
  local created = tonumber(created_text)
  -- Not NaN nor infinite (`tonumber('nan')` is NaN, which ZADD refuses): such a record is
  -- left out of the index, and the worker fails it for its unreadable `created_at`.
  if index and not deliveries_text and created and created == created and created > -1e15 and created < 1e15 then
    redis.call('ZADD', index, 'NX', math.floor(created * 1000 + 0.5), string.sub(key, -36))
  end
  -- Without the record, the count alone: a table per task, and an array in the reply, cost
  -- Redis more than the record's `HMGET`.
  if not flat then return deliveries end
  return {'run', flat, deliveries}
end

-- `mark_one` in `pcall`: a record that cannot be marked (its key holds no hash, a value the
-- script cannot handle) answers `{'bad', reason}` for that task alone, and the rest of the
-- batch runs. (One failing command would otherwise fail the whole batch, which would then be
-- taken again, and fail again, every lease.)
local function mark_guarded(leases, stats, gone, index, leased, key, now, check_lease, with_fields, fresh)
  local ok, answer = pcall(mark_one, leases, stats, gone, index, leased, key, now, check_lease, with_fields, fresh)
  if ok then return answer end
  if type(answer) == 'table' then answer = answer['err'] end
  return {'bad', 'marking its record failed: ' .. tostring(answer)}
end
"#
    };
}

/// Takes up to `ARGV[2]` tasks from the queues a worker serves, and marks each one whose entry
/// is in the canonical form (`name:uuid:priority`, a lowercase hyphenated uuid, a priority of
/// at most 18 characters): one call per take. An entry in another form (an upper-case uuid
/// another client wrote, bytes that are not an entry) comes back unmarked, for the worker to parse and
/// mark with [`MARK`] or reject.
///
/// 1. Expired leases go back to their queue's `ready` (their holder died), keeping their place.
/// 2. For each served queue that is not paused: due delayed entries and the entries in its
///    `incoming` and list move to its `ready`.
/// 3. From each served queue in the order given, the lowest (priority, seq) members are popped
///    and leased, each under a new token, at most the queue's own count, until `ARGV[2]`.
/// 4. Each leased task in canonical form is marked as [`MARK`] marks it (`marking!`): one
///    call for the take and the mark saves a round trip, the lease check and sending every
///    member back.
///
/// A call sent again (its first send failed, perhaps after running: its reply lost) first
/// looks for the leases its token prefix holds (0.): found, they are handed out again, marked
/// by the same tokens (so counted once, as a mark sent again was before); a recovered task
/// comes back as not recovered then (its `deliveries` still say it ran before).
///
/// KEYS: seq, leases, recovered, paused, then per queue: its list (`task_queue` for the
/// default queue), incoming, ready, delayed, stats; then the app's stats, gone, and the
/// records' index (when it is kept). ARGV: lease_ms, count, token prefix (unique per call, 28
/// characters), the app's key prefix, the queue count m, then per queue: its tag (its name; ''
/// for the default queue) and how many of its tasks may be taken; then now (Unix seconds, for
/// `updated_at`) and `1` when the call is sent again after a failure (its reply may have been
/// lost: step 0), else `0`.
/// Returns `{[member, recovered, token, mark]..., next_due_ms}`: `recovered` is 1 for a task
/// taken back from a dead worker; `mark` is what [`MARK`] answers for it (in a big take, whose
/// records the worker reads, a task to run is its delivery count alone), or false when it was
/// not marked (not in canonical form); `next_due_ms` is when the next delayed task of a served
/// queue may run (or false).
///
/// A named queue's members carry its name (`{seq:020}@{queue}|{entry}`), so a lease that runs
/// out goes back to its own queue. Those are the places the script names keys it was not
/// given: the `ready` of a queue the calling worker does not serve, built from the prefix, and
/// the records of the tasks it marks (`{prefix}:{uuid}`, from their entries).
///
/// At most 1,000 pushed entries move to `ready` per call, so one call never holds Redis
/// for a whole backlog; the rest move on the next calls.
pub(super) const TAKE: &str = concat!(
    priorities!(),
    marking!(),
    r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Redis takes at most a few thousand arguments per call from Lua: add in chunks.
local function zadd_pairs(key, pairs)
  for i = 1, #pairs, 2000 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 1999, #pairs)))
  end
end

local m = tonumber(ARGV[5])

-- 4. (Defined first, run last.) The canonical entries are marked (their record keys are built
--    from the prefix, as the worker builds them); the others are left to the worker.
local after = 4 + 5 * m
local stats, gone, index = KEYS[after + 1], KEYS[after + 2], KEYS[after + 3]
local now = ARGV[6 + 2 * m]
local hex = '[0-9a-f]'
-- Matched against the whole member (`{seq:020}|entry`, or `{seq:020}@{queue}|entry`): one match
-- and no copy of the entry.
local canonical = '^[^|]*|[^:]*:(' .. string.rep(hex, 8) .. '%-' .. string.rep(hex, 4) .. '%-' .. string.rep(hex, 4) .. '%-' .. string.rep(hex, 4) .. '%-' .. string.rep(hex, 12) .. '):(%-?%d+)$'
-- A small take (a lone task's, say) carries the records in its answer (no second round trip);
-- a big one leaves them to the worker to read (see `marking!`).
local INLINE_RECORDS = 8
local function mark_taken(out, fresh)
  local inline = #out <= INLINE_RECORDS
  for j = 1, #out do
    local taken = out[j]
    local uuid, priority = string.match(taken[1], canonical)
    if uuid and #priority <= 18 then
      taken[4] = mark_guarded(KEYS[2], stats, gone, index, taken[3] .. taken[1], ARGV[4] .. ':' .. uuid, now, false, inline, fresh)
    else
      taken[4] = false
    end
  end
end

-- 0. Sent again after its reply was lost: the first send's tasks, still leased under this
--    call's token prefix, are handed out again rather than new ones (their marks find their
--    own tokens, so their deliveries are counted once). Only a resend pays this scan.
if ARGV[7 + 2 * m] == '1' then
  local again = {}
  local cursor = '0'
  repeat
    local page = redis.call('ZSCAN', KEYS[2], cursor, 'MATCH', ARGV[3] .. '*', 'COUNT', 1000)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      local leased = page[2][i]
      again[#again + 1] = {string.sub(leased, 33), 0, string.sub(leased, 1, 32)}
    end
  until cursor == '0'
  if #again > 0 then
    mark_taken(again, false)
    return {again, false}
  end
end
local ready_by_tag = {}
for i = 1, m do ready_by_tag[ARGV[4 + 2 * i]] = KEYS[4 + 5 * (i - 1) + 3] end

-- The `ready` a member goes back to: its queue's (a queue this worker does not serve too).
local function ready_of(member)
  local tag = string.match(member, '^%d+@([^|]+)|') or ''
  local known = ready_by_tag[tag]
  if known then return known end
  if tag == '' then return ARGV[4] .. ':qtasks:ready' end
  return ARGV[4] .. ':qtasks:q:' .. tag .. ':ready'
end

-- 1. Expired leases: their worker died or stalled; back to `ready`, keeping their place. The
--    old token goes with the lease member: that worker's renewals and finish are refused.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
if #expired > 0 then
  local back = {}
  for _, leased in ipairs(expired) do
    local member = string.sub(leased, 33)
    local key = ready_of(member)
    back[key] = back[key] or {}
    local pairs_of = back[key]
    pairs_of[#pairs_of + 1] = priority_of(member)
    pairs_of[#pairs_of + 1] = member
    redis.call('SADD', KEYS[3], member)
  end
  for key, members in pairs(back) do zadd_pairs(key, members) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
end

-- The recovered and paused sets, and each queue's `incoming` and `delayed`, are usually all
-- absent (Redis deletes an empty set, list or sorted set): one look for them all, and each is
-- read only when one of them is there.
local rare = {KEYS[3], KEYS[4]}
for i = 1, m do
  rare[#rare + 1] = KEYS[4 + 5 * (i - 1) + 2]
  rare[#rare + 1] = KEYS[4 + 5 * (i - 1) + 4]
end
local flagged = redis.call('EXISTS', unpack(rare)) > 0
local paused = {}
if flagged and redis.call('SCARD', KEYS[4]) > 0 then
  for i = 1, m do
    local tag = ARGV[4 + 2 * i]
    if tag == '' then tag = 'default' end
    paused[i] = redis.call('SISMEMBER', KEYS[4], tag) == 1
  end
end

local wanted = math.max(1, tonumber(ARGV[2]) or 1)
local out = {}
local leases = {}
-- As text once: a number would be formatted again for every lease (past what `%d` holds, a
-- lease of millennia, as the number).
local lease_end = now_ms + tonumber(ARGV[1])
if lease_end < 9e15 then lease_end = string.format('%d', lease_end) end
local any_recovered = flagged and redis.call('SCARD', KEYS[3]) > 0
local next_due = false
local move_budget = 1000

for i = 1, m do
  if not paused[i] then
    local base = 4 + 5 * (i - 1)
    local list, incoming, ready, delayed, stats = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[base + 4], KEYS[base + 5]
    local tag = ARGV[4 + 2 * i]
    local prefix = '|'
    if tag ~= '' then prefix = '@' .. tag .. '|' end

    -- 2. Due delayed entries and pushed entries move to `ready`, numbered in arrival order.
    --    The earliest delayed entry is read first, and the due ones only when it is due: most
    --    takes find none due, or no delayed entry at all. (`head` then tells the next due.)
    local entries = {}
    local head = flagged and redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES') or {}
    if head[2] and tonumber(head[2]) <= now_ms then
      entries = redis.call('ZRANGEBYSCORE', delayed, '-inf', now_ms)
      redis.call('ZREMRANGEBYSCORE', delayed, '-inf', now_ms)
      head = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
    end
    local from_lists = #entries + 1
    for _, from in ipairs(flagged and {incoming, list} or {list}) do
      while #entries < move_budget do
        local got = redis.call('LPOP', from, math.min(1000, move_budget - #entries))
        if not got then break end
        for _, entry in ipairs(got) do entries[#entries + 1] = entry end
      end
    end
    move_budget = math.max(0, move_budget - (#entries - from_lists + 1))
    -- Sorted entries leave the unsorted counters of their priorities (counted per priority, so
    -- a batch costs a few commands, not two per entry; never below zero: Python clients'
    -- entries were never counted).
    local priority = {}
    for j, entry in ipairs(entries) do priority[j] = priority_score(entry) end
    local unsorted = {}
    for j = from_lists, #entries do
      local p = number_of(priority[j]) or 0
      unsorted[p] = (unsorted[p] or 0) + 1
    end
    for p, n in pairs(unsorted) do
      local field = 'queued:' .. p
      local left = tonumber(redis.call('HGET', stats, field) or '0')
      if left > n then
        redis.call('HINCRBY', stats, field, -n)
      elseif left > 0 then
        redis.call('HDEL', stats, field)
      end
    end
    if #entries > 0 then
      local first = redis.call('INCRBY', KEYS[1], #entries) - #entries + 1
      local members = {}
      for j, entry in ipairs(entries) do
        members[#members + 1] = priority[j]
        members[#members + 1] = string.format('%020d', first + j - 1) .. prefix .. entry
      end
      zadd_pairs(ready, members)
    end

    -- 3. The lowest (priority, seq) are popped and leased.
    -- (Read and removed by rank rather than with `ZPOPMIN`, whose reply formats every score.)
    local room = math.min(tonumber(ARGV[5 + 2 * i]) or 0, wanted - #out)
    if room > 0 then
      local taken = redis.call('ZRANGE', ready, 0, room - 1)
      if #taken > 0 then redis.call('ZREMRANGEBYRANK', ready, 0, #taken - 1) end
      for _, member in ipairs(taken) do
        local recovered = 0
        if any_recovered then recovered = redis.call('SREM', KEYS[3], member) end
        local token = ARGV[3] .. string.format('%04x', #out + 1)
        leases[#leases + 1] = lease_end
        leases[#leases + 1] = token .. member
        out[#out + 1] = {member, recovered, token}
      end
    end
    if head[2] and (not next_due or tonumber(head[2]) < tonumber(next_due)) then next_due = head[2] end
  end
end
if #leases > 0 then zadd_pairs(KEYS[2], leases) end

-- Fresh tokens only on a first send: a call sent again that found none of its first send's
-- leases (they ran out, and may be taken back right here by the same tokens) reads
-- `marked_by`, so a task its first send marked is not counted twice.
mark_taken(out, ARGV[7 + 2 * m] ~= '1')
return {out, next_due}
"#
);

/// Marks the tasks a [`TAKE`] leased but left unmarked (their entries are not in canonical
/// form; the worker parsed them): for each, reads its record and marks it `process`, if the
/// lease is still this take's. The take marks the others the same way (`marking!`). A record that is final already
/// (cancelled while it waited, or finished by a worker whose lease had run out) is not run: its
/// lease is dropped here.
///
/// A record that another producer wrote (the Python original) enters the records' index here,
/// by its `created_at` (`ZADD NX`), at its first mark: qtasks's own are indexed when added,
/// and carry a `deliveries` field from then on (0 until the first mark), so the mark knows (a
/// record added while the index was off has none, and is indexed like another producer's). A
/// `deliveries` that is not a count makes the record `bad`.
///
/// Per task it costs three commands (`ZSCORE` of the lease, `HGETALL`, `HSET`; in the take, the
/// last two); the rare cases (a record that is missing, final or not a hash) pay more.
///
/// Each record counts the deliveries of its task in its `deliveries` field (one more at each
/// mark), so a task that kills every worker that runs it can be stopped (`max_deliveries`).
///
/// Each task is marked on its own (in `pcall`): a record that cannot be marked (its key holds
/// no hash, a value the script cannot handle) answers `{'bad', reason}` for that task alone, and
/// the rest of the batch runs. (One failing command would otherwise fail the whole batch, which
/// would then be taken again, and fail again, every lease.)
///
/// A task without a record is `{'ended'}` when its record was deleted after it was cancelled
/// while it waited (`N:qtasks:gone`; its entry is dropped here), else `{'missing'}`.
///
/// KEYS: leases, stats, gone, then one record key per task, then the records' index (when it
/// is kept). ARGV: now (Unix seconds, for `updated_at`), the task count `n`, the `n` lease
/// members (token and member).
/// Returns one reply per task: `{'run', fields, deliveries}` (`fields`: the record as it was
/// before the mark, `HGETALL`'s field and value pairs; a big take's mark answers the delivery
/// count alone instead, and the worker reads the record), `{'missing'}` (no record),
/// `{'ended'}` (final already, or its record deleted after a cancel; not run), `{'lost'}` (the lease is gone already) or
/// `{'bad', reason}` (the record cannot be marked; its lease is kept for the caller to end).
pub(super) const MARK: &str = concat!(
    priorities!(),
    marking!(),
    r#"
local n = tonumber(ARGV[2])
local index = KEYS[4 + n]
local out = {}
for i = 1, n do
  out[i] = mark_guarded(KEYS[1], KEYS[2], KEYS[3], index, ARGV[2 + i], KEYS[3 + i], ARGV[1], true, true, false)
end
return out
"#
);

/// Appends one JSON item of a running stream task to its items (`N:qtasks:items:{uuid}`, a
/// list: one `RPUSH`, not a rewrite) and tells waiters, for the delivery that runs it only: a
/// delivery of this broker (its receipt is a lease member) must still hold its lease, and any
/// delivery needs the record `process`. A new delivery's first item drops an earlier one's
/// items (the record remembers whose they are, `items_by`). The items live as long as a lease
/// would let a run go unnoticed, renewed by each item, and go when the task ends (the final
/// record holds them all in `returning`).
/// KEYS: record, items, leases. ARGV: item JSON, done channel, uuid, the delivery's receipt,
/// the items' time to live (ms). Returns 1 appended, 0 refused.
pub(super) const APPEND_ITEM: &str = r#"
if string.find(ARGV[4], '|', 1, true) and not redis.call('ZSCORE', KEYS[3], ARGV[4]) then
  return 0
end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' or redis.call('HGET', KEYS[1], 'status') ~= 'process' then
  return 0
end
if redis.call('HGET', KEYS[1], 'items_by') ~= ARGV[4] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'items_by', ARGV[4])
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// Stores the progress of a running task, under the same fence as a stream item: only while
/// the task runs and, for a delivery with a lease (a member with `|`), while that lease is held.
/// KEYS: record, leases. ARGV: the progress (JSON), the done channel, uuid, the delivery.
/// Returns 1 when stored, 0 when refused.
pub(super) const SET_PROGRESS: &str = r#"
if string.find(ARGV[4], '|', 1, true) and not redis.call('ZSCORE', KEYS[2], ARGV[4]) then
  return 0
end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' or redis.call('HGET', KEYS[1], 'status') ~= 'process' then
  return 0
end
local t = redis.call('TIME')
local now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_at', now_s)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// Puts the members whose lease has run out back in their queue's `ready` at once, marked
/// recovered, and revokes their tokens; returns how many. Live workers' leases are left alone.
/// KEYS: ready (the default queue's), leases, recovered. ARGV: the app's key prefix (a named
/// queue's `ready` is built from it, as in [`TAKE`]).
pub(super) const REQUEUE_EXPIRED: &str = concat!(
    priorities!(),
    r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
for _, leased in ipairs(members) do
  local member = string.sub(leased, 33)
  local tag = string.match(member, '^%d+@([^|]+)|')
  local ready = KEYS[1]
  if tag then ready = ARGV[1] .. ':qtasks:q:' .. tag .. ':ready' end
  redis.call('ZADD', ready, priority_of(member), member)
  redis.call('SADD', KEYS[3], member)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
return #members
"#
);

/// Records a batch of outcomes (see `batch`), each on its own terms: an outcome is stored if,
/// and only if, its delivery's token still holds the lease. For each: releases the lease, writes
/// the record's fields, adds a retry's next attempt, sets the expiry and tells the waiters. The
/// record keeps the token that wrote it (`finished_by`): sent again after a lost reply, the
/// script finds the lease gone and its own token on the final record and answers "stored"
/// without writing again (so a retry's next attempt is added once); any other finisher whose
/// lease is gone is refused, even when the record is final (a stalled worker must not take
/// another's outcome for its own).
///
/// A cancel requested while the task ran (`N:qtasks:cancel_requests`, written by [`CANCEL`])
/// wins over the outcome: the record ends `cancel` with the request's reason, a retry's next
/// attempt is not added, and the answer says so.
///
/// The live items of a stream task (`N:qtasks:items:{uuid}`) go: the record's `returning`
/// holds them all now.
///
/// What every outcome pays is kept to three commands (`ZREM` of its lease, one `HSET`, one
/// `PEXPIRE`); the counters (one `HINCRBY` per second and status), the items' `DEL`, the look
/// at the cancel requests and the message to the waiters (one `PUBLISH` of the batch's uuids
/// separated by spaces, which waiters read since 2026-12-04; an older waiter finds its result
/// at its next safety look instead) are paid once per batch. A record key that holds no hash
/// makes its `HSET` fail: only then is its type read, for the answer.
///
/// The record and the live items of each outcome are declared, so that on a Redis Cluster whose
/// slot is being migrated the call is sent where all of them are (a key the script built would
/// be looked up on whichever node holds the declared ones); the items are deleted only for a
/// delivery that may have any (a run that streamed, or a task handed out before).
///
/// KEYS: leases, stats, cancel requests, then per outcome: its record, its live items, and for
/// a retry the child's record, the child's queue (`task_queue`, or `delayed` with a delay) and
/// the records' index (when it is kept).
/// ARGV: ttl_ms (0: keep), done channel, the app's key prefix (unused), the outcome count, then per
/// outcome: its lease member (token and member), uuid, stats bucket (`t:{second}:{status}`),
/// its own ttl_ms (the task's `result_ttl`; '' takes the batch's), `1` when its live items are
/// to go (else ''), field count `n`, the fields and values, and the child's part: `0` for none, else `1` (`2` when the index is kept), the
/// child's field count `c`, its fields and values, its queue entry, its delay in ms by Redis's
/// clock ('' to queue it now) and its creation time in ms (for the index).
/// Returns one answer per outcome: `1` stored, `2` stored by an earlier send of this delivery
/// (a replay; nothing written), `0` refused (the lease is not this delivery's any more; nothing
/// written), `{3, reason}` cancelled instead (also when a replay
/// finds the cancel that won), `{4, type}` when the record's key holds no hash (the lease is
/// dropped), or `{5, message}` when this outcome failed in the script (the others stand).
pub(super) const FINISH: &str = concat!(
    priorities!(),
    counting!(),
    r#"
local channel = ARGV[2]
local count = tonumber(ARGV[4])
local any_cancel = redis.call('HLEN', KEYS[3]) > 0
local ended = {}       -- bucket -> outcomes counted in it
local buckets = {}     -- the buckets in the order first seen
local items = {}       -- the items keys of the stored outcomes
local told = {}        -- the uuids whose waiters are told, in one message at the end
local expiring = {}    -- time to live (text) -> what `PEXPIRE` gets, or false: once per batch

local function count_in(bucket)
  if not ended[bucket] then
    ended[bucket] = 0
    buckets[#buckets + 1] = bucket
  end
  ended[bucket] = ended[bucket] + 1
end

local function now_s()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- The record's type when a write to it failed (not a hash): answered, and the lease stays gone.
local function unstorable(record)
  return {4, redis.call('TYPE', record)['ok']}
end

-- A retry's next attempt: its queue entry first (a queue key of another type fails it before
-- anything is written), then its record; its counter and its place in the index are kept on a
-- best-effort basis (they do not decide whether it runs).
local function add_child(k, at, c, indexed)
  local entry, delay = ARGV[at + 2 * c], ARGV[at + 2 * c + 1]
  if delay == '' then
    redis.call('RPUSH', KEYS[k + 1], entry)
    redis.pcall('HINCRBY', KEYS[2], 'queued:' .. priority_of(entry), 1)
  else
    -- Due by Redis's clock, the one takes compare with (the worker's may be off).
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', KEYS[k + 1], now_ms + tonumber(delay), entry)
  end
  redis.call('HSET', KEYS[k], unpack(ARGV, at, at + 2 * c - 1))
  if indexed then
    redis.pcall('ZADD', KEYS[k + 2], ARGV[at + 2 * c + 2], string.sub(KEYS[k], -36))
  end
end

-- One outcome. k: the index of its keys (its record, its items, then a retry's child's); a: of
-- its lease member in ARGV; n, c: its field counts; child: its child part's flag.
local function finish_one(k, a, n, child, c)
  local leased, uuid, bucket = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local record = KEYS[k]
  -- The time to live as `PEXPIRE` takes it (whole ms, as text), or false to keep the record:
  -- worked out once per distinct value in the batch, since a Lua number handed to `PEXPIRE`
  -- would be formatted again, with `%.17g`, for every outcome. '' (or a value that is not a
  -- number) takes the batch's.
  local ttl_text = ARGV[a + 3] or ''
  local ttl = expiring[ttl_text]
  if ttl == nil then
    local ms = tonumber(ttl_text) or tonumber(ARGV[1]) or 0
    ttl = ms > 0 and string.format('%d', math.min(ms, 9e15))
    expiring[ttl_text] = ttl
  end
  local items_key = ARGV[a + 4] == '1' and KEYS[k + 1]
  local token = string.sub(leased, 1, 32)
  if redis.call('ZREM', KEYS[1], leased) == 0 then
    local found = redis.pcall('HMGET', record, 'status', 'finished_by', 'cancel_reason')
    if found['err'] then return unstorable(record) end
    local status = found[1]
    if found[2] == token and (status == 'success' or status == 'error' or status == 'cancel' or status == 'retry') then
      -- A replay: what the first send stored (a cancel that won says so again).
      if status == 'cancel' then return {3, found[3] or ''} end
      return 2
    end
    return 0
  end
  local cancel = any_cancel and redis.call('HGET', KEYS[3], uuid)
  if cancel then
    redis.call('HDEL', KEYS[3], uuid)
    if string.sub(bucket, -7) ~= ':cancel' then
      local at = now_s()
      local written = redis.pcall('HSET', record, 'status', 'cancel', 'cancel_reason', cancel, 'updated_at', at, 'finished_at', at, 'finished_by', token)
      if type(written) == 'table' and written['err'] then return unstorable(record) end
      if items_key then items[#items + 1] = items_key end
      count_in(bucket_now('cancel'))
      if ttl then redis.call('PEXPIRE', record, ttl) end
      told[#told + 1] = uuid
      return {3, cancel}
    end
  end
  local written = redis.pcall('HSET', record, 'finished_by', token, unpack(ARGV, a + 6, a + 5 + 2 * n))
  if type(written) == 'table' and written['err'] then return unstorable(record) end
  if items_key then items[#items + 1] = items_key end
  if child > 0 then
    local queued, failure = pcall(add_child, k + 2, a + 6 + 2 * n + 2, c, child == 2)
    if not queued then
      -- The next attempt cannot be queued (a key of the queue holds another type): this
      -- attempt ends `error` saying so, rather than `retry` with no next attempt.
      if type(failure) == 'table' then failure = failure['err'] end
      local reason = 'RetryError: the next attempt could not be queued: ' .. tostring(failure)
      redis.call('HSET', record, 'status', 'error', 'traceback', reason)
      redis.log(redis.LOG_WARNING, 'qtasks: task ' .. uuid .. ': ' .. reason)
      bucket = string.gsub(bucket, ':retry$', ':error')
    end
  end
  count_in(bucket)
  if ttl then redis.call('PEXPIRE', record, ttl) end
  told[#told + 1] = uuid
  return 1
end

local out = {}
local k, a = 4, 5
for i = 1, count do
  -- Where this outcome's parts are, and where the next one's start (read before it runs, so
  -- an outcome that fails cannot throw the others' places off).
  local n = number_of(ARGV[a + 5])
  local child_at = a + 6 + 2 * n
  local child = number_of(ARGV[child_at])
  local c = 0
  local next_k, next_a = k + 2, child_at + 1
  if child > 0 then
    c = tonumber(ARGV[child_at + 1])
    next_k = k + 4 + (child == 2 and 1 or 0)
    next_a = child_at + 2 + 2 * c + 3
  end
  local ok, answer = pcall(finish_one, k, a, n, child, c)
  if ok then
    out[i] = answer
  else
    if type(answer) == 'table' then answer = answer['err'] end
    out[i] = {5, 'storing the outcome failed in the script: ' .. tostring(answer)}
  end
  k, a = next_k, next_a
end
-- The waiters of the whole batch in one message (uuids separated by spaces), before anything
-- that may fail (a counter's key of another type): the outcomes are written by now.
if #told > 0 then redis.call('PUBLISH', channel, table.concat(told, ' ')) end
if #items > 0 then redis.call('DEL', unpack(items)) end
for _, bucket in ipairs(buckets) do count_ended(KEYS[2], bucket, ended[bucket]) end
return out
"#
);

/// Extends the leases this worker still holds, and reads the cancels requested for them.
/// Returns `{lost, cancels}`: `lost`, the lease members it lost (their lease ran out and was
/// reclaimed; another worker may hold the task now), whose runs the worker stops; `cancels`,
/// `receipt, reason` pairs of held tasks whose cancel was requested ([`CANCEL`] stores it, so a
/// request whose message was lost is still seen here, one renewal later at the latest).
/// KEYS: leases, cancel requests. ARGV: lease_ms, then the lease members (token and member).
pub(super) const RENEW: &str = r#"
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local any_cancel = redis.call('HLEN', KEYS[2]) > 0
local lost = {}
local cancels = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
    if any_cancel then
      local uuid = string.match(ARGV[i], ':([%x%-]+):%-?%d+$')
      local reason = uuid and redis.call('HGET', KEYS[2], uuid)
      if reason then
        cancels[#cancels + 1] = ARGV[i]
        cancels[#cancels + 1] = reason
      end
    end
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return {lost, cancels}
"#;

/// Moves one delayed entry to its queue's list (`task_queue` for the default queue) if it is
/// still delayed (so only one of the timer and a take script moves it). KEYS: delayed, list,
/// stats. ARGV: entry, and for a named queue the channel that announces it and its name.
pub(super) const RELEASE_DELAYED: &str = concat!(
    priorities!(),
    r#"
-- Due by Redis's clock, the one every worker's take compares with (not the caller's).
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
local t = redis.call('TIME')
if not due or tonumber(due) > tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) then
  return 0
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'queued:' .. priority_of(ARGV[1]), 1)
  if ARGV[2] and ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
  return 1
end
return 0
"#
);

/// Adds a batch of tasks (see `batch`), each if, and only if, no record has its uuid: writes
/// the record, indexes it and queues its entry (in `task_queue`, or in `delayed`, due a delay
/// from now by Redis's clock: a client whose clock is off still delays by what it asked). A
/// second add of a known uuid (a schedule's slot added again, a retried add) changes nothing.
///
/// Per task it costs one command (`HSET`), and one `EXISTS` only in a batch where some record
/// exists already (one `EXISTS` of every record asks first); the entries are pushed with one
/// `RPUSH` (in the order asked), the counters raised with one `HINCRBY` per priority and the
/// index written with one `ZADD`, per batch. The queues' key types are checked first, so a batch
/// either queues every new task or writes nothing.
///
/// KEYS: stats, the queue's list (`task_queue` for the default queue), `delayed`, the app's
/// known queues (a named queue enters it), the records' index (when it is kept), then one
/// record per task. ARGV: `1` when the index is kept (else `0`), the channel that announces
/// entries and the queue's name (`default` too: a worker of several queues waits on the
/// announcements), the task count, then per task: its
/// field count n, n field/value pairs, its queue entry, its delay in ms ('' to queue it now)
/// and its creation time in ms (for the index). A field count of 0 stands for the standard
/// record (the broker's `STANDARD_ADD_FIELDS`: `status`, `updated_at`, `deliveries`,
/// `task_name`, `priority`, `args`, `kwargs`, `created_at`), whose eight values follow without
/// their names. Returns one answer per task: 1 added, 0 known already.
pub(super) const ADD: &str = concat!(
    priorities!(),
    r#"
local indexed = ARGV[1] == '1'
local channel, queue_name = ARGV[2], ARGV[3]
local count = tonumber(ARGV[4])
local first_record = indexed and 6 or 5
-- The queues are checked before anything is written: a queue key of another type fails the
-- whole batch with nothing written, rather than leaving records whose entries were never
-- queued (and whose uuids a retried add would then find known).
for _, queue in ipairs({{KEYS[2], 'list'}, {KEYS[3], 'zset'}}) do
  local kind = redis.call('TYPE', queue[1])['ok']
  if kind ~= 'none' and kind ~= queue[2] then
    return redis.error_reply('the queue key ' .. queue[1] .. ' holds a ' .. kind .. ', not a ' .. queue[2])
  end
end
local entries, by_priority, index_pairs, out = {}, {}, {}, {}
local now_ms
-- Whether any record exists already, asked once for the batch: each `redis.call` costs Redis
-- about as much as the command it runs, and nearly every batch is of new uuids only. Then a
-- uuid twice in the batch is told by the table of those written.
local any_known = redis.call('EXISTS', unpack(KEYS, first_record, first_record + count - 1)) > 0
local written = {}
local a = 5
for i = 1, count do
  local record = KEYS[first_record + i - 1]
  local n = number_of(ARGV[a])
  -- A field count of 0: the standard record, its eight values alone (see below).
  local standard = n == 0
  local width = 2 * n
  if standard then width = 8 end
  local entry, delay, created = ARGV[a + 1 + width], ARGV[a + 2 + width], ARGV[a + 3 + width]
  if written[record] or (any_known and redis.call('EXISTS', record) == 1) then
    out[i] = 0
  else
    written[record] = true
    if standard then
      redis.call('HSET', record, 'status', ARGV[a + 1], 'updated_at', ARGV[a + 2], 'deliveries', ARGV[a + 3], 'task_name', ARGV[a + 4], 'priority', ARGV[a + 5], 'args', ARGV[a + 6], 'kwargs', ARGV[a + 7], 'created_at', ARGV[a + 8])
    else
      redis.call('HSET', record, unpack(ARGV, a + 1, a + 2 * n))
    end
    if delay == '' then
      entries[#entries + 1] = entry
      -- The standard record carries the priority as a value of its own: no match of the entry.
      local p = standard and number_of(ARGV[a + 5]) or priority_of(entry)
      by_priority[p] = (by_priority[p] or 0) + 1
    else
      if not now_ms then
        local t = redis.call('TIME')
        now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', KEYS[3], now_ms + tonumber(delay), entry)
    end
    if indexed then
      index_pairs[#index_pairs + 1] = created
      index_pairs[#index_pairs + 1] = string.sub(record, -36)
    end
    out[i] = 1
  end
  a = a + 4 + width
end
-- Lua passes at most a few thousand values per call: in chunks.
for i = 1, #entries, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(entries, i, math.min(i + 999, #entries)))
end
-- The counters and the index are kept on a best-effort basis: they do not decide what runs.
for p, added in pairs(by_priority) do
  redis.pcall('HINCRBY', KEYS[1], 'queued:' .. p, added)
end
for i = 1, #index_pairs, 2000 do
  redis.pcall('ZADD', KEYS[5], unpack(index_pairs, i, math.min(i + 1999, #index_pairs)))
end
if queue_name ~= 'default' then redis.pcall('SADD', KEYS[4], queue_name) end
if #entries > 0 then redis.call('PUBLISH', channel, queue_name) end
return out
"#
);

/// The holder check every unique add opens with (see [`UNIQUE_ADD`]): KEYS[1] is the key's
/// lock (a hash: `uuid`, `added_ms`), KEYS[2] the record of the holder the caller read;
/// ARGV[1] that holder's uuid ('' for none), ARGV[2] the window in ms, ARGV[3] the app's key
/// prefix. Returns early with `changed` (the lock moved since the caller read it: read again)
/// or `holder:{uuid}` (the holder still holds it: its last attempt, a retry followed, waits,
/// runs, or it was added less than the window ago: a holder whose records are gone, or not
/// hashes, holds its window). Leaves `now_ms` set.
macro_rules! unique_check {
    () => {
        r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder = redis.call('HGET', KEYS[1], 'uuid') or ''
if holder ~= ARGV[1] then return 'changed' end
if holder ~= '' then
  local function status_of(key)
    local ok, status = pcall(redis.call, 'HGET', key, 'status')
    if ok and status then return status end
    return nil
  end
  local record = KEYS[2]
  local status = status_of(record)
  local hops = 0
  while status == 'retry' and hops < 32 do
    local ok, child = pcall(redis.call, 'HGET', record, 'retry_child_uuid')
    if not ok or not child then break end
    local next_status = status_of(ARGV[3] .. ':' .. child)
    if not next_status then break end
    record, status = ARGV[3] .. ':' .. child, next_status
    hops = hops + 1
  end
  -- Its last attempt waits or runs, or its window is not over (whatever its records say:
  -- one gone, or a retry that cannot be followed, leaves the window to decide).
  local added = tonumber(redis.call('HGET', KEYS[1], 'added_ms') or '0') or 0
  if status == 'new' or status == 'process' or now_ms < added + tonumber(ARGV[2]) then
    return 'holder:' .. holder
  end
end
"#
    };
}

/// Adds one task that takes a unique key, unless the key's holder still holds it (the
/// broker's `add_unique`; the check is [`unique_check`]'s). The lock names the new task and
/// when it was added, and lives ARGV[4] ms (at least the window). KEYS: lock, holder's record
/// (the lock itself when there is none), the task's record, the queue's stats, list, delayed,
/// the app's known queues, the records' index (when kept). ARGV: holder, window ms, prefix,
/// lock ttl ms, `1` when the index is kept, the channel that announces entries, the queue's
/// name, the task's uuid, then its field count n, n field/value pairs, its queue entry, its
/// delay in ms ('' for none) and its creation time in ms. Returns `added`, `holder:{uuid}`
/// (also when the task's own uuid is known: an add again adds nothing) or `changed`.
pub(super) const UNIQUE_ADD: &str = concat!(
    priorities!(),
    unique_check!(),
    r#"
if redis.call('EXISTS', KEYS[3]) == 1 then return 'holder:' .. ARGV[8] end
-- The queue's keys are checked before anything is written (as `ADD` does).
for _, queue in ipairs({{KEYS[5], 'list'}, {KEYS[6], 'zset'}}) do
  local kind = redis.call('TYPE', queue[1])['ok']
  if kind ~= 'none' and kind ~= queue[2] then
    return redis.error_reply('the queue key ' .. queue[1] .. ' holds a ' .. kind .. ', not a ' .. queue[2])
  end
end
local n = tonumber(ARGV[9])
local at = 10 + 2 * n
local entry, delay, created = ARGV[at], ARGV[at + 1], ARGV[at + 2]
redis.call('HSET', KEYS[3], unpack(ARGV, 10, 9 + 2 * n))
if delay == '' then
  redis.call('RPUSH', KEYS[5], entry)
  redis.pcall('HINCRBY', KEYS[4], 'queued:' .. priority_of(entry), 1)
else
  redis.call('ZADD', KEYS[6], now_ms + tonumber(delay), entry)
end
if ARGV[5] == '1' and KEYS[8] then redis.pcall('ZADD', KEYS[8], created, ARGV[8]) end
if ARGV[7] ~= 'default' then redis.pcall('SADD', KEYS[7], ARGV[7]) end
if delay == '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'uuid', ARGV[8], 'added_ms', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 'added'
"#
);

/// [`INSERT`] of a task that takes a unique key, for a broker that keeps only the queue
/// (RabbitMQ), unless the key's holder still holds it (the check is [`unique_check`]'s).
/// KEYS: lock, holder's record, the record, records_stats, records_waiting, gone, the records'
/// index (when kept). ARGV: holder, window ms, prefix, lock ttl ms, uuid, priority,
/// created_at, field count n, n field/value pairs. Returns `added`, `holder:{uuid}` or
/// `changed`.
pub(super) const UNIQUE_INSERT: &str = concat!(
    unique_check!(),
    r#"
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('SREM', KEYS[6], ARGV[5]) == 1 then
  return 'holder:' .. ARGV[5]
end
local n = tonumber(ARGV[8])
redis.call('HSET', KEYS[3], unpack(ARGV, 9, 8 + 2 * n))
redis.call('HINCRBY', KEYS[4], 'w:' .. ARGV[6], 1)
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[5])
if KEYS[7] then
  redis.call('ZADD', KEYS[7], math.floor(tonumber(ARGV[7]) * 1000 + 0.5), ARGV[5])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'uuid', ARGV[5], 'added_ms', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 'added'
"#
);

/// Cancels a task by its status at this moment, in one step (so no worker takes it in
/// between): `new` becomes `cancel` (a take drops it; a delayed one leaves `delayed` at once)
/// and its waiters are told (its time to live starts when a take drops its entry, see
/// [`MARK`]); for `process` the request is stored (`N:qtasks:cancel_requests`,
/// seen by the holder's next renewal and by its finish, which then stores `cancel`) and the
/// workers are told at once by a message; any other status stays. KEYS: record, delayed, stats,
/// cancel requests. ARGV: reason, done channel, cancel channel, uuid, ttl_ms (0: keep). Returns
/// the status found (`missing` for no record).
pub(super) const CANCEL: &str = concat!(
    counting!(),
    r#"
local found = redis.call('HMGET', KEYS[1], 'status', 'task_name', 'priority')
local status = found[1]
if not status then return 'missing' end
if status == 'new' then
  -- A request from when it ran (it was handed back since) is answered now.
  redis.call('HDEL', KEYS[4], ARGV[4])
  local t = redis.call('TIME')
  local now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'status', 'cancel', 'cancel_reason', ARGV[1], 'updated_at', now_s, 'finished_at', now_s)
  local was_delayed = 0
  if found[2] and found[3] then
    was_delayed = redis.call('ZREM', KEYS[2], found[2] .. ':' .. ARGV[4] .. ':' .. found[3])
  end
  local ttl = tonumber(ARGV[5])
  if was_delayed == 0 then
    -- Still in the queue until a take drops it; no longer waiting. The record keeps until
    -- then (the take starts its time to live), so the take finds it and drops the entry.
    redis.call('HINCRBY', KEYS[3], 'cancelled:' .. (tonumber(found[3]) or 0), 1)
    redis.call('HSET', KEYS[1], 'queued_cancel', ttl)
  elseif ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  count_ended(KEYS[3], bucket_now('cancel'))
  redis.call('PUBLISH', ARGV[2], ARGV[4])
elseif status == 'process' then
  redis.call('HSET', KEYS[4], ARGV[4], ARGV[1])
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. ARGV[1])
end
return status
"#
);

/// Deletes a record (and its place in the records' index). A task cancelled while it waited
/// whose entry is still queued (`queued_cancel`) is remembered in `N:qtasks:gone`, so the take
/// that meets the entry drops it quietly. KEYS: record, gone, then the index when it is kept.
/// ARGV: uuid. Returns 1 deleted, 0 no such record.
pub(super) const DELETE: &str = r#"
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' and redis.call('HEXISTS', KEYS[1], 'queued_cancel') == 1 then
  redis.call('SADD', KEYS[2], ARGV[1])
end
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[1]) end
return redis.call('DEL', KEYS[1])
"#;

/// Ends a record `error` with a reason if, and only if, it exists as a hash and has not ended
/// (an entry that cannot run names it), applies the retention and tells its waiters. KEYS:
/// record, stats.
/// ARGV: traceback, now, ttl_ms (0: keep), done channel, uuid.
pub(super) const FAIL_IF_STORED: &str = concat!(
    counting!(),
    r#"
-- Only a hash is a record (a key of another type under a record's name is left alone).
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local before = redis.call('HGET', KEYS[1], 'status')
-- A final record keeps its outcome: each attempt has one.
if before == 'success' or before == 'error' or before == 'cancel' or before == 'retry' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'error', 'traceback', ARGV[1], 'updated_at', ARGV[2])
count_ended(KEYS[2], bucket_now('error'))
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#
);

/// Hands a delivery back without an outcome, if its token still holds the lease: the member
/// returns to `ready` at its place (marked recovered, as it may have started, unless ARGV[4]
/// says it never did) and the record to `new`, so any worker takes it at once. A delivery
/// handed back did not die with its worker: it is not counted among the task's `deliveries`.
/// KEYS: leases, ready, recovered, record. ARGV: lease member (token and member), member,
/// priority, `1` when it never started (optional). Returns 1, or 0 when the lease was not this
/// delivery's any more.
pub(super) const RELEASE: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[2])
if ARGV[4] ~= '1' then redis.call('SADD', KEYS[3], ARGV[2]) end
if redis.call('TYPE', KEYS[4])['ok'] == 'hash' then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[4], 'status', 'new', 'updated_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
  if (tonumber(redis.call('HGET', KEYS[4], 'deliveries') or '0') or 0) > 0 then
    redis.call('HINCRBY', KEYS[4], 'deliveries', -1)
  end
end
return 1
"#;

/// The queue's live numbers, from the structures and counters alone (nothing scanned; the
/// walk over priorities is one step per distinct priority, at most 100).
/// KEYS: ready, task_queue, incoming, delayed, leases, dead, stats.
/// Returns `{waiting, delayed, running, dead, unsorted, counters, now, heads}`:
/// `waiting` = `{priority, count, first member}...`; `unsorted` = entries pushed and not yet
/// sorted into `ready`; `counters` = the stats hash (flat, with the throughput buckets);
/// `now` = Redis's Unix second; `heads` = the first entries of `incoming` and
/// `task_queue` (or false).
pub(super) const STATS: &str = r#"
local waiting = {}
local cursor = '-inf'
while #waiting < 100 do
  local first = redis.call('ZRANGEBYSCORE', KEYS[1], cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 0 then break end
  local p = first[2]
  waiting[#waiting + 1] = {p, redis.call('ZCOUNT', KEYS[1], p, p), first[1]}
  cursor = '(' .. p
end
local unsorted = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
local heads = {redis.call('LINDEX', KEYS[3], 0) or false, redis.call('LINDEX', KEYS[2], 0) or false}
return {
  waiting,
  redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[5]),
  redis.call('LLEN', KEYS[6]),
  unsorted,
  redis.call('HGETALL', KEYS[7]),
  tonumber(redis.call('TIME')[1]),
  heads,
}
"#;

/// Takes one dead letter out of the list (by its exact JSON): queued again when ARGV[2] is
/// `1`, else dropped. A letter of a task set aside by a worker that could not run it (`bury`)
/// brings its record back to `new` when it is queued again (`revive`). KEYS: dead, the queue's
/// list, its stats, the record (a letter without one names any key). ARGV: the letter's JSON,
/// requeue, the entry, revive (`1` or `0`), and the channel that announces a named queue's
/// entries with the queue's name (or '' '').
/// Returns 1, or 0 when no such letter is there.
pub(super) const RESOLVE_DEAD: &str = concat!(
    priorities!(),
    r#"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[2] == '1' then
  if ARGV[4] == '1' then
    if redis.call('TYPE', KEYS[4])['ok'] ~= 'hash' then return 1 end
    local t = redis.call('TIME')
    redis.call('HDEL', KEYS[4], 'traceback', 'finished_at', 'started_at', 'worker', 'finished_by', 'error_payload')
    redis.call('HSET', KEYS[4], 'status', 'new', 'hand_backs', 0, 'deliveries', 0, 'updated_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
    redis.call('PERSIST', KEYS[4])
  end
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'queued:' .. priority_of(ARGV[3]), 1)
  if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
end
return 1
"#
);

/// Hands a delivery the worker cannot run back to its queue's `delayed`, due after a delay by
/// Redis's clock, if its token still holds the lease: the record goes back to `new`, one more
/// `hand_backs`, and the take is not counted among its `deliveries` (the task did not die with
/// a worker). A cancel requested while it was held wins: the record ends `cancel` instead.
/// KEYS: leases, the queue's delayed, record, cancel requests, stats. ARGV: lease member (token
/// and member), entry, delay ms, uuid, ttl ms (0: keep), done channel.
/// Returns 1 handed back, 2 cancelled, 0 when the lease was not this delivery's any more.
pub(super) const DEFER: &str = concat!(
    counting!(),
    handing_back!(),
    r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if hand_back(t, ARGV[2], ARGV[4], now_ms + tonumber(ARGV[3]), ARGV[5], ARGV[6], true) then
  return 2
end
return 1
"#
);

/// Writes a new record unless one exists, and indexes it. A task whose record was deleted
/// after a cancel while its message still waited (`N:qtasks:gone`) is not written again: the
/// broker that meets the message drops it. KEYS: record, records_stats, records_waiting, gone,
/// then the records' index (when it is kept). ARGV: uuid, priority, created_at, field count
/// n, then n field/value pairs. Returns 1 when written, 0 when the record existed (or is gone).
pub(super) const INSERT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SREM', KEYS[4], ARGV[1]) == 1 then return 0 end
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + 2 * n))
redis.call('HINCRBY', KEYS[2], 'w:' .. ARGV[2], 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if KEYS[5] then
  redis.call('ZADD', KEYS[5], math.floor(tonumber(ARGV[3]) * 1000 + 0.5), ARGV[1])
end
return 1
"#;

/// Changes a record only while its status is one of those allowed, and keeps the counters.
/// KEYS: record, records_stats, records_waiting. ARGV: uuid, the allowed statuses (each between
/// spaces: ` new process `), the new status, the done channel, the result time to live (ms, 0:
/// none), field count n, then n field/value pairs. Returns `applied:{old}`, `kept:{old}`,
/// `cancelled:{old}` (a cancel requested while the task ran, kept in the record's
/// `cancel_requested`, won over a take or an end: the record is `cancel` now), or `missing`.
///
/// A `new` record cancelled keeps (its time to live not started, `queued_cancel` set) until a
/// take meets its message and is refused: then the message is dropped and the time to live
/// starts. So the record is there to refuse the take, and a delete before it is remembered
/// (see [`DELETE`]).
pub(super) const TRANSITION: &str = concat!(
    counting!(),
    r#"
local old = redis.call('HGET', KEYS[1], 'status')
if not old then return 'missing' end
if not string.find(ARGV[2], ' ' .. old .. ' ', 1, true) then
  local queued = redis.call('HGET', KEYS[1], 'queued_cancel')
  if queued and ARGV[3] == 'process' then
    -- A take of a task cancelled while it waited: its message goes now.
    redis.call('HDEL', KEYS[1], 'queued_cancel')
    if (tonumber(queued) or 0) > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(queued)) end
  end
  return 'kept:' .. old
end
local new = ARGV[3]
local n = tonumber(ARGV[6])
local answer = 'applied:'
local requested = redis.call('HGET', KEYS[1], 'cancel_requested')
if ARGV[7] == 'cancel_requested' then
  -- The request itself: kept with the record, status unchanged.
  requested = false
elseif requested and new ~= 'new' and new ~= 'cancel' then
  -- Taken again or ending: a cancel asked while it ran wins over the change.
  local t = redis.call('TIME')
  local now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'status', 'cancel', 'cancel_reason', requested, 'updated_at', now_s, 'finished_at', now_s)
  redis.call('HDEL', KEYS[1], 'cancel_requested')
  new = 'cancel'
  n = 0
  answer = 'cancelled:'
elseif new == 'success' or new == 'error' or new == 'cancel' or new == 'retry' then
  redis.call('HDEL', KEYS[1], 'cancel_requested')
end
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 7, 6 + 2 * n)) end
if new == 'new' and (old == 'success' or old == 'error' or old == 'cancel' or old == 'retry') then
  -- Brought back (a dead letter requeued): its end is undone, and its retention.
  redis.call('HDEL', KEYS[1], 'traceback', 'finished_at', 'started_at', 'worker', 'error_payload', 'returning')
  redis.call('PERSIST', KEYS[1])
end
local priority = redis.call('HGET', KEYS[1], 'priority') or '0'
if old == 'new' and new ~= 'new' then
  redis.call('HINCRBY', KEYS[2], 'w:' .. priority, -1)
  redis.call('ZREM', KEYS[3], ARGV[1])
elseif new == 'new' and old ~= 'new' then
  redis.call('HINCRBY', KEYS[2], 'w:' .. priority, 1)
  redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'created_at') or '0', ARGV[1])
end
if old == 'process' then redis.call('HINCRBY', KEYS[2], 'running', -1) end
if new == 'process' then redis.call('HINCRBY', KEYS[2], 'running', 1) end
if new == 'success' or new == 'error' or new == 'cancel' or new == 'retry' then
  count_ended(KEYS[2], bucket_now(new))
  local ttl = tonumber(ARGV[5])
  if new == 'cancel' and old == 'new' then
    redis.call('HSET', KEYS[1], 'queued_cancel', ttl)
  elseif ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  redis.call('PUBLISH', ARGV[4], ARGV[1])
end
return answer .. old
"#
);

/// The counters of [`INSERT`] and [`TRANSITION`]. KEYS: records_stats, records_waiting.
/// Returns the counters, the oldest waiting record's creation time (or false) and Redis's
/// second.
pub(super) const RECORD_STATS: &str = r#"
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {redis.call('HGETALL', KEYS[1]), oldest[2] or false, tonumber(redis.call('TIME')[1])}
"#;

/// Writes a worker's description with its time to live, lists it until then, and drops the
/// workers whose descriptions ran out, all by Redis's clock (a worker whose clock is off is
/// listed as long as it lives, no more, no less). KEYS: the description, the workers' list.
/// ARGV: the description (JSON), its time to live (ms), the worker's id.
pub(super) const SET_WORKER: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
return 1
"#;

/// Decides whether a delivered task of a limited task starts now (see `qtasks::limits`), in
/// one step across every worker: over `max_running` it is parked, over its rate it is given its
/// turn; either way it is handed back to its queue's `delayed` as [`DEFER`] does, without a
/// hand-back counted.
///
/// - Running slots: `N:qtasks:limits:running:{task}` (SET) holds the lease members of the runs
///   that hold one. A member whose lease is gone or ran out (its run ended, its worker died) is
///   dropped as it is met, so a dead worker's slot frees itself with its lease.
/// - Parked tasks: `N:qtasks:limits:parked:{task}` (LIST) of `{queue tag}|{entry}`, in the
///   order they asked; each also waits in `delayed`, due after ARGV[6] in case no leave wakes it.
/// - Rates: `N:qtasks:limits:rate:{key}` (HASH): `next`, the earliest next start, and per task
///   handed back until its turn, its uuid → the turn (µs, Redis clock). A task that comes back
///   at its turn starts without taking another.
///
/// KEYS: leases, the queue's delayed, record, cancel requests, stats, rate, running, parked.
/// ARGV: lease member (token and member), entry, uuid, the rate's interval in µs (0: none),
/// max_running (0: none), the parked recheck in ms, ttl ms (0: keep), done channel, queue tag.
/// Returns `{0}` lost (the lease is not this delivery's), `{1, wait_us}` handed back until its
/// turn, `{2}` parked, `{3}` cancelled while held (the record ends `cancel`), `{4}` run.
pub(super) const ADMIT: &str = concat!(
    counting!(),
    handing_back!(),
    r#"
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
if not lease or tonumber(lease) <= now_ms then return {0} end

-- Back to `delayed`, due at `due_ms`, counting no hand-back. True when a cancel requested
-- while it was held ended it instead.
local function back(due_ms)
  redis.call('ZREM', KEYS[1], ARGV[1])
  return hand_back(t, ARGV[2], ARGV[3], due_ms, ARGV[7], ARGV[8], false)
end

local max = tonumber(ARGV[5])
if max > 0 then
  local held, mine = 0, false
  for _, holder in ipairs(redis.call('SMEMBERS', KEYS[7])) do
    local until_ms = redis.call('ZSCORE', KEYS[1], holder)
    if until_ms and tonumber(until_ms) > now_ms then
      held = held + 1
      if holder == ARGV[1] then mine = true end
    else
      redis.call('SREM', KEYS[7], holder)
    end
  end
  if held >= max and not mine then
    if back(now_ms + tonumber(ARGV[6])) then return {3} end
    -- A turn its rate gave it before is given up: woken, it takes a new one.
    if tonumber(ARGV[4]) > 0 then redis.call('HDEL', KEYS[6], ARGV[3]) end
    -- Parked once, however often it looks again.
    local item = ARGV[9] .. '|' .. ARGV[2]
    redis.call('LREM', KEYS[8], 0, item)
    redis.call('RPUSH', KEYS[8], item)
    return {2}
  end
end

local interval = tonumber(ARGV[4])
if interval > 0 then
  local wait_us = 0
  local turn = tonumber(redis.call('HGET', KEYS[6], ARGV[3]) or '')
  if turn then
    if turn <= now_us + 1000 then
      redis.call('HDEL', KEYS[6], ARGV[3])
    else
      wait_us = turn - now_us
    end
  else
    local start = math.max(tonumber(redis.call('HGET', KEYS[6], 'next') or '0') or 0, now_us)
    redis.call('HSET', KEYS[6], 'next', string.format('%.0f', start + interval))
    -- Kept a day past the last turn given. The turns of tasks cancelled while they waited
    -- stay behind: past 10,000 fields, about one admission in 64 drops those an hour old.
    redis.call('PEXPIRE', KEYS[6], math.floor((start + interval - now_us) / 1000) + 86400000)
    if now_us % 64 == 0 and redis.call('HLEN', KEYS[6]) > 10000 then
      local fields = redis.call('HGETALL', KEYS[6])
      for i = 1, #fields, 2 do
        if fields[i] ~= 'next' and (tonumber(fields[i + 1]) or 0) < now_us - 3600000000 then
          redis.call('HDEL', KEYS[6], fields[i])
        end
      end
    end
    if start > now_us + 1000 then
      redis.call('HSET', KEYS[6], ARGV[3], string.format('%.0f', start))
      wait_us = start - now_us
    end
  end
  if wait_us > 0 then
    if back(now_ms + math.ceil(wait_us / 1000)) then return {3} end
    return {1, wait_us}
  end
end

if max > 0 then redis.call('SADD', KEYS[7], ARGV[1]) end
return {4}
"#
);

/// Gives back the running slot of an admitted run (see [`ADMIT`]) and wakes as many tasks
/// parked for a slot as there are free slots: the holders whose lease is gone or ran out are
/// dropped first, so a slot freed by a run that ended (its lease released by its finish) and
/// already cleaned by another admission still wakes a parked task. A woken task's entry moves
/// from its queue's `delayed` to its list, as [`RELEASE_DELAYED`] does, and is announced.
/// Parked items whose task went meanwhile (taken by its recheck, cancelled) are dropped on the
/// way, at most 100 per call.
///
/// Like [`TAKE`], it names keys it was not given: the woken task's queue keys, built from the
/// prefix (its queue is in the parked item).
///
/// KEYS: running, parked, leases. ARGV: lease member, the app's key prefix, the channel that
/// announces a queue's entries, max_running. Returns how many parked tasks were woken.
pub(super) const LEAVE: &str = concat!(
    priorities!(),
    r#"
redis.call('SREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = 0
for _, holder in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local until_ms = redis.call('ZSCORE', KEYS[3], holder)
  if until_ms and tonumber(until_ms) > now_ms then
    live = live + 1
  else
    redis.call('SREM', KEYS[1], holder)
  end
end
local free = tonumber(ARGV[4]) - live
local woken = 0
for _ = 1, 100 do
  if woken >= free then break end
  local item = redis.call('LPOP', KEYS[2])
  if not item then break end
  local tag, entry = string.match(item, '^([^|]*)|(.+)$')
  if entry then
    local delayed, list, stats
    if tag == '' then
      delayed, list, stats = ARGV[2] .. ':qtasks:delayed', ARGV[2] .. ':task_queue', ARGV[2] .. ':qtasks:stats'
    else
      local base = ARGV[2] .. ':qtasks:q:' .. tag
      delayed, list, stats = base .. ':delayed', base .. ':list', base .. ':stats'
    end
    if redis.call('ZREM', delayed, entry) == 1 then
      redis.call('RPUSH', list, entry)
      redis.call('HINCRBY', stats, 'queued:' .. priority_of(entry), 1)
      redis.call('PUBLISH', ARGV[3], tag == '' and 'default' or tag)
      woken = woken + 1
    end
  end
end
return woken
"#
);

#[cfg(test)]
mod tests {
    use super::TAKE;
    use qtasks_test_support::redis::raw_connection;
    use qtasks_test_support::{redis_url, unique_prefix};

    /// A task as the take returns it: member, recovered, token, mark.
    type Taken = (String, i64, String, Option<redis::Value>);

    /// One take of at most `count` tasks from the default queue under the token `prefix`
    /// (28 characters); `resent` as a take sent again. Returns (member, token, mark) per task.
    async fn take(
        con: &mut redis::aio::MultiplexedConnection,
        app: &str,
        prefix: &str,
        count: usize,
        resent: bool,
    ) -> Vec<(String, String, Option<redis::Value>)> {
        let script = redis::Script::new(TAKE);
        let mut invocation = script.prepare_invoke();
        for key in [
            "qtasks:seq",
            "qtasks:leases",
            "qtasks:recovered",
            "qtasks:paused",
            "task_queue",
            "qtasks:incoming",
            "qtasks:ready",
            "qtasks:delayed",
            "qtasks:stats",
            "qtasks:stats",
            "qtasks:gone",
        ] {
            invocation.key(format!("{app}:{key}"));
        }
        invocation
            .arg(60_000)
            .arg(count)
            .arg(prefix)
            .arg(app)
            .arg(1)
            .arg("")
            .arg(count)
            .arg("1796395301.5")
            .arg(u8::from(resent));
        let (taken, _): (Vec<Taken>, Option<f64>) = invocation.invoke_async(con).await.unwrap();
        taken
            .into_iter()
            .map(|(member, _, token, mark)| (member, token, mark))
            .collect()
    }

    /// Writes `n` records and their entries under `app`; returns their uuids.
    async fn queue(
        con: &mut redis::aio::MultiplexedConnection,
        app: &str,
        n: usize,
    ) -> Vec<uuid::Uuid> {
        let mut uuids = Vec::new();
        for _ in 0..n {
            let uuid = uuid::Uuid::new_v4();
            let _: () = redis::cmd("HSET")
                .arg(format!("{app}:{uuid}"))
                .arg(&[
                    "task_name",
                    "t",
                    "priority",
                    "0",
                    "args",
                    "[]",
                    "kwargs",
                    "{}",
                ])
                .arg(&["created_at", "1", "updated_at", "1", "status", "new"])
                .arg(&["deliveries", "0"])
                .query_async(con)
                .await
                .unwrap();
            let _: () = redis::cmd("RPUSH")
                .arg(format!("{app}:task_queue"))
                .arg(format!("t:{uuid}:0"))
                .query_async(con)
                .await
                .unwrap();
            uuids.push(uuid);
        }
        uuids
    }

    /// Deletes the keys of `app`.
    async fn clean(con: &mut redis::aio::MultiplexedConnection, app: &str) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{app}:*"))
            .query_async(con)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL").arg(&keys).query_async(con).await.unwrap();
    }

    /// A big take marks its tasks without carrying their records (the worker reads them
    /// itself); a small one carries them in its answer.
    #[tokio::test]
    #[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
    async fn a_big_take_leaves_the_records_to_the_worker_and_a_small_one_carries_them() {
        let Some(url) = redis_url("a_big_take_leaves_the_records_to_the_worker") else {
            return;
        };
        let app = unique_prefix("inline");
        let mut con = raw_connection(&url).await;
        queue(&mut con, &app, 17).await;
        // Nine: one more than a take carries.
        let big = take(&mut con, &app, &"c".repeat(28), 9, false).await;
        assert_eq!(big.len(), 9);
        for (member, _, mark) in &big {
            // No record in a big take's answer: a task to run is its delivery count alone.
            assert_eq!(
                mark.as_ref(),
                Some(&redis::Value::Int(1)),
                "its first delivery, without its record"
            );
            let uuid = member.rsplit(':').nth(1).unwrap();
            let status: String = redis::cmd("HGET")
                .arg(format!("{app}:{uuid}"))
                .arg("status")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(status, "process", "marked all the same");
        }
        // Eight: carried.
        let small = take(&mut con, &app, &"d".repeat(28), 8, false).await;
        assert_eq!(small.len(), 8);
        for (_, _, mark) in &small {
            let Some(redis::Value::Array(mark)) = mark else {
                panic!("marked: {mark:?}")
            };
            let redis::Value::Array(record) = &mark[1] else {
                panic!("a small take carries the record: {mark:?}")
            };
            assert!(record.contains(&redis::Value::BulkString(b"task_name".to_vec())));
        }
        clean(&mut con, &app).await;
    }

    /// A take sent again after its reply was lost hands out what its first send leased (marked
    /// by the same tokens: counted once), not more tasks; a take that never ran takes anew.
    #[tokio::test]
    #[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
    async fn a_take_sent_again_hands_out_what_the_first_send_leased() {
        let Some(url) = redis_url("a_take_sent_again_hands_out_what_the_first_send_leased") else {
            return;
        };
        let app = unique_prefix("resent");
        let mut con = raw_connection(&url).await;
        let uuids = queue(&mut con, &app, 2).await;
        let first_prefix = "a".repeat(28);
        let first = take(&mut con, &app, &first_prefix, 1, false).await;
        assert_eq!(first.len(), 1);
        assert!(first[0].0.ends_with(&format!("t:{}:0", uuids[0])));
        // Its reply "lost": the same call sent again gets the same task, marked again by the
        // same token, and its delivery is counted once.
        let again = take(&mut con, &app, &first_prefix, 1, true).await;
        assert_eq!(
            again.iter().map(|(m, t, _)| (m, t)).collect::<Vec<_>>(),
            first.iter().map(|(m, t, _)| (m, t)).collect::<Vec<_>>()
        );
        assert!(again[0].2.is_some(), "marked again");
        let deliveries: String = redis::cmd("HGET")
            .arg(format!("{app}:{}", uuids[0]))
            .arg("deliveries")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(deliveries, "1");
        // A resend whose first send never ran finds no lease of its prefix: it takes anew.
        let other = take(&mut con, &app, &"b".repeat(28), 1, true).await;
        assert_eq!(other.len(), 1);
        assert!(other[0].0.ends_with(&format!("t:{}:0", uuids[1])));
        clean(&mut con, &app).await;
    }
}
