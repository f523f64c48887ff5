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
//!   when all are empty it waits for any partition's announcement of a new entry.
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
use crate::{Announcements, RedisOptions, Shared, connect_parts_on, open_server, redacted};

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

/// Connects every partition of the app named `name` (its options checked already).
pub(crate) async fn connect(
    url: &str,
    name: &str,
    options: &RedisOptions,
    config: &QueueConfig,
) -> Result<BackendParts, BackendError> {
    let server = open_server(url, options)?;
    let shown = redacted(url).to_string();
    let shared = Shared::new();
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
        brokers.push(parts.broker);
        storages.push(parts.storage);
        global_config.get_or_insert(parts.global_config);
    }
    let global_config = global_config.expect("at least one partition");
    Ok(BackendParts::new(
        Arc::new(PartitionedBroker {
            parts: brokers,
            added: Arc::clone(&shared.added),
            idle: crate::broker::idle_wait(options),
            turn: AtomicUsize::new(0),
            resting: (0..options.partitions)
                .map(|_| parking_lot::Mutex::new(None))
                .collect(),
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
    parts: Vec<RedisBroker>,
    /// The announcements of every partition's new entries (one subscription each).
    added: Arc<Announcements>,
    /// How long an idle take waits between looks when nothing is announced.
    idle: Duration,
    /// Turns the partition a take asks first, so each is served in turn.
    turn: AtomicUsize,
    /// Per partition, until when takes pass it by after a failed take (its shard failing
    /// over): asking it each turn would hold the other partitions' tasks behind its timeout.
    resting: Vec<parking_lot::Mutex<Option<tokio::time::Instant>>>,
    shown: String,
}

/// How long takes pass a partition by after a take from it failed.
const REST_AFTER_FAILURE: Duration = Duration::from_millis(500);

impl PartitionedBroker {
    fn part(&self, uuid: Uuid) -> &RedisBroker {
        &self.parts[partition_of(uuid, self.parts.len() as u16)]
    }
}

#[qtasks_core::async_trait]
impl Lifecycle for PartitionedBroker {
    fn name(&self) -> &str {
        "RedisBroker"
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

    fn partition_of(&self, uuid: Uuid) -> usize {
        partition_of(uuid, self.parts.len() as u16)
    }

    async fn take(&self, take: &Take<'_>) -> Result<Vec<Delivery>, BackendError> {
        let give_up = take
            .patience
            .and_then(|patience| tokio::time::Instant::now().checked_add(patience));
        // Each partition is asked once, without waiting; the wait is for all of them.
        let mut look = take.clone();
        look.patience = Some(Duration::ZERO);
        let wake_ups: Vec<Arc<tokio::sync::Notify>> = take
            .queues
            .iter()
            .map(|queue| self.added.of(queue.name))
            .collect();
        loop {
            // Registered before the looks, so an entry announced meanwhile wakes the wait.
            let mut announced: Vec<_> = wake_ups
                .iter()
                .map(|notify| Box::pin(notify.notified()))
                .collect();
            for notified in &mut announced {
                notified.as_mut().enable();
            }
            let first = self.turn.fetch_add(1, Ordering::Relaxed);
            let mut wait = self.idle;
            for step in 0..self.parts.len() {
                let index = (first + step) % self.parts.len();
                let now = tokio::time::Instant::now();
                if let Some(until) = *self.resting[index].lock()
                    && until > now
                {
                    wait = wait.min(until - now);
                    continue;
                }
                match self.parts[index].take(&look).await {
                    Ok(taken) if !taken.is_empty() => return Ok(taken),
                    Ok(_) => {}
                    // One partition out (its shard failing over) does not stop the others.
                    Err(error) => {
                        tracing::warn!(
                            "taking from partition {index} failed (the others are served; it is asked again in {REST_AFTER_FAILURE:?}): {}",
                            qtasks_core::backend::ErrorChain(&error)
                        );
                        *self.resting[index].lock() =
                            Some(tokio::time::Instant::now() + REST_AFTER_FAILURE);
                        wait = wait.min(REST_AFTER_FAILURE);
                    }
                }
            }
            if let Some(give_up) = give_up {
                let now = tokio::time::Instant::now();
                if now >= give_up {
                    return Ok(Vec::new());
                }
                wait = wait.min(give_up - now);
            }
            if announced.is_empty() {
                tokio::time::sleep(wait).await;
            } else {
                tokio::select! {
                    _ = futures_util::future::select_all(announced) => {}
                    () = tokio::time::sleep(wait) => {}
                }
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
        letters.sort_by(|a, b| b.at.total_cmp(&a.at));
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
        Ok(merge_pages(pages, query.limit))
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
    let limit = limit.max(1);
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
