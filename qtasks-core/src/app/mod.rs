//! The app: `QueueTasks`, the object users add tasks to and run workers from.
//!
//! Its methods are grouped by concern, one module each:
//! - [`tasks`]: adding tasks and reading them back (`add_task`, `get`, `wait`, `flush_all`);
//! - [`cancel`]: cancelling a task, and the bookkeeping of this process's cancellable tasks;
//! - [`running`]: starting and stopping the app and its worker (`start`, `stop`,
//!   `run_forever`), `ping` and `inspect`;
//! - [`observe`]: live stats, this process's worker counters and dead letters;
//! - [`schedules`]: periodic tasks;
//! - [`config`]: the app's [`QueueConfig`] and the shared global config entries;
//! - [`plugins`]: runtime plugins and events;
//! - [`dependencies`]: what `Depends<T>` and `State<T>` task parameters receive.

mod cancel;
mod config;
mod dependencies;
mod observe;
mod plugins;
mod records;
mod running;
mod schedules;
mod tasks;

use parking_lot::{Mutex, RwLock};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) use self::cancel::Cancels;
pub use self::config::GlobalEntries;
pub(crate) use self::running::INTERRUPTED;
pub use self::tasks::AddOptions;
use crate::backend::{Broker, Storage};
use crate::components::{Executor, GlobalConfig, Starter, Worker};
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
    pub(crate) inner: Arc<Inner>,
}

type ConfigSubscriber = Arc<dyn Fn(&QueueConfig, &str, &Value) + Send + Sync>;

pub(crate) struct Inner {
    config: RwLock<Arc<QueueConfig>>,
    config_subscribers: Mutex<Vec<ConfigSubscriber>>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) global_config: Arc<dyn GlobalConfig>,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) starter: Arc<dyn Starter>,
    pub(crate) executor: Arc<dyn Executor>,
    plugins: Mutex<Vec<RuntimePlugin>>,
    dispatch: RwLock<Arc<Dispatch>>,
    pub(crate) events: Events,
    pub(crate) middlewares: Vec<Arc<dyn Middleware>>,
    /// The routers whose tasks this app runs; `None` runs every task.
    /// (Replaceable until the worker starts: the command line's `worker --routers`.)
    pub(crate) routers: RwLock<Option<Arc<[String]>>>,
    pub(crate) dependencies: Dependencies,
    pub(crate) cancels: Cancels,
    pub(crate) running: AtomicBool,
    pub(crate) counters: Counters,
    /// Set while a stop interrupts the running tasks (its timeout passed, a second signal, or
    /// `stop_now`): the interrupted deliveries are handed back, not finished.
    pub(crate) interrupting: AtomicBool,
    /// Wakes a stop that waits for running tasks, to interrupt them now.
    pub(crate) interrupt: tokio::sync::Notify,
    pub(crate) lifecycle: tokio::sync::Mutex<Option<Running>>,
    /// Carries traces from the enqueuing code to the task's span, once installed.
    pub(crate) trace_context: std::sync::OnceLock<Arc<dyn crate::trace::TraceContext>>,
    /// The schedules registered with `schedule`.
    pub(crate) schedules: Mutex<Vec<Arc<crate::schedule::runner::Entry>>>,
    /// The clock schedules read.
    pub(crate) clock: std::sync::OnceLock<Arc<dyn crate::schedule::Clock>>,
}

/// What this process's worker counts as it goes.
#[derive(Default)]
pub(crate) struct Counters {
    /// Outcomes the broker refused: the worker had stalled past its lease.
    pub(crate) refused_outcomes: std::sync::atomic::AtomicU64,
    /// Tasks run to an outcome (stored or not).
    pub(crate) processed: std::sync::atomic::AtomicU64,
    /// Tasks running now.
    pub(crate) running: std::sync::atomic::AtomicU64,
    /// Tasks interrupted by a stop and handed back to the queue.
    pub(crate) handed_back: std::sync::atomic::AtomicU64,
}

/// What a started app holds until it stops.
pub(crate) struct Running {
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) worker: JoinHandle<()>,
    pub(crate) heartbeat: JoinHandle<()>,
    pub(crate) plugins: Vec<RuntimePlugin>,
    /// The id this worker is listed under (see `stats`).
    pub(crate) worker_id: String,
    /// The schedules this worker runs, until it stops.
    pub(crate) scheduler: JoinHandle<()>,
}

/// The parts an app is built from (see [`AppBuilder`]).
pub(crate) struct Parts {
    pub(crate) config: QueueConfig,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) global_config: Arc<dyn GlobalConfig>,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) starter: Arc<dyn Starter>,
    pub(crate) executor: Arc<dyn Executor>,
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

    /// A builder to replace the app's parts: backend, global config, worker, starter,
    /// executor.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    pub(crate) fn from_parts(parts: Parts) -> Self {
        QueueTasks {
            inner: Arc::new(Inner {
                config: RwLock::new(Arc::new(parts.config)),
                config_subscribers: Mutex::default(),
                broker: parts.broker,
                storage: parts.storage,
                global_config: parts.global_config,
                worker: parts.worker,
                starter: parts.starter,
                executor: parts.executor,
                plugins: Mutex::default(),
                dispatch: RwLock::new(Arc::new(Dispatch::build(&[]))),
                events: Events::default(),
                middlewares: parts.middlewares,
                routers: RwLock::new(parts.routers.map(Into::into)),
                dependencies: Dependencies::default(),
                cancels: Cancels::default(),
                running: AtomicBool::new(false),
                counters: Counters::default(),
                interrupting: AtomicBool::new(false),
                interrupt: tokio::sync::Notify::new(),
                lifecycle: tokio::sync::Mutex::new(None),
                trace_context: std::sync::OnceLock::new(),
                schedules: Mutex::default(),
                clock: std::sync::OnceLock::new(),
            }),
        }
    }

    pub(crate) fn dispatch(&self) -> Arc<Dispatch> {
        Arc::clone(&self.inner.dispatch.read())
    }

    pub(crate) fn middlewares(&self) -> &[Arc<dyn Middleware>] {
        &self.inner.middlewares
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
        self.inner.plugins.lock().clone()
    }
}

impl fmt::Debug for QueueTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueTasks")
            .field("name", &self.name())
            .field("running", &self.inner.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
