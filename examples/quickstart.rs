//! The quickstart: a few tasks and the plugin error flow, on the in-memory backend.
//!
//! Run it with `cargo run -p qtasks-examples --example quickstart` (no server needed). Set
//! `RUST_LOG=info` to see the worker's logs.

use std::time::Duration;

use qtasks::triggers::TaskExecutorRunTaskTriggerError;
use qtasks::{QueueTasks, TaskContext, TaskFailure, TaskResult};

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
async fn test_task(ctx: TaskContext) -> TaskResult<i64> {
    Err(ctx
        .plugin_error()
        .with("message", "Non-standard situation")
        .into())
}

/// ...and this plugin answers with a result, so the task succeeds. `task = test_task` makes it
/// hear only that task's failures and return that task's result type (checked when it compiles).
#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = test_task)]
fn recover(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<i64> {
    println!(
        "  plugin saw `{}` fail with {:?}",
        event.task.name(),
        event.error.kwargs()
    );
    Some(123)
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

    // The handles are typed: `result` gives the task's own return type back.
    let sum = add::add_task(&app, 2, 3).await?; // argument types checked at compile time
    println!("add(2, 3)        -> {}", sum.result(WAIT).await?);
    let words = word_count::add_task(&app, "the quick brown fox".into()).await?;
    println!("word_count       -> {}", words.result(WAIT).await?);
    let by_name = app
        .add_task("add", (40,), serde_json::json!({ "b": 2 }))
        .await?; // by name: JSON in, JSON out
    println!("add by name      -> {}", by_name.result(WAIT).await?);

    // A task that does not succeed says how: failed, cancelled, timed out, or not found.
    match maybe_cancel::add_task(&app, 0).await?.result(WAIT).await {
        Ok(value) => println!("maybe_cancel(0)  -> {value}"),
        Err(TaskFailure::Cancelled { reason, .. }) => {
            println!("maybe_cancel(0)  -> cancelled: {reason}");
        }
        Err(other) => println!("maybe_cancel(0)  -> {other}"),
    }

    // The seed flow: the task fails, the plugin answers, the task succeeds with its answer.
    let seed = test_task::add_task(&app).await?;
    println!("test_task        -> {}", seed.result(WAIT).await?);

    app.stop().await
}
