//! Both attributes in a crate that denies the usual lints: the generated code stays clean.
#![deny(missing_docs, unreachable_pub, unused_qualifications, unused_imports, dead_code)]
#![deny(clippy::all)]

use qtasks::triggers::{TaskExecutorRunTaskTriggerError, WorkerStart};
use qtasks::{TaskContext, TaskResult};

/// Private to this crate.
struct Summary {
    total: u64,
}

impl serde::Serialize for Summary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.total)
    }
}

/// A public task returning a private type.
#[qtasks::task]
pub async fn summarize() -> Summary {
    Summary { total: 1 }
}

/// A documented task.
#[qtasks::task(name = "sum", priority = -1, tags = ["math"], description = "Adds")]
pub async fn sum(a: i64, b: i64) -> i64 {
    a + b
}

/// A blocking task with the context.
#[qtasks::task(echo)]
pub fn blocking(ctx: TaskContext, items: Vec<String>) -> TaskResult<usize> {
    if items.is_empty() {
        return Err(ctx.cancel("nothing to do"));
    }
    Ok(items.len())
}

#[qtasks::task]
async fn private_task(flag: Option<bool>) -> Result<bool, String> {
    flag.ok_or_else(|| "missing".to_owned())
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn recover(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<serde_json::Value> {
    event.error.message().map(Into::into)
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
async fn recover_async(_event: &TaskExecutorRunTaskTriggerError<'_>) -> Result<Option<serde_json::Value>, String> {
    Ok(None)
}

#[qtasks::plugin(on = "worker_start")]
fn observe(_event: &WorkerStart<'_>) {}

/// A private task with a private result type, recovered by typed handlers.
#[qtasks::task(echo)]
async fn private_typed(ctx: TaskContext) -> TaskResult<Receipt> {
    Err(ctx.plugin_error().into())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Receipt {
    id: u64,
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = private_typed)]
fn recover_typed(_event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Receipt> {
    Some(Receipt { id: 1 })
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = sum)]
async fn recover_sum(_event: &TaskExecutorRunTaskTriggerError<'_>) -> Result<Option<i64>, String> {
    Ok(Some(0))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = crate::sum)]
fn observe_sum(_event: &TaskExecutorRunTaskTriggerError<'_>) {}

fn main() {
    let _ = (sum::NAME, blocking::NAME, private_task::NAME, sum::DEFINITION, private_typed::NAME);
    let _ = private_task::add_task;
}

/// Every execution option at once, in a crate that denies the usual lints.
pub mod options {
    use qtasks::{Depends, Middleware, Outcome, State};
    use qtasks::plugin::BoxFuture;
    use qtasks::components::{TaskRunner, TaskExecutor};
    use serde_json::Value;

    /// A middleware.
    pub struct Noop;
    impl Middleware for Noop {}
    /// The middleware static.
    pub static NOOP: Noop = Noop;

    /// An executor.
    pub struct Plain;
    impl TaskRunner for Plain {
        fn execute<'a>(&'a self, run: &'a TaskExecutor) -> BoxFuture<'a, Outcome> {
            Box::pin(run.run_default())
        }
    }
    /// The executor static.
    pub static PLAIN: Plain = Plain;

    /// A decode.
    pub fn keep(value: Value) -> Value {
        value
    }

    /// A settings type.
    pub struct Settings;

    /// All the options.
    #[qtasks::task(
        retry = 3,
        retry_on_exc = [std::io::Error, qtasks::TimeoutError],
        retry_delay = 0.5,
        retry_backoff = "exponential",
        max_time = 10,
        decode = keep,
        generate_handler = keep,
        middlewares_before = [NOOP],
        middlewares_after = [NOOP],
        router = "billing",
        executor = PLAIN
    )]
    pub async fn everything(settings: State<Settings>, items: Vec<u32>, db: Depends<String>) -> usize {
        let _ = (&*settings, db.len());
        items.len()
    }

    /// Times written with units.
    #[qtasks::task(
        retry = 2,
        retry_delay = "250ms",
        retry_backoff = "exponential",
        retry_backoff_max = "1h30m",
        retry_jitter = 0.25,
        timeout = "2m"
    )]
    pub async fn with_units(ctx_free: u32) -> u32 {
        ctx_free
    }
}
