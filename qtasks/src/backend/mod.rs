//! The broker and storage traits, and the backends that implement them: in memory (the
//! default) and Redis (the `redis` feature).
//!
//! The worker and executor only speak to these traits; a backend never reaches into them. The
//! broker owns the write path of a task (add, take, finish) so that a server backend can do
//! each step in one round trip; the storage answers reads and the rarer writes.
//!
//! Backends do storage work only: the framework fires the `broker_*` and `storage_*` triggers
//! around these calls, so a custom backend gets them for free.

mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use uuid::Uuid;

#[cfg(feature = "redis")]
pub use self::redis::RedisOptions;
pub use memory::{MemoryBroker, MemoryStorage};

use crate::plugin::{BoxError, BoxFuture};
use crate::task::Outcome;
use crate::triggers::RecordUpdate;
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
    /// Whether the task was taken before by a worker that died without finishing it.
    pub recovered: bool,
}

/// New items of a stream task, from [`Storage::wait_items`].
#[derive(Debug, Clone, PartialEq)]
pub struct ItemsRead {
    /// The items not read before.
    pub items: Vec<serde_json::Value>,
    /// Whether the task has ended (no more items will come).
    pub ended: bool,
}

/// The queue of waiting tasks, and the writes of a task's life.
pub trait Broker: Send + Sync + 'static {
    /// The name shown by `inspect` and in payloads; the type name by default.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

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

    /// Takes up to `max` tasks in one go (a worker with `max` free slots asks for that many);
    /// waits like [`next`](Self::next) while there are none, and returns at least one unless
    /// the broker will deliver no more. The default takes one with `next`. A worker never
    /// takes more than it can start at once, so priorities hold across workers.
    fn next_batch(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BackendError>> {
        let _ = max;
        Box::pin(async move { Ok(self.next().await?.into_iter().collect()) })
    }

    /// Stores how a delivered task ended, releases it, and wakes whoever waits for it. An
    /// [`Outcome::Retry`] also adds its child task.
    fn finish(
        &self,
        delivery: &Delivery,
        outcome: Outcome,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Deletes this app's queued tasks.
    fn flush_all(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Tells the workers of the app, wherever they run, to cancel a running task. Brokers whose
    /// workers all live in this process leave it to the app, which knows its own tasks.
    fn request_cancel(&self, uuid: Uuid, reason: &str) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = (uuid, reason);
        Box::pin(async { Ok(()) })
    }

    /// Cancel requests sent by [`request_cancel`](Self::request_cancel) from other processes.
    fn cancel_requests(&self) -> Option<tokio::sync::broadcast::Receiver<(Uuid, String)>> {
        None
    }

    /// Puts every taken, unfinished task back in the queue at once (at start, with
    /// `QueueConfig::running_older_tasks`); returns how many. Brokers without leases have
    /// nothing to put back.
    fn requeue_taken(&self) -> BoxFuture<'_, Result<usize, BackendError>> {
        Box::pin(async { Ok(0) })
    }
}

/// Task records and results.
pub trait Storage: Send + Sync + 'static {
    /// The name shown by `inspect` and in payloads; the type name by default.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Called when the app starts.
    fn start(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// Called when the app stops.
    fn stop(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// Reads a record.
    fn get(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>>;

    /// Reads every record of this app.
    fn get_all(&self) -> BoxFuture<'_, Result<Vec<TaskRecord>, BackendError>>;

    /// Changes a record.
    fn update(&self, uuid: Uuid, update: RecordUpdate) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Resolves with the record once the task has ended; `None` if there is no such task.
    fn wait_finished(&self, uuid: Uuid) -> BoxFuture<'_, Result<Option<TaskRecord>, BackendError>>;

    /// Appends one item of a running stream task to its record's `returning` list (and wakes
    /// whoever reads the items live). The default keeps nothing until the task ends.
    fn append_item(
        &self,
        uuid: Uuid,
        item: serde_json::Value,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = (uuid, item);
        Box::pin(async { Ok(()) })
    }

    /// Waits until a stream task has more than `seen` items, or has ended; returns the items
    /// after the first `seen` and whether the task has ended. The default waits for the end.
    fn wait_items(
        &self,
        uuid: Uuid,
        seen: usize,
    ) -> BoxFuture<'_, Result<ItemsRead, BackendError>> {
        Box::pin(async move {
            let record = self.wait_finished(uuid).await?;
            let items = match record.and_then(|r| r.returning) {
                Some(serde_json::Value::Array(items)) => items.into_iter().skip(seen).collect(),
                _ => Vec::new(),
            };
            Ok(ItemsRead { items, ended: true })
        })
    }

    /// Deletes the records of finished tasks; returns how many.
    fn delete_finished(&self) -> BoxFuture<'_, Result<usize, BackendError>>;

    /// Deletes every record of this app.
    fn flush_all(&self) -> BoxFuture<'_, Result<(), BackendError>>;
}
