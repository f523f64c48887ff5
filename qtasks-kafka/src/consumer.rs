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
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::offsets::{Received, Tracker};

/// How far ahead of what it reads a consumer sets its partition's read mark: one write of the
/// global config per this many messages.
const MARK_STRIDE: i64 = 1024;

/// The global config's entry of the read marks, one key per partition.
const MARKS_ENTRY: &str = "qtasks_kafka_read";

/// How long a poll waits for a message: the longest a stop or a commit waits for the loop.
const POLL: Duration = Duration::from_millis(100);

/// Read marks: for each partition, an offset below which a worker of the group may have
/// taken a message (kept in the global config, so it outlives the worker). A message read
/// below the mark its partition had when it was assigned may be one a dead worker held, and
/// a record it finds `process` is then that dead worker's; past it, a record found `process`
/// belongs to a live run (the message is a second copy of a task's message).
struct Marks {
    global_config: Arc<dyn GlobalConfig>,
    runtime: tokio::runtime::Handle,
    /// Per partition: the mark when it was assigned, and the mark written since.
    partitions: Mutex<HashMap<i32, (i64, i64)>>,
}

impl Marks {
    /// Reads the marks of newly assigned partitions. A mark that cannot be read counts as
    /// "everything may have been taken before", which errs on the side of running again.
    fn load(&self, partitions: &[i32]) {
        let read = self
            .runtime
            .block_on(self.global_config.get_all(MARKS_ENTRY));
        let marks = match read {
            Ok(marks) => marks,
            Err(error) => {
                tracing::warn!(
                    "reading the partitions' read marks failed; their messages count as taken before: {}",
                    qtasks_core::backend::ErrorChain(&error)
                );
                let mut held = self.partitions.lock();
                for partition in partitions {
                    held.insert(*partition, (i64::MAX, i64::MAX));
                }
                return;
            }
        };
        let mut held = self.partitions.lock();
        for partition in partitions {
            let mark = marks
                .get(&partition.to_string())
                .and_then(|mark| mark.parse().ok())
                .unwrap_or(0);
            held.insert(*partition, (mark, mark));
        }
    }

    /// Whether `offset` of `partition` lies below the mark it had when it was assigned; and,
    /// first, moves the written mark past `offset`, so that a later owner knows it was read.
    /// `None` while the mark cannot be written (the message must not be handed out yet).
    fn note(&self, partition: i32, offset: i64) -> Option<bool> {
        let (at_assign, written) = *self.partitions.lock().get(&partition)?;
        if offset >= written {
            let mark = offset.saturating_add(MARK_STRIDE);
            let set = self.runtime.block_on(self.global_config.set(
                MARKS_ENTRY,
                &partition.to_string(),
                &mark.to_string(),
            ));
            if let Err(error) = set {
                tracing::warn!(
                    partition,
                    "writing partition {partition}'s read mark failed; its messages wait: {}",
                    qtasks_core::backend::ErrorChain(&error)
                );
                return None;
            }
            if let Some(held) = self.partitions.lock().get_mut(&partition) {
                held.1 = mark;
            }
        }
        Some(offset < at_assign)
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

/// The consumer thread's loop.
fn consume(
    consumer: &BaseConsumer<GroupContext>,
    setup: &GroupSetup,
    tracker: &Tracker,
    stopping: &AtomicBool,
) {
    let mut paused = false;
    while !stopping.load(Ordering::Acquire) {
        // Read no further while the takes have plenty: the partitions stay this worker's,
        // and what it has not read waits in Kafka for whichever worker owns them next.
        let full = tracker.buffered() >= setup.buffer;
        if full != paused
            && let Ok(assignment) = consumer.assignment()
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
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let offset = message.offset();
                let Some(generation) = tracker.generation_of(partition) else {
                    continue;
                };
                // Handed out only once the read mark is past it.
                let seen_before = loop {
                    if let Some(seen) = consumer.context().marks.note(partition, offset) {
                        break Some(seen);
                    }
                    if stopping.load(Ordering::Acquire) {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                let Some(seen_before) = seen_before else {
                    break;
                };
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|header| {
                                (
                                    header.key.to_owned(),
                                    header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                tracker.read(Received {
                    partition,
                    offset,
                    generation,
                    seen_before,
                    value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                });
            }
            Some(Err(error)) => {
                tracing::warn!("reading `{}` failed: {error}", setup.topic);
                std::thread::sleep(POLL);
            }
            None => {}
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
        &tracker.commits_due(),
        CommitMode::Sync,
    );
    consumer.unsubscribe();
}
