//! The replaceable parts of an app besides the backends: the global config, the worker, the
//! starter and the executor (the broker and storage traits are in `backend`).
//!
//! Each trait has the default the app uses: [`MemoryGlobalConfig`] (or Redis's),
//! [`ConcurrentWorker`], [`DefaultStarter`] and [`DefaultRunner`]. A replacement only does
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

pub use crate::app::GlobalEntries;
pub use crate::executor::TaskExecutor;

use crate::Result;
use crate::backend::{BackendError, Broker, Lifecycle, Storage, async_trait};
use crate::plugin::BoxFuture;
use crate::stats::WorkerInfo;
use crate::task::Outcome;

/// Shared settings and the worker heartbeat (the original's `GlobalConfig`).
///
/// Entries are `name → key → value` strings. The heartbeat tells clients that a worker of the
/// app runs ([`QueueTasks::ping`](crate::QueueTasks::ping)).
#[async_trait]
pub trait GlobalConfig: Lifecycle {
    /// Writes an entry.
    async fn set(&self, name: &str, key: &str, value: &str) -> Result<(), BackendError>;
    /// Reads an entry.
    async fn get(&self, name: &str, key: &str) -> Result<Option<String>, BackendError>;
    /// Reads every entry of `name`.
    async fn get_all(&self, name: &str) -> Result<BTreeMap<String, String>, BackendError>;
    /// Reads the entries whose `name:key` matches a glob `pattern` (`*` any run, `?` one
    /// character), keyed by `name:key`.
    async fn get_match(&self, pattern: &str) -> Result<BTreeMap<String, String>, BackendError>;
    /// Sets the heartbeat, which expires after `ttl` unless set again.
    async fn set_status(&self, ttl: Duration) -> Result<(), BackendError>;
    /// Clears the heartbeat (the app stopped).
    async fn clear_status(&self) -> Result<(), BackendError>;
    /// Whether the heartbeat is set: a worker of the app runs.
    async fn status(&self) -> Result<bool, BackendError>;

    /// Records this worker in the workers list, until `ttl` passes without another call. The
    /// default keeps no list.
    async fn set_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<(), BackendError> {
        let _ = (info, ttl);
        Ok(())
    }

    /// Claims `key` for `ttl`, atomically across every process of the app: `true` for the one
    /// caller that got it (a schedule's slot fires once however many workers run it). No
    /// default: an answer that is not atomic across processes would fire slots twice.
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BackendError>;

    /// Takes a stopped worker out of the workers list. The default keeps no list.
    async fn remove_worker(&self, id: &str) -> Result<(), BackendError> {
        let _ = id;
        Ok(())
    }

    /// The live workers (their last heartbeat within its ttl). The default keeps no list.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        Ok(Vec::new())
    }

    /// Writes fields of the state of [workflow](crate::workflow) `id` in one step, and keeps
    /// the whole state `ttl` from now. With `only_if_absent`, writes nothing when the first
    /// field is there already, and answers whether it wrote (a workflow ends once). The
    /// default refuses: the global config keeps no workflows.
    async fn workflow_write(
        &self,
        id: &str,
        fields: &[(&str, &str)],
        only_if_absent: bool,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let _ = (id, fields, only_if_absent, ttl);
        Err(keeps_no_workflows(self.name()))
    }

    /// Reads fields of the state of workflow `id`: `None` for a field not written, and for
    /// every field once the state expired. The default refuses.
    async fn workflow_read(
        &self,
        id: &str,
        fields: &[&str],
    ) -> Result<Vec<Option<String>>, BackendError> {
        let _ = (id, fields);
        Err(keeps_no_workflows(self.name()))
    }

    /// Adds `member` to the set `join` of workflow `id` (kept with the state, at least `ttl`)
    /// and answers how many members it holds: a count that adding a member twice does not change, so a
    /// group's members that end twice (a run repeated after its worker died) count once. The
    /// default refuses.
    async fn workflow_join(
        &self,
        id: &str,
        join: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<u64, BackendError> {
        let _ = (id, join, member, ttl);
        Err(keeps_no_workflows(self.name()))
    }

    /// Lists workflow `id` among the running ones (`true`) or takes it out: a worker that
    /// starts resumes the running ones (a step whose worker died before it added the next).
    /// The default keeps no list.
    async fn workflow_running(&self, id: &str, running: bool) -> Result<(), BackendError> {
        let _ = (id, running);
        Ok(())
    }

    /// The running workflows' ids. The default keeps no list.
    async fn workflows_running(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }
}

/// The refusal of a global config that keeps no workflows (the trait's defaults); the app
/// recognises it to keep groups the older way.
pub(crate) fn keeps_no_workflows(name: &str) -> BackendError {
    BackendError::new("global config", format!("the {name} {NO_WORKFLOWS}"))
}

/// What [`keeps_no_workflows`] says.
pub(crate) const NO_WORKFLOWS: &str = "keeps no workflows";

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

/// How a task's executor is run: the original's `TaskExecutor` component, whose steps a
/// custom one overrides. Each run of a task is a [`TaskExecutor`] (the object plugins receive
/// as `executor`); a runner decides what to do with it, usually the default steps wrapped.
/// The default is [`DefaultRunner`]; a task picks another with
/// `#[qtasks::task(executor = MY_RUNNER)]` (a `static`; the option keeps the original's name),
/// an app with [`AppBuilder::runner`](crate::AppBuilder::runner).
///
/// A custom runner usually wraps the default steps:
///
/// ```
/// use qtasks::Outcome;
/// use qtasks::plugin::BoxFuture;
/// use qtasks::components::{TaskRunner, TaskExecutor};
///
/// struct Timed;
///
/// impl TaskRunner for Timed {
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
    message = "`{Self}` is not a task runner",
    label = "`executor = ..` takes a `static` whose type implements `qtasks::components::TaskRunner`",
    note = "implement `qtasks::components::TaskRunner` for the type, or remove the option to use the app's runner"
)]
pub trait TaskRunner: Send + Sync + 'static {
    /// The name shown by `inspect`; the type name by default.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
    /// Runs the task to its outcome.
    fn execute<'a>(&'a self, run: &'a TaskExecutor) -> BoxFuture<'a, Outcome>;
}

/// The original's steps, firing every `task_executor_*` trigger (see [`TaskExecutor`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultRunner;

impl TaskRunner for DefaultRunner {
    fn name(&self) -> &str {
        "DefaultRunner"
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

debug_by_name!(Broker, Storage, GlobalConfig, Worker, Starter, TaskRunner);
