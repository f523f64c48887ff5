//! The replaceable parts of an app besides the backends: the global config, the worker, the
//! starter and the executor (the broker and storage traits are in `backend`).
//!
//! Each trait has the default the app uses: [`MemoryGlobalConfig`] (or Redis's),
//! [`ConcurrentWorker`], [`DefaultStarter`] and [`DefaultExecutor`]. A replacement only does
//! its own job: the framework fires the plugin triggers and events around it, so a custom
//! component gets them for free.

mod global_config;
mod starter;
mod worker;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use global_config::MemoryGlobalConfig;
pub use starter::{DefaultStarter, StartSteps, StopSteps};
pub use worker::{ConcurrentWorker, WorkerHost};

pub use crate::executor::TaskExecutor;

use crate::Result;
use crate::backend::{BackendError, Broker, Storage};
use crate::plugin::BoxFuture;
use crate::stats::WorkerInfo;
use crate::task::Outcome;

/// Shared settings and the worker heartbeat (the original's `GlobalConfig`).
///
/// Entries are `name → key → value` strings. The heartbeat tells clients that a worker of the
/// app runs ([`QueueTasks::ping`](crate::QueueTasks::ping)).
pub trait GlobalConfig: Send + Sync + 'static {
    /// The name shown by `inspect`; the type name by default.
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
    /// Writes an entry.
    fn set<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>>;
    /// Reads an entry.
    fn get<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>>;
    /// Reads all entries of a name.
    fn get_all<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, BackendError>>;
    /// Reads the entries of every name matching a glob pattern (`*`, `?`), keyed `name:key`.
    fn get_match<'a>(
        &'a self,
        pattern: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, BackendError>>;
    /// Writes the worker heartbeat, alive for `ttl`.
    fn set_status(&self, ttl: Duration) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Removes the worker heartbeat.
    fn clear_status(&self) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Whether a worker heartbeat is alive.
    fn status(&self) -> BoxFuture<'_, Result<bool, BackendError>>;

    /// Writes this worker's description (refreshed with every heartbeat), alive for `ttl`
    /// unless written again. The default keeps nothing: the worker is then not listed.
    fn set_worker<'a>(
        &'a self,
        info: &'a WorkerInfo,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let _ = (info, ttl);
        Box::pin(async { Ok(()) })
    }

    /// Claims `key` for `ttl` in one atomic step: `true` for the first claimer only (until the
    /// claim expires). Schedules claim each slot this way, so a slot fires once however many
    /// workers run it. The default always says `true`: fine for one process, wrong for
    /// several sharing a backend (every one would fire every slot).
    fn claim<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let _ = (key, ttl);
        Box::pin(async { Ok(true) })
    }

    /// Removes a stopped worker's description.
    fn remove_worker<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        let _ = id;
        Box::pin(async { Ok(()) })
    }

    /// The workers whose description is alive, oldest first.
    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerInfo>, BackendError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Takes tasks and runs them. The default is [`ConcurrentWorker`].
///
/// The worker only decides *when* to take and run tasks; [`WorkerHost::next`] and
/// [`WorkerHost::execute`] do the taking, running, storing and all the triggers and events.
pub trait Worker: Send + Sync + 'static {
    /// The name shown by `inspect` and in payloads; the type name by default.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
    /// Runs until [`WorkerHost::next`] returns `None` (the app is stopping), then returns once
    /// the tasks it started have finished.
    fn run(&self, host: WorkerHost) -> BoxFuture<'_, ()>;
}

/// Starts and stops the app's parts. The default is [`DefaultStarter`].
///
/// The steps are given: a starter can add work around them (open a health endpoint, say) but
/// the framework's own sequence runs through [`StartSteps::run`] and [`StopSteps::run`].
pub trait Starter: Send + Sync + 'static {
    /// The name shown by `inspect` and in payloads; the type name by default.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
    /// Starts the app: by default, `steps.run()`.
    fn start<'a>(&'a self, steps: StartSteps<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(steps.run())
    }
    /// Stops the app: by default, `steps.run()`.
    fn stop<'a>(&'a self, steps: StopSteps<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(steps.run())
    }
}

/// Runs one task. The default is [`DefaultExecutor`]; a task picks another with
/// `#[qtasks::task(executor = MY_EXECUTOR)]` (a `static`), an app with
/// [`AppBuilder::executor`](crate::AppBuilder::executor).
///
/// A custom executor usually wraps the default steps:
///
/// ```
/// use qtasks::{BoxFuture, Outcome};
/// use qtasks::components::{Executor, TaskExecutor};
///
/// struct Timed;
///
/// impl Executor for Timed {
///     fn execute<'a>(&'a self, run: &'a TaskExecutor) -> BoxFuture<'a, Outcome> {
///         Box::pin(async move {
///             let started = std::time::Instant::now();
///             let outcome = run.run_default().await;
///             tracing::info!(task = run.task().name(), elapsed = ?started.elapsed(), "ran");
///             outcome
///         })
///     }
/// }
///
/// static TIMED: Timed = Timed;
///
/// #[qtasks::task(executor = TIMED)]
/// async fn measured() -> u32 {
///     7
/// }
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task executor",
    label = "`executor = ..` takes a `static` whose type implements `qtasks::components::Executor`",
    note = "implement `qtasks::components::Executor` for the type, or remove the option to use the app's executor"
)]
pub trait Executor: Send + Sync + 'static {
    /// The name shown by `inspect`; the type name by default.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
    /// Runs the task to its outcome.
    fn execute<'a>(&'a self, run: &'a TaskExecutor) -> BoxFuture<'a, Outcome>;
}

/// The original's steps, firing every `task_executor_*` trigger (see [`TaskExecutor`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultExecutor;

impl Executor for DefaultExecutor {
    fn name(&self) -> &str {
        "DefaultExecutor"
    }

    fn execute<'a>(&'a self, run: &'a TaskExecutor) -> BoxFuture<'a, Outcome> {
        Box::pin(run.run_default())
    }
}

macro_rules! debug_by_name {
    ($($component:ident),*) => {$(
        impl fmt::Debug for dyn $component {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($component), self.name())
            }
        }
    )*};
}

debug_by_name!(Broker, Storage, GlobalConfig, Worker, Starter, Executor);
