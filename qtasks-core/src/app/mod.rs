//! The app: `QueueTasks`, the object users add tasks to and run workers from.
//!
//! Its methods are grouped by concern, one module each; what is not about one task comes as a
//! facet, a small handle borrowed from the app (`app.records()`, `app.schedules()`, ...):
//! - [`tasks`]: adding tasks and reading them back (`add_task`, `get`, `wait`, `flush_all`);
//! - [`cancel`]: cancelling a task, and the bookkeeping of this process's cancellable tasks;
//! - [`running`]: starting and stopping the app and its worker (`start`, `stop`,
//!   `run_forever`), `ping` and `inspect`; the run state and this worker's counters;
//! - [`observe`]: live stats, `workers()`, `counters()` and `dead_letters()`;
//! - [`records`]: `records()`, the stored records (list, delete, retry by hand);
//! - [`schedules`]: `schedules()`, periodic tasks;
//! - [`config`]: the app's [`QueueConfig`] and `global_config()`, the shared entries;
//! - [`plugins`]: runtime plugins, the dispatch table and events;
//! - [`dependencies`]: what `Depends<T>` and `State<T>` task parameters receive.
//!
//! The state behind them is split the same way (each part owned by its module), and only
//! `app/` sees it: the rest of the crate goes through the `pub(crate)` accessors below.

mod cancel;
mod config;
mod dependencies;
mod observe;
mod plugins;
mod records;
mod running;
mod schedules;
mod tasks;

use parking_lot::RwLock;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(crate) use self::cancel::Cancels;
pub use self::config::GlobalEntries;
pub use self::observe::{DeadLetters, NamedQueues, WorkerCounters, Workers};
pub use self::records::Records;
pub(crate) use self::running::{Counters, INTERRUPTED, Running};
pub use self::schedules::Schedules;
pub use self::tasks::AddOptions;
pub(crate) use self::tasks::Prepared;
use crate::backend::{Broker, Storage};
use crate::components::{GlobalConfig, Starter, TaskRunner, Worker};
use crate::deps::Dependencies;
use crate::dispatch::{Dispatch, RuntimePlugin};
use crate::events::Events;
use crate::{AppBuilder, Middleware, QueueConfig, TaskDefinition};

/// The app: adds tasks, reads their results, runs a worker and holds plugins.
///
/// Cheap to clone; clones share everything. [`QueueTasks::new`] uses the in-memory backend,
/// so it needs no server; [`QueueTasks::builder`] replaces any part.
///
/// A process can be a client (only `add_task`/`get`), a worker (`run_forever`), or both (an
/// embedded worker started with `start`, as tests and examples do).
#[derive(Clone)]
pub struct QueueTasks {
    // Private to `app/`: the rest of the crate reaches the app's state through the accessors
    // below, each part owned by the module of `app/` that keeps it.
    inner: Arc<Inner>,
}

/// Everything an app holds, by owner.
struct Inner {
    components: Components,
    config: config::ConfigState,
    plugins: plugins::PluginState,
    run: running::RunState,
    cancels: Cancels,
    schedules: schedules::ScheduleState,
    dependencies: Dependencies,
    /// The routers whose tasks this app runs; `None` runs every task.
    /// (Replaceable until the worker starts: the command line's `worker --routers`.)
    routers: RwLock<Option<Arc<[String]>>>,
    /// Carries traces from the enqueuing code to the task's span, once installed.
    trace_context: std::sync::OnceLock<Arc<dyn crate::trace::TraceContext>>,
}

/// The components an app was built from (see [`AppBuilder`]), as the worker, the starter and
/// the task paths use them.
pub(crate) struct Components {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) global_config: Arc<dyn GlobalConfig>,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) starter: Arc<dyn Starter>,
    pub(crate) runner: Arc<dyn TaskRunner>,
    pub(crate) middlewares: Vec<Arc<dyn Middleware>>,
}

/// The parts an app is built from (see [`AppBuilder`]).
pub(crate) struct Parts {
    pub(crate) config: QueueConfig,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) global_config: Arc<dyn GlobalConfig>,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) starter: Arc<dyn Starter>,
    pub(crate) runner: Arc<dyn TaskRunner>,
    pub(crate) middlewares: Vec<Arc<dyn Middleware>>,
    pub(crate) routers: Option<Vec<String>>,
}

impl Default for QueueTasks {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueTasks {
    /// An app with the default config on the in-memory backend.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// An app with this config on the in-memory backend.
    pub fn with_config(config: QueueConfig) -> Self {
        Self::builder().config(config).build()
    }

    /// An app with the default config on the backend at `url`, by the engine compiled in for
    /// its scheme: `memory://`, and with the `qtasks` features `redis://`, `rediss://`,
    /// `amqp://` (whose records need a second URL: see
    /// [`AppBuilder::connect_engine_url`]), or an engine of your own
    /// ([`UrlEngine`](crate::backend::UrlEngine)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::connect("memory://").await?;
    /// let error = qtasks::QueueTasks::connect("mysql://db/app").await.err().unwrap();
    /// assert!(error.to_string().contains("no engine for `mysql://`"), "{error}");
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> crate::Result<Self> {
        Ok(Self::builder().connect_url(url).await?.build())
    }

    /// A builder to replace the app's parts: backend, global config, worker, starter,
    /// executor.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    pub(crate) fn from_parts(parts: Parts) -> Self {
        QueueTasks {
            inner: Arc::new(Inner {
                components: Components {
                    broker: parts.broker,
                    storage: parts.storage,
                    global_config: parts.global_config,
                    worker: parts.worker,
                    starter: parts.starter,
                    runner: parts.runner,
                    middlewares: parts.middlewares,
                },
                config: config::ConfigState::new(parts.config),
                plugins: plugins::PluginState::default(),
                run: running::RunState::default(),
                cancels: Cancels::default(),
                schedules: schedules::ScheduleState::default(),
                dependencies: Dependencies::default(),
                routers: RwLock::new(parts.routers.map(Into::into)),
                trace_context: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The app's broker as the engine type `T`, when it is one (and says so through
    /// [`Broker::as_any`](crate::backend::Broker::as_any)): what an engine crate's extensions
    /// use to reach their own broker behind an app.
    pub fn broker_as<T: 'static>(&self) -> Option<&T> {
        self.components().broker.as_any()?.downcast_ref::<T>()
    }

    /// The partition of its broker that the task `uuid` lives in: 0, unless the broker spreads
    /// the app over several (Redis's `partitions`). Priority order, and first in first out
    /// among equals, hold among the tasks of one partition; between two partitions a worker
    /// serves whichever one's turn it is.
    ///
    /// ```
    /// let app = qtasks::QueueTasks::new();
    /// assert_eq!(app.partition_of(qtasks::Uuid::new_v4()), 0);
    /// ```
    pub fn partition_of(&self, uuid: uuid::Uuid) -> usize {
        self.components().broker.partition_of(uuid)
    }

    /// Whether the app's broker takes lower priority numbers first (every engine but Kafka,
    /// whose partitions keep the order tasks were added in).
    ///
    /// ```
    /// assert!(qtasks::QueueTasks::new().keeps_priorities());
    /// ```
    pub fn keeps_priorities(&self) -> bool {
        self.components().broker.keeps_priorities()
    }

    /// The components the app was built from.
    pub(crate) fn components(&self) -> &Components {
        &self.inner.components
    }

    /// This process's cancellable runs.
    pub(crate) fn cancels(&self) -> &Cancels {
        &self.inner.cancels
    }

    /// Whether the app runs, its stop and this worker's counters.
    pub(crate) fn run_state(&self) -> &running::RunState {
        &self.inner.run
    }

    /// The app's event callbacks.
    pub(crate) fn events(&self) -> &Events {
        &self.inner.plugins.events
    }

    /// What `Depends<T>` and `State<T>` parameters receive.
    pub(crate) fn dependencies(&self) -> &Dependencies {
        &self.inner.dependencies
    }

    /// How traces travel with tasks, once installed.
    pub(crate) fn trace_context(&self) -> Option<&Arc<dyn crate::trace::TraceContext>> {
        self.inner.trace_context.get()
    }

    pub(crate) fn dispatch(&self) -> Arc<Dispatch> {
        Arc::clone(&self.inner.plugins.dispatch.read())
    }

    pub(crate) fn middlewares(&self) -> &[Arc<dyn Middleware>] {
        &self.inner.components.middlewares
    }

    /// Whether this app runs `definition` (all tasks, or those of its routers).
    pub(crate) fn runs(&self, definition: &TaskDefinition) -> bool {
        match &*self.inner.routers.read() {
            None => true,
            Some(routers) => definition
                .parts
                .router
                .is_some_and(|router| routers.iter().any(|r| r == router)),
        }
    }

    /// Runs only the tasks of these routers from now on (as
    /// [`AppBuilder::routers`](crate::AppBuilder::routers)); for a worker whose routers are
    /// chosen at start, such as the command line's `worker --routers`.
    pub fn set_routers<I, S>(&self, routers: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let routers: Vec<String> = routers.into_iter().map(Into::into).collect();
        *self.inner.routers.write() = Some(routers.into());
    }

    /// Installs how traces travel with tasks (see [`trace`](crate::trace)): tasks added from
    /// now on record the current trace, and this app's worker continues it in each task's
    /// span. One per app; `false` if one was installed already.
    pub fn set_trace_context(&self, context: Arc<dyn crate::trace::TraceContext>) -> bool {
        self.inner.trace_context.set(context).is_ok()
    }

    pub(crate) fn runtime_plugins(&self) -> Vec<RuntimePlugin> {
        self.inner.plugins.plugins.lock().clone()
    }
}

impl fmt::Debug for QueueTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueTasks")
            .field("name", &self.name())
            .field("running", &self.inner.run.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
