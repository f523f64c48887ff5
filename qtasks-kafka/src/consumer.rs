//! The group consumer: a thread of its own that polls librdkafka, follows the group's
//! rebalances, hands what it reads to the takes (through the [`Tracker`]) and commits each
//! partition's offset as far as its messages are done.
//!
//! It runs on a thread, not a tokio task, because librdkafka calls the rebalance back from
//! inside a poll, and a revoke must wait there for the running tasks of its partitions: a
//! wait that would stall a single-threaded runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use qtasks_core::components::GlobalConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::offsets::{Received, Tracker};
use crate::wire;

/// How many messages one batch of the consumer reads at most: each batch writes each of its
/// partitions' read marks once, before any of its messages is handed out.
const BATCH: usize = 256;

/// The global config's entry of the read marks, one key per partition.
const MARKS_ENTRY: &str = "qtasks_kafka_read";

/// How long a poll waits for a message: the longest a stop or a commit waits for the loop.
const POLL: Duration = Duration::from_millis(100);

/// Read marks: for each partition, the offset past the last message a worker of the group
/// handed out (kept in the global config, so it outlives the worker). A message read below
/// the mark its partition had when it was assigned was handed out before, perhaps to a worker
/// that died while it ran it: a record it finds `process` is then that worker's, dead. Past the
/// mark, a record found `process` belongs to a live run (the message is a second copy of a
/// task's message), and the message is dropped. The mark is exact, not rounded up: a message
/// counted as handed out that never was would make a live run look dead.
struct Marks {
    global_config: Arc<dyn GlobalConfig>,
    runtime: tokio::runtime::Handle,
    partitions: Mutex<HashMap<i32, Mark>>,
}

/// One assigned partition's read mark.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// The mark when the partition was assigned here (`i64::MAX` when it could not be read:
    /// every message then counts as taken before, which errs on the side of running again).
    at_assign: i64,
    /// The mark as stored now, when known: a mark that could not be read is read again before
    /// the first write, so that a write never lowers it.
    stored: Option<i64>,
}

impl Marks {
    /// Reads the marks of newly assigned partitions.
    fn load(&self, partitions: &[i32]) {
        let read = self
            .runtime
            .block_on(self.global_config.get_all(MARKS_ENTRY));
        let mut held = self.partitions.lock();
        match read {
            Ok(marks) => {
                for partition in partitions {
                    let mark = match marks.get(&partition.to_string()) {
                        None => Mark {
                            at_assign: 0,
                            stored: Some(0),
                        },
                        Some(text) => match text.parse::<i64>() {
                            Ok(mark) => Mark {
                                at_assign: mark,
                                stored: Some(mark),
                            },
                            Err(_) => {
                                // Overwritten by the next batch's write.
                                tracing::error!(
                                    partition,
                                    "partition {partition}'s read mark `{text}` is no offset; its messages count as taken before"
                                );
                                Mark {
                                    at_assign: i64::MAX,
                                    stored: Some(0),
                                }
                            }
                        },
                    };
                    held.insert(*partition, mark);
                }
            }
            Err(error) => {
                tracing::warn!(
                    "reading the partitions' read marks failed; their messages count as taken before: {}",
                    qtasks_core::backend::ErrorChain(&error)
                );
                for partition in partitions {
                    held.insert(
                        *partition,
                        Mark {
                            at_assign: i64::MAX,
                            stored: None,
                        },
                    );
                }
            }
        }
    }

    /// Whether `offset` of `partition` lies below the mark it had when it was assigned
    /// (`None`: the partition is not assigned here).
    fn seen_before(&self, partition: i32, offset: i64) -> Option<bool> {
        let mark = *self.partitions.lock().get(&partition)?;
        Some(offset < mark.at_assign)
    }

    /// Moves each partition's mark past `offsets` (the last offset of a batch, per
    /// partition), so that a later owner knows they were handed out. `false` while a mark
    /// cannot be read or written: the batch must not be handed out yet.
    fn advance(&self, offsets: &HashMap<i32, i64>) -> bool {
        for (partition, offset) in offsets {
            let Some(mark) = self.partitions.lock().get(partition).copied() else {
                continue;
            };
            let stored = match mark.stored {
                Some(stored) => stored,
                None => {
                    let read = self
                        .runtime
                        .block_on(self.global_config.get(MARKS_ENTRY, &partition.to_string()));
                    match read {
                        Ok(text) => text.and_then(|text| text.parse().ok()).unwrap_or(0),
                        Err(error) => {
                            tracing::warn!(
                                partition,
                                "reading partition {partition}'s read mark failed; its messages wait: {}",
                                qtasks_core::backend::ErrorChain(&error)
                            );
                            return false;
                        }
                    }
                }
            };
            if *offset < stored {
                if let Some(held) = self.partitions.lock().get_mut(partition) {
                    held.stored = Some(stored);
                }
                continue;
            }
            let next = offset.saturating_add(1);
            let set = self.runtime.block_on(self.global_config.set(
                MARKS_ENTRY,
                &partition.to_string(),
                &next.to_string(),
            ));
            if let Err(error) = set {
                tracing::warn!(
                    partition,
                    "writing partition {partition}'s read mark failed; its messages wait: {}",
                    qtasks_core::backend::ErrorChain(&error)
                );
                return false;
            }
            if let Some(held) = self.partitions.lock().get_mut(partition) {
                held.stored = Some(next);
            }
        }
        true
    }

    fn forget(&self, partitions: &[i32]) {
        let mut held = self.partitions.lock();
        for partition in partitions {
            held.remove(partition);
        }
    }
}

/// What librdkafka calls back on a rebalance.
pub(crate) struct GroupContext {
    tracker: Arc<Tracker>,
    marks: Marks,
    topic: String,
    /// How long a revoke waits for the running tasks of its partitions.
    revoke_patience: Duration,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = partitions_of(list, &self.topic);
            tracing::info!(?partitions, "partitions revoked from this worker");
            let points = self.tracker.revoke(&partitions, self.revoke_patience);
            commit(consumer, &self.topic, &points, CommitMode::Sync);
            self.marks.forget(&partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list, &self.topic);
                tracing::info!(?partitions, "partitions assigned to this worker");
                self.marks.load(&partitions);
                self.tracker.assign(&partitions);
            }
            Rebalance::Error(error) => {
                tracing::warn!("the group's rebalance failed: {error}");
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The partitions of `topic` in a list.
fn partitions_of(list: &TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| element.partition())
        .collect()
}

/// Commits each partition's offset to its point; a failed commit is logged (the next one
/// carries the point further, and a lost one means messages read again and dropped).
fn commit(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    points: &[(i32, i64)],
    mode: CommitMode,
) {
    if points.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in points {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!("committing partition {partition} at {offset}: {error}");
        }
    }
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::debug!(
            "committing the group's offsets failed (the next commit carries them): {error}"
        );
    }
}

/// The consumer thread's handle: stops and joins it when dropped.
pub(crate) struct GroupConsumer {
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How the group consumer is set up.
pub(crate) struct GroupSetup {
    pub(crate) servers: String,
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) session_timeout: Duration,
    pub(crate) revoke_patience: Duration,
    /// How many read messages may wait for a take before the consumer pauses its partitions.
    pub(crate) buffer: usize,
    /// How long a fetch waits on the server for messages (`fetch.wait.max.ms`).
    pub(crate) fetch_wait: Duration,
}

impl GroupConsumer {
    /// Joins the group and starts reading, on a thread of its own.
    pub(crate) fn start(
        setup: GroupSetup,
        tracker: Arc<Tracker>,
        global_config: Arc<dyn GlobalConfig>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let context = GroupContext {
            tracker: Arc::clone(&tracker),
            marks: Marks {
                global_config,
                runtime: tokio::runtime::Handle::current(),
                partitions: Mutex::default(),
            },
            topic: setup.topic.clone(),
            revoke_patience: setup.revoke_patience,
        };
        let session_ms = setup.session_timeout.as_millis().clamp(1_000, 3_600_000);
        let consumer: BaseConsumer<GroupContext> = ClientConfig::new()
            .set("bootstrap.servers", &setup.servers)
            .set("group.id", &setup.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", session_ms.to_string())
            .set(
                "fetch.wait.max.ms",
                setup.fetch_wait.as_millis().clamp(1, 10_000).to_string(),
            )
            .set("heartbeat.interval.ms", (session_ms / 4).to_string())
            .create_with_context(context)?;
        consumer.subscribe(&[&setup.topic])?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(format!("qtasks-kafka {}", setup.topic))
            .spawn({
                let stopping = Arc::clone(&stopping);
                move || consume(&consumer, &setup, &tracker, &stopping)
            })
            .expect("a thread can be spawned");
        Ok(GroupConsumer {
            stopping,
            thread: Some(thread),
        })
    }

    /// Leaves the group (after committing what is done) and waits for the thread.
    pub(crate) fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Not joined here: a drop may run inside the runtime, which the thread's last
        // commit does not need, but a join would block.
    }
}

/// Up to [`BATCH`] messages: what one poll waits for, then what is read already. A failed
/// read is logged (the broker down: librdkafka reconnects by itself).
fn read_batch(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    tracker: &Tracker,
) -> Vec<Received> {
    let mut batch = Vec::new();
    let mut wait = POLL;
    while batch.len() < BATCH {
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                // The assignment it was read in, now: a rebalance runs inside a later poll,
                // and a message of the assignment before it is then no longer this worker's.
                let Some(generation) = tracker.generation_of(message.partition()) else {
                    tracing::trace!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "read a message of a partition not assigned here"
                    );
                    continue;
                };
                tracing::trace!(
                    partition = message.partition(),
                    offset = message.offset(),
                    generation,
                    "read"
                );
                let headers = wire::headers_of(&message);
                batch.push(Received {
                    partition: message.partition(),
                    offset: message.offset(),
                    generation,
                    // (Set from the marks when the batch is handed out.)
                    seen_before: false,
                    value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                });
                wait = Duration::ZERO;
            }
            Some(Err(error)) => {
                tracing::warn!("reading `{topic}` failed: {error}");
                std::thread::sleep(POLL);
                break;
            }
            None => break,
        }
    }
    batch
}

/// The consumer thread's loop.
fn consume(
    consumer: &BaseConsumer<GroupContext>,
    setup: &GroupSetup,
    tracker: &Tracker,
    stopping: &AtomicBool,
) {
    let mut paused = false;
    let mut assigned: Vec<i32> = Vec::new();
    while !stopping.load(Ordering::Acquire) {
        // Read no further while the takes have plenty: the partitions stay this worker's,
        // and what it has not read waits in Kafka for whichever worker owns them next. A new
        // assignment is paused or resumed as a whole (librdkafka keeps a partition paused
        // through a revoke and its assignment again: seen, a worker given back the
        // partitions it had paused read nothing more).
        let full = tracker.buffered() >= setup.buffer;
        let assignment = consumer.assignment().ok();
        let now_assigned: Vec<i32> = assignment
            .as_ref()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        let reassigned = now_assigned != assigned;
        assigned = now_assigned;
        if (full != paused || reassigned)
            && let Some(assignment) = assignment
        {
            let changed = if full {
                consumer.pause(&assignment)
            } else {
                consumer.resume(&assignment)
            };
            if changed.is_ok() {
                paused = full;
            }
        }
        let batch = read_batch(consumer, &setup.topic, tracker);
        if !batch.is_empty() {
            // Handed out only once every partition's read mark is past its messages.
            let mut last: HashMap<i32, i64> = HashMap::new();
            for message in &batch {
                let offset = last.entry(message.partition).or_insert(message.offset);
                *offset = (*offset).max(message.offset);
            }
            while !consumer.context().marks.advance(&last) {
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            if stopping.load(Ordering::Acquire) {
                break;
            }
            for message in batch {
                let Some(seen_before) = consumer
                    .context()
                    .marks
                    .seen_before(message.partition, message.offset)
                else {
                    continue;
                };
                // (A message of an assignment revoked since is dropped there.)
                tracker.read(Received {
                    seen_before,
                    ..message
                });
            }
        }
        commit(
            consumer,
            &setup.topic,
            &tracker.commits_due(),
            CommitMode::Async,
        );
    }
    // What is done is committed before the group hears this worker leave.
    commit(
        consumer,
        &setup.topic,
        &tracker.all_points(),
        CommitMode::Sync,
    );
    consumer.unsubscribe();
}
