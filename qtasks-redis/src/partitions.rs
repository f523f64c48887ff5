//! One app spread over several partitions ([`RedisOptions::partitions`]), so that a hot
//! queue's drain rate grows with a Redis Cluster's shards.
//!
//! Each partition is a whole keyspace of its own, as if it were an app named `name~i`: its
//! records, queues, leases, counters and dead letters, under one hash tag. Every script keeps
//! touching one slot, because a task lives in one partition with everything a script reads
//! with it: [`partition_of`] places it by its uuid, and the next attempt of a failed task keeps
//! the bytes that decide it (see `next_attempt_uuid` in the core's worker). The tags are
//! chosen so that partition `i` falls in the `i`-th of `k` equal slot ranges: on a cluster
//! whose slots are split evenly (as `redis-cli --cluster create` does), `k` partitions on `k`
//! shards land one per shard.
//!
//! - An add goes to its task's partition; `add_many` sends each partition its share at once.
//! - A take asks the partitions in turn, starting one further each time, so none starves;
//!   when all are empty it waits for any partition's announcement of a new entry. Each
//!   partition's take runs on a task of its own and is never dropped half way: a partition
//!   that does not answer within 250 ms (its shard failing over) is passed by, and what its
//!   take brings later is kept, its leases renewed, for the next take (at most 1 s: then it is
//!   handed back unstarted, so another worker runs it).
//! - Everything about one task (finish, cancel, its record, its waiters) goes to its
//!   partition; listings, counters and dead letters are read from every partition and merged.
//! - The global config (workers' heartbeats, groups, schedules) lives in partition 0.
//!
//! What crosses partitions is refused with a message that says so: a unique key's lock and the
//! record of its holder may sit on different shards, and a limit's slots and turns are counted
//! across every task of its name. Priority order holds within a partition; across partitions,
//! a take serves whichever partition's turn it is.
//!
//! [`RedisOptions::partitions`]: crate::RedisOptions::partitions

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use qtasks_core::backend::{
    BackendError, BackendParts, Broker, CancelRequest, CancelState, Delivery, ItemsRead, Lifecycle,
    Storage,
};
use qtasks_core::queues::Take;
use qtasks_core::records::{RecordCursor, RecordPage, RecordQuery, RecordUpdate, TaskRecord};
use qtasks_core::stats::{DeadLetter, QueueStats};
use qtasks_core::{Outcome, QueueConfig, Uuid};

use crate::broker::RedisBroker;
use crate::storage::RedisStorage;
use crate::{
    Announcements, RedisOptions, Shared, connect_parts_on, key_prefix_on, open_server, redacted,
};

/// The most partitions an app may have.
pub const MAX_PARTITIONS: u16 = 64;

/// The slots of a Redis Cluster.
const SLOTS: u32 = 16_384;

/// The partition, among `count`, of the task `uuid`: decided by its last 8 bytes, which every
/// attempt of a task shares.
///
/// ```
/// use qtasks::redis::partitions::partition_of;
///
/// let task = qtasks::Uuid::new_v4();
/// assert!(partition_of(task, 3) < 3);
/// assert_eq!(partition_of(task, 1), 0);
/// ```
pub fn partition_of(uuid: Uuid, count: u16) -> usize {
    let mut low = [0u8; 8];
    low.copy_from_slice(&uuid.as_bytes()[8..]);
    (u64::from_be_bytes(low) % u64::from(count.max(1))) as usize
}

/// The names of an app's partitions, as their keys' prefix and hash tag: `name~i`, or
/// `name~i.n` with the first `n` that puts the tag in the `i`-th of `count` equal slot
/// ranges. The same for every process, whatever the cluster looks like.
///
/// ```
/// use qtasks::redis::partitions::partition_names;
///
/// let names = partition_names("billing", 3);
/// assert_eq!(names.len(), 3);
/// assert!(names.iter().all(|name| name.starts_with("billing~")));
/// ```
pub fn partition_names(name: &str, count: u16) -> Vec<String> {
    let count = u32::from(count.max(1));
    (0..count)
        .map(|i| {
            let wanted = (i * SLOTS / count)..((i + 1) * SLOTS / count);
            std::iter::once(format!("{name}~{i}"))
                .chain((1..100_000).map(|n| format!("{name}~{i}.{n}")))
                .find(|tag| wanted.contains(&u32::from(key_slot(tag))))
                .unwrap_or_else(|| format!("{name}~{i}"))
        })
        .collect()
}

/// The cluster slot of a hash tag: CRC16 (XMODEM) of its bytes, modulo 16,384, as the Redis
/// Cluster specification defines it.
fn key_slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in tag.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc % SLOTS as u16
}

/// `url` without its `partitions=k` query parameter, and `k` when it has one.
pub(crate) fn split_url(url: &str) -> Result<(String, Option<u16>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut count = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("partitions", value)) => {
                count = Some(value.parse::<u16>().map_err(|_| {
                    format!(
                        "`partitions={value}` is not a number of partitions (1 to {MAX_PARTITIONS})"
                    )
                })?);
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, count))
}

/// Connects every partition of the app named `name` (its options checked already).
pub(crate) async fn connect(
    url: &str,
    name: &str,
    options: &RedisOptions,
    config: &QueueConfig,
) -> Result<BackendParts, BackendError> {
    let server = open_server(url, options)?;
    let shown = redacted(url).to_string();
    let mut shared = Shared::new();
    let (mut brokers, mut storages, mut global_config) = (Vec::new(), Vec::new(), None);
    for partition in partition_names(name, options.partitions) {
        let parts = connect_parts_on(
            &server,
            &shown,
            &partition,
            options,
            config.result_interval(),
            &shared,
        )
        .await?;
        brokers.push(Arc::new(parts.broker));
        storages.push(parts.storage);
        if global_config.is_none() {
            // Every partition's waiters read the first one's sign that workers publish.
            shared.publishing = Some(parts.global_config.publishing_key().to_owned());
            global_config = Some(parts.global_config);
        }
    }
    let global_config = global_config.expect("at least one partition");
    // Every process of the app must spread it alike: the number is kept under the app's
    // own name.
    let marker = format!("{}:qtasks:partitions", key_prefix_on(&server, name)?);
    global_config
        .agree_on_partitions(Some(&marker), options.partitions)
        .await?;
    Ok(BackendParts::new(
        Arc::new(PartitionedBroker {
            parts: brokers,
            added: Arc::clone(&shared.added),
            idle: crate::broker::idle_wait(options),
            turn: AtomicUsize::new(0),
            stopping: Arc::default(),
            outstanding: (0..options.partitions)
                .map(|_| Default::default())
                .collect(),
            answered: (0..options.partitions)
                .map(|_| Default::default())
                .collect(),
            landed: Arc::default(),
            shown,
        }),
        Arc::new(PartitionedStorage { parts: storages }),
        Arc::new(global_config),
    ))
}

/// The error of a feature that needs the whole app in one partition.
fn crosses_partitions(what: &str, count: usize) -> BackendError {
    BackendError::new(
        "redis",
        format!(
            "the Redis broker keeps no {what} with partitions = {count}: they are kept across every task of their name, and the partitions spread those over separate keyspaces (and shards); give such tasks an app of their own, with one partition"
        ),
    )
}

/// The broker of a partitioned app: the partitions' brokers, and which one a take asks first.
pub(crate) struct PartitionedBroker {
    parts: Vec<Arc<RedisBroker>>,
    /// Per partition, its take under way and what it brought (see [`Outstanding`]).
    outstanding: Arc<[parking_lot::Mutex<Outstanding>]>,
    /// Per partition, rung when a take from it answers.
    answered: Arc<[tokio::sync::Notify]>,
    /// Rung when a take's answer brought tasks that no take was waiting for.
    landed: Arc<tokio::sync::Notify>,
    /// The announcements of every partition's new entries (one subscription each).
    added: Arc<Announcements>,
    /// How long an idle take waits between looks when nothing is announced.
    idle: Duration,
    /// Turns the partition a take asks first, so each is served in turn.
    turn: AtomicUsize,
    /// Set by `stop` (cleared by `start`): what a take brings then is handed back at once.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    shown: String,
}

/// One partition's take, which runs to its end on a task of its own: a take is never dropped
/// half way (its tasks would wait for their leases), and one slow partition (its shard failing
/// over, a command waiting for `response_timeout`) holds up only itself. What a take brings
/// that the worker cannot use yet is kept, its leases renewed, for the next take.
#[derive(Default)]
struct Outstanding {
    /// A take from the partition is under way.
    asking: bool,
    /// Deliveries taken and held, not handed to a worker yet.
    kept: VecDeque<Delivery>,
    /// After a failed take: not asked again before this.
    resting_until: Option<tokio::time::Instant>,
    /// Why the last take failed; `None` once one answers.
    failure: Option<String>,
}

/// Hands back deliveries that no worker started, those whose lease this process still holds.
async fn hand_back(part: &RedisBroker, deliveries: &[Delivery]) {
    for delivery in deliveries {
        if !part.holds(&delivery.receipt) {
            continue;
        }
        if let Err(error) = part.release_unstarted(delivery).await {
            tracing::warn!(uuid = %delivery.task.uuid, "handing back a task taken and not started failed (it runs when its lease ends): {}", qtasks_core::backend::ErrorChain(&error));
        }
    }
}

/// How long a take waits for one partition's answer before it asks the next (the answer,
/// when it comes, is kept for a later take).
const ANSWER_WITHIN: Duration = Duration::from_millis(250);

/// How long takes pass a partition by after a take from it failed.
const REST_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// How long what a take brought late waits for a take of this process: then it is handed
/// back, so that another worker with free slots runs it (a task waiting here reads `process`).
const KEEP_AT_MOST: Duration = Duration::from_secs(1);

/// Clears a partition's `asking` when its take ends, however it ends (a panic, its runtime
/// shutting down): a partition left `asking` would never be asked again.
struct AskingGuard {
    outstanding: Arc<[parking_lot::Mutex<Outstanding>]>,
    index: usize,
}

impl Drop for AskingGuard {
    fn drop(&mut self) {
        self.outstanding[self.index].lock().asking = false;
    }
}

impl PartitionedBroker {
    fn part(&self, uuid: Uuid) -> &RedisBroker {
        &self.parts[partition_of(uuid, self.parts.len() as u16)]
    }

    /// The deliveries kept for partition `index`, as many as `take` has room for (in all,
    /// and per queue).
    fn kept_for(&self, index: usize, take: &Take<'_>) -> Vec<Delivery> {
        let mut outstanding = self.outstanding[index].lock();
        if outstanding.kept.is_empty() {
            return Vec::new();
        }
        let mut handed: Vec<Delivery> = Vec::new();
        let mut left = VecDeque::new();
        while let Some(delivery) = outstanding.kept.pop_front() {
            // Its lease was found lost while it waited here: another worker may run it.
            if !self.parts[index].holds(&delivery.receipt) {
                continue;
            }
            let queue = delivery.task.queue_name();
            let room = handed.len() < take.max
                && take.queues.iter().any(|asked| {
                    asked.name == queue
                        && handed
                            .iter()
                            .filter(|d| d.task.queue_name() == queue)
                            .count()
                            < asked.max
                });
            if room {
                handed.push(delivery);
            } else {
                left.push_back(delivery);
            }
        }
        outstanding.kept = left;
        handed
    }

    /// Sends partition `index` a take of `take`'s numbers, unless one is under way or the
    /// partition rests after a failure (then `false`); its answer lands in `outstanding`.
    fn ask(&self, index: usize, take: &Take<'_>) -> bool {
        {
            let mut outstanding = self.outstanding[index].lock();
            if outstanding.asking
                || outstanding
                    .resting_until
                    .is_some_and(|until| until > tokio::time::Instant::now())
            {
                return false;
            }
            outstanding.asking = true;
        }
        let queues: Vec<(String, usize)> = take
            .queues
            .iter()
            .map(|queue| (queue.name.to_owned(), queue.max))
            .collect();
        let max = take.max;
        let part = Arc::clone(&self.parts[index]);
        let outstanding = Arc::clone(&self.outstanding);
        let answered = Arc::clone(&self.answered);
        let landed = Arc::clone(&self.landed);
        let stopping = Arc::clone(&self.stopping);
        let guard = AskingGuard {
            outstanding: Arc::clone(&outstanding),
            index,
        };
        tokio::spawn(async move {
            let mut look = Take::from_queues(queues.iter().map(|(name, _)| name.as_str()), max);
            for (queue, (_, most)) in look.queues.iter_mut().zip(&queues) {
                queue.max = *most;
            }
            // Asked once, without waiting: the wait is for all the partitions.
            look.patience = Some(Duration::ZERO);
            let taken = part.take(&look).await;
            drop(guard);
            let brought = matches!(&taken, Ok(taken) if !taken.is_empty());
            if stopping.load(Ordering::Acquire)
                && let Ok(taken) = &taken
            {
                // The worker stops: no take will come for these.
                hand_back(&part, taken).await;
                return;
            }
            let receipts: Vec<String> = match &taken {
                Ok(taken) => taken.iter().map(|d| d.receipt.clone()).collect(),
                Err(_) => Vec::new(),
            };
            {
                let mut outstanding = outstanding[index].lock();
                match taken {
                    Ok(taken) => {
                        outstanding.failure = None;
                        outstanding.kept.extend(taken);
                    }
                    // One partition out (its shard failing over) does not stop the others.
                    Err(error) => {
                        tracing::warn!(
                            "taking from partition {index} failed (the others are served; it is asked again in {REST_AFTER_FAILURE:?}): {}",
                            qtasks_core::backend::ErrorChain(&error)
                        );
                        outstanding.resting_until =
                            Some(tokio::time::Instant::now() + REST_AFTER_FAILURE);
                        outstanding.failure =
                            Some(qtasks_core::backend::ErrorChain(&error).to_string());
                    }
                }
            }
            answered[index].notify_waiters();
            // (An idle take wakes for tasks only: an empty answer waking it would ask again
            // at once, and again.)
            if brought {
                landed.notify_waiters();
                // Those no take of this process claims soon go back to the partition.
                tokio::time::sleep(KEEP_AT_MOST).await;
                let unclaimed: Vec<Delivery> = {
                    let mut outstanding = outstanding[index].lock();
                    let (unclaimed, kept): (Vec<Delivery>, Vec<Delivery>) =
                        std::mem::take(&mut outstanding.kept)
                            .into_iter()
                            .partition(|d| receipts.contains(&d.receipt));
                    outstanding.kept = kept.into();
                    unclaimed
                };
                hand_back(&part, &unclaimed).await;
            }
        });
        true
    }

    /// Hands back what the partitions' takes brought and no worker took, so other workers run
    /// those tasks at once; takes still under way hand theirs back when they answer.
    async fn hand_back_kept(&self) {
        self.stopping.store(true, Ordering::Release);
        for (index, part) in self.parts.iter().enumerate() {
            let kept: Vec<Delivery> = self.outstanding[index].lock().kept.drain(..).collect();
            hand_back(part, &kept).await;
        }
    }
}

#[qtasks_core::async_trait]
impl Lifecycle for PartitionedBroker {
    fn name(&self) -> &str {
        "RedisBroker"
    }

    async fn start(&self) -> Result<(), BackendError> {
        self.stopping.store(false, Ordering::Release);
        for part in &self.parts {
            part.start().await?;
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), BackendError> {
        self.hand_back_kept().await;
        for part in &self.parts {
            part.stop().await?;
        }
        Ok(())
    }
}

#[qtasks_core::async_trait]
impl Broker for PartitionedBroker {
    fn location(&self) -> Option<String> {
        Some(format!("{} ({} partitions)", self.shown, self.parts.len()))
    }

    async fn add(&self, task: qtasks_core::QueuedTask) -> Result<(), BackendError> {
        self.part(task.uuid).add(task).await
    }

    async fn add_many(&self, tasks: &[qtasks_core::QueuedTask]) -> Result<(), BackendError> {
        let count = self.parts.len() as u16;
        let mut shares = vec![Vec::new(); self.parts.len()];
        for task in tasks {
            shares[partition_of(task.uuid, count)].push(task.clone());
        }
        let added = futures_util::future::join_all(
            self.parts
                .iter()
                .zip(&shares)
                .filter(|(_, share)| !share.is_empty())
                .map(|(part, share)| part.add_many(share)),
        )
        .await;
        added.into_iter().collect()
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        self.take(&Take::default_queue(max)).await
    }

    fn supports_queues(&self) -> bool {
        true
    }

    /// As each partition's broker: its share of a chunk goes out at the first poll.
    fn add_many_chunks_at_once(&self) -> usize {
        2
    }

    fn partition_of(&self, uuid: Uuid) -> usize {
        partition_of(uuid, self.parts.len() as u16)
    }

    async fn take(&self, take: &Take<'_>) -> Result<Vec<Delivery>, BackendError> {
        let give_up = take
            .patience
            .and_then(|patience| tokio::time::Instant::now().checked_add(patience));
        let wake_ups = self.added.of_take(take);
        loop {
            // Registered before the looks, so an entry announced (or tasks a take brought
            // late) meanwhile wakes the wait.
            let mut woken: Vec<_> = wake_ups
                .iter()
                .map(|notify| Box::pin(notify.notified()))
                .chain(std::iter::once(Box::pin(self.landed.notified())))
                .collect();
            for notified in &mut woken {
                notified.as_mut().enable();
            }
            let first = self.turn.fetch_add(1, Ordering::Relaxed);
            let order = (0..self.parts.len()).map(|step| (first + step) % self.parts.len());
            // What earlier takes brought first, then a new look at each partition.
            for index in order.clone() {
                let kept = self.kept_for(index, take);
                if !kept.is_empty() {
                    return Ok(kept);
                }
            }
            for index in order {
                let answer = self.answered[index].notified();
                tokio::pin!(answer);
                answer.as_mut().enable();
                if self.ask(index, take) {
                    // Dropped here, the take goes on and its answer is kept.
                    let within = give_up.map_or(ANSWER_WITHIN, |give_up| {
                        ANSWER_WITHIN
                            .min(give_up.saturating_duration_since(tokio::time::Instant::now()))
                    });
                    let _ = tokio::time::timeout(within, answer).await;
                    let kept = self.kept_for(index, take);
                    if !kept.is_empty() {
                        return Ok(kept);
                    }
                }
            }
            // Every partition failing is the broker failing: the worker hears of it.
            let failures: Vec<String> = self
                .outstanding
                .iter()
                .filter_map(|outstanding| outstanding.lock().failure.clone())
                .collect();
            if failures.len() == self.parts.len() {
                return Err(BackendError::new(
                    "redis",
                    format!(
                        "taking tasks failed in every partition; the first: {}",
                        failures[0]
                    ),
                ));
            }
            let now = tokio::time::Instant::now();
            // Until a resting partition may be asked again, or the soonest delayed task of a
            // partition may run (not of one failing or still asked: its look is stale).
            let mut wait = self.idle;
            for (part, outstanding) in self.parts.iter().zip(self.outstanding.iter()) {
                let (resting_until, stale) = {
                    let outstanding = outstanding.lock();
                    (
                        outstanding.resting_until,
                        outstanding.asking || outstanding.failure.is_some(),
                    )
                };
                if let Some(until) = resting_until.filter(|until| *until > now) {
                    wait = wait.min(until - now);
                }
                if let Some(due_ms) = part.next_due_ms().filter(|_| !stale) {
                    wait = wait.min(crate::broker::until_due(due_ms));
                }
            }
            if let Some(give_up) = give_up {
                if now >= give_up {
                    return Ok(Vec::new());
                }
                wait = wait.min(give_up - now);
            }
            tokio::select! {
                _ = futures_util::future::select_all(woken) => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn add_unique(
        &self,
        task: qtasks_core::QueuedTask,
        unique: &qtasks_core::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        let _ = (task, unique);
        Err(crosses_partitions("unique keys", self.parts.len()))
    }

    async fn finish(&self, delivery: &Delivery, outcome: Outcome) -> Result<(), BackendError> {
        let mut outcome = outcome;
        // The next attempt is written by the finish, in its task's partition: it gets a uuid
        // that places it there, as the worker's own retries have (a plugin may have made one
        // that does not).
        if let Outcome::Retry { child, .. } = &mut outcome {
            let count = self.parts.len() as u16;
            let partition = partition_of(delivery.task.uuid, count);
            if partition_of(child.uuid, count) != partition {
                let mut bytes = *child.uuid.as_bytes();
                bytes[8..].copy_from_slice(&delivery.task.uuid.as_bytes()[8..]);
                tracing::debug!(uuid = %delivery.task.uuid, "the next attempt {} is renamed {} to live in its task's partition", child.uuid, Uuid::from_bytes(bytes));
                child.uuid = Uuid::from_bytes(bytes);
            }
        }
        self.part(delivery.task.uuid)
            .finish(delivery, outcome)
            .await
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), BackendError> {
        self.part(delivery.task.uuid).release(delivery).await
    }

    async fn defer(&self, delivery: &Delivery, delay: Duration) -> Result<(), BackendError> {
        self.part(delivery.task.uuid).defer(delivery, delay).await
    }

    async fn bury(&self, delivery: &Delivery, reason: &str) -> Result<(), BackendError> {
        self.part(delivery.task.uuid).bury(delivery, reason).await
    }

    async fn admit(
        &self,
        delivery: &Delivery,
        limits: &qtasks_core::limits::TaskLimits,
    ) -> Result<qtasks_core::limits::Admission, BackendError> {
        let _ = (delivery, limits);
        Err(crosses_partitions("task limits", self.parts.len()))
    }

    async fn pause_queue(&self, queue: &str, paused: bool) -> Result<(), BackendError> {
        for part in &self.parts {
            part.pause_queue(queue, paused).await?;
        }
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>, BackendError> {
        let mut paused = Vec::new();
        for part in &self.parts {
            paused.extend(part.paused_queues().await?);
        }
        paused.sort();
        paused.dedup();
        Ok(paused)
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        for part in &self.parts {
            part.flush_all().await?;
        }
        Ok(())
    }

    async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<Option<CancelState>, BackendError> {
        self.part(uuid).cancel(uuid, reason).await
    }

    async fn request_cancel(&self, uuid: Uuid, reason: &str) -> Result<(), BackendError> {
        self.part(uuid).request_cancel(uuid, reason).await
    }

    fn cancel_requests(&self) -> Option<tokio::sync::broadcast::Receiver<CancelRequest>> {
        // One channel, which every partition's subscription feeds.
        self.parts[0].cancel_requests()
    }

    async fn requeue_taken(&self) -> Result<usize, BackendError> {
        let mut requeued = 0;
        for part in &self.parts {
            requeued += part.requeue_taken().await?;
        }
        Ok(requeued)
    }

    async fn stats(&self) -> Result<Option<QueueStats>, BackendError> {
        let mut merged: Option<QueueStats> = None;
        for part in &self.parts {
            let Some(stats) = part.stats().await? else {
                continue;
            };
            match &mut merged {
                None => merged = Some(stats),
                Some(into) => add_stats(into, stats),
            }
        }
        Ok(merged)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let mut letters = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            for mut letter in part.dead_letters(limit).await? {
                letter.id = format!("{i}/{}", letter.id);
                letters.push(letter);
            }
        }
        // Oldest first, as each partition lists them.
        letters.sort_by(|a, b| a.at.total_cmp(&b.at));
        letters.truncate(limit);
        Ok(letters)
    }

    async fn resolve_dead_letter(
        &self,
        letter: &DeadLetter,
        requeue: bool,
    ) -> Result<bool, BackendError> {
        let Some((part, id)) = letter
            .id
            .split_once('/')
            .and_then(|(i, id)| Some((self.parts.get(i.parse::<usize>().ok()?)?, id)))
        else {
            return Ok(false);
        };
        let mut own = letter.clone();
        own.id = id.to_owned();
        part.resolve_dead_letter(&own, requeue).await
    }
}

/// Adds one partition's counters to the others'.
fn add_stats(into: &mut QueueStats, other: QueueStats) {
    for (priority, waiting) in other.waiting {
        *into.waiting.entry(priority).or_default() += waiting;
    }
    into.delayed += other.delayed;
    into.running += other.running;
    into.finished.success += other.finished.success;
    into.finished.error += other.finished.error;
    into.finished.cancel += other.finished.cancel;
    into.finished.retry += other.finished.retry;
    into.finished_last_minute += other.finished_last_minute;
    into.oldest_waiting_secs = match (into.oldest_waiting_secs, other.oldest_waiting_secs) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    into.dead_letters += other.dead_letters;
    for (queue, numbers) in other.queues {
        let merged = into.queues.entry(queue).or_default();
        merged.waiting += numbers.waiting;
        merged.delayed += numbers.delayed;
        merged.paused |= numbers.paused;
    }
}

/// The storage of a partitioned app: the partitions' storages.
pub(crate) struct PartitionedStorage {
    parts: Vec<RedisStorage>,
}

impl PartitionedStorage {
    fn part(&self, uuid: Uuid) -> &RedisStorage {
        &self.parts[partition_of(uuid, self.parts.len() as u16)]
    }
}

#[qtasks_core::async_trait]
impl Lifecycle for PartitionedStorage {
    fn name(&self) -> &str {
        "RedisStorage"
    }

    async fn start(&self) -> Result<(), BackendError> {
        for part in &self.parts {
            part.start().await?;
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), BackendError> {
        for part in &self.parts {
            part.stop().await?;
        }
        Ok(())
    }
}

#[qtasks_core::async_trait]
impl Storage for PartitionedStorage {
    async fn get(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError> {
        self.part(uuid).get(uuid).await
    }

    async fn get_all(&self) -> Result<Vec<TaskRecord>, BackendError> {
        let mut all = Vec::new();
        for part in &self.parts {
            all.extend(part.get_all().await?);
        }
        // Oldest first, as one store lists them.
        all.sort_by_key(RecordCursor::of);
        Ok(all)
    }

    async fn update(&self, uuid: Uuid, update: RecordUpdate) -> Result<(), BackendError> {
        self.part(uuid).update(uuid, update).await
    }

    async fn wait_finished(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError> {
        self.part(uuid).wait_finished(uuid).await
    }

    async fn set_progress(
        &self,
        uuid: Uuid,
        delivery: &str,
        progress: serde_json::Value,
    ) -> Result<bool, BackendError> {
        self.part(uuid).set_progress(uuid, delivery, progress).await
    }

    async fn wait_progress(
        &self,
        uuid: Uuid,
        after: Option<f64>,
    ) -> Result<Option<TaskRecord>, BackendError> {
        self.part(uuid).wait_progress(uuid, after).await
    }

    async fn append_item(
        &self,
        uuid: Uuid,
        delivery: &str,
        item: serde_json::Value,
    ) -> Result<bool, BackendError> {
        self.part(uuid).append_item(uuid, delivery, item).await
    }

    async fn wait_items(&self, uuid: Uuid, seen: usize) -> Result<ItemsRead, BackendError> {
        self.part(uuid).wait_items(uuid, seen).await
    }

    async fn delete_finished(&self) -> Result<usize, BackendError> {
        let mut deleted = 0;
        for part in &self.parts {
            deleted += part.delete_finished().await?;
        }
        Ok(deleted)
    }

    fn lists_cheaply(&self) -> bool {
        self.parts.iter().all(Storage::lists_cheaply)
    }

    async fn list(&self, query: &RecordQuery) -> Result<RecordPage, BackendError> {
        let mut pages = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            pages.push(part.list(query).await?);
        }
        Ok(merge_pages(pages, query.page_size()))
    }

    async fn delete(&self, uuid: Uuid) -> Result<bool, BackendError> {
        self.part(uuid).delete(uuid).await
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        for part in &self.parts {
            part.flush_all().await?;
        }
        Ok(())
    }
}

/// One page from the partitions' pages of the same query, newest first. A partition whose page
/// goes on (`next`) vouches only for the records down to where it stopped: the merged page
/// keeps only what every such partition vouches for, so the next page misses nothing.
fn merge_pages(pages: Vec<RecordPage>, limit: usize) -> RecordPage {
    let floor: Option<RecordCursor> = pages.iter().filter_map(|page| page.next).max();
    let scanned = pages.iter().map(|page| page.scanned).sum();
    let scan_incomplete = pages.iter().any(|page| page.scan_incomplete);
    let total = pages.iter().map(|page| page.total).sum::<Option<u64>>();
    let mut records: Vec<TaskRecord> = pages
        .into_iter()
        .flat_map(|page| page.records)
        .filter(|record| floor.is_none_or(|floor| RecordCursor::of(record) >= floor))
        .collect();
    records.sort_by_key(|record| std::cmp::Reverse(RecordCursor::of(record)));
    let cut = records.len() > limit;
    records.truncate(limit);
    let next = (cut || floor.is_some())
        .then(|| records.last().map(RecordCursor::of).or(floor))
        .flatten();
    let mut page = RecordPage::new(records);
    page.next = next;
    page.scanned = scanned;
    page.scan_incomplete = scan_incomplete;
    page.total = total;
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_the_cluster_specifications() {
        // The specification's check value of its CRC16, and slots `CLUSTER KEYSLOT` gives.
        assert_eq!(key_slot("123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12_182);
        assert_eq!(key_slot("bar"), 5_061);
    }

    #[test]
    fn partitions_fall_in_equal_slot_ranges() {
        for count in [2u16, 3, 5, 16] {
            let names = partition_names("billing", count);
            for (i, name) in names.iter().enumerate() {
                let slot = u32::from(key_slot(name));
                let (low, high) = (
                    i as u32 * SLOTS / u32::from(count),
                    (i as u32 + 1) * SLOTS / u32::from(count),
                );
                assert!((low..high).contains(&slot), "{name}: slot {slot}");
            }
        }
        assert_eq!(partition_names("billing", 3), partition_names("billing", 3));
    }

    #[test]
    fn a_urls_partitions_parameter_is_taken_out_of_it() {
        assert_eq!(
            split_url("redis://h:6379/0").unwrap(),
            ("redis://h:6379/0".to_owned(), None)
        );
        assert_eq!(
            split_url("redis+cluster://a:7000,b:7001?partitions=3").unwrap(),
            ("redis+cluster://a:7000,b:7001".to_owned(), Some(3))
        );
        assert_eq!(
            split_url("redis+sentinel://s:26379/m/0?sentinel_password=x&partitions=2").unwrap(),
            (
                "redis+sentinel://s:26379/m/0?sentinel_password=x".to_owned(),
                Some(2)
            )
        );
        let refused = split_url("redis://h/0?partitions=many").unwrap_err();
        assert!(refused.contains("`partitions=many`"), "{refused}");
    }

    #[test]
    fn every_partition_gets_its_share_of_tasks() {
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[partition_of(Uuid::new_v4(), 3)] += 1;
        }
        assert!(
            counts.iter().all(|n| (9_000..11_000).contains(n)),
            "{counts:?}"
        );
    }
}
