//! The page "Error handling through plugins" of QTasks, in Rust.
//!
//! The task calls `ctx.plugin_error(..)`; the executor fires
//! `task_executor_run_task_trigger_error` with the executor, the task definition, the queued
//! task and the error. The plugin prints what it got and returns 123, which becomes the task's
//! result. The same plugin is shown twice: as a `#[qtasks::plugin]` fn, and as a runtime
//! plugin object like the original's `TestPlugin` (run with `--runtime-plugin`).
//!
//! `cargo run -p qtasks-examples --example plugin_error [-- --runtime-plugin]`

use std::time::Duration;

use qtasks::plugin::BoxError;
use qtasks::triggers::TaskExecutorRunTaskTriggerError;
use qtasks::triggers::{Reply, TriggerEvent};
use qtasks::{Plugin, QueueTasks, TaskContext, TaskResult, Trigger};

#[qtasks::task(echo = true)]
async fn test_task(ctx: TaskContext) -> TaskResult<i64> {
    Err(ctx
        .plugin_error()
        .with("message", "Нестандартная ситуация")
        .into())
    // Alternatively: Err(qtasks::PluginTriggerError::with_message("Ошибка напрямую").into())
}

/// The handler as a fn. `task = test_task` makes it hear only that task's failures and return
/// that task's result type, `i64`, checked when it compiles. It only answers when the runtime
/// plugin is not in use, so the two forms can be compared.
#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = test_task)]
fn task_trigger_error(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<i64> {
    if runtime_plugin_requested() {
        return None;
    }
    println!("{event:#?}");
    Some(123)
}

/// The handler as a plugin object with a lifecycle, registered at run time.
struct TestPlugin;

impl Plugin for TestPlugin {
    fn name(&self) -> &str {
        "TestPlugin"
    }

    async fn start(&self) -> Result<(), BoxError> {
        println!("TestPlugin started");
        Ok(())
    }

    async fn stop(&self) -> Result<(), BoxError> {
        println!("TestPlugin stopped");
        Ok(())
    }

    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        match event {
            TriggerEvent::TaskExecutorRunTaskTriggerError(e) => {
                println!("{e:#?}");
                Ok(Some(Reply::value(123)))
            }
            _ => Ok(None),
        }
    }
}

fn runtime_plugin_requested() -> bool {
    std::env::args().any(|arg| arg == "--runtime-plugin")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = QueueTasks::new();
    if runtime_plugin_requested() {
        app.add_plugin(TestPlugin, &[Trigger::TaskExecutorRunTaskTriggerError])?;
    }
    app.start().await?;

    let task = test_task::add_task(&app).await?;
    let done = task.wait(Duration::from_secs(5)).await?;
    println!("status: {}, returning: {:?}", done.status, done.returning);
    assert_eq!(done.status, qtasks::TaskStatus::Success);
    // The runtime plugin's JSON `123` is checked against the task's result type too.
    let result: i64 = task.result(Duration::from_secs(5)).await?;
    assert_eq!(result, 123);

    app.stop().await?;
    Ok(())
}
