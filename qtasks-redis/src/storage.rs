//! The Redis storage: reads records, and wakes waiters when a worker publishes a result.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::link::Link;
use crate::server::Server;
use futures_util::StreamExt;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use super::wire::{
    fields_are_foreign, new_record_fields, outcome_fields, pairs, read_record, update_fields,
};
use super::{Keys, failure};
use qtasks_core::backend::{BackendError, CancelRequest, ItemsRead, Storage, Transition, unix_now};
use qtasks_core::records::RecordChange;
use qtasks_core::records::RecordUpdate;
use qtasks_core::stats::QueueStats;
use qtasks_core::{QueuedTask, TaskRecord, TaskStatus};

/// How often a waiter looks at its record when the workers publish their results (the
/// message wakes it at once; this only guards against workers that stopped publishing).
const SAFETY_LOOK: Duration = Duration::from_secs(30);

/// How many times `get` sends a read again when its connection drops (about 1 s in all; a
/// waiter tries until its own timeout).
const READ_RETRIES: usize = 8;

/// Errors after which the same command may well succeed on a new connection, or a moment
/// later: a server that restarts answers `LOADING` while it reads its append-only file back
/// (seen by the fault harness: a waiter's read failed on it), and `TRYAGAIN` / `MASTERDOWN`
/// are as passing. `READONLY` is a master demoted by a failover: a link that follows Sentinels
/// moves to the new master after it (`link`), and the next try goes there.
pub(super) fn is_transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || matches!(
            error.retry_method(),
            redis::RetryMethod::WaitAndRetry
                // A redirect the cluster client handed back (it gave up following it while a
                // slot migrated): the next try finds the key where it went.
                | redis::RetryMethod::AskRedirect
                | redis::RetryMethod::MovedRedirect
        )
}

/// Waiters by task id; the subscriber wakes them when a result is published.
#[derive(Default)]
struct Waiters {
    by_task: Mutex<HashMap<Uuid, Weak<Notify>>>,
}

impl Waiters {
    fn register(&self, uuid: Uuid) -> Arc<Notify> {
        let mut by_task = self.by_task.lock();
        if let Some(existing) = by_task.get(&uuid).and_then(Weak::upgrade) {
            return existing;
        }
        let notify = Arc::new(Notify::new());
        by_task.insert(uuid, Arc::downgrade(&notify));
        notify
    }

    /// Wakes the waiters of a task. Their entry stays: a task may change more than once while
    /// they wait (a stream's items, then its end); each waiter removes it when it is done.
    fn wake(&self, uuid: Uuid) {
        let by_task = self.by_task.lock();
        if let Some(notify) = by_task.get(&uuid).and_then(Weak::upgrade) {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter, to read its record again (messages may have been missed while the
    /// subscription was down).
    fn wake_all(&self) {
        let by_task = self.by_task.lock();
        for notify in by_task.values().filter_map(Weak::upgrade) {
            notify.notify_waiters();
        }
    }

    fn forget(&self, uuid: Uuid) {
        let mut by_task = self.by_task.lock();
        if by_task
            .get(&uuid)
            .is_some_and(|weak| weak.strong_count() == 0)
        {
            by_task.remove(&uuid);
        }
    }
}

/// The scripts of a storage paired with another broker (hashed once).
static INSERT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(super::scripts::INSERT));
static TRANSITION: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(super::scripts::TRANSITION));

pub(crate) struct RedisStorage {
    keys: Keys,
    commands: Link,
    waiters: Arc<Waiters>,
    /// How often a waiter looks at the record anyway (`QueueConfig::result_time_interval`).
    /// Python workers do not publish results, and a message can be missed while the
    /// subscription reconnects; this bounds the delay then.
    fallback_check: Duration,
    append: redis::Script,
    progress: redis::Script,
    /// Where subscriptions connect (for Sentinels, the master they name at the time).
    server: Server,
    /// The result subscription, made at the first wait: a worker that never waits gets no
    /// message per finished task.
    done_subscription: tokio::sync::OnceCell<()>,
    /// Whether the app's workers publish their results (Rust workers say so by their
    /// heartbeat), and when that was last looked at: one look per `fallback_check` for all the
    /// waiters of this client.
    publishers: Mutex<Option<(bool, tokio::time::Instant)>>,
    /// How long a finished record written by [`RecordStore::transition`] is kept (`None`: kept).
    result_ttl: Option<Duration>,
    /// The background sweep of the records' index, while the app runs.
    sweeper: Mutex<Option<tokio::task::AbortHandle>>,
}

/// How often a running app's storage sweeps one batch of the records' index.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

impl RedisStorage {
    /// Subscribes to cancel requests before returning; results are subscribed to at the first
    /// wait.
    pub(super) async fn connect(
        server: Server,
        keys: Keys,
        commands: Link,
        fallback_check: Duration,
        cancels: broadcast::Sender<CancelRequest>,
        added: Arc<super::Announcements>,
        result_ttl: Option<Duration>,
    ) -> Result<Self, BackendError> {
        let waiters = Arc::new(Waiters::default());
        let channels = Channels {
            done: None,
            cancel: Some((keys.cancel_channel.clone(), cancels)),
            added: Some((keys.added_channel.clone(), added)),
        };
        let pubsub = subscribe(&server, &channels).await?;
        tokio::spawn(listen(
            server.clone(),
            channels,
            pubsub,
            Arc::downgrade(&waiters),
        ));
        let append = redis::Script::new(super::scripts::APPEND_ITEM);
        let progress = redis::Script::new(super::scripts::SET_PROGRESS);
        Ok(RedisStorage {
            keys,
            commands,
            waiters,
            fallback_check,
            append,
            progress,
            server,
            done_subscription: tokio::sync::OnceCell::new(),
            publishers: Mutex::default(),
            result_ttl,
            sweeper: Mutex::default(),
        })
    }

    /// Subscribes to results once; a failure leaves waiters to their fallback look.
    async fn subscribe_to_results(&self) {
        self.done_subscription
            .get_or_init(|| async {
                let channels = Channels {
                    done: Some(self.keys.done_channel.clone()),
                    cancel: None,
                    added: None,
                };
                match subscribe(&self.server, &channels).await {
                    Ok(pubsub) => {
                        tokio::spawn(listen(
                            self.server.clone(),
                            channels,
                            pubsub,
                            Arc::downgrade(&self.waiters),
                        ));
                    }
                    Err(error) => {
                        tracing::warn!(
                            "subscribing to results failed, waits will poll: {}",
                            qtasks_core::backend::ErrorChain(&error)
                        );
                    }
                }
            })
            .await;
    }

    /// Whether the app's workers publish their results, as far as a recent look tells.
    async fn workers_publish(&self) -> bool {
        if let Some((publish, at)) = *self.publishers.lock()
            && at.elapsed() < self.fallback_check
        {
            return publish;
        }
        let mut con = self.commands.clone();
        let publish = redis::cmd("EXISTS")
            .arg(&self.keys.publishing)
            .query_async::<i64>(&mut con)
            .await
            .is_ok_and(|n| n == 1);
        *self.publishers.lock() = Some((publish, tokio::time::Instant::now()));
        publish
    }

    /// Waits until `ready` says the record is worth returning (or it is missing).
    async fn wait_until(
        &self,
        uuid: Uuid,
        ready: impl Fn(&TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>, BackendError> {
        self.wait_for(uuid, |record| {
            std::future::ready(match record {
                Some(record) if !ready(&record) => None,
                other => Some(Ok(other)),
            })
        })
        .await
    }

    /// Waits until `look`, given the record as it is now (`None`: missing), answers.
    ///
    /// The record is read when the wait starts and whenever a message says it changed. Only
    /// when the app's workers do not publish (Python ones) is it also read every
    /// `fallback_check`; otherwise a slow safety look every [`SAFETY_LOOK`] covers the day the
    /// Rust workers leave and Python ones take over.
    async fn wait_for<T, Look>(
        &self,
        uuid: Uuid,
        mut look: impl FnMut(Option<TaskRecord>) -> Look,
    ) -> Result<T, BackendError>
    where
        Look: Future<Output = Option<Result<T, BackendError>>>,
    {
        self.subscribe_to_results().await;
        let notify = self.waiters.register(uuid);
        let result = loop {
            // Listen first, then look: a change published in between still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.read(uuid, true).await {
                Err(error) => break Err(error),
                Ok(record) => {
                    if let Some(answer) = look(record).await {
                        break answer;
                    }
                }
            }
            let pause = if self.workers_publish().await {
                SAFETY_LOOK.max(self.fallback_check)
            } else {
                self.fallback_check
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(pause) => {}
            }
        };
        drop(notify);
        self.waiters.forget(uuid);
        result
    }

    /// The keys of this app that hold task records (`N:{uuid}`).
    async fn record_keys(&self) -> Result<Vec<(Uuid, String)>, BackendError> {
        let prefix = format!("{}:", self.keys.prefix);
        let keys = scan(&self.commands, &format!("{}*", super::glob_escape(&prefix))).await?;
        Ok(keys
            .into_iter()
            .filter_map(|key| Some((Uuid::parse_str(key.strip_prefix(&prefix)?).ok()?, key)))
            .collect())
    }

    /// Reads a record. A read is safe to repeat, so a dropped connection is retried (the
    /// connection manager reconnects in the meantime), a few times for `get` (`patient` off),
    /// and for a waiter until its own timeout ends the wait (`patient` on).
    async fn read(&self, uuid: Uuid, patient: bool) -> Result<Option<TaskRecord>, BackendError> {
        use backon::Retryable;
        let key = self.keys.record(uuid);
        let hgetall = || async {
            let mut con = self.commands.clone();
            redis::cmd("HGETALL")
                .arg(&key)
                .query_async::<Vec<Vec<u8>>>(&mut con)
                .await
        };
        let tries = if patient { usize::MAX } else { READ_RETRIES };
        let fields = hgetall
            .retry(crate::reconnect_pauses().take(tries))
            .when(is_transient)
            .notify(|error, pause| {
                tracing::debug!(uuid = %uuid, "reading the record failed, retrying in {pause:?}: {}", qtasks_core::backend::ErrorChain(error));
            })
            .await
            .map_err(|e| failure(format!("reading task {uuid} failed"), e))?;
        if fields.is_empty() {
            return Ok(None);
        }
        // A record is returned however damaged: unreadable fields come back raw.
        let (record, problems) = read_record(uuid, &pairs(fields));
        if !problems.is_empty() {
            tracing::debug!(uuid = %uuid, "the record has unreadable fields: {}", problems.join("; "));
        }
        Ok(Some(record))
    }
}

#[qtasks_core::async_trait]
impl qtasks_core::backend::Lifecycle for RedisStorage {
    /// Starts the index sweep (see [`listing`](super::listing)).
    async fn start(&self) -> Result<(), BackendError> {
        let mut sweeper = self.sweeper.lock();
        if let (None, Some(index)) = (sweeper.as_ref(), self.keys.records_index.clone()) {
            let (keys, commands) = (self.keys.clone(), self.commands.clone());
            let task = tokio::spawn(async move {
                let mut rank = 0;
                let mut every = tokio::time::interval(SWEEP_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    match super::listing::sweep(&keys, &index, &commands, rank).await {
                        Ok(next) => rank = next,
                        Err(error) => {
                            tracing::debug!("sweeping the records' index failed: {error}");
                        }
                    }
                }
            });
            *sweeper = Some(task.abort_handle());
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), BackendError> {
        let sweeper = self.sweeper.lock().take();
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "RedisStorage"
    }
}

#[qtasks_core::async_trait]
impl Storage for RedisStorage {
    /// With the records' index (the default), a page looks through the index for at most
    /// 250 ms; without it, every record is read.
    fn lists_cheaply(&self) -> bool {
        self.keys.records_index.is_some()
    }

    async fn list(
        &self,
        query: &qtasks_core::records::RecordQuery,
    ) -> Result<qtasks_core::records::RecordPage, BackendError> {
        match &self.keys.records_index {
            Some(index) => super::listing::list(&self.keys, index, &self.commands, query).await,
            // No index (`RedisOptions::records_index` off): every record is read.
            None => Ok(query.page_of(self.get_all().await?)),
        }
    }

    async fn delete(&self, uuid: Uuid) -> Result<bool, BackendError> {
        Ok(super::listing::delete(&self.keys, &self.commands, &[uuid]).await? == 1)
    }

    async fn get(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError> {
        self.read(uuid, false).await
    }

    async fn get_all(&self) -> Result<Vec<TaskRecord>, BackendError> {
        let keys = self.record_keys().await?;
        let mut pipe = redis::pipe();
        for (_, key) in &keys {
            pipe.hgetall(key);
        }
        let mut con = self.commands.clone();
        let hashes: Vec<Vec<Vec<u8>>> = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| failure("reading the records failed".to_owned(), e))?;
        let mut records = Vec::with_capacity(keys.len());
        for ((uuid, _), fields) in keys.into_iter().zip(hashes) {
            // A key that expired meanwhile, or a hash that is no task record, is skipped;
            // a damaged record is listed with its unreadable fields raw.
            let fields = pairs(fields);
            if fields.is_empty() || fields_are_foreign(&fields) {
                continue;
            }
            records.push(read_record(uuid, &fields).0);
        }
        records.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        Ok(records)
    }

    async fn update(&self, uuid: Uuid, update: RecordUpdate) -> Result<(), BackendError> {
        let mut con = self.commands.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(self.keys.record(uuid), &update_fields(&update, unix_now()));
        if update.status.is_some_and(TaskStatus::is_final) {
            pipe.publish(&self.keys.done_channel, uuid.to_string());
        }
        pipe.exec_async(&mut con)
            .await
            .map_err(|e| failure(format!("updating task {uuid} failed"), e))
    }

    async fn delete_finished(&self) -> Result<usize, BackendError> {
        let finished: Vec<Uuid> = self
            .get_all()
            .await?
            .into_iter()
            .filter(|record| record.status.is_final())
            .map(|record| record.uuid)
            .collect();
        for chunk in finished.chunks(1000) {
            super::listing::delete(&self.keys, &self.commands, chunk).await?;
        }
        Ok(finished.len())
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        let keys = scan(
            &self.commands,
            &format!("{}:*", super::glob_escape(&self.keys.prefix)),
        )
        .await?;
        for chunk in keys.chunks(1000) {
            let mut con = self.commands.clone();
            redis::cmd("UNLINK")
                .arg(chunk)
                .exec_async(&mut con)
                .await
                .map_err(|e| failure("deleting the app's keys failed".to_owned(), e))?;
        }
        Ok(())
    }

    async fn wait_finished(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError> {
        self.wait_until(uuid, |record| record.status.is_final())
            .await
    }

    async fn append_item(
        &self,
        uuid: Uuid,
        delivery: &str,
        item: serde_json::Value,
    ) -> Result<bool, BackendError> {
        let mut con = self.commands.clone();
        let appended: i64 = self
            .append
            .key(self.keys.record(uuid))
            .key(self.keys.items(uuid))
            .key(&self.keys.leases)
            .arg(item.to_string())
            .arg(&self.keys.done_channel)
            .arg(uuid.to_string())
            .arg(delivery)
            .arg(u64::try_from(ITEMS_TTL.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure(format!("storing an item of task {uuid} failed"), e))?;
        if appended == 0 {
            tracing::debug!(uuid = %uuid, "an item of task {uuid} was refused: its run no longer holds the task");
        }
        Ok(appended == 1)
    }

    async fn set_progress(
        &self,
        uuid: Uuid,
        delivery: &str,
        progress: serde_json::Value,
    ) -> Result<bool, BackendError> {
        let mut con = self.commands.clone();
        let stored: i64 = self
            .progress
            .key(self.keys.record(uuid))
            .key(&self.keys.leases)
            .arg(progress.to_string())
            .arg(&self.keys.done_channel)
            .arg(uuid.to_string())
            .arg(delivery)
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure(format!("storing the progress of task {uuid} failed"), e))?;
        Ok(stored == 1)
    }

    async fn wait_progress(
        &self,
        uuid: Uuid,
        after: Option<f64>,
    ) -> Result<Option<TaskRecord>, BackendError> {
        self.wait_for(uuid, |record| async move {
            match record {
                None => Some(Ok(None)),
                Some(record) if qtasks_core::backend::has_progress_news(&record, after) => {
                    Some(Ok(Some(record)))
                }
                Some(_) => None,
            }
        })
        .await
    }

    async fn wait_items(&self, uuid: Uuid, seen: usize) -> Result<ItemsRead, BackendError> {
        self.wait_for(uuid, |record| async move {
            match record {
                None => Some(Ok(ItemsRead::new(Vec::new(), true))),
                // Ended: the record holds every item.
                Some(record) if record.status.is_final() => {
                    let items = match record.returning {
                        Some(serde_json::Value::Array(items)) => {
                            items.into_iter().skip(seen).collect()
                        }
                        _ => Vec::new(),
                    };
                    Some(Ok(ItemsRead::new(items, true)))
                }
                // Running: the live items, once there are new ones.
                Some(_) => match self.live_items(uuid, seen).await {
                    Err(error) => Some(Err(error)),
                    Ok(items) if !items.is_empty() => Some(Ok(ItemsRead::new(items, false))),
                    Ok(_) => None,
                },
            }
        })
        .await
    }
}

#[qtasks_core::async_trait]
impl qtasks_core::backend::RecordStore for RedisStorage {
    async fn insert(&self, task: &QueuedTask) -> Result<bool, BackendError> {
        let fields = new_record_fields(task);
        let mut script = INSERT.prepare_invoke();
        script
            .key(self.keys.record(task.uuid))
            .key(&self.keys.records_stats)
            .key(&self.keys.records_waiting)
            .key(&self.keys.gone);
        if let Some(index) = &self.keys.records_index {
            script.key(index);
        }
        script
            .arg(task.uuid.to_string())
            .arg(task.priority)
            .arg(task.created_at)
            .arg(fields.len());
        for (field, value) in &fields {
            script.arg(*field).arg(value);
        }
        let mut con = self.commands.clone();
        let written: u8 = script
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure(format!("storing task {} failed", task.uuid), e))?;
        Ok(written == 1)
    }

    async fn insert_unique(
        &self,
        task: &QueuedTask,
        unique: &qtasks_core::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        let fields = new_record_fields(task);
        let script = redis::Script::new(super::scripts::UNIQUE_INSERT);
        super::unique_add(&self.keys, &self.commands, unique, |lock, holder| {
            let mut invocation = script.key(&lock);
            invocation
                .key(holder.map_or_else(|| lock.clone(), |holder| self.keys.record(holder)))
                .key(self.keys.record(task.uuid))
                .key(&self.keys.records_stats)
                .key(&self.keys.records_waiting)
                .key(&self.keys.gone);
            if let Some(index) = &self.keys.records_index {
                invocation.key(index);
            }
            invocation
                .arg(holder.map_or_else(String::new, |holder| holder.to_string()))
                .arg(unique.window_ms())
                .arg(&self.keys.prefix)
                .arg(super::unique_lock_ttl_ms(unique))
                .arg(task.uuid.to_string())
                .arg(task.priority)
                .arg(task.created_at)
                .arg(fields.len());
            for (field, value) in &fields {
                invocation.arg(*field).arg(value);
            }
            let mut con = self.commands.clone();
            async move { invocation.invoke_async::<String>(&mut con).await }
        })
        .await
    }

    async fn transition(
        &self,
        uuid: Uuid,
        from: &[TaskStatus],
        change: RecordChange,
    ) -> Result<Transition, BackendError> {
        let now = unix_now();
        let fields = match &change {
            RecordChange::Finished(outcome, run) => outcome_fields(outcome, run, now),
            RecordChange::CancelRequested(reason) => vec![("cancel_requested", reason.clone())],
            RecordChange::HandedBack(hand_backs) => vec![
                ("updated_at", now.to_string()),
                ("status", change.status().as_str().to_owned()),
                ("hand_backs", hand_backs.to_string()),
            ],
            other => vec![
                ("updated_at", now.to_string()),
                ("status", other.status().as_str().to_owned()),
            ],
        };
        let allowed: String = from.iter().map(|s| format!(" {s} ")).collect();
        // The task's own retention, when it has one, else the storage's.
        let own_ttl = match &change {
            RecordChange::Finished(_, run) => run.result_ttl,
            _ => None,
        };
        // A task's own retention is at least 1 ms (0 would mean "keep"); the storage's keeps
        // the scripts' meaning of 0.
        let ttl_ms = match own_ttl {
            Some(ttl) => ttl.as_millis().clamp(1, super::broker::MAX_TTL_MS) as u64,
            None => self.result_ttl.map_or(0, |ttl| {
                ttl.as_millis().min(super::broker::MAX_TTL_MS) as u64
            }),
        };
        let mut script = TRANSITION.prepare_invoke();
        script
            .key(self.keys.record(uuid))
            .key(&self.keys.records_stats)
            .key(&self.keys.records_waiting)
            .arg(uuid.to_string())
            .arg(allowed)
            .arg(change.status().as_str())
            .arg(&self.keys.done_channel)
            .arg(ttl_ms)
            .arg(fields.len());
        for (field, value) in &fields {
            script.arg(*field).arg(value);
        }
        let mut con = self.commands.clone();
        let found: String = script
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure(format!("changing task {uuid} failed"), e))?;
        let status = |text: &str| {
            text.parse::<TaskStatus>().map_err(|_| {
                BackendError::new(
                    "redis",
                    format!("task {uuid} has the unknown status `{text}`"),
                )
            })
        };
        match found.split_once(':') {
            Some(("applied", old)) => Ok(Transition::Applied(status(old)?)),
            Some(("kept", old)) => Ok(Transition::Kept(status(old)?)),
            Some(("cancelled", old)) => Ok(Transition::Cancelled(status(old)?)),
            _ => Ok(Transition::NotFound),
        }
    }

    async fn stats(&self) -> Result<QueueStats, BackendError> {
        super::stats::read_records(&self.keys, &self.commands).await
    }
}

/// How long the live items of a stream task are kept after its last one (they go when it
/// ends; this bounds those of a task whose end another engine wrote).
const ITEMS_TTL: Duration = Duration::from_secs(3600);

impl RedisStorage {
    /// The live items of a running stream task after the first `seen` (an item that is no
    /// JSON comes back as text).
    async fn live_items(
        &self,
        uuid: Uuid,
        seen: usize,
    ) -> Result<Vec<serde_json::Value>, BackendError> {
        let mut con = self.commands.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys.items(uuid))
            .arg(seen)
            .arg(-1)
            .query_async(&mut con)
            .await
            .map_err(|e| failure(format!("reading the items of task {uuid} failed"), e))?;
        Ok(raw
            .into_iter()
            .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
            .collect())
    }
}

/// Every key matching a glob pattern (SCAN, so Redis is not blocked).
pub(super) async fn scan(commands: &Link, pattern: &str) -> Result<Vec<String>, BackendError> {
    let mut con = commands.clone();
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .map_err(|e| failure("listing keys failed".to_owned(), e))?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The channels the storage listens to.
struct Channels {
    /// Results: each message names a finished task; its waiters are woken.
    done: Option<String>,
    /// Cancel requests, and where they are passed on.
    cancel: Option<(String, broadcast::Sender<CancelRequest>)>,
    /// Entries pushed to named queues, and the idle takes they wake.
    added: Option<(String, Arc<super::Announcements>)>,
}

async fn subscribe(
    server: &Server,
    channels: &Channels,
) -> Result<redis::aio::PubSub, BackendError> {
    let client = server
        .client()
        .await
        .map_err(|e| failure("finding the master to subscribe on failed".to_owned(), e))?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(|e| failure("connecting a subscription failed".to_owned(), e))?;
    let names: Vec<&String> = channels
        .done
        .iter()
        .chain(channels.cancel.as_ref().map(|(name, _)| name))
        .chain(channels.added.as_ref().map(|(name, _)| name))
        .collect();
    pubsub
        .subscribe(&names)
        .await
        .map_err(|e| failure("subscribing failed".to_owned(), e))?;
    Ok(pubsub)
}

/// Wakes waiters for each published result, and passes cancel requests on; resubscribes with
/// backoff when the connection drops. Ends when the storage is gone.
async fn listen(
    server: Server,
    channels: Channels,
    first: redis::aio::PubSub,
    waiters: Weak<Waiters>,
) {
    let mut pubsub = Some(first);
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(mut current) = pubsub.take() else {
            if waiters.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(delay).await;
            match subscribe(&server, &channels).await {
                Ok(subscribed) => {
                    delay = Duration::from_millis(100);
                    pubsub = Some(subscribed);
                    // A result published while the subscription was down was missed, and so
                    // may an entry announced.
                    if let Some(waiters) = waiters.upgrade() {
                        waiters.wake_all();
                    }
                    if let Some((_, added)) = &channels.added {
                        added.announce_all();
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        "result subscription: {}; retrying in {delay:?}",
                        qtasks_core::backend::ErrorChain(&error)
                    );
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let mut messages = current.on_message();
        while let Some(message) = messages.next().await {
            let Some(waiters) = waiters.upgrade() else {
                return;
            };
            if let Some((_, added)) = channels
                .added
                .as_ref()
                .filter(|(name, _)| name == message.get_channel_name())
            {
                match message.get_payload::<String>() {
                    Ok(queue) => added.announce(&queue),
                    Err(_) => added.announce_all(),
                }
                continue;
            }
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            if let Some((_, cancels)) = channels
                .cancel
                .as_ref()
                .filter(|(name, _)| name == message.get_channel_name())
            {
                let (uuid, reason) = text.split_once(' ').unwrap_or((text.as_str(), ""));
                if let Ok(uuid) = Uuid::parse_str(uuid) {
                    let _ = cancels.send(CancelRequest::new(uuid, reason));
                }
            } else {
                // One uuid, or a finish batch's uuids separated by spaces.
                for uuid in text
                    .split(' ')
                    .filter_map(|uuid| Uuid::parse_str(uuid).ok())
                {
                    waiters.wake(uuid);
                }
            }
        }
        tracing::warn!("the result subscription dropped; reconnecting");
    }
}
