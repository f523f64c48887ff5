//! The add, wait, check chain every suite repeats: a task waited for at most [`WAIT`] and its
//! record checked, with a failure that names the task and says what it ended as.
//!
//! ```no_run
//! # async fn demo(app: qtasks::QueueTasks) {
//! use qtasks_test_support::flow;
//! let task = app.add_task("add", (2, 3), ()).await.unwrap();
//! assert_eq!(flow::succeeded(&task).await, serde_json::json!(5));
//! # }
//! ```

use qtasks::{QueueTasks, TaskHandle, TaskRecord, TaskStatus};
use serde_json::Value;

use crate::WAIT;

/// The record of `task` once it has ended (at most [`WAIT`]); fails the test, naming the task
/// and its last record, if it has not.
pub async fn ended<T>(task: &TaskHandle<T>) -> TaskRecord {
    match task.wait(WAIT).await {
        Ok(record) => record,
        Err(error) => panic!(
            "task {} did not end within {WAIT:?} ({error}); its record: {:?}",
            task.uuid(),
            task.get().await
        ),
    }
}

/// Waits until `task` runs (its record says `process`), at most [`WAIT`].
pub async fn running<T>(task: &TaskHandle<T>) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let record = task.get().await.ok().flatten();
        if record
            .as_ref()
            .is_some_and(|r| r.status == TaskStatus::Process)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {} never started within {WAIT:?}; its record: {record:?}",
            task.uuid()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The record of `task` once it has ended, checked to have ended `status`.
pub async fn ended_as<T>(task: &TaskHandle<T>, status: TaskStatus) -> TaskRecord {
    let record = ended(task).await;
    assert_eq!(
        record.status,
        status,
        "task {} ({}) ended `{}`, not `{status}`; its traceback: {:?}",
        task.uuid(),
        record.task_name,
        record.status,
        record.traceback
    );
    record
}

/// What `task` returned, once it has ended `success`.
pub async fn succeeded<T>(task: &TaskHandle<T>) -> Value {
    ended_as(task, TaskStatus::Success)
        .await
        .returning
        .unwrap_or(Value::Null)
}

/// Adds the task `name` with `args` and `kwargs` (by name, as a client of another process
/// would) and returns what it returned once it succeeded.
pub async fn add_and_succeed(
    app: &QueueTasks,
    name: &str,
    args: impl serde::Serialize,
    kwargs: impl serde::Serialize,
) -> Value {
    let task = app
        .add_task(name, args, kwargs)
        .await
        .unwrap_or_else(|error| panic!("adding task `{name}` failed: {error}"));
    succeeded(&task).await
}
