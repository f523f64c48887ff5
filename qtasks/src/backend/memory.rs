//! The in-memory broker and storage: one process, no server. The reference implementation of
//! the [`Broker`] and [`Storage`] traits.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use uuid::Uuid;

use super::{BackendError, Broker, Delivery, Storage};
use crate::plugin::BoxFuture;
use crate::task::{Outcome, unix_now};
use crate::triggers::RecordUpdate;
use crate::{QueuedTask, TaskRecord, TaskStatus};

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent
/// (they only push, pop, insert or assign).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn not_stored(uuid: Uuid) -> BackendError {
    BackendError {
        backend: "memory",
        message: format!("task {uuid} is not stored"),
        source: None,
    }
}

/// An in-memory priority queue (lowest priority number first, FIFO among equals) writing to a
/// [`MemoryStorage`].
pub struct MemoryBroker {
    storage: Arc<MemoryStorage>,
    queue: Mutex<Queue>,
    available: Notify,
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Entry>,
    next_sequence: u64,
}

struct Entry {
    priority: i64,
    sequence: u64,
    task: QueuedTask,
}

impl Ord for Entry {
    // BinaryHeap pops the greatest entry: the greatest is the lowest (priority, sequence).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.priority, other.sequence).cmp(&(self.priority, self.sequence))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl MemoryBroker {
    /// An empty queue writing records to `storage`.
    pub fn new(storage: Arc<MemoryStorage>) -> Self {
        MemoryBroker {
            storage,
            queue: Mutex::default(),
            available: Notify::new(),
        }
    }

    /// How many tasks wait.
    pub fn len(&self) -> usize {
        lock(&self.queue).heap.len()
    }

    /// Whether no task waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, task: QueuedTask) {
        self.storage.insert(TaskRecord::new(&task));
        self.enqueue(task);
    }

    fn enqueue(&self, task: QueuedTask) {
        {
            let mut queue = lock(&self.queue);
            let sequence = queue.next_sequence;
            queue.next_sequence += 1;
            queue.heap.push(Entry {
                priority: task.priority,
                sequence,
                task,
            });
        }
        self.available.notify_one();
    }

    fn take(&self) -> Option<QueuedTask> {
        lock(&self.queue).heap.pop().map(|entry| entry.task)
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &str {
        "MemoryBroker"
    }

    fn add(&self, task: QueuedTask) -> BoxFuture<'_, Result<(), BackendError>> {
        self.push(task);
        Box::pin(async { Ok(()) })
    }

    fn next(&self) -> BoxFuture<'_, Result<Option<Delivery>, BackendError>> {
        Box::pin(async move {
            loop {
                // Register for a wake-up before looking, so a push between the look and the
                // wait is not missed.
                let notified = self.available.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(task) = self.take() {
                    self.storage.change(task.uuid, |slot| {
                        slot.record.status = TaskStatus::Process;
                        slot.record.updated_at = unix_now();
                    })?;
                    return Ok(Some(Delivery {
                        receipt: task.uuid.to_string(),
                        task,
                        recovered: false,
                    }));
                }
                notified.await;
            }
        })
    }

    fn finish(
        &self,
        delivery: &Delivery,
        outcome: Outcome,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        // A retry's child is stored before the parent ends, so whoever follows the parent to
        // the child finds it.
        let child = match &outcome {
            Outcome::Retry { child, .. } => {
                self.storage.insert(TaskRecord::new(child));
                Some((**child).clone())
            }
            _ => None,
        };
        let result = self.storage.finish(delivery.task.uuid, outcome);
        if let (Ok(()), Some(child)) = (&result, child) {
            self.enqueue(child);
        }
        Box::pin(async move { result })
    }

    fn flush_all(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        lock(&self.queue).heap.clear();
        Box::pin(async { Ok(()) })
    }
}

/// In-memory task records, with waiters woken the moment a task ends.
#[derive(Default)]
pub struct MemoryStorage {
    slots: Mutex<HashMap<Uuid, Slot>>,
}

struct Slot {
    record: TaskRecord,
    /// Created only when somebody waits.
    finished: Option<Arc<Notify>>,
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&self, record: TaskRecord) {
        lock(&self.slots).insert(
            record.uuid,
            Slot {
                record,
                finished: None,
            },
        );
    }

    fn change(&self, uuid: Uuid, change: impl FnOnce(&mut Slot)) -> Result<(), BackendError> {
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(&uuid).ok_or_else(|| not_stored(uuid))?;
        change(slot);
        Ok(())
    }

    fn finish(&self, uuid: Uuid, outcome: Outcome) -> Result<(), BackendError> {
        self.change(uuid, |slot| {
            let record = &mut slot.record;
            record.updated_at = unix_now();
            record.status = outcome.status();
            match outcome {
                Outcome::Success(value) => record.returning = Some(value),
                Outcome::Error(traceback) => record.traceback = Some(traceback),
                Outcome::Cancel(reason) => record.cancel_reason = Some(reason),
                Outcome::Retry { traceback, child } => {
                    record.traceback = Some(traceback);
                    record.retry_child_uuid = Some(child.uuid);
                    record.retry = child.retry.map(|left| left + 1);
                }
            }
            if let Some(finished) = slot.finished.take() {
                finished.notify_waiters();
            }
        })
    }
}

impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        "MemoryStorage"
    }

    fn get(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>> {
        let record = lock(&self.slots).get(&uuid).map(|slot| slot.record.clone());
        Box::pin(async move { Ok(record) })
    }

    fn get_all(&self) -> BoxFuture<'_, Result<Vec<TaskRecord>, BackendError>> {
        let mut records: Vec<TaskRecord> = lock(&self.slots)
            .values()
            .map(|slot| slot.record.clone())
            .collect();
        records.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        Box::pin(async move { Ok(records) })
    }

    fn update(&self, uuid: Uuid, update: RecordUpdate) -> BoxFuture<'_, Result<(), BackendError>> {
        let result = self.change(uuid, |slot| {
            update.apply_to(&mut slot.record);
            slot.record.updated_at = unix_now();
        });
        Box::pin(async move { result })
    }

    fn wait_finished(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>> {
        Box::pin(async move {
            loop {
                let finished;
                let notified;
                {
                    let mut slots = lock(&self.slots);
                    let Some(slot) = slots.get_mut(&uuid) else {
                        return Ok(None);
                    };
                    if slot.record.status.is_final() {
                        return Ok(Some(slot.record.clone()));
                    }
                    finished = Arc::clone(slot.finished.get_or_insert_with(Default::default));
                    // Created under the lock: `finish` needs the lock, so it cannot wake
                    // waiters between our look and this registration.
                    notified = finished.notified();
                }
                notified.await;
            }
        })
    }

    fn delete_finished(&self) -> BoxFuture<'_, Result<usize, BackendError>> {
        let mut slots = lock(&self.slots);
        let before = slots.len();
        slots.retain(|_, slot| !slot.record.status.is_final());
        let deleted = before - slots.len();
        Box::pin(async move { Ok(deleted) })
    }

    fn flush_all(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        lock(&self.slots).clear();
        Box::pin(async { Ok(()) })
    }
}
