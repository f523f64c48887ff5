//! Both attributes in a crate that denies the usual lints: the generated code stays clean.
#![deny(missing_docs, unreachable_pub, unused_qualifications, unused_imports, dead_code)]
#![deny(clippy::all)]

use qtasks::triggers::{TaskExecutorRunTaskTriggerError, WorkerStart};
use qtasks::{TaskContext, TaskResult};

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

fn main() {
    let _ = (sum::NAME, blocking::NAME, private_task::NAME, sum::DEFINITION);
    let _ = private_task::add_task;
}
