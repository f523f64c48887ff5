//! The RabbitMQ broker of qtasks: the task queue lives in RabbitMQ, the records in a storage
//! it is paired with (Redis by default, as in Python QTasks, or any
//! [`Storage`](qtasks_core::backend::Storage) that implements the conditional writes).
//!
//! Turn it on with the `rabbitmq` feature of `qtasks`, which also turns on Redis:
//!
//! ```no_run
//! # async fn demo() -> qtasks::Result<()> {
//! use qtasks::redis::Redis;
//!
//! let app = qtasks::rabbitmq::connect(
//!     "amqp://guest:guest@127.0.0.1:5672/%2f",
//!     Redis::new("redis://127.0.0.1:6379/0"),
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # What it keeps from the original, and where it differs
//!
//! - The queue is `N:task_queue` (durable, default exchange, routing key = the queue name),
//!   and a message body is the original's JSON object `{"uuid", "task_name", "priority",
//!   "args", "kwargs", "created_at"}` (qtasks adds `retry`, `retry_parent_uuid`, `run_at` and
//!   `traceparent` when they are set). A producer that publishes that body reaches a qtasks
//!   worker, with or without a record in the storage.
//! - The queue is declared with `x-max-priority: 10`: qtasks priorities -5 to 5 each get a
//!   level (lower runs first, the default 0 in the middle); priorities beyond share the end
//!   levels. The original declares it without, and RabbitMQ refuses to declare one queue with
//!   two sets of arguments: to share a queue with Python QTasks processes, use
//!   [`RabbitMqOptions::as_the_original`] (no priorities) in every qtasks process on it.
//! - A message is acked after its task's outcome is stored, not when it reaches the worker (the
//!   original acks first, so a crashed worker loses its tasks): delivery is at least once, and
//!   a redelivered message whose outcome was stored is dropped rather than run again.
//! - `args` and `kwargs` are stored as JSON (the original stores Python reprs, which its own
//!   `get` cannot read back).
//! - A message that is not a task is set aside in `N:qtasks:dead` with the reason in its
//!   `x-qtasks-reason` header; the worker goes on.
//! - Delays and retry backoffs wait in delay queues `N:qtasks:delay:{ms}` (one per power of two
//!   from 32 ms; each message of a queue waits as long, and returns to the task queue when it
//!   expires), so no plugin is needed on the server.
//! - Cancel requests for running tasks travel on the fanout exchange `N:qtasks:cancel`.
#![warn(missing_docs)]

mod broker;
mod cancels;
mod dead_letters;
mod held;
mod link;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use qtasks_core::backend::{
    BackendError, BackendParts, Connector, RecordStore, RecordStoreConnector,
};
use qtasks_core::components::GlobalConfig;
use qtasks_core::{QueueConfig, QueueTasks};

use crate::broker::RabbitMqBroker;
use crate::link::Link;

/// An app (default config) whose queue is on RabbitMQ at `url` and whose records are in
/// `storage`'s storage: `qtasks::redis::Redis::new(url)` pairs them as Python QTasks does.
pub async fn connect(
    url: &str,
    storage: impl RecordStoreConnector,
) -> qtasks_core::Result<QueueTasks> {
    connect_with(
        url,
        storage,
        QueueConfig::default(),
        RabbitMqOptions::default(),
    )
    .await
}

/// An app with this config (its `name` prefixes the queue names) and these options.
///
/// ```no_run
/// # async fn demo() -> qtasks::Result<()> {
/// use qtasks::rabbitmq::RabbitMqOptions;
/// use qtasks::redis::Redis;
/// use qtasks::QueueConfig;
///
/// let config = QueueConfig { name: "billing".into(), max_tasks_process: 8, ..Default::default() };
/// let app = qtasks::rabbitmq::connect_with(
///     "amqp://127.0.0.1:5672/%2f",
///     Redis::new("redis://127.0.0.1:6379/0"),
///     config,
///     RabbitMqOptions::default(),
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub async fn connect_with(
    url: &str,
    storage: impl RecordStoreConnector,
    config: QueueConfig,
    options: RabbitMqOptions,
) -> qtasks_core::Result<QueueTasks> {
    Ok(QueueTasks::builder()
        .config(config)
        .connect(RabbitMq::new(url, storage).options(options))
        .await?
        .build())
}

/// The RabbitMQ engine as a [`Connector`]: the broker on RabbitMQ, the storage and global
/// config from another engine.
///
/// ```no_run
/// # async fn demo() -> qtasks::Result<()> {
/// use qtasks::QueueTasks;
/// use qtasks::rabbitmq::RabbitMq;
/// use qtasks::redis::Redis;
///
/// let app = QueueTasks::builder()
///     .connect(RabbitMq::new("amqp://127.0.0.1:5672/%2f", Redis::new("redis://127.0.0.1:6379/0")))
///     .await?
///     .build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RabbitMq {
    url: String,
    storage: StorageSource,
    options: RabbitMqOptions,
}

#[derive(Clone)]
enum StorageSource {
    /// Another engine's storage and global config (its broker is not used).
    Engine(Arc<dyn RecordStoreConnector>),
    /// A storage and global config made already.
    Parts(Arc<dyn RecordStore>, Arc<dyn GlobalConfig>),
}

impl RabbitMq {
    /// The RabbitMQ at `url` (`amqp://user:password@host:5672/%2f`), with the records in
    /// `storage`'s storage: its broker is not used.
    pub fn new(url: impl Into<String>, storage: impl RecordStoreConnector) -> Self {
        RabbitMq {
            url: url.into(),
            storage: StorageSource::Engine(Arc::new(storage)),
            options: RabbitMqOptions::default(),
        }
    }

    /// The RabbitMQ at `url`, with the records in `storage` and the shared entries in
    /// `global_config`: in-memory ones for a single process, or your own.
    ///
    /// ```no_run
    /// # async fn demo() -> qtasks::Result<()> {
    /// use std::sync::Arc;
    /// use qtasks::backend::MemoryStorage;
    /// use qtasks::components::MemoryGlobalConfig;
    /// use qtasks::rabbitmq::RabbitMq;
    ///
    /// let engine = RabbitMq::with_storage(
    ///     "amqp://127.0.0.1:5672/%2f",
    ///     Arc::new(MemoryStorage::new()),
    ///     Arc::new(MemoryGlobalConfig::new()),
    /// );
    /// let app = qtasks::QueueTasks::builder().connect(engine).await?.build();
    /// # Ok(()) }
    /// ```
    pub fn with_storage(
        url: impl Into<String>,
        storage: Arc<dyn RecordStore>,
        global_config: Arc<dyn GlobalConfig>,
    ) -> Self {
        RabbitMq {
            url: url.into(),
            storage: StorageSource::Parts(storage, global_config),
            options: RabbitMqOptions::default(),
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: RabbitMqOptions) -> Self {
        self.options = options;
        self
    }
}

impl std::fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMq")
            .field("url", &qtasks_core::backend::redacted_url(&self.url))
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

// `amqp://` and `amqps://` reach this engine through `QueueTasks::connect_engine_url` and the
// command line's `--url`, with the records in the store named by the second URL
// (`--storage-url`, `QTASKS_STORAGE_URL`).
fn url_connector(
    url: &qtasks_core::backend::EngineUrl<'_>,
) -> Result<Box<dyn Connector>, BackendError> {
    let records = url.record_store("rabbitmq")?;
    Ok(Box::new(RabbitMq::new(url.url, records)))
}

qtasks_core::url_engine!(qtasks_core::backend::UrlEngine::new(
    "rabbitmq",
    &["amqp", "amqps"],
    url_connector
));

#[qtasks_core::async_trait]
impl Connector for RabbitMq {
    async fn connect(&self, config: &QueueConfig) -> Result<BackendParts, BackendError> {
        if config.name.is_empty() {
            return Err(BackendError::new(
                "rabbitmq",
                "the app name is the queue name's prefix: it must not be empty",
            ));
        }
        let (storage, global_config) = match &self.storage {
            StorageSource::Engine(engine) => engine.connect_records(config).await?,
            StorageSource::Parts(storage, global_config) => {
                (Arc::clone(storage), Arc::clone(global_config))
            }
        };
        let link = Link::new(
            self.url.clone(),
            wire::Names::new(&config.name),
            &self.options,
        );
        let prefetch = self
            .options
            .prefetch
            .unwrap_or_else(|| config.max_tasks_process.clamp(1, usize::from(u16::MAX)) as u16);
        let broker = RabbitMqBroker::connect(
            link,
            Arc::clone(&storage),
            Arc::clone(&global_config),
            prefetch,
        )
        .await?;
        Ok(BackendParts::new(
            Arc::new(broker),
            storage as _,
            global_config,
        ))
    }
}

/// Settings of the RabbitMQ broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RabbitMqOptions {
    /// How many unacked messages a worker holds. `None` (the default): the worker's
    /// concurrency (`max_tasks_process`), so a worker holds no more than it can run and the
    /// rest wait in RabbitMQ for any worker, in priority order.
    pub prefetch: Option<u16>,
    /// The timeout of one connection attempt. Default 5 s.
    pub connect_timeout: Duration,
    /// Declare the task queue with `x-max-priority: 10`, so lower priority numbers run first
    /// (the default). `false` declares it as Python QTasks does (durable, no arguments), so
    /// Python producers and qtasks workers can share it; priorities then do not reorder it.
    /// RabbitMQ refuses to declare one queue with two sets of arguments: every process on
    /// a queue must agree.
    pub priorities: bool,
    /// Deletes the app's queues after they go unused this long (`x-expires`). `None` (the
    /// default) keeps them; tests set it so their queues do not pile up on a shared server.
    pub queue_expires: Option<Duration>,
    /// How many dead letters the dead-letter queue keeps (`x-max-length`; the oldest go
    /// first). Default 10,000, as on Redis.
    pub dead_letters_max: u32,
    /// How long a dead letter is kept (`x-message-ttl`). Default 7 days, as on Redis; `None`
    /// keeps them until they are resolved or pushed out by newer ones.
    ///
    /// Both are arguments of the dead-letter queue's declaration, which RabbitMQ refuses to
    /// change: a queue declared before (by an earlier version, or with other limits) must be
    /// deleted, or given the limits by a policy, before a worker with new limits starts.
    pub dead_letters_ttl: Option<Duration>,
}

impl Default for RabbitMqOptions {
    fn default() -> Self {
        RabbitMqOptions {
            prefetch: None,
            priorities: true,
            connect_timeout: Duration::from_secs(5),
            queue_expires: None,
            dead_letters_max: 10_000,
            dead_letters_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl RabbitMqOptions {
    /// Sets [`queue_expires`](Self::queue_expires).
    #[must_use]
    pub fn queue_expires(mut self, after: Duration) -> Self {
        self.queue_expires = Some(after);
        self
    }

    /// Declares the task queue as Python QTasks does: [`priorities`](Self::priorities) off.
    #[must_use]
    pub fn as_the_original(mut self) -> Self {
        self.priorities = false;
        self
    }

    /// Sets [`prefetch`](Self::prefetch).
    #[must_use]
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch);
        self
    }
}
