//! The broker and storage traits, and the backends that implement them: in memory (the
//! default) and Redis (the `redis` feature).
//!
//! The worker and executor only speak to these traits; a backend never reaches into them.
//! The broker owns the write path of a task (add, take, finish) so that a server backend can do
//! each step in one round trip; the storage answers reads (`get`, `wait_finished`).

mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

#[cfg(feature = "redis")]
pub use self::redis::RedisOptions;

pub use memory::{MemoryBroker, MemoryStorage};

use uuid::Uuid;

use crate::plugin::{BoxError, BoxFuture};
use crate::task::Outcome;
use crate::{QueuedTask, TaskRecord};

/// A broker or storage failure.
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend: {message}")]
pub struct BackendError {
    /// Which backend failed (`"memory"`, `"redis"`, ...).
    pub backend: &'static str,
    /// What went wrong.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<BoxError>,
}

/// A task taken from the broker: what to run, and the receipt to finish it with.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The task to run.
    pub task: QueuedTask,
    /// The broker's handle on this delivery (a lease, a queue entry...); opaque to the worker.
    pub receipt: String,
}

/// The queue of waiting tasks, and the writes of a task's life.
pub trait Broker: Send + Sync + 'static {
    /// Starts background work (for example lease renewal). Called when a worker starts.
    fn start(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// Stops background work. Called after the worker's last task finished.
    fn stop(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// Stores the new task's record (status `new`) and queues it.
    fn add(&self, task: QueuedTask) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Takes the next task, the lowest priority number first and FIFO among equals, and marks
    /// it `process`. Waits while the queue is empty (no polling); `None` means the broker will
    /// deliver no more tasks.
    ///
    /// Must be cancel-safe: a dropped call either takes nothing, or what it took is delivered
    /// again later (a lease that runs out).
    fn next(&self) -> BoxFuture<'_, Result<Option<Delivery>, BackendError>>;

    /// Stores how a delivered task ended, releases it, and wakes whoever waits for it.
    fn finish(
        &self,
        delivery: &Delivery,
        outcome: Outcome,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Deletes this app's tasks: queued entries and records.
    fn flush_all(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Whether a worker of this app is running anywhere, when the backend can tell (the
    /// Redis worker heartbeat); `None` leaves the answer to the app, which knows its own
    /// worker.
    fn ping(&self) -> BoxFuture<'_, Result<Option<bool>, BackendError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Task records and results.
pub trait Storage: Send + Sync + 'static {
    /// Reads a record.
    fn get(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>>;

    /// Resolves with the record once the task has ended; `None` if there is no such task.
    fn wait_finished(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>>;
}
