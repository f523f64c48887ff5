//! A worker binary with the qtasks command line: your tasks, and `qtasks::cli` as `main`.
//!
//! ```text
//! cargo run -p qtasks-examples --example worker_cli --features cli -- worker --concurrency 4
//! cargo run -p qtasks-examples --example worker_cli --features cli -- inspect
//! ```
//!
//! It connects to `--url` / `QTASKS_URL` (default `redis://127.0.0.1:6379/0`; `memory://` runs
//! it in this process alone) as the app named `--app` / `QTASKS_NAME`. Every command of the `qtasks` binary works here too (`add`, `stats`,
//! `workers`, ...); `worker` and `inspect` need the tasks, so only a binary like this has them.
//! Copy it, replace the tasks with yours.

use std::process::ExitCode;
use std::time::Duration;

use qtasks::{TaskContext, TaskResult};

/// Adds two numbers.
#[qtasks::task]
async fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Sleeps (a cancel stops it where it waits).
#[qtasks::task(echo = true)]
async fn sleep_for(ctx: TaskContext, seconds: f64) -> f64 {
    ctx.sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

/// Fails with a message.
#[qtasks::task]
async fn fail(message: String) -> TaskResult<()> {
    Err(qtasks::TaskError::msg(message))
}

/// Runs every night at four (UTC): its schedule is part of the task, checked when it compiles.
#[qtasks::task(cron = "0 0 4 * * *")]
async fn nightly_cleanup() {
    tracing::info!("cleaning up");
}

/// Panics (the worker fails this task, logs one line, and goes on).
#[qtasks::task]
async fn explode() -> u32 {
    panic!("the task blew up on purpose")
}

#[tokio::main]
async fn main() -> ExitCode {
    // Settings from QTASKS_* (QTASKS_MAX_TASKS_PROCESS=4, ...), the backend from --url /
    // QTASKS_URL, logging on stderr, then the command.
    qtasks::cli::main().await
}
