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
use crate::{QueuedTask, TaskRecord, TaskStatus};

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent
/// (they only push, pop, insert or assign).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    fn take(&self) -> Option<QueuedTask> {
        lock(&self.queue).heap.pop().map(|entry| entry.task)
    }
}

impl Broker for MemoryBroker {
    fn add(&self, task: QueuedTask) -> BoxFuture<'_, Result<(), BackendError>> {
        self.storage.insert(TaskRecord::new(&task));
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
                    self.storage.update(task.uuid, |slot| {
                        slot.record.status = TaskStatus::Process;
                        slot.record.updated_at = unix_now();
                    })?;
                    return Ok(Some(Delivery {
                        receipt: task.uuid.to_string(),
                        task,
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
        let result = self.storage.finish(delivery.task.uuid, outcome);
        Box::pin(async move { result })
    }

    fn flush_all(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        lock(&self.queue).heap.clear();
        lock(&self.storage.slots).clear();
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

    fn update(&self, uuid: Uuid, change: impl FnOnce(&mut Slot)) -> Result<(), BackendError> {
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(&uuid).ok_or_else(|| BackendError {
            backend: "memory",
            message: format!("task {uuid} is not stored"),
            source: None,
        })?;
        change(slot);
        Ok(())
    }
}

impl MemoryStorage {
    fn insert(&self, record: TaskRecord) {
        lock(&self.slots).insert(
            record.uuid,
            Slot {
                record,
                finished: None,
            },
        );
    }

    fn finish(&self, uuid: Uuid, outcome: Outcome) -> Result<(), BackendError> {
        self.update(uuid, |slot| {
            let record = &mut slot.record;
            record.updated_at = unix_now();
            match outcome {
                Outcome::Success(value) => {
                    record.status = TaskStatus::Success;
                    record.returning = Some(value);
                }
                Outcome::Error(traceback) => {
                    record.status = TaskStatus::Error;
                    record.traceback = Some(traceback);
                }
                Outcome::Cancel(reason) => {
                    record.status = TaskStatus::Cancel;
                    record.cancel_reason = Some(reason);
                }
            }
            if let Some(finished) = slot.finished.take() {
                finished.notify_waiters();
            }
        })
    }
}

impl Storage for MemoryStorage {
    fn get(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>> {
        let record = lock(&self.slots).get(&uuid).map(|slot| slot.record.clone());
        Box::pin(async move { Ok(record) })
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
}
