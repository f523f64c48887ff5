//! The Kafka broker: the queue lives in a Kafka topic, the records in the paired storage.
//!
//! Each step of a task's life is one conditional write of the storage
//! ([`RecordStore::transition`]) and one Kafka step, in the order that loses nothing:
//! - add: the record (`new`), then the message, sent with `acks=all` and waited for;
//! - take: the message arrives; the record goes `new` → `process` (or, for a message a worker
//!   of the group may have taken before, `process` → `process`: that worker died, and the
//!   death is counted in a copy of the message); a message whose record has ended, or is
//!   gone, is dropped;
//! - finish: the outcome is stored (`process` → the outcome), *then* the message counts as
//!   done, and the partition's offset is committed up to its first message not done. A worker
//!   that dies in between leaves the offset before the message; the partition's next owner
//!   reads it again, and the record says it has ended, so it is dropped, not run twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use qtasks_core::backend::{
    BackendError, Broker, CancelRequest, CancelState, Delivery, RecordStore, RunInfo, Transition,
    unix_now,
};
use qtasks_core::components::GlobalConfig;
use qtasks_core::queues::Take;
use qtasks_core::records::RecordChange;
use qtasks_core::stats::{DeadLetter, QueueStats};
use qtasks_core::{Outcome, QueuedTask, TaskStatus};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::consumer::{GroupConsumer, GroupSetup};
use crate::dead_letters::{self, Letter, RESOLVED_ENTRY};
use crate::delays::{self, DELAY_THRESHOLD, DelayConsumer, Forward};
use crate::offsets::{Received, Tracker};
use crate::wire::{self, Names};

/// How long a finished task's outcome is tried again through a storage outage before its
/// message is taken again (and the task runs again).
const FINISH_PATIENCE: Duration = Duration::from_secs(60);

/// How long the claim on resolving a dead letter holds (the entry that keeps it resolved is
/// written before it ends).
const RESOLVE_CLAIM: Duration = Duration::from_secs(60);

/// The global config's entry of the tasks whose deliveries ended with their worker, and how
/// many did: the messages carry the count too, but a partition read again from its committed
/// offset meets the older copies first, with lower counts, and a task that kills its worker
/// each time must still reach its `max_deliveries`.
const DEATHS_ENTRY: &str = "qtasks_kafka_deaths";

/// How long a send waits for Kafka's acknowledgement.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the broker knows of the cluster and how it consumes.
pub(crate) struct Setup {
    pub(crate) names: Names,
    /// The bootstrap servers, `host:port,host:port`.
    pub(crate) servers: String,
    /// The task topic's partition count.
    pub(crate) partitions: usize,
    /// The delay topic's partition count (its tiers).
    pub(crate) delay_tiers: i32,
    pub(crate) session_timeout: Duration,
    pub(crate) revoke_patience: Duration,
    pub(crate) buffer: usize,
    pub(crate) fetch_wait: Duration,
}

pub(crate) struct KafkaBroker {
    setup: Setup,
    producer: FutureProducer,
    storage: Arc<dyn RecordStore>,
    global_config: Arc<dyn GlobalConfig>,
    tracker: Arc<Tracker>,
    /// The group consumer, joined at the first take: a process that only adds tasks never
    /// joins the group (it would be handed partitions it never reads).
    consumer: parking_lot::Mutex<Option<GroupConsumer>>,
    /// The delay group's consumer, joined with the task group.
    delays: parking_lot::Mutex<Option<DelayConsumer>>,
    /// The messages of the running deliveries, by receipt.
    held: parking_lot::Mutex<HashMap<String, (Received, Uuid)>>,
    /// One message of a task accepted at a time: two copies of one task's message in one
    /// batch must not take each other's run for a dead worker's.
    accepting: KeyedLock,
    /// What accepts finished after their take was dropped: the next take hands it out.
    stash: parking_lot::Mutex<Vec<Accepted>>,
    receipts: AtomicU64,
    instance: String,
    cancels: broadcast::Sender<CancelRequest>,
    stopped: AtomicBool,
    /// Ends the cancel listener when the broker goes.
    _listening: tokio::sync::watch::Sender<()>,
}

impl KafkaBroker {
    pub(crate) fn new(
        setup: Setup,
        producer: FutureProducer,
        storage: Arc<dyn RecordStore>,
        global_config: Arc<dyn GlobalConfig>,
        cancels: broadcast::Sender<CancelRequest>,
        listening: tokio::sync::watch::Sender<()>,
    ) -> Self {
        KafkaBroker {
            setup,
            producer,
            storage,
            global_config,
            tracker: Arc::default(),
            consumer: parking_lot::Mutex::default(),
            delays: parking_lot::Mutex::default(),
            held: parking_lot::Mutex::default(),
            accepting: KeyedLock::default(),
            stash: parking_lot::Mutex::default(),
            receipts: AtomicU64::new(0),
            instance: Uuid::new_v4().simple().to_string(),
            cancels,
            stopped: AtomicBool::new(false),
            _listening: listening,
        }
    }

    fn names(&self) -> &Names {
        &self.setup.names
    }

    /// Joins the group, once.
    fn join_group(&self) -> Result<(), BackendError> {
        let mut consumer = self.consumer.lock();
        if consumer.is_none() {
            let setup = GroupSetup {
                servers: self.setup.servers.clone(),
                group: self.names().group.clone(),
                topic: self.names().topic.clone(),
                session_timeout: self.setup.session_timeout,
                revoke_patience: self.setup.revoke_patience,
                buffer: self.setup.buffer,
                fetch_wait: self.setup.fetch_wait,
            };
            *consumer = Some(
                GroupConsumer::start(
                    setup,
                    Arc::clone(&self.tracker),
                    Arc::clone(&self.global_config),
                )
                .map_err(|e| {
                    BackendError::new("kafka", "joining the consumer group failed").with_source(e)
                })?,
            );
        }
        let mut delays = self.delays.lock();
        if delays.is_none() {
            let forward = Forward {
                producer: self.producer.clone(),
                runtime: tokio::runtime::Handle::current(),
                delay_topic: self.names().delay.clone(),
                tiers: self.setup.delay_tiers,
                task_topic: self.names().topic.clone(),
                task_partitions: self.setup.partitions,
            };
            *delays = Some(
                DelayConsumer::start(
                    &self.setup.servers,
                    &self.names().delay_group,
                    self.setup.session_timeout,
                    forward,
                )
                .map_err(|e| {
                    BackendError::new("kafka", "joining the delay group failed").with_source(e)
                })?,
            );
        }
        Ok(())
    }

    /// Sends a task's message to its partition, counting `ended` deliveries that ended with
    /// their worker; returns once Kafka has it.
    async fn send(&self, task: &QueuedTask, ended: u32) -> Result<(), BackendError> {
        let value = wire::value_of(task);
        let key = task.uuid.to_string();
        let json = serde_json::to_vec(task).map_err(|e| {
            BackendError::new("kafka", format!("encoding task {} failed", task.uuid)).with_source(e)
        })?;
        let count = ended.to_string();
        // A large task travels without its copy in the header (Kafka bounds a message's
        // size, a megabyte by default): the take reads its record instead.
        let mut headers = OwnedHeaders::new();
        if json.len() <= wire::LARGEST_TASK_HEADER {
            headers = headers.insert(Header {
                key: wire::TASK_HEADER,
                value: Some(&json),
            });
        }
        if ended > 0 {
            headers = headers.insert(Header {
                key: wire::DELIVERIES_HEADER,
                value: Some(&count),
            });
        }
        // A task due later than a moment waits in the delay topic's tier for its wait; one due
        // sooner goes to its partition of the task topic.
        let wait = task
            .run_at
            .map(|at| Duration::from_secs_f64((at - unix_now()).clamp(0.0, 1e9)))
            .unwrap_or_default();
        let due = task.run_at.map(|at| ((at * 1000.0) as i64).to_string());
        let (topic, partition) = if wait >= DELAY_THRESHOLD {
            headers = headers.insert(Header {
                key: delays::DUE_HEADER,
                value: due.as_deref(),
            });
            (
                &self.names().delay,
                delays::tier_for(wait, self.setup.delay_tiers),
            )
        } else {
            let partition = wire::partition_of(task.uuid, self.setup.partitions);
            (&self.names().topic, i32::try_from(partition).unwrap_or(0))
        };
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(&key)
            .payload(&value)
            .headers(headers);
        self.producer
            .send(record, SEND_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| {
                BackendError::new(
                    "kafka",
                    format!("sending task {} to `{topic}` failed", task.uuid),
                )
                .with_source(error)
            })
    }

    /// Sets a message aside in the dead-letter topic, with the reason (and, for a task the
    /// workers set aside, the mark that brings its record back with it).
    async fn dead_letter(
        &self,
        received: &Received,
        reason: &str,
        revives: bool,
    ) -> Result<(), BackendError> {
        let mut headers = wire::to_send(&received.headers, &[]).insert(Header {
            key: wire::REASON_HEADER,
            value: Some(reason),
        });
        if revives {
            headers = headers.insert(Header {
                key: wire::REVIVE_HEADER,
                value: Some("1"),
            });
        }
        let record = FutureRecord::<(), _>::to(&self.names().dead)
            .payload(&received.value)
            .headers(headers);
        self.producer
            .send(record, SEND_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| {
                BackendError::new("kafka", "setting a message aside as a dead letter failed")
                    .with_source(error)
            })
    }

    /// What a message asks of this worker: a delivery to run, or nothing (it is done with,
    /// or waits for its time). An error leaves the message to be taken again.
    async fn accept(
        &self,
        received: Received,
    ) -> Result<Option<Delivery>, (Received, BackendError)> {
        let message = match wire::decode(&received.value, &received.headers) {
            Ok(message) => message,
            Err(reason) => {
                tracing::error!(topic = %self.names().topic, partition = received.partition, offset = received.offset, "{reason}; set aside as a dead letter");
                if let Err(error) = self.dead_letter(&received, &reason, false).await {
                    return Err((received, error));
                }
                self.done(&received);
                return Ok(None);
            }
        };
        let uuid = message.uuid;
        tracing::trace!(uuid = %uuid, partition = received.partition, offset = received.offset, seen_before = received.seen_before, "accepting task {uuid}");
        let task = match message.task {
            Some(task) => task,
            // The original's producer sends the three fields alone; the record has the rest.
            None => match self.storage.get(uuid).await {
                Ok(Some(record)) if !record.unreadable.is_empty() => {
                    match from_the_originals(record) {
                        Ok(task) => task,
                        Err(reason) => {
                            // A record that cannot be read back cannot run: it ends `error`, saying
                            // why, and the worker goes on.
                            let traceback = format!("RecordError: task {uuid}'s record: {reason}");
                            tracing::error!(uuid = %uuid, "failing a task that cannot run: {traceback}");
                            let failed = RecordChange::Finished(
                                Outcome::Error(traceback),
                                RunInfo::default(),
                            );
                            let from = [TaskStatus::New, TaskStatus::Process];
                            if let Err(error) = self.storage.transition(uuid, &from, failed).await {
                                return Err((received, error));
                            }
                            self.done(&received);
                            return Ok(None);
                        }
                    }
                }
                Ok(Some(record)) => QueuedTask::from_record(record),
                Ok(None) => {
                    tracing::debug!(uuid = %uuid, "task {} {uuid} has no record (flushed or deleted); its message is dropped", message.task_name);
                    self.done(&received);
                    return Ok(None);
                }
                Err(error) => return Err((received, error)),
            },
        };
        if let Some(at) = task.run_at {
            let now = unix_now();
            if at > now {
                let due_ms = (at * 1000.0) as u64;
                self.tracker.delay(received, due_ms);
                return Ok(None);
            }
        }
        // A message a worker of the group may have taken before may be one whose worker died
        // while it ran; unless this worker runs the task now, from another copy of its message
        // (a partition's tasks run only on its owner: the last one let its runs end first).
        // One message of a task at a time (two copies in one batch must not take each other's
        // run for a dead worker's).
        let _one_at_a_time = self.accepting.lock(uuid).await;
        let running_here = self
            .held
            .lock()
            .values()
            .any(|(_, running)| *running == uuid);
        let from: &[TaskStatus] = if received.seen_before && !running_here {
            &[TaskStatus::New, TaskStatus::Process]
        } else {
            &[TaskStatus::New]
        };
        // The deliveries of the task that ended with their worker: the message's count, or the
        // count kept beside the records, which is ahead of it when this message is an older
        // copy read again. (A first delivery has none: no read of the count.)
        let ended = if message.ended > 0 || received.seen_before {
            match self.deaths_of(uuid).await {
                Ok(known) => known.max(message.ended),
                Err(error) => return Err((received, error)),
            }
        } else {
            0
        };
        let taken = self
            .storage
            .transition(uuid, from, RecordChange::Taken)
            .await;
        match taken {
            Ok(Transition::Applied(TaskStatus::Process)) => {
                // Its last delivery ended with its worker: counted beside the records and in
                // a copy of the message (Kafka never changes one it has stored), and this one
                // done with.
                let ended = ended.saturating_add(1);
                tracing::warn!(uuid = %uuid, ended, "task {uuid} was taken before and its worker died; counting it and queueing it again");
                let handed_back = async {
                    self.global_config
                        .set(DEATHS_ENTRY, &uuid.to_string(), &ended.to_string())
                        .await?;
                    self.storage
                        .transition(uuid, &[TaskStatus::Process], RecordChange::Released)
                        .await?;
                    self.send(&task, ended).await
                }
                .await;
                match handed_back {
                    Ok(()) => {
                        self.done(&received);
                        Ok(None)
                    }
                    Err(error) => Err((received, error)),
                }
            }
            Ok(Transition::Applied(_)) => {
                let receipt = format!(
                    "{}-{}",
                    self.instance,
                    self.receipts.fetch_add(1, Ordering::Relaxed)
                );
                self.held.lock().insert(receipt.clone(), (received, uuid));
                let mut task = task;
                task.run_at = None;
                Ok(Some(
                    Delivery::new(task, receipt)
                        .recovered(ended > 0)
                        .deliveries(ended.saturating_add(1)),
                ))
            }
            Ok(Transition::Kept(TaskStatus::Process)) if running_here => {
                // A copy of the message of a task this worker runs. If that run's message
                // belongs to an assignment revoked since (a rebalance that did not wait for it
                // to end, and gave the partition back), this copy takes its place: the run's
                // finish marks this one done, so the offset is not committed past a running
                // task.
                let mut held = self.held.lock();
                if let Some((running, _)) = held.values_mut().find(|(_, held)| *held == uuid)
                    && !self
                        .tracker
                        .is_current(running.partition, running.generation)
                {
                    *running = received;
                } else {
                    drop(held);
                    self.done(&received);
                }
                Ok(None)
            }
            Ok(Transition::Kept(status)) => {
                if status == TaskStatus::Retry {
                    // Its worker may have died between marking it and sending the next
                    // attempt: sent now if it still waits (a second message is harmless).
                    if let Err(error) = self.requeue_next_attempt(uuid).await {
                        return Err((received, error));
                    }
                }
                tracing::debug!(uuid = %uuid, "task is {status}; its message is dropped");
                self.done(&received);
                Ok(None)
            }
            // Cancelled on the way (a cancel asked while its worker died), or no record.
            Ok(_) => {
                self.done(&received);
                Ok(None)
            }
            Err(error) => Err((received, error)),
        }
    }

    /// How many deliveries of task `uuid` ended with their worker, as counted beside the
    /// records (0 when none did).
    async fn deaths_of(&self, uuid: Uuid) -> Result<u32, BackendError> {
        Ok(self
            .global_config
            .get(DEATHS_ENTRY, &uuid.to_string())
            .await?
            .and_then(|count| count.parse().ok())
            .unwrap_or(0))
    }

    fn done(&self, received: &Received) {
        self.tracker
            .done(received.partition, received.offset, received.generation);
    }

    /// The message of a running delivery, no longer held (`None` for one this worker does
    /// not hold: a finish sent twice).
    fn release_held(&self, delivery: &Delivery) -> Option<Received> {
        self.held
            .lock()
            .remove(&delivery.receipt)
            .map(|(received, _)| received)
    }

    /// Queues a dead letter again: a task (its record back to `new` when the workers had set
    /// it aside), or the bytes as they were, which a worker sets aside again if they are still
    /// not a task.
    async fn requeue_letter(&self, letter: &Letter) -> Result<(), BackendError> {
        let revives = wire::header(&letter.headers, wire::REVIVE_HEADER).is_some();
        if let Ok(message) = wire::decode(&letter.value, &letter.headers) {
            let task = match message.task {
                Some(task) => Some(task),
                None => self
                    .storage
                    .get(message.uuid)
                    .await?
                    .map(QueuedTask::from_record),
            };
            if let Some(mut task) = task {
                if revives {
                    self.storage
                        .transition(task.uuid, &[TaskStatus::Error], RecordChange::HandedBack(0))
                        .await?;
                }
                task.hand_backs = 0;
                task.run_at = None;
                return self.send(&task, 0).await;
            }
        }
        let headers = wire::to_send(&letter.headers, &[wire::REASON_HEADER, wire::REVIVE_HEADER]);
        let record = FutureRecord::<(), _>::to(&self.names().topic)
            .payload(&letter.value)
            .headers(headers);
        self.producer
            .send(record, SEND_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| {
                BackendError::new("kafka", "queueing a dead letter again failed").with_source(error)
            })
    }

    async fn requeue_next_attempt(&self, uuid: Uuid) -> Result<(), BackendError> {
        let Some(child) = self
            .storage
            .get(uuid)
            .await?
            .and_then(|record| record.retry_child_uuid)
        else {
            return Ok(());
        };
        match self.storage.get(child).await? {
            Some(record) if record.status == TaskStatus::New => {
                tracing::warn!(uuid = %uuid, "the next attempt {child} of retried task {uuid} was never queued; queueing it now");
                self.send(&QueuedTask::from_record(record), 0).await
            }
            _ => Ok(()),
        }
    }

    /// Cancels a retry's next attempt whose parent's outcome turned out not to be stored, so
    /// that it never runs.
    async fn supersede(&self, child: Option<Uuid>, reason: String) {
        if let Some(child) = child {
            let superseded = RecordChange::Finished(Outcome::Cancel(reason), RunInfo::default());
            let _ = self
                .storage
                .transition(child, &[TaskStatus::New], superseded)
                .await;
        }
    }
}

/// The task of a record the original's producer wrote: its `args` and `kwargs` are Python
/// reprs (`(2,)`, `{'b': 5}`), which the storage could not read as JSON. Any other field that
/// cannot be read makes it a record that cannot run.
fn from_the_originals(mut record: qtasks_core::TaskRecord) -> Result<QueuedTask, String> {
    let unreadable = std::mem::take(&mut record.unreadable);
    for (field, text) in &unreadable {
        let parsed = crate::python_repr::parse(text)
            .map_err(|why| format!("`{field}` is neither JSON nor a Python literal ({why})"));
        match (field.as_str(), parsed?) {
            ("args", serde_json::Value::Array(args)) => record.args = args,
            ("kwargs", serde_json::Value::Object(kwargs)) => record.kwargs = kwargs,
            (field, _) => return Err(format!("`{field}` cannot be read: {text:?}")),
        }
    }
    Ok(QueuedTask::from_record(record))
}

/// Whether `record` holds `outcome`, result and all.
fn holds_outcome(record: &qtasks_core::TaskRecord, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Success(value) => {
            record.status == TaskStatus::Success
                && record
                    .returning
                    .as_ref()
                    .unwrap_or(&serde_json::Value::Null)
                    == value
        }
        Outcome::Error(traceback) => {
            record.status == TaskStatus::Error && record.traceback.as_ref() == Some(traceback)
        }
        Outcome::Cancel(reason) => {
            record.status == TaskStatus::Cancel && record.cancel_reason.as_ref() == Some(reason)
        }
        Outcome::Retry { child, .. } => {
            record.status == TaskStatus::Retry && record.retry_child_uuid == Some(child.uuid)
        }
    }
}

/// What an accept came to: a delivery, nothing (done with, or waiting for its time), or an
/// error that leaves its message to be taken again.
type Accepted = Result<Option<Delivery>, (Received, BackendError)>;

/// A lock per task id, held across an accept's awaits; the map keeps only ids in use.
#[derive(Default)]
struct KeyedLock {
    locks: parking_lot::Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// A [`KeyedLock`]'s lock on one id, given up when dropped.
struct KeyedGuard<'a> {
    owner: &'a KeyedLock,
    uuid: Uuid,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLock {
    async fn lock(&self, uuid: Uuid) -> KeyedGuard<'_> {
        let lock = Arc::clone(self.locks.lock().entry(uuid).or_default());
        let guard = Arc::clone(&lock).lock_owned().await;
        KeyedGuard {
            owner: self,
            uuid,
            lock,
            guard: Some(guard),
        }
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.owner.locks.lock();
        // Only the map and this guard know it: nobody waits for it.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.uuid);
        }
    }
}

/// Messages taken from the tracker and not accepted yet: a take dropped half way puts them
/// back, to be taken again first.
struct InHand<'a> {
    tracker: &'a Tracker,
    /// The messages whose accepts have not ended.
    unsettled: parking_lot::Mutex<Vec<Received>>,
}

impl InHand<'_> {
    /// The accept of the message at (partition, offset, generation) has ended.
    fn settle(&self, (partition, offset, generation): (i32, i64, u64)) {
        self.unsettled.lock().retain(|received| {
            (received.partition, received.offset, received.generation)
                != (partition, offset, generation)
        });
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        for mut received in self.unsettled.get_mut().drain(..).rev() {
            // An accept cut half way may have taken the task: a record found `process` then
            // is a run that never started, counted as a death and run again.
            received.seen_before = true;
            self.tracker.put_back(received);
        }
    }
}

#[qtasks_core::async_trait]
impl qtasks_core::backend::Lifecycle for KafkaBroker {
    fn name(&self) -> &str {
        "KafkaBroker"
    }

    async fn stop(&self) -> Result<(), BackendError> {
        self.stopped.store(true, Ordering::Release);
        self.tracker.arrived.notify_waiters();
        let consumer = self.consumer.lock().take();
        if let Some(mut consumer) = consumer {
            // The thread commits what is done and leaves the group.
            let _ = tokio::task::spawn_blocking(move || consumer.stop()).await;
        }
        let delays = self.delays.lock().take();
        if let Some(mut delays) = delays {
            let _ = tokio::task::spawn_blocking(move || delays.stop()).await;
        }
        Ok(())
    }
}

#[qtasks_core::async_trait]
impl Broker for KafkaBroker {
    fn location(&self) -> Option<String> {
        Some(format!("kafka://{}", self.setup.servers))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn partition_of(&self, uuid: Uuid) -> usize {
        wire::partition_of(uuid, self.setup.partitions)
    }

    fn keeps_priorities(&self) -> bool {
        false
    }

    async fn add(&self, task: QueuedTask) -> Result<(), BackendError> {
        if !self.storage.insert(&task).await? {
            // Known already: nothing changes, unless it still waits (a first add may have
            // died between its record and its message; a second message is harmless).
            let waiting = self
                .storage
                .get(task.uuid)
                .await?
                .is_some_and(|record| record.status == TaskStatus::New);
            if !waiting {
                tracing::debug!(uuid = %task.uuid, "task {} is known already; not added again", task.uuid);
                return Ok(());
            }
        }
        if let Err(error) = self.send(&task, 0).await {
            // No message (as far as this side knows) means no task: its record goes, so an
            // add again under the same uuid queues it anew. A message that went out after all
            // finds no record and is dropped.
            if let Ok(Some(record)) = self.storage.get(task.uuid).await
                && record.status == TaskStatus::New
            {
                let _ = self.storage.delete(task.uuid).await;
            }
            return Err(error);
        }
        Ok(())
    }

    async fn add_unique(
        &self,
        task: QueuedTask,
        unique: &qtasks_core::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        match self.storage.insert_unique(&task, unique).await? {
            Some(holder) if holder == task.uuid => {
                self.add(task).await?;
                Ok(Some(holder))
            }
            Some(holder) => Ok(Some(holder)),
            None => {
                if let Err(error) = self.send(&task, 0).await {
                    if let Ok(Some(record)) = self.storage.get(task.uuid).await
                        && record.status == TaskStatus::New
                    {
                        let _ = self.storage.delete(task.uuid).await;
                    }
                    return Err(error);
                }
                Ok(None)
            }
        }
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        self.take(&Take::default_queue(max)).await
    }

    async fn take(&self, take: &Take<'_>) -> Result<Vec<Delivery>, BackendError> {
        if !take.is_default_only() {
            let names: Vec<&str> = take.queues.iter().map(|queue| queue.name).collect();
            return Err(BackendError::new(
                "kafka",
                format!(
                    "the Kafka broker keeps no named queues, and a worker asked for {}",
                    names.join(", ")
                ),
            ));
        }
        if self.stopped.load(Ordering::Acquire) {
            // A stopped broker joins no group again (nobody would leave it).
            return Ok(Vec::new());
        }
        self.join_group()?;
        let deadline = take
            .patience
            .map(|patience| tokio::time::Instant::now() + patience);
        loop {
            let arrived = self.tracker.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let now_ms = (unix_now() * 1000.0) as u64;
            // What the accepts of a take dropped half way came to, first.
            let stashed = std::mem::take(&mut *self.stash.lock());
            let taken = if stashed.is_empty() {
                self.tracker.take(take.max.max(1), now_ms)
            } else {
                Vec::new()
            };
            if !taken.is_empty() {
                let in_hand = InHand {
                    tracker: &self.tracker,
                    unsettled: parking_lot::Mutex::new(taken.clone()),
                };
                // The storage writes of a batch go out together. Each accept's end goes to the
                // stash, so that one this take's caller drops is not lost.
                futures_util::future::join_all(taken.into_iter().map(|received| async {
                    let at = (received.partition, received.offset, received.generation);
                    let accepted = self.accept(received).await;
                    self.stash.lock().push(accepted);
                    in_hand.settle(at);
                }))
                .await;
            }
            let accepted = std::mem::take(&mut *self.stash.lock());
            if !accepted.is_empty() {
                let mut deliveries = Vec::new();
                let mut failed = None;
                for outcome in accepted {
                    match outcome {
                        Ok(Some(delivery)) => deliveries.push(delivery),
                        Ok(None) => {}
                        Err((received, error)) => {
                            self.tracker.put_back(received);
                            failed = Some(error);
                        }
                    }
                }
                if !deliveries.is_empty() {
                    return Ok(deliveries);
                }
                if let Some(error) = failed {
                    return Err(error);
                }
                continue;
            }
            if self.stopped.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            // Wait for a message, the next delayed one's time, or the take's patience.
            let due = self.tracker.next_due().map(|due_ms| {
                let wait_ms = due_ms.saturating_sub(now_ms);
                tokio::time::Instant::now() + Duration::from_millis(wait_ms)
            });
            let until = match (due, deadline) {
                (Some(due), Some(deadline)) => Some(due.min(deadline)),
                (due, deadline) => due.or(deadline),
            };
            match until {
                Some(until) => {
                    tokio::select! {
                        () = &mut arrived => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
                None => arrived.await,
            }
            if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
                && self
                    .tracker
                    .next_due()
                    .is_none_or(|due| due > (unix_now() * 1000.0) as u64)
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn finish(&self, delivery: &Delivery, outcome: Outcome) -> Result<(), BackendError> {
        let uuid = delivery.task.uuid;
        let held = self.release_held(delivery);
        let child = match &outcome {
            Outcome::Retry { child, .. } => Some(child.uuid),
            _ => None,
        };
        let status = outcome.status();
        let tries = std::sync::atomic::AtomicU32::new(0);
        let store = || async {
            let first_try = tries.fetch_add(1, Ordering::Relaxed) == 0;
            // A retry's next attempt: its record first (`new`, no message yet), then this
            // attempt marked `retry`, then its message. A crash after the mark is mended when
            // this attempt's message is read again (`accept`).
            if let Outcome::Retry { child, .. } = &outcome {
                self.storage.insert(child).await?;
            }
            let written = self
                .storage
                .transition(
                    uuid,
                    &[TaskStatus::Process],
                    RecordChange::Finished(outcome.clone(), delivery.run.clone()),
                )
                .await?;
            // A try after one whose reply was lost may find its own outcome stored.
            let replayed = match written {
                Transition::Kept(found) if !first_try && found == status => self
                    .storage
                    .get(uuid)
                    .await?
                    .is_some_and(|record| holds_outcome(&record, &outcome)),
                _ => false,
            };
            let written = if replayed {
                Transition::Applied(TaskStatus::Process)
            } else {
                written
            };
            if let (Transition::Applied(_), Outcome::Retry { child, .. }) = (&written, &outcome) {
                self.send(child, 0).await?;
            }
            Ok(written)
        };
        use backon::Retryable;
        let started = tokio::time::Instant::now();
        let stored: Result<Transition, BackendError> = store
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .without_max_times(),
            )
            .when(|_| started.elapsed() < FINISH_PATIENCE)
            .notify(|error, pause| {
                tracing::warn!(uuid = %uuid, "storing the result failed (trying again in {pause:?}): {}", qtasks_core::backend::ErrorChain(error));
            })
            .await;
        match stored {
            Ok(Transition::Cancelled(_)) => {
                if let Some(received) = &held {
                    self.done(received);
                }
                self.supersede(child, format!("superseded: task {uuid} was cancelled"))
                    .await;
                let reason = match self.storage.get(uuid).await {
                    Ok(Some(record)) => record.cancel_reason.unwrap_or_default(),
                    _ => String::new(),
                };
                Err(BackendError::cancelled("kafka", reason))
            }
            Ok(Transition::Kept(status)) => {
                if let Some(received) = &held {
                    self.done(received);
                }
                self.supersede(child, format!("superseded: task {uuid} had ended already"))
                    .await;
                Err(BackendError::refused(
                    "kafka",
                    format!(
                        "task {uuid} is `{status}` already (another delivery of it recorded its outcome); this outcome is not stored"
                    ),
                ))
            }
            Ok(_) => {
                if let Some(received) = &held {
                    self.done(received);
                }
                Ok(())
            }
            Err(error) => {
                // Not stored: the message is taken again, and the record (`process`, its run
                // gone) makes that take count this delivery as one that died. A retry's next
                // attempt written meanwhile would wait forever (no message): superseded.
                self.supersede(
                    child,
                    format!("superseded: task {uuid}'s outcome was not stored"),
                )
                .await;
                if let Some(mut received) = held {
                    received.seen_before = true;
                    self.tracker.put_back(received);
                }
                Err(error)
            }
        }
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let uuid = delivery.task.uuid;
        let Some(received) = self.release_held(delivery) else {
            return Ok(());
        };
        // A copy for any worker of the group, then the record `new`, then this message done
        // (a crash in between leaves two messages: the second finds the task taken or ended).
        let ended = delivery.deliveries.saturating_sub(1);
        let released = async {
            self.send(&delivery.task, ended).await?;
            self.storage
                .transition(uuid, &[TaskStatus::Process], RecordChange::Released)
                .await
        }
        .await;
        match released {
            Ok(_) => {
                self.done(&received);
                Ok(())
            }
            Err(error) => {
                let mut received = received;
                received.seen_before = true;
                self.tracker.put_back(received);
                Err(error)
            }
        }
    }

    async fn defer(&self, delivery: &Delivery, delay: Duration) -> Result<(), BackendError> {
        let uuid = delivery.task.uuid;
        let Some(received) = self.release_held(delivery) else {
            return Ok(());
        };
        // A copy counting the hand-back, due after the delay, then the record `new` with the
        // count, then this message done.
        let hand_backs = delivery.task.hand_backs.saturating_add(1);
        let mut task = delivery.task.clone();
        task.hand_backs = hand_backs;
        task.run_at = Some(unix_now() + delay.as_secs_f64());
        let ended = delivery.deliveries.saturating_sub(1);
        let handed_back = async {
            self.send(&task, ended).await?;
            self.storage
                .transition(
                    uuid,
                    &[TaskStatus::Process],
                    RecordChange::HandedBack(hand_backs),
                )
                .await
        }
        .await;
        match handed_back {
            Ok(_) => {
                self.done(&received);
                Ok(())
            }
            Err(error) => {
                let mut received = received;
                received.seen_before = true;
                self.tracker.put_back(received);
                Err(error)
            }
        }
    }

    async fn bury(&self, delivery: &Delivery, reason: &str) -> Result<(), BackendError> {
        let Some(received) = self.release_held(delivery) else {
            return Ok(());
        };
        let buried = async {
            self.dead_letter(&received, reason, true).await?;
            self.storage
                .transition(
                    delivery.task.uuid,
                    &[TaskStatus::Process],
                    RecordChange::Finished(Outcome::Error(reason.to_owned()), delivery.run.clone()),
                )
                .await
        }
        .await;
        match buried {
            Ok(_) => {
                self.done(&received);
                Ok(())
            }
            Err(error) => {
                let mut received = received;
                received.seen_before = true;
                self.tracker.put_back(received);
                Err(error)
            }
        }
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        // Kafka keeps its messages until their retention ends; a message whose record is
        // gone is dropped when it is read, so flushing the records (which the app does next)
        // empties the queue.
        Ok(())
    }

    async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<Option<CancelState>, BackendError> {
        let reason = reason.to_owned();
        let cancel = RecordChange::Finished(Outcome::Cancel(reason.clone()), RunInfo::default());
        let request = RecordChange::CancelRequested(reason.clone());
        for _ in 0..3 {
            let state = match self
                .storage
                .transition(uuid, &[TaskStatus::New], cancel.clone())
                .await?
            {
                // Its message stays in the topic; the take that meets it drops it.
                Transition::Applied(_) | Transition::Cancelled(_) => CancelState::Cancelled,
                Transition::Kept(TaskStatus::Process) => {
                    match self
                        .storage
                        .transition(uuid, &[TaskStatus::Process], request.clone())
                        .await?
                    {
                        Transition::Applied(_) => {
                            self.request_cancel(uuid, &reason).await?;
                            CancelState::Running
                        }
                        Transition::Kept(status) if status.is_final() => CancelState::Ended(status),
                        Transition::NotFound => CancelState::NotFound,
                        _ => continue,
                    }
                }
                Transition::Kept(status) => CancelState::Ended(status),
                _ => CancelState::NotFound,
            };
            return Ok(Some(state));
        }
        Err(BackendError::new(
            "kafka",
            format!("cancelling task {uuid}: its status kept changing; try again"),
        ))
    }

    async fn request_cancel(&self, uuid: Uuid, reason: &str) -> Result<(), BackendError> {
        let request = serde_json::json!({ "uuid": uuid.to_string(), "reason": reason }).to_string();
        let record = FutureRecord::<(), _>::to(&self.names().cancel).payload(&request);
        self.producer
            .send(record, SEND_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| {
                BackendError::new("kafka", format!("sending the cancel of task {uuid} failed"))
                    .with_source(error)
            })
    }

    fn cancel_requests(&self) -> Option<broadcast::Receiver<CancelRequest>> {
        Some(self.cancels.subscribe())
    }

    async fn stats(&self) -> Result<Option<QueueStats>, BackendError> {
        let mut stats = self.storage.stats().await?;
        let letters = dead_letters::count(&self.setup.servers, &self.names().dead).await?;
        let resolved = self.global_config.get_all(RESOLVED_ENTRY).await?.len() as u64;
        stats.dead_letters = letters.saturating_sub(resolved);
        Ok(Some(stats))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let resolved: HashSet<i64> = self
            .global_config
            .get_all(RESOLVED_ENTRY)
            .await?
            .keys()
            .filter_map(|offset| offset.parse().ok())
            .collect();
        let letters = dead_letters::read(
            &self.setup.servers,
            &self.names().dead,
            None,
            limit,
            move |offset| !resolved.contains(&offset),
        )
        .await?;
        Ok(letters.iter().map(Letter::shown).collect())
    }

    async fn resolve_dead_letter(
        &self,
        letter: &DeadLetter,
        requeue: bool,
    ) -> Result<bool, BackendError> {
        let Ok(offset) = letter.id.parse::<i64>() else {
            return Ok(false);
        };
        let found = dead_letters::read(
            &self.setup.servers,
            &self.names().dead,
            Some(offset),
            1,
            |_| true,
        )
        .await?;
        let Some(found) = found.into_iter().find(|found| found.offset == offset) else {
            return Ok(false);
        };
        // Resolved once, by one operator: the claim decides between two at once, the entry
        // keeps it resolved after the claim's time.
        if self
            .global_config
            .get(RESOLVED_ENTRY, &letter.id)
            .await?
            .is_some()
            || !self
                .global_config
                .claim(&format!("{RESOLVED_ENTRY}:{offset}"), RESOLVE_CLAIM)
                .await?
        {
            return Ok(false);
        }
        if requeue {
            self.requeue_letter(&found).await?;
        }
        self.global_config
            .set(RESOLVED_ENTRY, &letter.id, &unix_now().to_string())
            .await?;
        Ok(true)
    }
}
