//! The broker and storage traits, and the in-memory implementations the app uses by default.
//!
//! The worker and executor only speak to these traits; a backend never reaches into them.

mod memory;

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

/// The queue of waiting tasks.
pub trait Broker: Send + Sync + 'static {
    /// Adds a task to the queue.
    fn push(&self, task: QueuedTask) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Takes the next task: the lowest priority number first, FIFO among equals. Waits while
    /// the queue is empty (no polling); `None` means the broker will deliver no more tasks.
    ///
    /// Must be cancel-safe: a dropped call takes nothing.
    fn pop(&self) -> BoxFuture<'_, Result<Option<QueuedTask>, BackendError>>;
}

/// Task records and results.
pub trait Storage: Send + Sync + 'static {
    /// Stores a new record.
    fn add(&self, record: TaskRecord) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Reads a record.
    fn get(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>>;

    /// Marks a task as running (`process`).
    fn mark_running(&self, uuid: Uuid) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Stores how a task ended and wakes whoever waits for it.
    fn finish(&self, uuid: Uuid, outcome: Outcome) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Resolves with the record once the task has ended; `None` if there is no such task.
    fn wait_finished(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>>;
}
