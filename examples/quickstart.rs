//! The quickstart: a few tasks and the plugin error flow, on the in-memory backend.
//!
//! Run it with `cargo run -p qtasks-examples --example quickstart` (no server needed). Set
//! `RUST_LOG=info` to see the worker's logs.

use std::time::Duration;

use qtasks::triggers::TaskExecutorRunTaskTriggerError;
use qtasks::{QueueTasks, TaskContext, TaskResult};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

/// An async task: runs on the worker's async threads.
#[qtasks::task(description = "Adds two numbers")]
async fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// A plain fn: runs on the blocking thread pool, so it may block.
#[qtasks::task]
fn word_count(text: String) -> usize {
    text.split_whitespace().count()
}

/// `echo = true` hands the task its context; `ctx.cancel` ends it with status `cancel`.
#[qtasks::task(echo = true)]
async fn maybe_cancel(ctx: TaskContext, amount: i64) -> TaskResult<i64> {
    if amount <= 0 {
        return Err(ctx.cancel(format!("nothing to do for {amount}")));
    }
    Ok(amount * 100)
}

/// The seed flow: the task hands its failure to the plugins...
#[qtasks::task(echo = true)]
async fn test_task(ctx: TaskContext) -> TaskResult<String> {
    Err(ctx
        .plugin_error()
        .with("message", "Non-standard situation")
        .into())
}

/// ...and this plugin answers with a result, so the task succeeds.
#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn recover(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    println!(
        "  plugin saw `{}` fail with {:?}",
        event.task.name(),
        event.error.kwargs()
    );
    Some(123.into())
}

#[tokio::main]
async fn main() -> qtasks::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let app = QueueTasks::new(); // in-memory broker and storage
    app.start().await?; // an embedded worker; a worker process calls `app.run_forever()`

    let sum = add::add_task(&app, 2, 3).await?; // argument types checked at compile time
    let words = word_count::add_task(&app, "the quick brown fox".into()).await?;
    let by_name = app
        .add_task("add", (40,), serde_json::json!({ "b": 2 }))
        .await?; // untyped
    let cancelled = maybe_cancel::add_task(&app, 0).await?;
    let seed = test_task::add_task(&app).await?;

    for (label, handle) in [
        ("add(2, 3)", sum),
        ("word_count", words),
        ("add by name", by_name),
        ("maybe_cancel(0)", cancelled),
        ("test_task", seed),
    ] {
        let done = handle.wait(WAIT).await?;
        let detail = match (&done.returning, &done.cancel_reason, &done.traceback) {
            (Some(value), _, _) => format!("result {value}"),
            (_, Some(reason), _) => format!("reason: {reason}"),
            (_, _, Some(traceback)) => format!("traceback: {traceback}"),
            _ => String::new(),
        };
        println!("{label:<16} -> {} ({detail})", done.status);
    }

    app.stop().await
}
