//! Backends: the [`Broker`] and [`Storage`] traits, the in-memory backend that is the default
//! and the reference implementation, and what an engine crate needs to plug in.
//!
//! The worker and executor only speak to these traits; a backend never reaches into them. The
//! broker owns the write path of a task (add, take, finish) so that a server backend can do
//! each step in one round trip; the storage answers reads and the rarer writes.
//!
//! Backends do storage work only: the framework fires the `broker_*` and `storage_*` triggers
//! around these calls, so a custom backend gets them for free.
//!
//! # Writing an engine
//!
//! An engine is a crate that depends on `qtasks` (or `qtasks-core`) alone. It implements
//! [`Lifecycle`] (a name, a start, a stop) and [`Broker`], [`Storage`] and usually
//! [`GlobalConfig`](crate::components::GlobalConfig), with `async fn` methods under
//! [`#[qtasks::async_trait]`](crate::async_trait), and a [`Connector`] that builds the three for
//! an app's [`QueueConfig`]; users hand the connector to
//! [`AppBuilder::connect`](crate::AppBuilder::connect). A storage that another engine's
//! broker may keep its records in (RabbitMQ's) also implements [`RecordStore`], and its engine
//! [`RecordStoreConnector`]: the compiler then checks the pairing. The in-memory engine
//! ([`MemoryBroker`], [`MemoryStorage`]) and the Redis engine (`qtasks-redis`) are written
//! this way; `docs/guide/writing-an-engine.md` walks through one.

mod by_url;
mod memory;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

pub use by_url::{
    EngineUrl, MakeConnector, MakeRecordStore, MemoryEngine, UrlEngine, connector_for,
    known_schemes, url_engines,
};
pub use memory::{MemoryBroker, MemoryStorage};

pub use crate::error::ErrorChain;

use crate::components::GlobalConfig;
use crate::plugin::BoxError;
use crate::queues::Take;

use crate::records::{RecordChange, RecordUpdate};
use crate::stats::{DeadLetter, QueueStats};
use crate::task::Outcome;
use crate::{QueueConfig, QueuedTask, TaskRecord};
pub use async_trait::async_trait;

/// A broker or storage failure: which backend, what it was doing, and the underlying error
/// (as [`source`](std::error::Error::source), not repeated in the message).
///
/// ```
/// use qtasks::backend::BackendError;
///
/// let io = std::io::Error::other("connection reset");
/// let error = BackendError::new("redis", "storing the result of task 42").with_source(io);
/// assert_eq!(error.to_string(), "redis backend: storing the result of task 42");
/// assert_eq!(std::error::Error::source(&error).unwrap().to_string(), "connection reset");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend: {message}")]
pub struct BackendError {
    backend: &'static str,
    message: String,
    #[source]
    source: Option<BoxError>,
    refused: bool,
    cancelled: Option<String>,
}

impl BackendError {
    /// A failure of `backend` (`"memory"`, `"redis"`, ...) while doing what `message` says.
    pub fn new(backend: &'static str, message: impl Into<String>) -> Self {
        BackendError {
            backend,
            message: message.into(),
            source: None,
            refused: false,
            cancelled: None,
        }
    }

    /// The backend refused a write that is no longer this worker's to make: the delivery's
    /// lease ran out (the worker stalled past it) and another worker holds the task now.
    /// Trying again will not help; the other worker records the outcome.
    pub fn refused(backend: &'static str, message: impl Into<String>) -> Self {
        BackendError {
            refused: true,
            ..BackendError::new(backend, message)
        }
    }

    /// Whether this is a [`refused`](Self::refused) write.
    pub fn is_refused(&self) -> bool {
        self.refused
    }

    /// The outcome was not stored because the task was cancelled while it ran (the request
    /// was stored, so the cancel holds even if the run never heard of it): its record ends
    /// `cancel` with `reason` instead.
    ///
    /// ```
    /// use qtasks::backend::BackendError;
    ///
    /// let error = BackendError::cancelled("redis", "no longer needed");
    /// assert_eq!(error.cancel_reason(), Some("no longer needed"));
    /// assert!(!error.is_refused());
    /// ```
    pub fn cancelled(backend: &'static str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        BackendError {
            cancelled: Some(reason.clone()),
            ..BackendError::new(
                backend,
                format!("the task was cancelled while it ran ({reason}); it ends `cancel`"),
            )
        }
    }

    /// The cancel reason the record ended with, for a [`cancelled`](Self::cancelled) finish.
    pub fn cancel_reason(&self) -> Option<&str> {
        self.cancelled.as_deref()
    }

    /// The underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Which backend failed.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What went wrong, without the underlying error.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The current Unix time in seconds: the clock of records' `created_at` and `updated_at`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A server URL without its password, for logs and messages: `scheme://user:***@host`, and
/// `pass=***` in the query.
///
/// ```
/// use qtasks::backend::redacted_url;
///
/// assert_eq!(redacted_url("redis://:hunter2@10.0.0.1:6379/0"), "redis://:***@10.0.0.1:6379/0");
/// assert_eq!(redacted_url("amqp://guest:guest@host/%2f"), "amqp://guest:***@host/%2f");
/// ```
pub fn redacted_url(url: &str) -> String {
    // `unix:///path?db=0&pass=secret` and the like: the values of secret parameters go first,
    // so that an `@` in one is not taken for the end of the credentials below.
    let mut shown = url.to_owned();
    if let Some(query_start) = shown.find('?') {
        let (base, query) = shown.split_at(query_start + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                // `pass`, `password`, and the like of another server (`sentinel_password`).
                Some((key, _)) if key == "pass" || key.ends_with("password") => {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        shown = format!("{base}{query}");
    }
    // `scheme://user:password@host` (or `scheme://secret@host`): the secret goes.
    match (shown.find("://"), shown.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &shown[scheme_end + 3..at];
            let user = credentials.split_once(':').map_or("", |(user, _)| user);
            format!("{}{user}:***{}", &shown[..scheme_end + 3], &shown[at..])
        }
        _ => shown,
    }
}

/// The backend parts an engine provides for one app: a broker, the storage it writes to, and
/// the global config.
#[derive(Clone)]
#[non_exhaustive]
pub struct BackendParts {
    /// The queue and the write path of a task's life.
    pub broker: Arc<dyn Broker>,
    /// Records and results.
    pub storage: Arc<dyn Storage>,
    /// Shared entries and the worker heartbeat.
    pub global_config: Arc<dyn GlobalConfig>,
}

impl BackendParts {
    /// The three parts.
    pub fn new(
        broker: Arc<dyn Broker>,
        storage: Arc<dyn Storage>,
        global_config: Arc<dyn GlobalConfig>,
    ) -> Self {
        BackendParts {
            broker,
            storage,
            global_config,
        }
    }
}

impl std::fmt::Debug for BackendParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendParts")
            .field("broker", &self.broker.name())
            .field("storage", &self.storage.name())
            .field("global_config", &self.global_config.name())
            .finish()
    }
}

/// How an engine connects an app: builds its [`BackendParts`] for the app's config (the app
/// name is usually the key prefix or queue name). The seam between the core and engine crates:
/// [`AppBuilder::connect`](crate::AppBuilder::connect) takes any connector.
///
/// ```
/// use std::sync::Arc;
/// use qtasks::backend::{BackendError, BackendParts, Connector, MemoryBroker, MemoryStorage};
/// use qtasks::components::MemoryGlobalConfig;
/// use qtasks::{QueueConfig, QueueTasks};
///
/// /// An "engine" that hands out the in-memory parts.
/// struct InMemory;
///
/// #[qtasks::async_trait]
/// impl Connector for InMemory {
///     async fn connect(&self, _config: &QueueConfig) -> Result<BackendParts, BackendError> {
///         let storage = Arc::new(MemoryStorage::new());
///         let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
///         Ok(BackendParts::new(broker, storage, Arc::new(MemoryGlobalConfig::new())))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> qtasks::Result<()> {
/// let app = QueueTasks::builder().connect(InMemory).await?.build();
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Connector: Send + Sync {
    /// Connects, or says why not (an unreachable server, a config the engine cannot use).
    async fn connect(&self, config: &QueueConfig) -> Result<BackendParts, BackendError>;
}

/// A boxed connector connects as the one inside (what [`connector_for`] hands out).
#[async_trait]
impl<T: Connector + ?Sized> Connector for Box<T> {
    async fn connect(&self, config: &QueueConfig) -> Result<BackendParts, BackendError> {
        (**self).connect(config).await
    }
}

/// What [`Broker::cancel`] found and did, in one atomic step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelState {
    /// The task was waiting: it is `cancel` now and will never run.
    Cancelled,
    /// The task is running (or taken): its worker was asked to stop it.
    Running,
    /// The task had ended already with this status, which stays.
    Ended(crate::TaskStatus),
    /// No such task.
    NotFound,
}

/// A task taken from the broker: what to run, and the receipt to finish it with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Delivery {
    /// The task to run.
    pub task: QueuedTask,
    /// The broker's handle on this delivery (a lease, a queue entry...); opaque to the worker,
    /// and unique to this delivery: two deliveries of one task (a worker stalled past its lease
    /// and the one that took the task over, perhaps in the same process) never share one.
    pub receipt: String,
    /// Whether the task was taken before by a worker that died without finishing it.
    pub recovered: bool,
    /// How many times the broker has handed this attempt out, this time included (1 for a
    /// first delivery). Past [`QueueConfig::max_deliveries`](crate::QueueConfig::max_deliveries)
    /// the worker does not run it.
    pub deliveries: u32,
    /// Which worker ran the delivery, and when it started: set by the worker before it
    /// finishes the delivery, for the broker to write into the record with the outcome.
    pub run: RunInfo,
}

/// Which worker ran a task, and when it started (the record's `worker` and `started_at`).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RunInfo {
    /// When the run started (Unix seconds, the worker's clock).
    pub started_at: Option<f64>,
    /// The worker's id (`host:pid:nonce`, as `stats` lists the workers).
    pub worker: Option<Arc<str>>,
    /// How long the record is kept once final when the task says (`result_ttl`), instead of
    /// the engine's retention.
    pub result_ttl: Option<Duration>,
    /// The data of the error the run failed with, for the caller (the record's
    /// `error_payload`).
    pub error_payload: Option<serde_json::Value>,
    /// The run was a stream task's, which may have stored items as they came
    /// ([`Storage::append_item`]): an engine that keeps live items apart from the record may
    /// drop them when it records the outcome, and skip that for a first delivery whose run was
    /// not a stream task's (the Redis broker does; live items left behind expire anyway).
    pub streamed: bool,
}

impl RunInfo {
    /// A run of `worker` that started at `started_at`.
    pub fn new(started_at: f64, worker: Option<Arc<str>>) -> Self {
        RunInfo {
            started_at: Some(started_at),
            worker,
            result_ttl: None,
            error_payload: None,
            streamed: false,
        }
    }
}

impl Delivery {
    /// A first delivery of `task` (not `recovered`), finished later with `receipt`.
    pub fn new(task: QueuedTask, receipt: impl Into<String>) -> Self {
        Delivery {
            task,
            receipt: receipt.into(),
            recovered: false,
            deliveries: 1,
            run: RunInfo::default(),
        }
    }

    /// Marks a task taken again after its worker died.
    #[must_use]
    pub fn recovered(mut self, recovered: bool) -> Self {
        self.recovered = recovered;
        self
    }

    /// How many times the broker has handed this attempt out, this time included.
    #[must_use]
    pub fn deliveries(mut self, deliveries: u32) -> Self {
        self.deliveries = deliveries.max(1);
        self
    }

    /// Whether an earlier delivery of this attempt ended without an outcome (its worker died or
    /// stalled past the lease): the task may be what killed that worker, so the worker runs it
    /// alone.
    pub fn is_suspect(&self) -> bool {
        self.recovered || self.deliveries > 1
    }
}

/// A request to stop a running task, from [`Broker::cancel_requests`].
///
/// ```
/// use qtasks::backend::CancelRequest;
///
/// let uuid = uuid::Uuid::new_v4();
/// let request = CancelRequest::new(uuid, "no longer needed");
/// assert_eq!(request.delivery, None, "every run of the task in this process");
/// let lost = CancelRequest::new(uuid, "lease lost").for_delivery("receipt-1");
/// assert_eq!(lost.delivery.as_deref(), Some("receipt-1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CancelRequest {
    /// The task to stop.
    pub uuid: Uuid,
    /// Why: the reason its record ends with.
    pub reason: String,
    /// Only the run of this delivery (its [`Delivery::receipt`]): a run whose lease was lost
    /// is stopped without touching a newer delivery of the same task. `None`: every run of the
    /// task.
    pub delivery: Option<String>,
}

impl CancelRequest {
    /// Stops every run of `uuid` in this process.
    pub fn new(uuid: Uuid, reason: impl Into<String>) -> Self {
        CancelRequest {
            uuid,
            reason: reason.into(),
            delivery: None,
        }
    }

    /// Stops only the run of the delivery with this receipt.
    #[must_use]
    pub fn for_delivery(mut self, receipt: impl Into<String>) -> Self {
        self.delivery = Some(receipt.into());
        self
    }
}

/// New items of a stream task, from [`Storage::wait_items`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ItemsRead {
    /// The items not read before.
    pub items: Vec<serde_json::Value>,
    /// Whether the task has ended (no more items will come).
    pub ended: bool,
}

impl ItemsRead {
    /// These new items; `ended` when the task will produce no more.
    pub fn new(items: Vec<serde_json::Value>, ended: bool) -> Self {
        ItemsRead { items, ended }
    }
}

/// What [`RecordStore::transition`] found, and whether it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// The record had this status, one of those allowed, but a cancel requested while the
    /// task ran ([`RecordChange::CancelRequested`]) won: the record is `cancel` now (with the
    /// request's reason), not what the change asked.
    Cancelled(crate::TaskStatus),
    /// The record had this status, one of those allowed: the change is written.
    Applied(crate::TaskStatus),
    /// The record has this status, not one of those allowed: nothing is written.
    Kept(crate::TaskStatus),
    /// There is no such record.
    NotFound,
}

/// What every backend part has: a name, and a start and a stop around the app's life. The
/// supertrait of [`Broker`], [`Storage`] and [`GlobalConfig`]: one type may be several parts
/// and still have one name.
#[async_trait]
pub trait Lifecycle: Send + Sync + 'static {
    /// The name shown by `inspect`, in payloads and in logs (`"RedisBroker"`).
    fn name(&self) -> &str;

    /// Starts background work (lease renewal, a listener). Called when the app or a worker
    /// starts; the default has none.
    async fn start(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Stops background work. Called after the worker's last task finished; the default has
    /// none.
    async fn stop(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// The queue of waiting tasks, and the writes of a task's life.
///
/// Written with `async fn` under [`#[async_trait]`](crate::async_trait) (the traits are used
/// as `dyn Broker`, picked at run time by URL, and `async-trait` keeps them object-safe at the
/// cost of one box per call, as a hand-written `BoxFuture` would).
#[async_trait]
pub trait Broker: Lifecycle {
    /// Where the queue lives, for logs and the command line (a server URL without its
    /// password); `None` (the default) for a queue inside this process.
    fn location(&self) -> Option<String> {
        None
    }

    /// The broker as `Any`, for an engine crate that finds its own broker behind an app
    /// ([`QueueTasks::broker_as`](crate::QueueTasks::broker_as)). The default: `None`.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// Stores the new task's record (status `new`) and queues it.
    async fn add(&self, task: QueuedTask) -> Result<(), BackendError>;

    /// Adds several new tasks (none with a unique key), as [`add`](Self::add) each, in their
    /// order within each queue where the engine keeps one:
    /// [`QueueTasks::add_many`](crate::QueueTasks::add_many) hands a chunk of its calls here.
    /// An engine that can write a batch in one round trip does so (Redis: one script call per
    /// 512 tasks of a queue); the default asks [`add`](Self::add) for each at once, in order,
    /// so that an engine batching concurrent adds (PostgreSQL) still batches them. Every add
    /// runs to its end (none is dropped half way); the first failure is the answer, and the
    /// other tasks may have been added.
    async fn add_many(&self, tasks: &[QueuedTask]) -> Result<(), BackendError> {
        futures_util::future::join_all(tasks.iter().map(|task| self.add(task.clone())))
            .await
            .into_iter()
            .collect()
    }

    /// Takes up to `max` tasks in one go, the lowest priority number first and FIFO among
    /// equals, and marks them `process` (a worker with `max` free slots asks for that many, and
    /// never takes more than it can start at once, so priorities hold across workers). Waits
    /// while the queue is empty (no polling); returns at least one task unless the broker will
    /// deliver no more (then an empty list).
    ///
    /// Must be cancel-safe: a dropped call either takes nothing, or what it took is delivered
    /// again later (a lease that runs out).
    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery>, BackendError>;

    /// Whether this broker keeps [named queues](crate::queues) apart: it implements
    /// [`take`](Self::take), queues each task in its [`QueuedTask::queue`], and pauses queues.
    /// A broker that does not (the default) serves the default queue alone, and the app
    /// refuses both a task for another queue and a worker that serves one.
    fn supports_queues(&self) -> bool {
        false
    }

    /// The partition the task `uuid` lives in, for a broker that spreads one queue over
    /// several (each with its own order): priority order, and first in first out among
    /// equals, hold among the tasks of one partition. The default: 0, one partition.
    fn partition_of(&self, uuid: Uuid) -> usize {
        let _ = uuid;
        0
    }

    /// How many of [`QueueTasks::add_many`](crate::QueueTasks::add_many)'s chunks may be
    /// handed to [`add_many`](Self::add_many) at once: 1 (the default) hands the next chunk
    /// over once the one before is stored. A broker that sends each call's request before its
    /// first poll returns, on one connection that the server reads in order, and whose retries
    /// cannot be overtaken by a request sent after them (Redis: a call that meets a server
    /// without its script is sent again as one `EVAL`), says 2: the next chunk's request is
    /// then built and sent while the server writes the one before, and the order of the calls
    /// still holds. [`QueueTasks::add_many`](crate::QueueTasks::add_many) hands its first
    /// chunk over alone (a server that lost its scripts learns them from it), and a chunk with
    /// unique calls too (its unique adds leave after its plain ones). A server that loses its
    /// scripts in the middle of a call (a restart, a failover) may still run two of its chunks
    /// out of order.
    fn add_many_chunks_at_once(&self) -> usize {
        1
    }

    /// Whether lower priority numbers are taken first (the default). A broker whose queue
    /// keeps the order tasks were added in, whatever their priority (Kafka's partitions), says
    /// `false`: its tasks start first in, first out within each partition.
    fn keeps_priorities(&self) -> bool {
        true
    }

    /// Takes up to `take.max` tasks from the queues `take` lists, in its order (the first
    /// queue first, the next ones filling what it leaves, each at most its own `max`),
    /// skipping paused queues: otherwise as [`next_batch`](Self::next_batch), which is this
    /// take of the default queue alone; with a [`patience`](Take::patience), an empty list
    /// once it has passed with no task. The default serves the default queue alone.
    async fn take(&self, take: &Take<'_>) -> Result<Vec<Delivery>, BackendError> {
        if take.is_default_only() {
            return self.next_batch(take.max).await;
        }
        let names: Vec<&str> = take.queues.iter().map(|queue| queue.name).collect();
        Err(BackendError::new(
            "broker",
            format!(
                "{} keeps no named queues, and a worker asked for {}",
                self.name(),
                names.join(", ")
            ),
        ))
    }

    /// Adds `task` unless the task that holds `unique.key` still holds it (it waits, runs or
    /// is retried, or was added less than `unique.window` ago; see
    /// [`still_holds`](crate::unique::still_holds)): then adds nothing and answers the holder's
    /// id. Otherwise `task` takes the key. In one atomic step, across every process of the app.
    /// The default refuses: the broker keeps no unique keys.
    async fn add_unique(
        &self,
        task: QueuedTask,
        unique: &crate::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        let _ = (task, unique);
        Err(BackendError::new(
            "broker",
            format!("{} keeps no unique keys", self.name()),
        ))
    }

    /// Takes the next task: [`next_batch`](Self::next_batch) of one. `None` means the broker
    /// will deliver no more tasks.
    async fn next(&self) -> Result<Option<Delivery>, BackendError> {
        Ok(self.next_batch(1).await?.into_iter().next())
    }

    /// Stores how a delivered task ended, releases it, and wakes whoever waits for it. An
    /// [`Outcome::Retry`] also adds its child task.
    ///
    /// A broker with leases records the outcome only while the delivery still holds its lease;
    /// otherwise it returns a [`BackendError::refused`] error and writes nothing, so each
    /// attempt has one recorded outcome.
    async fn finish(&self, delivery: &Delivery, outcome: Outcome) -> Result<(), BackendError>;

    /// Hands a delivery back without an outcome: the worker is stopping and interrupted it
    /// (see [`QueueConfig::stop_timeout`](crate::QueueConfig::stop_timeout)). The task waits
    /// again at once, status `new`, for any worker. The default does nothing: the delivery's
    /// lease runs out and the task is taken again then.
    async fn release(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let _ = delivery;
        Ok(())
    }

    /// Hands a delivery back unrun to wait `delay` in its queue, counting one more hand-back in
    /// its record (`hand_backs`): the worker could not run it (it does not know the task: a
    /// rolling deploy, a worker that runs only some routers), and another worker, or this one
    /// later, may. Unlike [`release`](Self::release), the delivery does not count as one that
    /// died with its worker. The default hands it back at once, as `release`.
    async fn defer(&self, delivery: &Delivery, delay: Duration) -> Result<(), BackendError> {
        let _ = delay;
        self.release(delivery).await
    }

    /// Sets a delivery that cannot run aside in the dead letters with `reason` (after too many
    /// [`defer`](Self::defer)s): its record ends `error` with the reason. Resolving the letter
    /// with `requeue` queues the task again, `new`. The default only ends the record `error`.
    async fn bury(&self, delivery: &Delivery, reason: &str) -> Result<(), BackendError> {
        self.finish(delivery, Outcome::Error(reason.to_owned()))
            .await
    }

    /// Whether this broker keeps [task limits](crate::limits) (`rate_limit`, `max_running`)
    /// across every worker of the app: it implements [`admit`](Self::admit) and
    /// [`leave`](Self::leave). A worker on a broker that does not ends a limited task `error`
    /// saying so, rather than run it past its limit.
    fn supports_limits(&self) -> bool {
        false
    }

    /// Decides whether a delivered task of a limited task may start now, in one atomic step
    /// across every worker of the app ([`limits`](crate::limits)):
    ///
    /// - [`Admission::Run`](crate::limits::Admission::Run): it starts; with
    ///   [`max_running`](crate::limits::TaskLimits::max_running) it holds a running slot of its
    ///   task until [`leave`](Self::leave) (or until its lease runs out, when its worker died);
    /// - `Postponed { wait }`: over its rate, the delivery was handed back (status `new`, no
    ///   hand-back counted) to wait for the start time it was given, when it starts without
    ///   taking another;
    /// - `Parked`: every slot is held; the delivery was handed back, parked until a run of the
    ///   task leaves (or [`PARKED_RECHECK`](crate::limits::PARKED_RECHECK) passes);
    /// - `Cancelled`: a cancel was requested while it was held: its record ends `cancel`;
    /// - `Lost`: the delivery's lease ran out; nothing was done.
    ///
    /// The default refuses: the broker keeps no limits.
    async fn admit(
        &self,
        delivery: &Delivery,
        limits: &crate::limits::TaskLimits,
    ) -> Result<crate::limits::Admission, BackendError> {
        let _ = delivery;
        Err(BackendError::new(
            "broker",
            format!(
                "the {} keeps no task limits, and task `{}` has {}",
                self.name(),
                limits.task_name,
                match (limits.rate, limits.max_running) {
                    (Some(rate), _) => format!("`rate_limit = \"{rate}\"`"),
                    (None, Some(max)) => format!("`max_running = {max}`"),
                    (None, None) => "no limits".to_owned(),
                }
            ),
        ))
    }

    /// Gives back the running slot an admitted delivery of a task with `max_running` held, and
    /// wakes one task parked for it. Called once the run's outcome is stored (or the delivery
    /// handed back). The default does nothing.
    async fn leave(
        &self,
        delivery: &Delivery,
        limits: &crate::limits::TaskLimits,
    ) -> Result<(), BackendError> {
        let _ = (delivery, limits);
        Ok(())
    }

    /// Pauses (`true`) or resumes a named queue for every worker of the app: while it is paused
    /// no worker takes its tasks, which wait (and may still be added and cancelled). The default
    /// refuses: the broker cannot pause.
    async fn pause_queue(&self, queue: &str, paused: bool) -> Result<(), BackendError> {
        let _ = paused;
        Err(BackendError::new(
            "broker",
            format!("{} cannot pause queue `{queue}`", self.name()),
        ))
    }

    /// The paused queues. The default: none.
    async fn paused_queues(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    /// Deletes this app's queued tasks.
    async fn flush_all(&self) -> Result<(), BackendError>;

    /// Cancels a task in one atomic step, by its status at that moment: a `new` task becomes
    /// `cancel` (with the reason) and is never handed out; for a taken one the workers are asked
    /// to stop it (as [`request_cancel`](Self::request_cancel)); an ended one is left as it is.
    /// Waiters of a cancelled task are woken.
    ///
    /// `None` (the default) means the broker cannot decide atomically: the app then reads the
    /// record and writes the cancel itself, and a worker may take the task in between.
    async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<Option<CancelState>, BackendError> {
        let _ = (uuid, reason);
        Ok(None)
    }

    /// Tells the workers of the app, wherever they run, to cancel a running task. Brokers whose
    /// workers all live in this process leave it to the app, which knows its own tasks.
    async fn request_cancel(&self, uuid: Uuid, reason: &str) -> Result<(), BackendError> {
        let _ = (uuid, reason);
        Ok(())
    }

    /// Cancel requests sent by [`request_cancel`](Self::request_cancel) from other processes.
    fn cancel_requests(&self) -> Option<tokio::sync::broadcast::Receiver<CancelRequest>> {
        None
    }

    /// Puts the taken, unfinished tasks whose worker is gone (their lease ran out) back in the
    /// queue at once (at start, with `QueueConfig::running_older_tasks`); returns how many.
    /// Live workers keep theirs. Brokers without leases have nothing to put back.
    async fn requeue_taken(&self) -> Result<usize, BackendError> {
        Ok(0)
    }

    /// The queue's live numbers (waiting per priority, running, finished counts, throughput,
    /// the oldest waiting task, dead letters), read from counters the write path keeps: cheap
    /// enough to call every second on any queue length. `None` (the default): this broker
    /// keeps no stats.
    async fn stats(&self) -> Result<Option<QueueStats>, BackendError> {
        Ok(None)
    }

    /// Up to `limit` dead letters (entries that could not run), oldest first. The default: a
    /// broker that sets nothing aside has none.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// Takes one dead letter out of the dead letters: queued again as it was when `requeue`
    /// (for an entry that failed for a reason since fixed), else dropped. `false`: no such
    /// letter (another operator resolved it first).
    async fn resolve_dead_letter(
        &self,
        letter: &DeadLetter,
        requeue: bool,
    ) -> Result<bool, BackendError> {
        let _ = (letter, requeue);
        Ok(false)
    }
}

/// Where an add writes the task instead of the app's broker: an engine's handle on a
/// transaction of the caller's own, so that the task exists exactly when the caller's other
/// writes do (PostgreSQL's `add_in`). The add runs the app's whole pipeline (defaults,
/// validation, plugin triggers) and calls this in place of [`Broker::add`].
///
/// ```
/// use qtasks::backend::{AddTarget, BackendError, async_trait};
/// use qtasks::QueuedTask;
///
/// /// Collects the tasks, to queue them later.
/// #[derive(Default)]
/// struct Outbox(Vec<QueuedTask>);
///
/// #[async_trait]
/// impl AddTarget for Outbox {
///     async fn add(&mut self, task: &QueuedTask) -> Result<(), BackendError> {
///         self.0.push(task.clone());
///         Ok(())
///     }
/// }
///
/// #[qtasks::task]
/// async fn ping() {}
///
/// # #[tokio::main] async fn main() -> qtasks::Result<()> {
/// let app = qtasks::QueueTasks::new();
/// let mut outbox = Outbox::default();
/// let handle = ping::call().add_via(&app, &mut outbox).await?;
/// assert_eq!(outbox.0[0].uuid, handle.uuid());
/// assert!(app.get(handle.uuid()).await?.is_none(), "the app's broker saw nothing");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait AddTarget: Send {
    /// Stores the new task's record (status `new`) and queues it, as [`Broker::add`] does: a
    /// task whose uuid is known adds nothing.
    async fn add(&mut self, task: &QueuedTask) -> Result<(), BackendError>;

    /// As [`Broker::add_unique`]. The default refuses: the target keeps no unique keys.
    async fn add_unique(
        &mut self,
        task: &QueuedTask,
        unique: &crate::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        let _ = (task, unique);
        Err(BackendError::new(
            "broker",
            "this add target keeps no unique keys".to_owned(),
        ))
    }
}

/// Task records and results.
#[async_trait]
pub trait Storage: Lifecycle {
    /// Reads a record.
    async fn get(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError>;

    /// Reads every record of this app.
    async fn get_all(&self) -> Result<Vec<TaskRecord>, BackendError>;

    /// Changes a record.
    async fn update(&self, uuid: Uuid, update: RecordUpdate) -> Result<(), BackendError>;

    /// Resolves with the record once the task has ended; `None` if there is no such task.
    async fn wait_finished(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError>;

    /// Stores the progress a running task reported (`ctx.set_progress`), in its record's
    /// `progress`, with `progress_at` (now) and wakes whoever waits on the record. Like an
    /// item, it is stored only while `delivery` still holds the task (on an engine with leases)
    /// and the task runs: `Ok(false)` otherwise. The default keeps no progress.
    async fn set_progress(
        &self,
        uuid: Uuid,
        delivery: &str,
        progress: serde_json::Value,
    ) -> Result<bool, BackendError> {
        let _ = (uuid, delivery, progress);
        Ok(false)
    }

    /// Resolves with the record once its progress is newer than `after` (its `progress_at`),
    /// or it has ended; `None` if there is no such task. The default reads the record every
    /// [`PROGRESS_INTERVAL`](crate::PROGRESS_INTERVAL).
    async fn wait_progress(
        &self,
        uuid: Uuid,
        after: Option<f64>,
    ) -> Result<Option<TaskRecord>, BackendError> {
        loop {
            match self.get(uuid).await? {
                None => return Ok(None),
                Some(record) if has_progress_news(&record, after) => {
                    return Ok(Some(record));
                }
                Some(_) => tokio::time::sleep(crate::progress::PROGRESS_INTERVAL).await,
            }
        }
    }

    /// Appends one item of a running stream task to the items read live (and wakes whoever
    /// reads them), for the run of the delivery with this receipt ([`Delivery::receipt`]) only:
    /// an engine that can tell refuses the item of a run that lost its task (it returns
    /// `Ok(false)`), and a new delivery's items replace an earlier one's. The default keeps
    /// nothing until the task ends.
    async fn append_item(
        &self,
        uuid: Uuid,
        delivery: &str,
        item: serde_json::Value,
    ) -> Result<bool, BackendError> {
        let _ = (uuid, delivery, item);
        Ok(false)
    }

    /// Waits until a stream task has more than `seen` items, or has ended; returns the items
    /// after the first `seen` and whether the task has ended. The default waits for the end.
    async fn wait_items(&self, uuid: Uuid, seen: usize) -> Result<ItemsRead, BackendError> {
        let record = self.wait_finished(uuid).await?;
        let items = match record.and_then(|r| r.returning) {
            Some(serde_json::Value::Array(items)) => items.into_iter().skip(seen).collect(),
            _ => Vec::new(),
        };
        Ok(ItemsRead { items, ended: true })
    }

    /// Deletes the records of finished tasks; returns how many.
    async fn delete_finished(&self) -> Result<usize, BackendError>;

    /// Whether a [`list`](Self::list) page filtered by status costs a bounded amount of work
    /// however many records the store holds (an index read within a time budget): the worker's
    /// start-up look at the waiting tasks runs only then, so that it never scans a large
    /// store. The default: `false`.
    fn lists_cheaply(&self) -> bool {
        false
    }

    /// One page of records, newest first ([`RecordQuery`](crate::records::RecordQuery) says
    /// which). The default reads every record and filters them here: right for a small
    /// store; a storage that keeps an index by time (Redis) answers from it instead.
    async fn list(
        &self,
        query: &crate::records::RecordQuery,
    ) -> Result<crate::records::RecordPage, BackendError> {
        Ok(query.page_of(self.get_all().await?))
    }

    /// Deletes one record; returns whether there was one. The app calls it for finished
    /// tasks only (a waiting task's queue entry would be left without its record). The
    /// default refuses.
    async fn delete(&self, uuid: Uuid) -> Result<bool, BackendError> {
        Err(BackendError::new(
            "storage",
            format!("deleting task {uuid}: this storage cannot delete one record"),
        ))
    }

    /// Deletes every record of this app.
    async fn flush_all(&self) -> Result<(), BackendError>;
}

/// A [`Storage`] that another engine's broker can keep its records in: a broker that keeps
/// only the queue (RabbitMQ) writes every step of a task's life through these conditional
/// writes. A storage whose records are written by its own broker's scripts does not implement
/// it, and the compiler refuses the pairing.
#[async_trait]
pub trait RecordStore: Storage {
    /// Writes the record of a task just added (status `new`). A record that exists already is
    /// left as it is, so a publish sent twice cannot reset a running task: `Ok(true)` when
    /// written, `Ok(false)` when the uuid was known (the broker then queues nothing).
    async fn insert(&self, task: &QueuedTask) -> Result<bool, BackendError>;

    /// Changes a record in one atomic step, only while its status is one of `from`, and says
    /// what it found: the step that makes a take, a cancel and a finish race-free when the
    /// queue lives elsewhere. It keeps the counters [`stats`](Self::stats) reads and wakes
    /// waiters when the task ends.
    async fn transition(
        &self,
        uuid: Uuid,
        from: &[crate::TaskStatus],
        change: RecordChange,
    ) -> Result<Transition, BackendError>;

    /// [`insert`](Self::insert) of a unique task (see [`Broker::add_unique`]): `Ok(Some(id))`
    /// when the key's holder still holds it (nothing written), `Ok(None)` when `task` was
    /// written and took the key. The default refuses.
    async fn insert_unique(
        &self,
        task: &QueuedTask,
        unique: &crate::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        let _ = (task, unique);
        Err(BackendError::new(
            "storage",
            format!("{} keeps no unique keys", self.name()),
        ))
    }

    /// The numbers of the tasks written by [`insert`](Self::insert) and
    /// [`transition`](Self::transition): waiting per priority, running, finished, the oldest
    /// waiting task. The broker answers its own [`Broker::stats`] with these.
    async fn stats(&self) -> Result<QueueStats, BackendError>;
}

/// An engine whose [`RecordStore`] (and global config) another engine's broker can use: what
/// `qtasks::rabbitmq::RabbitMq::new(url, Redis::new(..))` takes, so a storage that cannot pair
/// is refused at compile time.
#[async_trait]
pub trait RecordStoreConnector: Send + Sync + 'static {
    /// Connects the record store and the global config for the app's config.
    async fn connect_records(
        &self,
        config: &QueueConfig,
    ) -> Result<(Arc<dyn RecordStore>, Arc<dyn GlobalConfig>), BackendError>;
}

/// A shared record-store connector connects as the one inside (what
/// [`EngineUrl::record_store`] hands out).
#[async_trait]
impl<T: RecordStoreConnector + ?Sized> RecordStoreConnector for Arc<T> {
    async fn connect_records(
        &self,
        config: &QueueConfig,
    ) -> Result<(Arc<dyn RecordStore>, Arc<dyn GlobalConfig>), BackendError> {
        (**self).connect_records(config).await
    }
}

/// What a progress wait waits for: the record ended, or its progress is newer than `after`.
pub fn has_progress_news(record: &TaskRecord, after: Option<f64>) -> bool {
    record.status.is_final() || progress_is_newer(record, after)
}

/// Whether a record's progress was written after `after` (any progress, when `after` is none).
pub fn progress_is_newer(record: &TaskRecord, after: Option<f64>) -> bool {
    match (record.progress_at, after) {
        (Some(at), Some(after)) => at > after,
        (Some(_), None) => true,
        (None, _) => false,
    }
}
