//! The Redis broker: add, take (under a lease) and finish, each one round trip.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::link::Link;
use redis::Script;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::batch::{Batcher, ReplicaWait, ScriptPart};
use super::storage::is_transient;
use super::wire::{
    decode_record, new_record_fields, outcome_fields, parse_entry, queue_entry, taken_fields,
};
use super::{Keys, QueueKeys, RedisOptions, failure, scripts};
use qtasks_core::backend::{
    BackendError, Broker, CancelRequest, CancelState, Delivery, ErrorChain, unix_now,
};
use qtasks_core::limits::{Admission, PARKED_RECHECK, TaskLimits};
use qtasks_core::queues::{DEFAULT_QUEUE, Take};
use qtasks_core::stats::{DeadLetter, QueueStats};
use qtasks_core::{Outcome, QueuedTask, TaskStatus};

/// How many times a renewal is sent again when its connection drops.
const RENEW_RETRIES: usize = 3;

/// How many times a take is sent again when its connection drops.
const TAKE_RETRIES: usize = 3;

/// How long an outcome is retried through an outage, in leases: past that the lease is long
/// gone and another worker runs the task (so nothing is lost by giving up).
const FINISH_PATIENCE_LEASES: u32 = 10;

/// The most outcomes one finish script call writes (a batch forms while the one before is on
/// the wire; see `batch`).
const FINISH_BATCH: usize = 256;

/// The most new tasks one add script call writes (see `batch`).
const ADD_BATCH: usize = 512;

/// Why a run stops when its worker lost the lease.
const LEASE_LOST: &str =
    "LeaseLost: the task's lease ran out while this worker stalled; another worker runs it";

/// The length of a delivery token: 28 random hex digits per take call, then 4 for the task's
/// place in the batch.
const TOKEN_LEN: usize = 32;

/// How long an idle worker blocks waiting for a new entry before it looks for expired leases.
/// How long until a delayed task due at `due_ms` (ms, Redis clock) may run, by this process's
/// clock: at least 10 ms, so a wait for one already due does not spin.
pub(crate) fn until_due(due_ms: i64) -> Duration {
    let now_ms = (unix_now() * 1000.0) as i64;
    Duration::from_millis(u64::try_from(due_ms - now_ms).unwrap_or(0))
        .max(Duration::from_millis(10))
}

pub(super) fn idle_wait(options: &RedisOptions) -> Duration {
    (options.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// One task the take script returned: member, recovered (1 or 0), token, and its mark (`None`:
/// not marked, its entry is not in canonical form; see `scripts::TAKE`). The member stays bytes
/// until it is decoded on its own.
type Taken = (Vec<u8>, i64, String, Option<Marked>);

/// What the mark script found for one taken task.
enum Marked {
    /// Run it: its record (flat field and value pairs, as read just before the mark; `None`
    /// when a big take left it to the worker, which reads it after the mark), now marked
    /// `process`, and how many times its task has been handed out, this time included.
    Run(Option<Vec<Vec<u8>>>, u32),
    /// Its record cannot be marked (the reason): it ends alone, the rest of the batch runs.
    Bad(String),
    /// It has no record.
    Missing,
    /// Its record is final already (cancelled while it waited): not run; lease dropped.
    Ended,
    /// Its lease is gone already: not this worker's.
    Lost,
}

impl redis::FromRedisValue for Marked {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        // A big take's mark of a task to run is its delivery count alone (the record is read
        // next, outside the script).
        if let redis::Value::Int(deliveries) = value {
            return Ok(Marked::Run(
                None,
                u32::try_from(deliveries.max(1)).unwrap_or(u32::MAX),
            ));
        }
        let mut items = redis::from_redis_value::<Vec<redis::Value>>(value)?.into_iter();
        let kind: String = match items.next() {
            Some(kind) => redis::from_redis_value(kind)?,
            None => String::new(),
        };
        Ok(match kind.as_str() {
            "run" => {
                let fields = match items.next() {
                    Some(fields) => redis::from_redis_value(fields)?,
                    None => None,
                };
                let deliveries = match items.next() {
                    Some(count) => redis::from_redis_value::<i64>(count)?,
                    None => 1,
                };
                Marked::Run(fields, u32::try_from(deliveries.max(1)).unwrap_or(u32::MAX))
            }
            "bad" => Marked::Bad(match items.next() {
                Some(reason) => redis::from_redis_value(reason)?,
                None => "its record cannot be marked".to_owned(),
            }),
            "missing" => Marked::Missing,
            "ended" => Marked::Ended,
            _ => Marked::Lost,
        })
    }
}

/// Stops holding the deliveries of a take if the call that took them is dropped before it
/// hands them over (so they are not renewed forever by a live worker that will never run them).
struct HoldGuard<'a> {
    held: &'a Mutex<HashSet<String>>,
    receipts: Vec<String>,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        if !self.receipts.is_empty() {
            let mut held = self.held.lock();
            for receipt in &self.receipts {
                held.remove(receipt);
            }
        }
    }
}

/// A delivery's receipt: its token, then its lease member (the token has a fixed length).
fn receipt(token: &str, member: &str) -> String {
    format!("{token}{member}")
}

/// The token and the lease member of a receipt.
fn split_receipt(receipt: &str) -> (&str, &str) {
    receipt.split_at(TOKEN_LEN.min(receipt.len()))
}

/// A taken task whose entry names it: what the mark script and the delivery need.
struct Named {
    /// The `ready` member (`{seq}|name:uuid:priority`).
    member: String,
    uuid: Uuid,
    recovered: bool,
    token: String,
}

impl Named {
    /// This delivery's receipt: its lease member with the token.
    fn receipt(&self) -> String {
        receipt(&self.token, &self.member)
    }
}

/// The queue entry of a `ready` member (`{seq}|entry`).
fn entry_of(member: &str) -> &str {
    member.split_once('|').map_or(member, |(_, entry)| entry)
}

/// The uuid a malformed entry names in its second field, if it names one.
fn entry_uuid(entry: &str) -> Option<Uuid> {
    entry
        .split(':')
        .nth(1)
        .and_then(|uuid| Uuid::parse_str(uuid).ok())
}

/// The named queue a lease member (a token, then `{seq}@{queue}|entry`) was taken from.
fn leased_queue(leased: &[u8]) -> Option<String> {
    let member = leased.get(TOKEN_LEN..)?;
    let bar = member.iter().position(|b| *b == b'|')?;
    let head = std::str::from_utf8(&member[..bar]).ok()?;
    let (_, queue) = head.split_once('@')?;
    qtasks_core::queues::check_queue_name(queue)
        .is_ok()
        .then(|| queue.to_owned())
}

/// The uuid in a lease member (`{seq}|name:uuid:priority`), if it has one.
fn member_uuid(member: &str) -> Option<Uuid> {
    parse_entry(entry_of(member)).ok().map(|(_, uuid, _)| uuid)
}

pub(crate) struct RedisBroker {
    /// When the next delayed task of the last take's queues may run (ms, Redis clock;
    /// `i64::MAX`: none known): a partitioned app's take waits until then at most.
    next_due_ms: std::sync::atomic::AtomicI64,
    keys: Keys,
    commands: Link,
    /// The connection of the writes that wait for replicas (`commands` when none do).
    writes: Link,
    blocking: Link,
    options: RedisOptions,
    take: Script,
    mark: Script,
    renew: Script,
    requeue: Script,
    /// The outcomes on their way to Redis, written in batches (`batch`).
    finishes: Batcher,
    /// The new tasks of the default queue on their way to Redis, written in batches (`batch`).
    adds: Batcher,
    /// The same for each named queue, made at its first add.
    named_adds: Mutex<std::collections::HashMap<String, Arc<Batcher>>>,
    /// Woken when an entry is pushed to a named queue (the storage's subscription hears it).
    added: Arc<crate::Announcements>,
    /// The deliveries this process holds (their receipts: token and lease member), renewed
    /// while it lives. Keyed by the whole receipt, not the member: after a stall this process
    /// may hold an old and a new delivery of one task, and each is renewed, ended and stopped
    /// on its own.
    held: Arc<Mutex<HashSet<String>>>,
    renewer: Mutex<Option<JoinHandle<()>>>,
    cancels: broadcast::Sender<CancelRequest>,
    /// The server's URL without its password.
    location: String,
}

/// The broker's connections to Redis.
pub(super) struct Connections {
    /// Every command but the blocking waits (and the waited writes, when there are).
    pub(super) commands: Link,
    /// The blocking waits of an idle worker, with room for the longest.
    pub(super) blocking: Link,
    /// The writes that wait for replicas, when `RedisOptions::wait_for_replicas` is set.
    pub(super) waited: Option<Link>,
}

impl RedisBroker {
    pub(super) fn new(
        keys: Keys,
        connections: Connections,
        options: RedisOptions,
        cancels: broadcast::Sender<CancelRequest>,
        added: Arc<crate::Announcements>,
        location: String,
    ) -> Self {
        let Connections {
            commands,
            blocking,
            waited,
        } = connections;
        let ttl_ms = result_ttl_ms(&options);
        let replicas = options.wait_for_replicas;
        // Writes that wait for replicas go on a connection of their own: a `WAIT` holds its
        // connection, and renewals and takes must not queue behind it.
        let writes = waited.unwrap_or_else(|| commands.clone());
        RedisBroker {
            writes: writes.clone(),
            commands,
            blocking,
            options,
            take: Script::new(scripts::TAKE),
            mark: Script::new(scripts::MARK),
            renew: Script::new(scripts::RENEW),
            requeue: Script::new(scripts::REQUEUE_EXPIRED),
            finishes: Batcher::new(
                scripts::FINISH,
                writes.clone(),
                vec![
                    keys.leases.clone(),
                    keys.stats.clone(),
                    keys.cancel_requests.clone(),
                ],
                ScriptPart::with_args(&(ttl_ms, &keys.done_channel, &keys.prefix)),
                FINISH_BATCH,
                replicas.map(|wait| ReplicaWait {
                    wait,
                    late_fails: false,
                    what: "the finish",
                }),
            ),
            adds: add_batcher(&keys, None, writes, replicas),
            named_adds: Mutex::default(),
            added,
            keys,
            held: Arc::default(),
            renewer: Mutex::default(),
            cancels,
            location,
            next_due_ms: std::sync::atomic::AtomicI64::new(i64::MAX),
        }
    }

    /// When the next delayed task of the last take's queues may run (ms, Redis clock).
    pub(crate) fn next_due_ms(&self) -> Option<i64> {
        Some(self.next_due_ms.load(std::sync::atomic::Ordering::Relaxed))
            .filter(|ms| *ms != i64::MAX)
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.options.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes up to `take.max` tasks from its queues, marking those in canonical form; also
    /// returns when the next delayed task of one of them may run (ms, Redis clock).
    async fn take_batch(&self, take: &Take<'_>) -> Result<(Vec<Taken>, Option<i64>), BackendError> {
        use backon::Retryable;
        let token_prefix = &Uuid::new_v4().simple().to_string()[..TOKEN_LEN - 4];
        let queues: Vec<(QueueKeys<'_>, usize)> = take
            .queues
            .iter()
            .map(|queue| (self.keys.queue_keys(Some(queue.name)), queue.max))
            .collect();
        // A resend (its first send failed, perhaps after it ran) hands out what the first took.
        let sends = std::sync::atomic::AtomicUsize::new(0);
        let take = || async {
            let resent = sends.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
            let mut con = self.commands.clone();
            let mut invocation = self.take.key(&self.keys.sequence);
            invocation
                .key(&self.keys.leases)
                .key(&self.keys.recovered)
                .key(&self.keys.paused);
            for (keys, _) in &queues {
                invocation
                    .key(&*keys.list)
                    .key(&*keys.incoming)
                    .key(&*keys.ready)
                    .key(&*keys.delayed)
                    .key(&*keys.stats);
            }
            invocation.key(&self.keys.stats).key(&self.keys.gone);
            if let Some(index) = &self.keys.records_index {
                invocation.key(index);
            }
            invocation
                .arg(self.lease_ms())
                .arg(take.max.max(1))
                .arg(token_prefix)
                .arg(&self.keys.prefix)
                .arg(queues.len());
            for (keys, max) in &queues {
                invocation.arg(keys.tag).arg(*max);
            }
            invocation.arg(unix_now().to_string()).arg(u8::from(resent));
            invocation
                .invoke_async::<(Vec<Taken>, Option<f64>)>(&mut con)
                .await
        };
        // A dropped connection is replaced by the next command: try again soon. (Had the
        // dropped call taken tasks, their leases run out and they are taken again: nothing is
        // lost.) A longer outage goes back to the worker, which asks again later.
        let (taken, next_due) = take
            .retry(crate::reconnect_pauses().take(TAKE_RETRIES))
            .when(is_transient)
            .await
            .map_err(|e| failure("taking tasks failed".to_owned(), e))?;
        Ok((taken, next_due.map(|ms| ms as i64)))
    }

    /// Marks the taken tasks the take left unmarked (`scripts::MARK`): reads their records, by
    /// keys it declares, and marks them `process`.
    async fn mark(&self, tasks: &[&Named]) -> Result<Vec<Marked>, BackendError> {
        use backon::Retryable;
        let now = unix_now().to_string();
        let mark = || async {
            let mut invocation = self.mark.key(&self.keys.leases);
            invocation.key(&self.keys.stats).key(&self.keys.gone);
            for task in tasks {
                invocation.key(self.keys.record(task.uuid));
            }
            if let Some(index) = &self.keys.records_index {
                invocation.key(index);
            }
            invocation.arg(&now).arg(tasks.len());
            for task in tasks {
                invocation.arg(task.receipt());
            }
            let mut con = self.commands.clone();
            invocation.invoke_async::<Vec<Marked>>(&mut con).await
        };
        // Safe to send again: a second mark of a task finds it `process` and reads it again.
        mark.retry(crate::reconnect_pauses().take(TAKE_RETRIES))
            .when(is_transient)
            .await
            .map_err(|e| failure("reading the taken tasks failed".to_owned(), e))
    }

    /// Completes what the take left of its tasks' marks, in place: marks those it left unmarked
    /// (not in canonical form; `scripts::MARK`), then reads the records a big take left to the
    /// worker (`scripts::marking!`: one pipeline of plain reads costs Redis far less than
    /// carrying them through the script). A task either step fails for is dropped: its lease
    /// is no longer renewed and runs out, and a take meets it again.
    async fn complete_marks(&self, named: &mut Vec<(Named, Option<Marked>)>) {
        let unmarked: Vec<usize> = (0..named.len())
            .filter(|&at| named[at].1.is_none())
            .collect();
        if !unmarked.is_empty() {
            let tasks: Vec<&Named> = unmarked.iter().map(|&at| &named[at].0).collect();
            match self.mark(&tasks).await {
                Ok(marks) => {
                    for (&at, marked) in unmarked.iter().zip(marks) {
                        named[at].1 = Some(marked);
                    }
                }
                Err(error) => self.drop_to_leases(named, &unmarked, &error),
            }
        }
        let unread: Vec<usize> = (0..named.len())
            .filter(|&at| matches!(named[at].1, Some(Marked::Run(None, _))))
            .collect();
        if unread.is_empty() {
            return;
        }
        let tasks: Vec<&Named> = unread.iter().map(|&at| &named[at].0).collect();
        match self.read_taken(&tasks).await {
            Ok(records) => {
                let mut records = records.into_iter();
                for &at in &unread {
                    named[at].1 = Some(match records.next() {
                        // Deleted since its mark: as if it had none.
                        Some(Ok(record)) if record.is_empty() => Marked::Missing,
                        Some(Ok(record)) => match named[at].1.take() {
                            Some(Marked::Run(_, handed_out)) => {
                                Marked::Run(Some(record), handed_out)
                            }
                            other => other.unwrap_or(Marked::Lost),
                        },
                        Some(Err(reason)) => Marked::Bad(reason),
                        // (A reply short of records leaves the rest to their leases.)
                        None => Marked::Lost,
                    });
                }
            }
            Err(error) => self.drop_to_leases(named, &unread, &error),
        }
    }

    /// Drops the tasks at `positions` of a take (a step to complete their marks failed with
    /// `error`): they are no longer held, so their leases run out and a take meets them again.
    fn drop_to_leases(
        &self,
        named: &mut Vec<(Named, Option<Marked>)>,
        positions: &[usize],
        error: &BackendError,
    ) {
        tracing::error!(app = %self.keys.prefix, "reading {} taken task(s) failed; they are taken again when their leases run out: {}", positions.len(), ErrorChain(error));
        for &at in positions {
            self.unhold(&named[at].0.receipt());
        }
        let mut at = 0;
        named.retain(|_| {
            at += 1;
            !positions.contains(&(at - 1))
        });
    }

    /// Reads the records of taken tasks a big take marked without reading them (flat field and
    /// value pairs, in the order of `tasks`), in one pipeline: each on its own, so a record
    /// spoiled since its mark (its key holds no hash now) fails alone, with the reason. Safe to
    /// send again: it only reads.
    async fn read_taken(
        &self,
        tasks: &[&Named],
    ) -> Result<Vec<Result<Vec<Vec<u8>>, String>>, BackendError> {
        use backon::Retryable;
        let read = || async {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for task in tasks {
                pipe.cmd("HGETALL").arg(self.keys.record(task.uuid));
            }
            let mut con = self.commands.clone();
            let records = pipe
                .query_async::<Vec<redis::RedisResult<Vec<Vec<u8>>>>>(&mut con)
                .await?;
            // A server that is busy or loading answers every read so: sent again, as a take
            // is; only an answer about the record itself (its key holds no hash) is its own.
            let mut read = Vec::with_capacity(records.len());
            for record in records {
                match record {
                    Err(error) if is_transient(&error) => return Err(error),
                    record => {
                        read.push(
                            record.map_err(|error| format!("reading its record failed: {error}")),
                        );
                    }
                }
            }
            Ok(read)
        };
        read.retry(crate::reconnect_pauses().take(TAKE_RETRIES))
            .when(is_transient)
            .await
            .map_err(|e| failure("reading the taken tasks' records failed".to_owned(), e))
    }

    /// [`reject`](Self::reject), logging a failure rather than returning it: the entry's lease
    /// then runs out and a take meets it again.
    async fn reject_logged(&self, raw: Vec<u8>, token: &str, reason: &str) {
        if let Err(error) = self.reject(raw, token, reason).await {
            tracing::error!(app = %self.keys.prefix, "moving a bad entry to the dead letters failed; it is taken again when its lease runs out: {}", ErrorChain(&error));
        }
    }

    /// Moves a taken entry that names no runnable task (not UTF-8, not `name:uuid:priority`)
    /// to the dead letters with `reason`; the record it names, if any, ends `error`.
    async fn reject(&self, raw: Vec<u8>, token: &str, reason: &str) -> Result<(), BackendError> {
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let entry = entry_of(&shown);
        let reason = format!("QueueEntryError: {reason}");
        let mut leased = token.as_bytes().to_vec();
        leased.extend_from_slice(&raw);
        self.dead_letter(&leased, entry, entry_uuid(entry), &reason)
            .await
    }

    /// Turns a taken task into a delivery, or fails its record (unreadable) and returns `None`.
    /// `fields` are its record's, as the mark read them (flat field and value pairs).
    async fn deliver(
        &self,
        task: Named,
        fields: Vec<Vec<u8>>,
        deliveries: u32,
    ) -> Result<Option<Delivery>, BackendError> {
        let receipt = task.receipt();
        let Named {
            member,
            uuid,
            recovered,
            ..
        } = task;
        let entry = entry_of(&member);
        match decode_record(uuid, &taken_fields(fields))
            .map_err(|reason| format!("RecordError: {reason}"))
        {
            Ok(record) => Ok(Some(
                Delivery::new(QueuedTask::from_record(record), receipt)
                    .recovered(recovered)
                    .deliveries(deliveries),
            )),
            Err(traceback) => {
                tracing::error!(app = %self.keys.prefix, uuid = %uuid, "failing a task that cannot run: {traceback}");
                let task_name = entry.split(':').next().unwrap_or_default();
                let mut pipe = redis::pipe();
                pipe.atomic();
                self.fail_record(&mut pipe, uuid, task_name, &traceback);
                pipe.zrem(&self.keys.leases, &receipt);
                let mut con = self.commands.clone();
                pipe.exec_async(&mut con)
                    .await
                    .map_err(|e| failure(format!("failing task {uuid} failed"), e))?;
                self.unhold(&receipt);
                Ok(None)
            }
        }
    }

    /// Ends a record `error` with `traceback` (creating what it lacks, so a reader can read it),
    /// applies the retention and tells its waiters.
    fn fail_record(
        &self,
        pipe: &mut redis::Pipeline,
        uuid: Uuid,
        task_name: &str,
        traceback: &str,
    ) {
        let now = unix_now().to_string();
        let key = self.keys.record(uuid);
        pipe.hset_nx(&key, "task_name", task_name)
            .hset_nx(&key, "priority", 0)
            .hset_nx(&key, "args", "[]")
            .hset_nx(&key, "kwargs", "{}")
            .hset_nx(&key, "created_at", &now)
            .hset_multiple(
                &key,
                &[
                    ("updated_at", now.as_str()),
                    ("status", "error"),
                    ("traceback", traceback),
                ],
            );
        let ttl_ms = result_ttl_ms(&self.options);
        if ttl_ms > 0 {
            pipe.pexpire(&key, ttl_ms);
        }
        pipe.publish(&self.keys.done_channel, uuid.to_string())
            // Ended: a cancel asked of it has nothing left to stop.
            .hdel(&self.keys.cancel_requests, uuid.to_string());
    }

    /// Moves a queue entry that cannot run to the dead letters (`N:qtasks:dead`, capped and
    /// expiring) with the reason, releases its lease, and fails the record it names, if any.
    async fn dead_letter(
        &self,
        leased: &[u8],
        entry: &str,
        names: Option<Uuid>,
        reason: &str,
    ) -> Result<(), BackendError> {
        tracing::error!(app = %self.keys.prefix, "moving a queue entry that cannot run to the dead letters: {reason}");
        let mut dead = serde_json::json!({ "entry": entry, "reason": reason, "at": unix_now() });
        // Requeued, it goes back to the queue it was taken from.
        if let Some(queue) = leased_queue(leased) {
            dead["queue"] = serde_json::Value::String(queue);
        }
        self.set_aside(leased, &dead.to_string(), names, reason)
            .await
    }

    /// Pushes a dead letter (its JSON), releases the lease it was taken under, and fails the
    /// record it names, if any, with `reason`.
    async fn set_aside(
        &self,
        leased: &[u8],
        letter: &str,
        names: Option<Uuid>,
        reason: &str,
    ) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .rpush(&self.keys.dead, letter)
            .ltrim(
                &self.keys.dead,
                -isize::try_from(self.options.dead_letters_max.max(1)).unwrap_or(isize::MAX),
                -1,
            )
            .zrem(&self.keys.leases, leased);
        if let Some(ttl) = self.options.dead_letters_ttl {
            pipe.pexpire(
                &self.keys.dead,
                i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            );
        }
        if let Some(uuid) = names {
            self.fail_record_if_stored(&mut pipe, uuid, reason);
            pipe.hdel(&self.keys.cancel_requests, uuid.to_string());
        }
        let mut con = self.commands.clone();
        pipe.exec_async(&mut con)
            .await
            .map_err(|e| failure("moving an entry to the dead letters failed".to_owned(), e))
    }

    /// [`fail_record`](Self::fail_record), for a record that exists: an entry with a uuid but
    /// no record leaves nothing behind but its dead letter.
    fn fail_record_if_stored(&self, pipe: &mut redis::Pipeline, uuid: Uuid, traceback: &str) {
        // Within the transaction: the record is written only if it exists.
        let key = self.keys.record(uuid);
        pipe.cmd("EVAL")
            .arg(scripts::FAIL_IF_STORED)
            .arg(2)
            .arg(&key)
            .arg(&self.keys.stats)
            .arg(traceback)
            .arg(unix_now().to_string())
            .arg(result_ttl_ms(&self.options))
            .arg(&self.keys.done_channel)
            .arg(uuid.to_string());
    }

    /// A delayed task moves to `task_queue` when it is due, which wakes a waiting worker at
    /// once. (If this process is gone by then, the next take script moves it.)
    fn release_when_due(&self, task: &QueuedTask) {
        let Some(run_at) = task.run_at.filter(|run_at| *run_at > unix_now()) else {
            return;
        };
        let script = Script::new(scripts::RELEASE_DELAYED);
        let keys = self.keys.queue_keys(task.queue.as_deref());
        let (delayed, queue, stats, entry) = (
            keys.delayed.into_owned(),
            keys.list.into_owned(),
            keys.stats.into_owned(),
            queue_entry(task),
        );
        let announce = Some((
            self.keys.added_channel.clone(),
            task.queue_name().to_owned(),
        ));
        let mut con = self.commands.clone();
        tokio::spawn(async move {
            tokio::time::sleep(
                Duration::try_from_secs_f64((run_at - unix_now()).max(0.0)).unwrap_or_default(),
            )
            .await;
            let mut invocation = script.key(delayed);
            invocation.key(queue).key(stats).arg(entry);
            if let Some((channel, name)) = &announce {
                invocation.arg(channel).arg(name);
            }
            let released: Result<i64, _> = invocation.invoke_async(&mut con).await;
            if let Err(error) = released {
                tracing::warn!(
                    "releasing a delayed task failed (a take will): {}",
                    ErrorChain(&error)
                );
            }
        });
    }

    /// The add batcher of a named queue, made at its first add.
    /// Adds tasks of one queue (`None`: the default one) as its add script's calls, written
    /// together (see `Broker::add_many`).
    async fn add_to_queue(
        &self,
        queue: Option<&str>,
        tasks: Vec<&QueuedTask>,
    ) -> Result<(), BackendError> {
        let now = unix_now();
        let parts = tasks
            .iter()
            .map(|task| self.new_task_part(task, delay_ms(task, now)))
            .collect();
        let answers = match queue {
            None => self.adds.write_now(parts).await,
            Some(queue) => self.named_batcher(queue).await?.write_now(parts).await,
        }
        .map_err(|e| {
            failure(
                format!(
                    "adding {} tasks (`{}`, ...) failed",
                    tasks.len(),
                    tasks[0].task_name
                ),
                e,
            )
        })?;
        for (task, added) in tasks.iter().zip(answers) {
            // A task known already changed nothing; a delayed one is moved to the queue when
            // due (see `add`).
            if !matches!(added, redis::Value::Int(0)) {
                self.release_when_due(task);
            }
        }
        Ok(())
    }

    async fn named_batcher(&self, queue: &str) -> Result<Arc<Batcher>, BackendError> {
        if let Some(batcher) = self.named_adds.lock().get(queue) {
            return Ok(Arc::clone(batcher));
        }
        // (The add script enters the queue among the app's known queues at each add.)
        let batcher = Arc::new(add_batcher(
            &self.keys,
            Some(queue),
            self.writes.clone(),
            self.options.wait_for_replicas,
        ));
        Ok(Arc::clone(
            self.named_adds
                .lock()
                .entry(queue.to_owned())
                .or_insert(batcher),
        ))
    }

    /// The named queues tasks were added to.
    async fn known_queues(&self) -> Result<Vec<String>, BackendError> {
        let mut con = self.commands.clone();
        let mut queues: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.queues)
            .query_async(&mut con)
            .await
            .map_err(|e| failure("reading the app's queues failed".to_owned(), e))?;
        // Only names a queue may have: a stray member must not name keys.
        queues.retain(|queue| qtasks_core::queues::check_queue_name(queue).is_ok());
        queues.sort();
        Ok(queues)
    }

    /// Tells idle workers that serve named queues that `queue` has a new entry (best effort:
    /// they look anyway every idle wait).
    fn announce(&self, queue: &str) {
        let (mut con, channel, queue) = (
            self.commands.clone(),
            self.keys.added_channel.clone(),
            queue.to_owned(),
        );
        tokio::spawn(async move {
            let _: redis::RedisResult<()> = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(queue)
                .exec_async(&mut con)
                .await;
        });
    }

    fn hold(&self, receipt: &str) {
        self.held.lock().insert(receipt.to_owned());
    }

    fn unhold(&self, receipt: &str) {
        self.held.lock().remove(receipt);
    }

    /// One outcome, written with the others asked for at the same moment (`batch`): the
    /// outcome, the lease released, the child of a retry added, the expiry set, and the waiters
    /// told, all only if this delivery's token still holds the lease (`scripts::FINISH`).
    async fn write_outcome(
        &self,
        delivery: &Delivery,
        outcome: &Outcome,
    ) -> Result<Written, redis::RedisError> {
        let answer = self
            .finishes
            .submit(self.finish_item(delivery, outcome))
            .await?;
        let (answer, reason) = finish_answer(answer);
        Ok(match answer {
            1 => Written::Stored,
            2 => Written::Replayed,
            3 => Written::Cancelled(reason.unwrap_or_default()),
            4 => Written::Unstorable(reason.unwrap_or_default()),
            5 => {
                return Err(redis::RedisError::from(std::io::Error::other(
                    reason.unwrap_or_default(),
                )));
            }
            _ => Written::Refused,
        })
    }

    /// One outcome's part of a finish script call: its keys and arguments (see
    /// `scripts::FINISH` for their order).
    fn finish_item(&self, delivery: &Delivery, outcome: &Outcome) -> ScriptPart {
        let mut part = ScriptPart::default();
        let now = unix_now();
        let fields = outcome_fields(outcome, &delivery.run, now);
        // The stats bucket of this outcome: this second (the worker's clock; see `scripts`).
        let bucket = format!("t:{}:{}", now as u64, outcome.status().as_str());
        // At least 1 ms (0 would mean "keep"), at most what PEXPIRE takes.
        let own_ttl = delivery.run.result_ttl.map_or_else(String::new, |ttl| {
            ttl.as_millis().clamp(1, MAX_TTL_MS).to_string()
        });
        // Live items can exist only for a run that streamed, or from a delivery before this one.
        let may_have_items = delivery.run.streamed || delivery.recovered || delivery.deliveries > 1;
        part.keys.push(self.keys.record(delivery.task.uuid));
        part.keys.push(self.keys.items(delivery.task.uuid));
        part.arg(&delivery.receipt)
            .arg(delivery.task.uuid.to_string())
            .arg(bucket)
            .arg(own_ttl)
            .arg(if may_have_items { "1" } else { "" })
            .arg(fields.len())
            .arg(&fields);
        let Outcome::Retry { child, .. } = outcome else {
            part.arg(0);
            return part;
        };
        // A named queue's next attempt goes through its `delayed` (its counters are the
        // queue's own, which the finish script does not take); the finish then announces it.
        let delay_ms = delay_ms(child, now).or(child.queue.as_ref().map(|_| 1));
        let child_keys = self.keys.queue_keys(child.queue.as_deref());
        part.keys.push(self.keys.record(child.uuid));
        part.keys.push(if delay_ms.is_some() {
            child_keys.delayed.into_owned()
        } else {
            child_keys.list.into_owned()
        });
        if let Some(index) = &self.keys.records_index {
            part.keys.push(index.clone());
            part.arg(2);
        } else {
            part.arg(1);
        }
        self.new_task_args(&mut part, child, delay_ms);
        part
    }

    /// A new task's arguments, as the add script and a retry's child in the finish script both
    /// take them: its field count, its fields, its queue entry, its delay ('' for none) and its
    /// creation time in ms (for the index).
    fn new_task_args(&self, part: &mut ScriptPart, task: &QueuedTask, delay_ms: Option<i64>) {
        let fields = queued_record_fields(task, self.keys.records_index.is_some());
        push_task_args(part, task, &fields, queue_entry(task), delay_ms);
    }

    /// A new task's part of an add call: its record key, then the arguments
    /// [`new_task_args`](Self::new_task_args) gives, in a part sized for them at once (an
    /// add's hot path: growing it one argument at a time reallocated several times per task).
    fn new_task_part(&self, task: &QueuedTask, delay_ms: Option<i64>) -> ScriptPart {
        let fields = queued_record_fields(task, self.keys.records_index.is_some());
        let entry = queue_entry(task);
        let bytes = fields
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
            + entry.len()
            + 48;
        let mut part = ScriptPart::with_capacity(2 * fields.len() + 4, bytes);
        part.keys.push(self.keys.record(task.uuid));
        if fields.iter().map(|(name, _)| *name).eq(STANDARD_ADD_FIELDS) {
            // The common record goes as its values alone (see `scripts::ADD`).
            part.arg(0);
            for (_, value) in &fields {
                part.arg(value);
            }
            push_task_tail(&mut part, task, entry, delay_ms);
        } else {
            push_task_args(&mut part, task, &fields, entry, delay_ms);
        }
        part
    }
}

/// The fields of a new task's record, in order, when they are all it has (the records' index
/// kept, no optional field): the add script knows them, and takes such a task as a field
/// count of 0 and their values alone (see `scripts::ADD`). Naming them in every add cost Redis
/// about a tenth of the add: each name is one more argument to read, make a Lua string of and
/// free.
const STANDARD_ADD_FIELDS: [&str; 8] = [
    "status",
    "updated_at",
    "deliveries",
    "task_name",
    "priority",
    "args",
    "kwargs",
    "created_at",
];

/// A new task's arguments of an add call (see `scripts::ADD`): its field count, its fields,
/// its queue entry, its delay ('' for none) and its creation time in ms.
fn push_task_args(
    part: &mut ScriptPart,
    task: &QueuedTask,
    fields: &[(&'static str, String)],
    entry: String,
    delay_ms: Option<i64>,
) {
    // A count of 0 stands for the standard record (`STANDARD_ADD_FIELDS`); every record has
    // fields, so no other task can send one.
    debug_assert!(!fields.is_empty(), "a new record has its fields");
    part.arg(fields.len()).arg(fields);
    push_task_tail(part, task, entry, delay_ms);
}

/// What follows a new task's fields in an add call: its queue entry, its delay ('' for none)
/// and its creation time in ms.
fn push_task_tail(part: &mut ScriptPart, task: &QueuedTask, entry: String, delay_ms: Option<i64>) {
    part.arg(entry)
        .arg(delay_ms.map_or_else(String::new, |ms| ms.to_string()))
        .arg(qtasks_core::records::secs_to_ms(task.created_at));
}

/// The add batcher of a queue (`None`: the default one): its keys, and for a named queue the
/// channel that announces its entries.
fn add_batcher(
    keys: &Keys,
    queue: Option<&str>,
    commands: Link,
    replicas: Option<crate::WaitForReplicas>,
) -> Batcher {
    let queue_keys = keys.queue_keys(queue);
    Batcher::new(
        scripts::ADD,
        commands,
        [
            queue_keys.stats.into_owned(),
            queue_keys.list.into_owned(),
            queue_keys.delayed.into_owned(),
            keys.queues.clone(),
        ]
        .into_iter()
        .chain(keys.records_index.iter().cloned())
        .collect(),
        ScriptPart::with_args(&(
            u8::from(keys.records_index.is_some()),
            &keys.added_channel,
            queue.unwrap_or(DEFAULT_QUEUE),
        )),
        ADD_BATCH,
        replicas.map(|wait| ReplicaWait {
            wait,
            late_fails: true,
            what: "the add",
        }),
    )
}

/// The retention of finished records in ms, as the scripts take it (0: kept for ever).
/// The longest time to live written: 100 years, in ms (PEXPIRE refuses what overflows its
/// clock, after the script's other writes).
pub(crate) const MAX_TTL_MS: u128 = 100 * 36_525 * 864_000;

/// The engine's retention in ms, as the scripts take it: 0 keeps (also for a retention under
/// a millisecond, as before), at most [`MAX_TTL_MS`].
pub(crate) fn result_ttl_ms(options: &RedisOptions) -> i64 {
    options.result_ttl.map_or(0, |ttl| {
        i64::try_from(ttl.as_millis().min(MAX_TTL_MS)).unwrap_or(i64::MAX)
    })
}

/// How long from `now` until `task` may run, in whole ms (`None`: at once). It goes to Redis as
/// a delay, resolved there by Redis's clock (the one every take compares with), not as this
/// process's idea of the time.
fn delay_ms(task: &QueuedTask, now: f64) -> Option<i64> {
    task.run_at
        .map(|run_at| ((run_at - now) * 1000.0).ceil())
        .filter(|delay_ms| *delay_ms >= 1.0)
        .map(|delay_ms| delay_ms.min(i64::MAX as f64) as i64)
}

/// A new task's record as this broker writes it: Python QTasks' fields, and, when the records'
/// index is kept (`indexed`), `deliveries` at 0, which tells the take's mark that the record
/// was indexed when it was added (see `scripts::MARK`; a record added while the index was off
/// enters it at its first mark).
fn queued_record_fields(task: &QueuedTask, indexed: bool) -> Vec<(&'static str, String)> {
    let mut fields = new_record_fields(task);
    if indexed {
        // Beside `status` and `updated_at`, which lead (see `new_record_fields`): each take
        // reads and rewrites it.
        fields.insert(2, ("deliveries", "0".to_owned()));
    }
    fields
}

/// One answer of the finish script, a bare code or `{code, reason}`, read on its own (a reason
/// that is not UTF-8 is read lossily, and an answer of another shape is a script failure, code
/// 5), so that one odd answer cannot fail the others of its batch.
fn finish_answer(answer: redis::Value) -> (i64, Option<String>) {
    // The common answers (stored, replayed, refused) are a bare code; those with a reason are
    // `{code, reason}`.
    if let redis::Value::Int(code) = answer {
        return (code, None);
    }
    let redis::Value::Array(parts) = answer else {
        return (5, Some(format!("the finish script answered {answer:?}")));
    };
    let code = match parts.first() {
        Some(redis::Value::Int(code)) => *code,
        other => {
            return (
                5,
                Some(format!("the finish script answered code {other:?}")),
            );
        }
    };
    let reason = match parts.get(1) {
        Some(redis::Value::BulkString(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Some(redis::Value::SimpleString(text)) => Some(text.clone()),
        _ => None,
    };
    (code, reason)
}

/// What the finish script did with an outcome.
enum Written {
    /// Stored now.
    Stored,
    /// Stored by an earlier send of this delivery, whose reply was lost.
    Replayed,
    /// Not stored: a cancel requested while the task ran won; the record ends `cancel` with
    /// this reason.
    Cancelled(String),
    /// Not stored: the lease is not this delivery's any more.
    Refused,
    /// Not stored: the record's key holds this type, not a hash; the lease is dropped.
    Unstorable(String),
}

#[qtasks_core::async_trait]
impl qtasks_core::backend::Lifecycle for RedisBroker {
    fn name(&self) -> &str {
        "RedisBroker"
    }

    async fn start(&self) -> Result<(), BackendError> {
        let held = Arc::clone(&self.held);
        let renew = self.renew.clone();
        let leases = self.keys.leases.clone();
        let cancels = self.cancels.clone();
        let con = self.commands.clone();
        let lease_ms = self.lease_ms();
        let every = self.options.lease / 3;
        let cancel_requests = self.keys.cancel_requests.clone();
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let leased: Vec<String> = held.lock().iter().cloned().collect();
                if leased.is_empty() {
                    continue;
                }
                use backon::Retryable;
                // Renewing is safe to repeat: a dropped connection is tried again at once,
                // as every other command is, so a flapping network does not cost leases.
                let renewed = (|| {
                    let mut con = con.clone();
                    let mut invocation = renew.key(&leases);
                    invocation.key(&cancel_requests).arg(lease_ms).arg(&leased);
                    async move {
                        invocation
                            .invoke_async::<(Vec<String>, Vec<String>)>(&mut con)
                            .await
                    }
                })
                .retry(crate::reconnect_pauses().take(RENEW_RETRIES))
                .when(is_transient)
                .await;
                match renewed {
                    Ok((lost, cancelled)) => {
                        for receipt in lost {
                            // Stalled past the lease: the task is another worker's now.
                            // Stop this run (only this delivery's: this process may hold a
                            // newer one of the same task); its outcome would be refused.
                            held.lock().remove(&receipt);
                            if let Some(uuid) = member_uuid(split_receipt(&receipt).1) {
                                tracing::warn!(uuid = %uuid, "the lease of task {uuid} was lost (this worker stalled past it); stopping this run");
                                let _ = cancels.send(
                                    CancelRequest::new(uuid, LEASE_LOST).for_delivery(receipt),
                                );
                            }
                        }
                        // Cancels asked of held tasks: stored, so seen here even when the
                        // message that asked was lost.
                        let mut pairs = cancelled.into_iter();
                        while let (Some(receipt), Some(reason)) = (pairs.next(), pairs.next()) {
                            if let Some(uuid) = member_uuid(split_receipt(&receipt).1) {
                                let _ = cancels.send(CancelRequest::new(uuid, reason));
                            }
                        }
                    }
                    Err(error) => tracing::warn!(
                        "renewing {} task lease(s) failed: {}",
                        leased.len(),
                        ErrorChain(&error)
                    ),
                }
            }
        });
        if let Some(previous) = self.renewer.lock().replace(renewer) {
            previous.abort();
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), BackendError> {
        if let Some(renewer) = self.renewer.lock().take() {
            renewer.abort();
        }
        Ok(())
    }
}

#[qtasks_core::async_trait]
impl Broker for RedisBroker {
    fn location(&self) -> Option<String> {
        Some(self.location.clone())
    }

    async fn stats(&self) -> Result<Option<QueueStats>, BackendError> {
        let mut stats =
            crate::stats::read(&self.keys, &self.keys.queue_keys(None), &self.commands).await?;
        let paused = self.paused_queues().await?;
        let named = self.known_queues().await?;
        let mut queues = std::collections::BTreeMap::new();
        queues.insert(DEFAULT_QUEUE.to_owned(), crate::stats::numbers_of(&stats));
        for queue in &named {
            let of_queue = crate::stats::read(
                &self.keys,
                &self.keys.queue_keys(Some(queue)),
                &self.commands,
            )
            .await?;
            // Every queue's waiting tasks count in the app's numbers.
            for (priority, waiting) in &of_queue.waiting {
                *stats.waiting.entry(*priority).or_default() += waiting;
            }
            stats.delayed += of_queue.delayed;
            stats.oldest_waiting_secs =
                match (stats.oldest_waiting_secs, of_queue.oldest_waiting_secs) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            queues.insert(queue.clone(), crate::stats::numbers_of(&of_queue));
        }
        for queue in paused {
            queues.entry(queue).or_default().paused = true;
        }
        stats.queues = queues;
        Ok(Some(stats))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let mut con = self.commands.clone();
        let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&self.keys.dead)
            .arg(0)
            .arg(
                isize::try_from(limit)
                    .unwrap_or(isize::MAX)
                    .saturating_sub(1),
            )
            .query_async(&mut con)
            .await
            .map_err(|e| failure("reading the dead letters failed".to_owned(), e))?;
        Ok(raw.into_iter().map(crate::stats::dead_letter).collect())
    }

    async fn resolve_dead_letter(
        &self,
        letter: &DeadLetter,
        requeue: bool,
    ) -> Result<bool, BackendError> {
        // A letter of a task no worker could run names the task to bring back and its queue.
        let parsed: serde_json::Value = serde_json::from_str(&letter.id).unwrap_or_default();
        let revive = parsed
            .get("revive")
            .and_then(serde_json::Value::as_str)
            .and_then(|uuid| Uuid::parse_str(uuid).ok());
        let queue = parsed
            .get("queue")
            .and_then(serde_json::Value::as_str)
            .filter(|queue| qtasks_core::queues::check_queue_name(queue).is_ok());
        let keys = self.keys.queue_keys(queue);
        let record = revive.map_or_else(|| self.keys.dead.clone(), |uuid| self.keys.record(uuid));
        let (channel, name) = match queue {
            Some(name) if name != DEFAULT_QUEUE => (self.keys.added_channel.as_str(), name),
            _ => ("", ""),
        };
        let mut con = self.commands.clone();
        let done: i64 = Script::new(scripts::RESOLVE_DEAD)
            .key(&self.keys.dead)
            .key(&*keys.list)
            .key(&*keys.stats)
            .key(record)
            .arg(&letter.id)
            .arg(if requeue { "1" } else { "0" })
            .arg(&letter.entry)
            .arg(if revive.is_some() { "1" } else { "0" })
            .arg(channel)
            .arg(name)
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure("resolving a dead letter failed".to_owned(), e))?;
        Ok(done == 1)
    }

    async fn add(&self, task: QueuedTask) -> Result<(), BackendError> {
        // How long from now, by this process's clock; when, by Redis's (`scripts::ADD`).
        let part = self.new_task_part(&task, delay_ms(&task, unix_now()));
        let added = match task.queue.as_deref() {
            None => self.adds.submit(part).await,
            Some(queue) => self.named_batcher(queue).await?.submit(part).await,
        }
        .map_err(|e| failure(format!("adding task `{}` failed", task.task_name), e))?;
        if matches!(added, redis::Value::Int(0)) {
            // Known already (a slot added again, an add sent twice): nothing changes.
            tracing::debug!(uuid = %task.uuid, "task {} is known already; not added again", task.uuid);
            return Ok(());
        }
        // A delayed task: moved to the queue when due, waking a worker then (a take moves
        // it too, should this process be gone by then).
        self.release_when_due(&task);
        Ok(())
    }

    async fn add_many(&self, tasks: &[QueuedTask]) -> Result<(), BackendError> {
        // The tasks of each queue, in their order (the order between two queues' lists means
        // nothing), go as that queue's script calls (512 tasks each); the queues at once.
        let mut by_queue: Vec<(Option<&str>, Vec<&QueuedTask>)> = Vec::new();
        for task in tasks {
            let queue = task.queue.as_deref();
            match by_queue.iter_mut().find(|(known, _)| *known == queue) {
                Some((_, same)) => same.push(task),
                None => by_queue.push((queue, vec![task])),
            }
        }
        let written = futures_util::future::join_all(
            by_queue
                .into_iter()
                .map(|(queue, tasks)| self.add_to_queue(queue, tasks)),
        )
        .await;
        written.into_iter().collect()
    }

    async fn add_unique(
        &self,
        task: QueuedTask,
        unique: &qtasks_core::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        let queue = self.keys.queue_keys(task.queue.as_deref());
        let fields = queued_record_fields(&task, self.keys.records_index.is_some());
        let delay = delay_ms(&task, unix_now());
        let script = Script::new(scripts::UNIQUE_ADD);
        let holder = crate::unique_add(&self.keys, &self.writes, unique, |lock, holder| {
            let mut invocation = script.key(&lock);
            invocation
                .key(holder.map_or_else(|| lock.clone(), |holder| self.keys.record(holder)))
                .key(self.keys.record(task.uuid))
                .key(&*queue.stats)
                .key(&*queue.list)
                .key(&*queue.delayed)
                .key(&self.keys.queues);
            if let Some(index) = &self.keys.records_index {
                invocation.key(index);
            }
            invocation
                .arg(holder.map_or_else(String::new, |holder| holder.to_string()))
                .arg(unique.window_ms())
                .arg(&self.keys.prefix)
                .arg(crate::unique_lock_ttl_ms(unique))
                .arg(u8::from(self.keys.records_index.is_some()))
                .arg(&self.keys.added_channel)
                .arg(task.queue_name())
                .arg(task.uuid.to_string())
                .arg(fields.len())
                .arg(&fields)
                .arg(queue_entry(&task))
                .arg(delay.map_or_else(String::new, |ms| ms.to_string()))
                .arg(qtasks_core::records::secs_to_ms(task.created_at));
            let mut con = self.writes.clone();
            async move { invocation.invoke_async::<String>(&mut con).await }
        })
        .await?;
        if holder.is_none() {
            self.release_when_due(&task);
        }
        // Also when the key's holder answered (perhaps this very task, added before by a call
        // whose replicas were late): the caller is told the task is safe only once it is.
        // (A separate command: were the connection to drop between the script and this, the
        // new connection's `WAIT` would have nothing to wait for; see RELIABILITY.md.)
        {
            if let Some(wait) = self.options.wait_for_replicas {
                let mut con = self.writes.clone();
                let late = wait
                    .wait(&mut con, "the add")
                    .await
                    .map_err(|e| failure(format!("adding task `{}` failed", task.task_name), e))?;
                if let Some(late) = late {
                    return Err(BackendError::new(
                        "redis",
                        format!("adding task `{}` failed: {late}", task.task_name),
                    ));
                }
            }
        }
        Ok(holder)
    }

    async fn next(&self) -> Result<Option<Delivery>, BackendError> {
        Ok(self.next_batch(1).await?.into_iter().next())
    }

    fn supports_queues(&self) -> bool {
        true
    }

    /// Two: each chunk's script calls are sent on the commands connection at their first
    /// poll, and Redis runs them in the order it reads them.
    fn add_many_chunks_at_once(&self) -> usize {
        2
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        self.take(&Take::default_queue(max)).await
    }

    async fn take(&self, take: &Take<'_>) -> Result<Vec<Delivery>, BackendError> {
        let give_up = take
            .patience
            .and_then(|patience| tokio::time::Instant::now().checked_add(patience));
        // The wake-ups of the queues this take serves (only their adds wake it).
        let wake_ups = self.added.of_take(take);
        loop {
            // Registered before the take looks, so an entry announced meanwhile wakes the wait.
            let mut announced: Vec<_> = wake_ups
                .iter()
                .map(|notify| Box::pin(notify.notified()))
                .collect();
            for notified in &mut announced {
                notified.as_mut().enable();
            }
            let (taken, next_due_ms) = self.take_batch(take).await?;
            self.next_due_ms.store(
                next_due_ms.unwrap_or(i64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
            let any_taken = !taken.is_empty();
            // Held (renewed) from now on; should this call be dropped before it hands the
            // deliveries over, the guard stops holding them and their leases run out, so
            // another take runs them.
            let mut guard = HoldGuard {
                held: &self.held,
                receipts: Vec::with_capacity(taken.len()),
            };
            // Each entry is decoded once, on its own: those that name a task are held (the
            // take marked those in canonical form; the others have their records read and
            // marked in one more call, by declared keys); the rest are poison and fail alone.
            let mut named = Vec::with_capacity(taken.len());
            for (bytes, recovered, token, marked) in taken {
                let member = match String::from_utf8(bytes) {
                    Ok(member) => member,
                    Err(error) => {
                        self.reject_logged(error.into_bytes(), &token, "the entry is not UTF-8")
                            .await;
                        continue;
                    }
                };
                match parse_entry(entry_of(&member)) {
                    Ok((_, uuid, _)) => {
                        let task = Named {
                            member,
                            uuid,
                            recovered: recovered == 1,
                            token,
                        };
                        let receipt = task.receipt();
                        self.hold(&receipt);
                        guard.receipts.push(receipt);
                        named.push((task, marked));
                    }
                    Err(reason) => {
                        self.reject_logged(member.into_bytes(), &token, &reason)
                            .await;
                    }
                }
            }
            self.complete_marks(&mut named).await;
            let mut deliveries = Vec::with_capacity(named.len());
            for (task, marked) in named {
                // (A mark the script answered short of counts as a lost lease.)
                let marked = marked.unwrap_or(Marked::Lost);
                let (fields, handed_out) = match marked {
                    Marked::Run(fields, handed_out) => (fields.unwrap_or_default(), handed_out),
                    Marked::Ended | Marked::Lost => {
                        self.unhold(&task.receipt());
                        continue;
                    }
                    Marked::Missing | Marked::Bad(_) => {
                        // This task alone: dead-lettered with its reason (a record that
                        // exists ends `error`; none is made up for an entry without one,
                        // so a record deleted by hand stays deleted); the rest of the
                        // batch runs.
                        self.unhold(&task.receipt());
                        let entry = entry_of(&task.member).to_owned();
                        let reason = match marked {
                            Marked::Bad(reason) => {
                                format!("RecordError: task {}: {reason}", task.uuid)
                            }
                            _ => format!(
                                "QueueEntryError: the queue entry `{entry}` has no task record (it was never written, or was deleted or expired before the task ran)"
                            ),
                        };
                        if let Err(error) = self
                            .dead_letter(
                                task.receipt().as_bytes(),
                                &entry,
                                Some(task.uuid),
                                &reason,
                            )
                            .await
                        {
                            tracing::error!(app = %self.keys.prefix, "moving a task whose record is bad to the dead letters failed; it is taken again when its lease runs out: {}", ErrorChain(&error));
                        }
                        continue;
                    }
                };
                let receipt = task.receipt();
                match self.deliver(task, fields, handed_out).await {
                    Ok(Some(delivery)) => deliveries.push(delivery),
                    Ok(None) => {}
                    Err(error) => {
                        // This task alone: its lease is no longer renewed and runs out,
                        // then a take tries it again. The others of the batch go on.
                        tracing::error!(app = %self.keys.prefix, "handing out `{}` failed; it is taken again when its lease runs out: {}", split_receipt(&receipt).1, ErrorChain(&error));
                        self.unhold(&receipt);
                    }
                }
            }
            guard.receipts.clear(); // handed over: finish or the renewer owns them now
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            if any_taken {
                continue; // all of them were poison or cancelled
            }
            // Nothing ready: block until a client pushes (the entry is parked in
            // `incoming`, where any worker's next take finds it), until a delayed task may
            // run, or until it is time to look for expired leases.
            let mut wait = idle_wait(&self.options);
            if let Some(due_ms) = next_due_ms {
                wait = wait.min(until_due(due_ms));
            }
            if let Some(give_up) = give_up {
                let now = tokio::time::Instant::now();
                if now >= give_up {
                    return Ok(Vec::new());
                }
                wait = wait.min(give_up - now);
            }
            if !take.is_default_only() || give_up.is_some() {
                // Every add announces its queue: a worker of several queues waits on that.
                // (Not on the default list too: a blocking pop cut short by an announcement
                // would stay blocked on the server, and take the next entry out of sight.)
                // Python clients' entries, unannounced, are met at the next look.
                if announced.is_empty() {
                    // A take of no queue (a caller's own): nothing to be woken by.
                    tokio::time::sleep(wait).await;
                } else {
                    tokio::select! {
                        _ = futures_util::future::select_all(announced) => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                continue;
            }
            self.wait_for_default(wait).await?;
        }
    }

    async fn defer(&self, delivery: &Delivery, delay: Duration) -> Result<(), BackendError> {
        let member = split_receipt(&delivery.receipt).1;
        self.unhold(&delivery.receipt);
        let keys = self.keys.queue_keys(delivery.task.queue.as_deref());
        let mut con = self.commands.clone();
        let answer: i64 = Script::new(scripts::DEFER)
            .key(&self.keys.leases)
            .key(&*keys.delayed)
            .key(self.keys.record(delivery.task.uuid))
            .key(&self.keys.cancel_requests)
            .key(&self.keys.stats)
            .arg(&delivery.receipt)
            .arg(entry_of(member))
            .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(delivery.task.uuid.to_string())
            .arg(result_ttl_ms(&self.options))
            .arg(&self.keys.done_channel)
            .invoke_async(&mut con)
            .await
            .map_err(|e| {
                failure(
                    format!("handing task {} back failed", delivery.task.uuid),
                    e,
                )
            })?;
        if answer == 1 {
            let mut due = delivery.task.clone();
            due.run_at = Some(unix_now() + delay.as_secs_f64());
            self.release_when_due(&due);
        }
        Ok(())
    }

    fn supports_limits(&self) -> bool {
        true
    }

    async fn admit(
        &self,
        delivery: &Delivery,
        limits: &TaskLimits,
    ) -> Result<Admission, BackendError> {
        let member = split_receipt(&delivery.receipt).1;
        let keys = self.keys.queue_keys(delivery.task.queue.as_deref());
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let ttl_ms = delivery.run.result_ttl.map_or_else(
            || result_ttl_ms(&self.options),
            |ttl| i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1),
        );
        let mut con = self.commands.clone();
        // Not renewed while it is asked about: a renewal in between would find the lease of a
        // delivery handed back and report it lost. Held again if it runs.
        self.unhold(&delivery.receipt);
        let answer: Vec<i64> = Script::new(scripts::ADMIT)
            .key(&self.keys.leases)
            .key(&*keys.delayed)
            .key(self.keys.record(delivery.task.uuid))
            .key(&self.keys.cancel_requests)
            .key(&self.keys.stats)
            .key(self.keys.rate(&limits.rate_key))
            .key(self.keys.running(&limits.task_name))
            .key(self.keys.parked(&limits.task_name))
            .arg(&delivery.receipt)
            .arg(entry_of(member))
            .arg(delivery.task.uuid.to_string())
            .arg(limits.rate.map_or(0, |rate| micros(rate.interval())))
            .arg(limits.max_running.unwrap_or(0))
            .arg(u64::try_from(PARKED_RECHECK.as_millis()).unwrap_or(u64::MAX))
            .arg(ttl_ms)
            .arg(&self.keys.done_channel)
            .arg(keys.tag)
            .invoke_async(&mut con)
            .await
            .map_err(|e| {
                // Still held: the worker hands it back or its lease runs out.
                self.hold(&delivery.receipt);
                failure(
                    format!(
                        "asking whether task {} may start under its limits failed",
                        delivery.task.uuid
                    ),
                    e,
                )
            })?;
        let admission = match answer.as_slice() {
            [4] => {
                self.hold(&delivery.receipt);
                return Ok(Admission::Run);
            }
            [0] => return Ok(Admission::Lost),
            [2] => Admission::Parked,
            [3] => Admission::Cancelled,
            [1, wait_us] => Admission::Postponed {
                wait: Duration::from_micros(u64::try_from(*wait_us).unwrap_or(0)),
            },
            other => {
                return Err(BackendError::new(
                    "redis",
                    format!("the admission script answered {other:?}"),
                ));
            }
        };
        if let Admission::Postponed { wait } = admission {
            let mut due = delivery.task.clone();
            due.run_at = Some(unix_now() + wait.as_secs_f64());
            self.release_when_due(&due);
        }
        Ok(admission)
    }

    async fn leave(&self, delivery: &Delivery, limits: &TaskLimits) -> Result<(), BackendError> {
        let Some(max) = limits.max_running else {
            return Ok(());
        };
        let mut con = self.commands.clone();
        let _woke: i64 = Script::new(scripts::LEAVE)
            .key(self.keys.running(&limits.task_name))
            .key(self.keys.parked(&limits.task_name))
            .key(&self.keys.leases)
            .arg(&delivery.receipt)
            .arg(&self.keys.prefix)
            .arg(&self.keys.added_channel)
            .arg(max)
            .invoke_async(&mut con)
            .await
            .map_err(|e| {
                failure(
                    format!(
                        "giving back the running slot of task {} failed",
                        delivery.task.uuid
                    ),
                    e,
                )
            })?;
        Ok(())
    }

    async fn bury(&self, delivery: &Delivery, reason: &str) -> Result<(), BackendError> {
        let member = split_receipt(&delivery.receipt).1;
        let entry = entry_of(member).to_owned();
        self.unhold(&delivery.receipt);
        let mut letter = serde_json::json!({
            "entry": entry,
            "reason": reason,
            "at": unix_now(),
            "revive": delivery.task.uuid.to_string(),
        });
        if let Some(queue) = &delivery.task.queue {
            letter["queue"] = serde_json::Value::String(queue.clone());
        }
        self.set_aside(
            delivery.receipt.as_bytes(),
            &letter.to_string(),
            Some(delivery.task.uuid),
            reason,
        )
        .await
    }

    async fn pause_queue(&self, queue: &str, paused: bool) -> Result<(), BackendError> {
        let mut con = self.commands.clone();
        let mut pipe = redis::pipe();
        if paused {
            pipe.sadd(&self.keys.paused, queue);
        } else {
            pipe.srem(&self.keys.paused, queue);
            // Workers waiting on the queue look again at once.
            pipe.publish(&self.keys.added_channel, queue);
        }
        pipe.exec_async(&mut con).await.map_err(|e| {
            failure(
                format!(
                    "{} queue `{queue}` failed",
                    if paused { "pausing" } else { "resuming" }
                ),
                e,
            )
        })
    }

    async fn paused_queues(&self) -> Result<Vec<String>, BackendError> {
        let mut con = self.commands.clone();
        let mut paused: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.paused)
            .query_async(&mut con)
            .await
            .map_err(|e| failure("reading the paused queues failed".to_owned(), e))?;
        paused.sort();
        Ok(paused)
    }

    async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<Option<CancelState>, BackendError> {
        let reason = reason.to_owned();
        let ttl_ms = result_ttl_ms(&self.options);
        let mut con = self.commands.clone();
        // The task's queue, for its delayed entries (a record's queue never changes).
        let queue: Option<String> = redis::cmd("HGET")
            .arg(self.keys.record(uuid))
            .arg("queue")
            .query_async(&mut con)
            .await
            .ok()
            .flatten()
            .filter(|queue: &String| qtasks_core::queues::check_queue_name(queue).is_ok());
        let delayed = self.keys.queue_keys(queue.as_deref()).delayed;
        let found: String = Script::new(scripts::CANCEL)
            .key(self.keys.record(uuid))
            .key(&*delayed)
            .key(&self.keys.stats)
            .key(&self.keys.cancel_requests)
            .arg(&reason)
            .arg(&self.keys.done_channel)
            .arg(&self.keys.cancel_channel)
            .arg(uuid.to_string())
            .arg(ttl_ms)
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure(format!("cancelling task {uuid} failed"), e))?;
        Ok(Some(match found.as_str() {
            "missing" => CancelState::NotFound,
            "new" => CancelState::Cancelled,
            "process" => CancelState::Running,
            other => CancelState::Ended(other.parse().unwrap_or(TaskStatus::Error)),
        }))
    }

    async fn request_cancel(&self, uuid: Uuid, reason: &str) -> Result<(), BackendError> {
        let message = format!("{uuid} {reason}");
        let mut con = self.commands.clone();
        redis::cmd("PUBLISH")
            .arg(&self.keys.cancel_channel)
            .arg(message)
            .exec_async(&mut con)
            .await
            .map_err(|e| failure("sending the cancel request failed".to_owned(), e))
    }

    fn cancel_requests(&self) -> Option<broadcast::Receiver<CancelRequest>> {
        Some(self.cancels.subscribe())
    }

    async fn requeue_taken(&self) -> Result<usize, BackendError> {
        let mut con = self.commands.clone();
        self.requeue
            .key(&self.keys.ready)
            .key(&self.keys.leases)
            .key(&self.keys.recovered)
            .arg(&self.keys.prefix)
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure("putting taken tasks back failed".to_owned(), e))
    }

    async fn finish(&self, delivery: &Delivery, outcome: Outcome) -> Result<(), BackendError> {
        self.finish_delivery(delivery, outcome).await
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), BackendError> {
        self.release_delivery(delivery).await
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        self.flush_queues().await
    }
}

impl RedisBroker {
    /// Waits up to `wait` for an entry of the default queue (parked in `incoming` for the
    /// next take, so a worker that dies meanwhile loses nothing).
    async fn wait_for_default(&self, wait: Duration) -> Result<(), BackendError> {
        {
            let mut con = self.blocking.clone();
            let waited: redis::RedisResult<Option<String>> = redis::cmd("BLMOVE")
                .arg(&self.keys.queue)
                .arg(&self.keys.incoming)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(wait.as_secs_f64())
                .query_async(&mut con)
                .await;
            match waited {
                // A dropped connection only cut the wait short: look again (after a moment,
                // so a connection that keeps failing does not spin).
                Err(error) if is_transient(&error) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => {
                    return Err(failure("waiting for tasks failed".to_owned(), error));
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        outcome: Outcome,
    ) -> Result<(), BackendError> {
        let delivery = delivery.clone();
        // Kept and sent again through an outage: the script is idempotent, so a reply lost
        // after the write only makes the next attempt answer "stored".
        use backon::Retryable;
        let patience = self.options.lease * FINISH_PATIENCE_LEASES;
        let started = tokio::time::Instant::now();
        let written = (|| self.write_outcome(&delivery, &outcome))
            .retry(crate::reconnect_pauses())
            .when(|_| started.elapsed() < patience)
            .notify(|error, pause| {
                tracing::warn!(uuid = %delivery.task.uuid, "storing the result failed (trying again in {pause:?}): {}", ErrorChain(error));
            })
            .await;
        let result = match written {
            Ok(Written::Stored | Written::Replayed) => {
                if let Outcome::Retry { child, .. } = &outcome {
                    if child.queue.is_some() {
                        // A named queue's next attempt went through its `delayed` (due in
                        // 1 ms at the soonest): moved on, and announced, when due.
                        let mut due = (**child).clone();
                        let soonest = unix_now() + 0.002;
                        due.run_at = Some(child.run_at.map_or(soonest, |at| at.max(soonest)));
                        self.release_when_due(&due);
                    } else if child.run_at.is_some() {
                        self.release_when_due(child);
                    } else {
                        // Pushed to `task_queue` by the script: workers that serve named
                        // queues too wait on the announcements, not on the list.
                        self.announce(DEFAULT_QUEUE);
                    }
                }
                Ok(())
            }
            Ok(Written::Cancelled(reason)) => Err(BackendError::cancelled("redis", reason)),
            Ok(Written::Unstorable(kind)) => Err(BackendError::new(
                "redis",
                format!(
                    "the outcome of task {} cannot be stored: its record's key holds a {kind}, not a hash (the task is not run again)",
                    delivery.task.uuid
                ),
            )),
            Ok(Written::Refused) => Err(BackendError::refused(
                "redis",
                format!(
                    "the outcome of task {} was refused: its lease is another worker's now (this worker stalled past it)",
                    delivery.task.uuid
                ),
            )),
            Err(error) => Err(failure(
                format!(
                    "storing the result of task {} failed for {patience:?}; its lease has run out and the task runs again",
                    delivery.task.uuid
                ),
                error,
            )),
        };
        self.unhold(&delivery.receipt);
        result
    }

    /// Whether this process still holds (renews) the lease of the delivery `receipt`: not once
    /// it finished, was handed back, or its lease was found lost.
    pub(crate) fn holds(&self, receipt: &str) -> bool {
        self.held.lock().contains(receipt)
    }

    /// Hands back a delivery no worker started (a partitioned app's take brought it and no
    /// slot took it): as [`Broker::release`], but not marked recovered unless its take found it
    /// so, and announced, so any worker takes it at once.
    pub(crate) async fn release_unstarted(&self, delivery: &Delivery) -> Result<(), BackendError> {
        self.release_delivery_marked(delivery, delivery.recovered)
            .await?;
        self.announce(delivery.task.queue_name());
        Ok(())
    }

    async fn release_delivery(&self, delivery: &Delivery) -> Result<(), BackendError> {
        self.release_delivery_marked(delivery, true).await
    }

    /// Hands a delivery back; `suspect`: its member is marked recovered (it may have started).
    async fn release_delivery_marked(
        &self,
        delivery: &Delivery,
        suspect: bool,
    ) -> Result<(), BackendError> {
        let delivery = delivery.clone();
        let member = split_receipt(&delivery.receipt).1;
        // Stop renewing first: if the script cannot run, the lease runs out instead.
        self.unhold(&delivery.receipt);
        let priority = member
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<i64>().ok())
            .unwrap_or(delivery.task.priority);
        let mut con = self.commands.clone();
        let ready = self.keys.queue_keys(delivery.task.queue.as_deref()).ready;
        let _handed_back: i64 = Script::new(scripts::RELEASE)
            .key(&self.keys.leases)
            .key(&*ready)
            .key(&self.keys.recovered)
            .key(self.keys.record(delivery.task.uuid))
            .arg(&delivery.receipt)
            .arg(member)
            .arg(priority)
            .arg(if suspect { "0" } else { "1" })
            .invoke_async(&mut con)
            .await
            .map_err(|e| {
                failure(
                    format!("handing task {} back failed", delivery.task.uuid),
                    e,
                )
            })?;
        Ok(())
    }

    async fn flush_queues(&self) -> Result<(), BackendError> {
        let keys = &self.keys;
        let mut doomed: Vec<String> = [
            &keys.queue,
            &keys.incoming,
            &keys.ready,
            &keys.sequence,
            &keys.leases,
            &keys.dead,
            &keys.recovered,
            &keys.stats,
            &keys.cancel_requests,
            &keys.gone,
            &keys.queues,
            &keys.paused,
        ]
        .into_iter()
        .cloned()
        .collect();
        for queue in self.known_queues().await? {
            let named = keys.queue_keys(Some(&queue));
            doomed.extend(
                [
                    named.list,
                    named.incoming,
                    named.ready,
                    named.delayed,
                    named.stats,
                ]
                .map(std::borrow::Cow::into_owned),
            );
        }
        self.named_adds.lock().clear();
        let mut con = self.commands.clone();
        // The limits' keys (rates by any key, slots and parked tasks by task) are found by
        // their prefix.
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(keys.limits_pattern())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .map_err(|e| failure("listing the limits' keys failed".to_owned(), e))?;
            doomed.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis::cmd("UNLINK")
            .arg(&doomed)
            .exec_async(&mut con)
            .await
            .map_err(|e| failure("deleting the queue failed".to_owned(), e))
    }
}
