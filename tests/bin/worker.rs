//! A worker process for the signal tests: runs one slow task (`qtasks-test-worker [MS
//! [blocking]]`, 500 ms by default; `blocking`: a plain `fn` task) under `run_forever`, says when the task is running and when the stop begins,
//! and after the shutdown prints the task's final status.

use std::time::Duration;

use qtasks::{QueueTasks, TaskStatus};

#[qtasks::task]
async fn slow_job(ms: u64) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "finished"
}

/// A plain `fn` task: its thread cannot be stopped mid-call.
#[qtasks::task]
fn blocking_job(ms: u64) -> &'static str {
    std::thread::sleep(Duration::from_millis(ms));
    "finished"
}

/// Tells the test that the graceful stop has begun (so its second signal comes after it).
#[qtasks::plugin(on = "qtasks_stop")]
fn announce_stop(_event: &qtasks::triggers::QtasksStop<'_>) {
    println!("stopping");
}

#[tokio::main]
async fn main() -> qtasks::Result<()> {
    let ms = std::env::args()
        .nth(1)
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(500);
    // `QTASKS_STOP_TIMEOUT` and the other `QTASKS_*` settings apply.
    let app = QueueTasks::with_config(qtasks::QueueConfig::from_env()?);
    let handle = if std::env::args().nth(2).as_deref() == Some("blocking") {
        blocking_job::add_task(&app, ms).await?.untyped()
    } else {
        slow_job::add_task(&app, ms).await?.untyped()
    };
    let watcher = handle.clone();
    tokio::spawn(async move {
        while watcher.get().await.ok().flatten().map(|r| r.status) != Some(TaskStatus::Process) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("running");
    });
    app.run_forever().await?;
    let record = handle.get().await?.expect("the task is stored");
    println!("stopped: {} {:?}", record.status, record.returning);
    Ok(())
}
