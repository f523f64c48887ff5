//! The context a task receives with `echo = true`.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

pub(crate) use crate::deps::Scope;
use crate::{
    PluginTriggerError, QueueConfig, QueueTasks, Result, TaskError, TaskHandle, TaskRecord,
};

/// What a task declared with `echo = true` gets as its first argument: its identity, the app
/// it runs in, and the two ways to end early (`plugin_error` and `cancel`).
///
/// Unlike in the original, the context is always bound to the running app, so `config`,
/// `get_task` and nested `add_task` work inside workers.
///
/// ```rust,standalone_crate
/// #[qtasks::task(echo = true)]
/// async fn report(ctx: qtasks::TaskContext, amount: i64) -> qtasks::TaskResult<i64> {
///     if amount < 0 {
///         return Err(ctx.cancel("negative amounts are not reported"));
///     }
///     tracing::info!(parent: ctx.span(), amount, "reporting");
///     Ok(amount)
/// }
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct TaskContext {
    app: QueueTasks,
    uuid: Uuid,
    task_name: &'static str,
    span: tracing::Span,
    scope: Scope,
    /// The run's delivery receipt: its progress writes are fenced by it.
    delivery: std::sync::Arc<str>,
    /// The runtime the run belongs to (progress writes go there, whatever thread reports).
    runtime: tokio::runtime::Handle,
}

impl TaskContext {
    pub(crate) fn new(
        app: QueueTasks,
        uuid: Uuid,
        task_name: &'static str,
        span: tracing::Span,
        scope: Scope,
        delivery: std::sync::Arc<str>,
    ) -> Self {
        TaskContext {
            app,
            uuid,
            task_name,
            span,
            scope,
            delivery,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The resources of this run, closed when it ends.
    pub(crate) fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The running task's own record, as stored now (the original's `get_metadata`).
    pub async fn metadata(&self) -> Result<Option<TaskRecord>> {
        self.app.get(self.uuid).await
    }

    /// Sleeps without blocking the worker.
    pub async fn sleep(&self, duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }

    /// The running task's id.
    pub fn task_uuid(&self) -> Uuid {
        self.uuid
    }

    /// The running task's name.
    pub fn task_name(&self) -> &'static str {
        self.task_name
    }

    /// The app the task runs in.
    pub fn app(&self) -> &QueueTasks {
        &self.app
    }

    /// The app's configuration, as it is now.
    pub fn config(&self) -> std::sync::Arc<QueueConfig> {
        self.app.config()
    }

    /// The tracing span of this run (fields `task` and `uuid`); the original's logger.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Starts a [`PluginTriggerError`]: return it (`.into()`) and the executor fires
    /// `task_executor_run_task_trigger_error`; a handler's value becomes the result.
    ///
    /// ```rust,standalone_crate
    /// #[qtasks::task(echo = true)]
    /// async fn charge(ctx: qtasks::TaskContext) -> qtasks::TaskResult<String> {
    ///     Err(ctx.plugin_error().with("message", "card declined").with("retry_in", 60).into())
    /// }
    /// # fn main() {}
    /// ```
    pub fn plugin_error(&self) -> PluginTriggerError {
        PluginTriggerError::new()
    }

    /// Reports how far the task is (any serde value: a percentage, `{"done": 40, "of": 100}`),
    /// for `handle.progress()`, `qtasks get` and the dashboard. It returns at once: the write
    /// goes out in the background, at most once every
    /// [`PROGRESS_INTERVAL`](crate::PROGRESS_INTERVAL) per run, so a tight loop may report at
    /// every step; the last value reported is always written (while the run holds the task).
    /// Fails only when the value does not encode as JSON.
    ///
    /// ```rust,standalone_crate
    /// #[qtasks::task(echo = true)]
    /// async fn import(ctx: qtasks::TaskContext, rows: Vec<String>) -> qtasks::TaskResult<usize> {
    ///     for (done, _row) in rows.iter().enumerate() {
    ///         ctx.set_progress(serde_json::json!({"done": done + 1, "of": rows.len()}))?;
    ///     }
    ///     Ok(rows.len())
    /// }
    /// # fn main() {}
    /// ```
    pub fn set_progress(&self, progress: impl Serialize) -> std::result::Result<(), TaskError> {
        let value = serde_json::to_value(progress).map_err(|e| {
            TaskError::named(
                "ProgressError",
                format!("the progress does not encode as JSON: {e}"),
            )
        })?;
        crate::progress::report(
            &crate::progress::ProgressTarget {
                app: &self.app,
                scope: &self.scope,
                uuid: self.uuid,
                delivery: &self.delivery,
                runtime: &self.runtime,
            },
            value,
        );
        Ok(())
    }

    /// Asks for this task to be run again after `delay` (return it as the error), as Celery's
    /// `self.retry(countdown=..)`; see [`TaskError::retry_after`].
    ///
    /// ```rust,standalone_crate
    /// # use std::time::Duration;
    /// #[qtasks::task(echo = true, retry = 3)]
    /// async fn poll(ctx: qtasks::TaskContext, ready: bool) -> qtasks::TaskResult<()> {
    ///     if !ready {
    ///         return Err(ctx.retry_after(Duration::from_secs(10)));
    ///     }
    ///     Ok(())
    /// }
    /// # fn main() {}
    /// ```
    pub fn retry_after(&self, delay: std::time::Duration) -> TaskError {
        TaskError::retry_after(delay)
    }

    /// Ends the task with status `cancel` and this reason (return it as the error). An empty
    /// reason becomes `"<task>.cancel"`, as in the original.
    pub fn cancel(&self, reason: impl Into<String>) -> TaskError {
        let reason = reason.into();
        if reason.is_empty() {
            TaskError::cancel(format!("{}.cancel", self.task_name))
        } else {
            TaskError::cancel(reason)
        }
    }

    /// Adds another task by name; wait on the handle to use its result.
    pub async fn add_task(
        &self,
        task_name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
    ) -> Result<TaskHandle> {
        self.app.add_task(task_name, args, kwargs).await
    }

    /// Reads any task's record.
    pub async fn get_task(&self, uuid: Uuid) -> Result<Option<TaskRecord>> {
        self.app.get(uuid).await
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("task", &self.task_name)
            .field("uuid", &self.uuid)
            .finish()
    }
}
