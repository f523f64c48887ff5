//! Delayed tasks wait in the topic `N_qtasks_delay`, not in a worker's memory: each of its
//! partitions is a tier whose messages all wait as long (250 ms times a power of two), so a
//! tier's first message is always the next one due, and a worker of the group
//! `N_group_delay` holds only that one per tier. When its tier's wait has passed, it goes on
//! to the tier of the time it has left, or to the task topic when less than
//! [`DELAY_THRESHOLD`] is left, and only then is the tier's offset committed past it: a worker
//! that dies meanwhile leaves it to the tier's next owner (a message sent twice reaches the
//! task topic twice, and the second copy is dropped there).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::wire;

/// A task due sooner than this goes to the task topic at once, and waits (briefly) in the
/// memory of the worker that reads it.
pub(crate) const DELAY_THRESHOLD: Duration = Duration::from_secs(1);

/// The delay topic's partitions: tier `i` waits `250 ms × 2^i`, up to about 36 hours; a longer
/// delay passes through the last tier as often as it takes.
pub(crate) const DELAY_TIERS: i32 = 20;

/// How long tier `tier` holds each of its messages.
pub(crate) fn tier_wait(tier: i32) -> Duration {
    Duration::from_millis(250u64 << tier.clamp(0, DELAY_TIERS - 1))
}

/// The tier for a message with `left` to wait, of a topic with `tiers` partitions: the longest
/// whose wait is not longer than `left`.
pub(crate) fn tier_for(left: Duration, tiers: i32) -> i32 {
    let mut tier = 0;
    while tier + 1 < tiers.min(DELAY_TIERS) && tier_wait(tier + 1) <= left {
        tier += 1;
    }
    tier
}

/// The header that says when a delayed task is due (Unix milliseconds, by its adder's clock).
pub(crate) const DUE_HEADER: &str = "qtasks-due";

/// How long a poll waits: the longest a due message waits past its time.
const POLL: Duration = Duration::from_millis(50);

/// The delay group's consumer thread: stopped and joined when dropped.
pub(crate) struct DelayConsumer {
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where a due message goes on to.
pub(crate) struct Forward {
    pub(crate) producer: FutureProducer,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) delay_topic: String,
    pub(crate) tiers: i32,
    pub(crate) task_topic: String,
    pub(crate) task_partitions: usize,
}

impl DelayConsumer {
    /// Joins `group` on `topic` and starts forwarding, on a thread of its own.
    pub(crate) fn start(
        servers: &str,
        group: &str,
        session_timeout: Duration,
        forward: Forward,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let session_ms = session_timeout.as_millis().clamp(1_000, 3_600_000);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 4).to_string())
            .create()?;
        consumer.subscribe(&[&forward.delay_topic])?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(format!("qtasks-kafka {}", forward.delay_topic))
            .spawn({
                let stopping = Arc::clone(&stopping);
                move || run(&consumer, &forward, &stopping)
            })
            .expect("a thread can be spawned");
        Ok(DelayConsumer {
            stopping,
            thread: Some(thread),
        })
    }

    /// Leaves the group and waits for the thread.
    pub(crate) fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DelayConsumer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
    }
}

/// A delayed message as read: when it may leave its tier, and what it carries.
struct Waiting {
    offset: i64,
    leaves_at_ms: i64,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// The due time a message's [`DUE_HEADER`] names (Unix milliseconds); a message with none, or
/// with one that is no number, is due now.
fn due_of(headers: &[(String, Vec<u8>)]) -> i64 {
    wire::header(headers, DUE_HEADER)
        .and_then(|due| std::str::from_utf8(due).ok()?.trim().parse::<i64>().ok())
        .unwrap_or_else(now_ms)
}

fn now_ms() -> i64 {
    (qtasks_core::backend::unix_now() * 1000.0) as i64
}

fn run(consumer: &BaseConsumer, forward: &Forward, stopping: &AtomicBool) {
    // Per tier, its messages read and not forwarded yet, in order.
    let mut waiting: HashMap<i32, VecDeque<Waiting>> = HashMap::new();
    let mut paused: Vec<i32> = Vec::new();
    let mut last_assigned: Vec<i32> = Vec::new();
    while !stopping.load(Ordering::Acquire) {
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                let tier = message.partition();
                // It leaves its tier after the tier's wait from when it was written, and no
                // later than it is due, nor than the tier's wait from now (a producer whose
                // clock runs ahead must not hold the tier behind it).
                let wait = i64::try_from(tier_wait(tier).as_millis()).unwrap_or(i64::MAX);
                let written = message.timestamp().to_millis().unwrap_or_else(now_ms);
                let headers = wire::headers_of(&message);
                let leaves_at_ms = written
                    .saturating_add(wait)
                    .min(due_of(&headers))
                    .min(now_ms().saturating_add(wait));
                waiting.entry(tier).or_default().push_back(Waiting {
                    offset: message.offset(),
                    leaves_at_ms,
                    value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                });
            }
            Some(Err(error)) => {
                tracing::warn!("reading `{}` failed: {error}", forward.delay_topic);
                std::thread::sleep(POLL);
            }
            None => {}
        }
        // What a rebalance took is the next owner's.
        let assigned: Vec<i32> = consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        waiting.retain(|tier, _| assigned.contains(tier));
        if assigned != last_assigned {
            // librdkafka keeps a partition paused through a revoke and its assignment again:
            // a new assignment is paused or resumed whole, below.
            paused = assigned.clone();
            let mut every = TopicPartitionList::new();
            for tier in &assigned {
                let _ = every.add_partition(&forward.delay_topic, *tier);
            }
            let _ = consumer.pause(&every);
            last_assigned = assigned.clone();
        }
        // Each tier's due messages go on, in order; the tier's offset follows them.
        let now = now_ms();
        let mut commits = TopicPartitionList::new();
        for (tier, queue) in &mut waiting {
            let mut last = None;
            while let Some(head) = queue.front() {
                if head.leaves_at_ms > now {
                    break;
                }
                if let Err(error) = forward.send_on(head) {
                    tracing::warn!(
                        "moving a delayed task on from `{}` failed (trying again): {error}",
                        forward.delay_topic
                    );
                    break;
                }
                last = Some(head.offset);
                queue.pop_front();
            }
            if let Some(offset) = last {
                let _ = commits.add_partition_offset(
                    &forward.delay_topic,
                    *tier,
                    Offset::Offset(offset + 1),
                );
            }
        }
        if commits.count() > 0
            && let Err(error) = consumer.commit(&commits, CommitMode::Async)
        {
            tracing::debug!(
                "committing the delay tiers failed (the next commit carries them): {error}"
            );
        }
        // A tier with a message waiting reads no further until it has gone on.
        for tier in &assigned {
            let busy = waiting.get(tier).is_some_and(|queue| !queue.is_empty());
            let is_paused = paused.contains(tier);
            if busy == is_paused {
                continue;
            }
            let mut list = TopicPartitionList::new();
            let _ = list.add_partition(&forward.delay_topic, *tier);
            let changed = if busy {
                consumer.pause(&list)
            } else {
                consumer.resume(&list)
            };
            if changed.is_ok() {
                if busy {
                    paused.push(*tier);
                } else {
                    paused.retain(|paused| paused != tier);
                }
            }
        }
    }
    consumer.unsubscribe();
}

impl Forward {
    /// Sends a message whose tier's wait has passed on: to the tier of the time it has left,
    /// or to its task's partition of the task topic.
    fn send_on(&self, message: &Waiting) -> Result<(), rdkafka::error::KafkaError> {
        let due_ms = due_of(&message.headers);
        let left =
            Duration::from_millis(u64::try_from(due_ms.saturating_sub(now_ms())).unwrap_or(0));
        let headers = wire::to_send(&message.headers, &[]);
        let (topic, partition) = if left >= DELAY_THRESHOLD {
            (&self.delay_topic, tier_for(left, self.tiers))
        } else {
            // The task's partition, from the uuid in the value (a value that names none goes
            // to partition 0, where a worker sets it aside as a dead letter).
            let uuid = std::str::from_utf8(&message.value)
                .ok()
                .and_then(|value| value.rsplit(':').nth(1)?.parse().ok());
            let partition = uuid.map_or(0, |uuid| wire::partition_of(uuid, self.task_partitions));
            (&self.task_topic, i32::try_from(partition).unwrap_or(0))
        };
        let record = FutureRecord::<(), _>::to(topic)
            .partition(partition)
            .payload(&message.value)
            .headers(headers);
        self.runtime
            .block_on(self.producer.send(record, crate::broker::SEND_TIMEOUT))
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_takes_the_longest_tier_it_outlasts() {
        assert_eq!(tier_for(Duration::from_millis(100), DELAY_TIERS), 0);
        assert_eq!(tier_for(Duration::from_millis(250), DELAY_TIERS), 0);
        assert_eq!(tier_for(Duration::from_millis(499), DELAY_TIERS), 0);
        assert_eq!(tier_for(Duration::from_millis(500), DELAY_TIERS), 1);
        assert_eq!(tier_for(Duration::from_secs(30), DELAY_TIERS), 6);
        assert_eq!(tier_wait(6), Duration::from_secs(16));
        // Past the last tier, the last tier (as often as it takes).
        assert_eq!(
            tier_for(Duration::from_secs(365 * 24 * 3600), DELAY_TIERS),
            19
        );
        // A topic made with fewer partitions: its last one.
        assert_eq!(tier_for(Duration::from_secs(30), 4), 3);
    }
}
