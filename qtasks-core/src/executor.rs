//! One run of one task through the original's steps, firing each `task_executor_*` trigger at
//! its place.
//!
//! Steps (spec section 7): middlewares before, echo context and arguments replacement, before
//! execute, run (with `task_executor_run_task`, `task_executor_run_task_gen` for a stream task,
//! or `task_executor_run_task_trigger_error` when the task fails with a plugin error), after
//! execute and result replacement, middlewares after, decode, task close. Replacing triggers
//! chain: each handler sees what the one before it returned.

use parking_lot::Mutex;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::__private::{ItemStream, TaskArgs, TaskOutput};
use crate::context::TaskContext;
use crate::deps::Scope;
use crate::dispatch::{Dispatch, chain};
use crate::panic::catch_panic;
use crate::task::Outcome;
use crate::triggers::{
    MiddlewarePosition, TaskExecutorAfterExecute, TaskExecutorAfterExecuteResultReplace,
    TaskExecutorArgsReplace, TaskExecutorBeforeExecute, TaskExecutorDecode,
    TaskExecutorMiddlewaresExecute, TaskExecutorRunTask, TaskExecutorRunTaskGen,
    TaskExecutorRunTaskTriggerError, TaskExecutorTaskClose,
};
use crate::{Middleware, QueueTasks, QueuedTask, TaskDefinition, TaskError, TimeoutError, Trigger};

/// One run of one task: what an [`TaskRunner`](crate::TaskRunner) runs, and what plugins receive
/// as `executor` in every `task_executor_*` payload.
pub struct TaskExecutor {
    app: QueueTasks,
    task: &'static TaskDefinition,
    queued: QueuedTask,
    dispatch: Arc<Dispatch>,
    span: tracing::Span,
    cancel: watch::Receiver<Option<String>>,
    /// The receipt of the delivery this run belongs to (its stream items and progress are
    /// fenced by it).
    delivery: Arc<str>,
    /// The error the run failed with, for the worker's retry decision.
    failure: Mutex<Option<TaskError>>,
    /// The run's task returned a stream (its items may have been stored as they came).
    streamed: std::sync::atomic::AtomicBool,
}

/// What made a run stop early.
enum Stopped {
    Failed(TaskError),
    Cancelled(String),
}

impl From<TaskError> for Stopped {
    fn from(error: TaskError) -> Self {
        Stopped::Failed(error)
    }
}

impl TaskExecutor {
    pub(crate) fn new(
        app: QueueTasks,
        task: &'static TaskDefinition,
        queued: QueuedTask,
        dispatch: Arc<Dispatch>,
        span: tracing::Span,
        cancel: watch::Receiver<Option<String>>,
        delivery: Arc<str>,
    ) -> Self {
        TaskExecutor {
            app,
            task,
            queued,
            dispatch,
            span,
            cancel,
            delivery,
            failure: Mutex::new(None),
            streamed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The definition of the running task (the original's `task_func`).
    pub fn task(&self) -> &'static TaskDefinition {
        self.task
    }

    /// The task as the broker delivered it (the original's `task_broker`).
    pub fn queued(&self) -> &QueuedTask {
        &self.queued
    }

    /// The running task's id.
    pub fn uuid(&self) -> Uuid {
        self.queued.uuid
    }

    /// The app the task runs in.
    pub fn app(&self) -> &QueueTasks {
        &self.app
    }

    pub(crate) fn take_failure(&self) -> Option<TaskError> {
        self.failure.lock().take()
    }

    /// Whether the run's task returned a stream (`RunInfo::streamed`).
    pub(crate) fn streamed(&self) -> bool {
        self.streamed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The queued task back, once the run has ended (the worker lent it for the run rather
    /// than cloning it).
    pub(crate) fn into_task(self) -> QueuedTask {
        self.queued
    }

    /// Runs the original's steps to the task's outcome. Never panics on the task's or a
    /// plugin's account: a panic becomes an `error` outcome.
    pub async fn run_default(&self) -> Outcome {
        let scope = Scope::default();
        let outcome = match self.run_steps(&scope).await {
            Ok(result) => Outcome::Success(result),
            Err(Stopped::Cancelled(reason)) => {
                tracing::info!(task = self.task.parts.name, uuid = %self.queued.uuid, reason, "task cancelled");
                Outcome::Cancel(reason)
            }
            Err(Stopped::Failed(error)) => self.failed(error),
        };
        // The last progress the task reported is stored before its outcome.
        crate::progress::settle(&crate::progress::ProgressTarget {
            app: &self.app,
            scope: &scope,
            uuid: self.queued.uuid,
            delivery: &self.delivery,
            runtime: &tokio::runtime::Handle::current(),
        })
        .await;
        // Task-scoped dependencies close, and the close trigger fires, whatever the outcome
        // (the original skips both when the task fails).
        scope.close().await;
        self.dispatch
            .fire(&TaskExecutorTaskClose {
                executor: self,
                task: self.task,
                queued: &self.queued,
            })
            .await;
        outcome
    }

    async fn run_steps(&self, scope: &Scope) -> Result<Value, Stopped> {
        let dispatch = &*self.dispatch;
        tracing::debug!(task = self.task.parts.name, uuid = %self.queued.uuid, "execute");
        let app_middlewares = self.app.middlewares();
        let mut args = self.queued.args.clone();
        let mut kwargs = self.queued.kwargs.clone();

        // 1. Middlewares before: the app's, then the task's.
        let before: Vec<&dyn Middleware> = app_middlewares
            .iter()
            .map(|m| &**m as &dyn Middleware)
            .chain(self.task.parts.middlewares_before.iter().copied())
            .collect();
        self.fire_middlewares(MiddlewarePosition::Before, &before)
            .await;
        for middleware in &before {
            let step = catching(|| middleware.before(self.task, &mut args, &mut kwargs));
            self.guarded(middleware.name(), step).await?;
        }

        // 2. Echo context and arguments replacement.
        let context = TaskContext::new(
            self.app.clone(),
            self.queued.uuid,
            self.task.parts.name,
            self.span.clone(),
            scope.clone(),
            Arc::clone(&self.delivery),
        );
        chain!(
            dispatch,
            Trigger::TaskExecutorArgsReplace,
            TaskExecutorArgsReplace {
                executor: self,
                args: &args,
                kwargs: &kwargs,
                params: self.task.parts.params
            },
            |update| {
                if let Some(new_args) = update.args {
                    args = new_args;
                }
                if let Some(new_kwargs) = update.kwargs {
                    kwargs = new_kwargs;
                }
            }
        );
        dispatch
            .fire(&TaskExecutorBeforeExecute { executor: self })
            .await;

        // 3. Run, within the time limit, until done or cancelled.
        let invocation =
            (self.task.parts.invoke)(context, TaskArgs::new(self.task.parts.name, args, kwargs));
        let output = self
            .limited(async {
                match catch_panic(invocation).await {
                    Ok(output) => output,
                    Err(panic) => Err(TaskError::panicked(&panic)),
                }
            })
            .await?;
        let mut result = match output {
            Ok(TaskOutput::Value(mut value)) => {
                chain!(
                    dispatch,
                    Trigger::TaskExecutorRunTask,
                    TaskExecutorRunTask {
                        executor: self,
                        result: &value
                    },
                    |replaced| value = replaced
                );
                value
            }
            Ok(TaskOutput::Stream(items)) => {
                let mut items = self.limited(self.collect(items)).await??;
                chain!(
                    dispatch,
                    Trigger::TaskExecutorRunTaskGen,
                    TaskExecutorRunTaskGen {
                        executor: self,
                        results: &items
                    },
                    |replaced| items = replaced
                );
                Value::Array(items)
            }
            Err(error) => self.recover(error).await?,
        };

        // 4. After execute and result replacement.
        dispatch
            .fire(&TaskExecutorAfterExecute { executor: self })
            .await;
        chain!(
            dispatch,
            Trigger::TaskExecutorAfterExecuteResultReplace,
            TaskExecutorAfterExecuteResultReplace {
                executor: self,
                result: &result
            },
            |replaced| result = replaced
        );

        // 5. Middlewares after: the task's, then the app's.
        let after: Vec<&dyn Middleware> = self
            .task
            .parts
            .middlewares_after
            .iter()
            .copied()
            .chain(app_middlewares.iter().map(|m| &**m as &dyn Middleware))
            .collect();
        self.fire_middlewares(MiddlewarePosition::After, &after)
            .await;
        for middleware in &after {
            let step = catching(|| middleware.after(self.task, &mut result));
            self.guarded(middleware.name(), step).await?;
        }

        // 6. Decode: the task's own decode, then plugins may replace the stored value.
        if let Some(decode) = self.task.parts.decode {
            result = match std::panic::catch_unwind(|| decode(result)) {
                Ok(Ok(decoded)) => decoded,
                Ok(Err(reason)) => {
                    return Err(TaskError::named(
                        "DecodeError",
                        format!("the task's decode failed: {reason}"),
                    )
                    .into());
                }
                Err(panic) => {
                    let message = crate::panic::panic_message(panic.as_ref());
                    return Err(TaskError::named(
                        "DecodeError",
                        format!("the task's decode panicked: {message}"),
                    )
                    .into());
                }
            };
        }
        chain!(
            dispatch,
            Trigger::TaskExecutorDecode,
            TaskExecutorDecode {
                executor: self,
                result: &result
            },
            |decoded| result = decoded
        );
        Ok(result)
    }

    /// Runs `step` until it ends, the time limit passes, or the task is cancelled.
    async fn limited<T>(&self, step: impl Future<Output = T>) -> Result<T, Stopped> {
        let mut cancel = self.cancel.clone();
        let cancelled = async move {
            // The guard `wait_for` returns is let go at once: it must not live across an await.
            let reason = cancel
                .wait_for(Option::is_some)
                .await
                .map(|reason| reason.clone());
            match reason {
                Ok(reason) => reason.unwrap_or_default(),
                // The worker let go of the sender: no cancel can come any more.
                Err(_) => std::future::pending().await,
            }
        };
        // This call's own limit, else the task's.
        let limit = match self.queued.max_time {
            Some(seconds) if seconds > 0.0 => {
                Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
            }
            _ => self.task.max_time(),
        };
        let timed = async {
            match limit {
                Some(limit) => tokio::time::timeout(limit, step)
                    .await
                    .map_err(|_| TimeoutError {
                        task: self.task.parts.name.to_owned(),
                        seconds: limit.as_secs_f64(),
                    }),
                None => Ok(step.await),
            }
        };
        tokio::select! {
            // A cancel there already (one that came before the run registered) wins over a
            // step that would end at its first poll.
            biased;
            reason = cancelled => Err(Stopped::Cancelled(reason)),
            done = timed => done.map_err(|timeout| Stopped::Failed(timeout.into())),
        }
    }

    /// Runs a middleware step (its future, or the panic making it); an error or a panic fails
    /// the task, naming the middleware.
    async fn guarded(
        &self,
        name: &str,
        step: std::thread::Result<crate::plugin::BoxFuture<'_, Result<(), TaskError>>>,
    ) -> Result<(), Stopped> {
        let panicked = |panic: String| {
            Stopped::Failed(TaskError::named(
                "MiddlewarePanic",
                format!("the middleware `{name}` panicked: {panic}"),
            ))
        };
        let step = step.map_err(|panic| panicked(crate::panic::panic_message(panic.as_ref())))?;
        match catch_panic(step).await {
            Ok(result) => result.map_err(Stopped::Failed),
            Err(panic) => Err(panicked(panic)),
        }
    }

    /// Runs a stream task to its end, mapping each item through the task's
    /// `generate_handler` and storing it as it comes, so callers can read the items while the
    /// task runs and keep them if it fails half-way.
    async fn collect(&self, mut items: ItemStream) -> Result<Vec<Value>, TaskError> {
        self.streamed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let storage = Arc::clone(&self.app.components().storage);
        let uuid = self.queued.uuid;
        let delivery = self.delivery.clone();
        let handler = self.task.parts.generate_handler;
        let collecting = Box::pin(async move {
            let mut collected = Vec::new();
            while let Some(item) = std::future::poll_fn(|cx| items.as_mut().poll_next(cx)).await {
                let item = item?;
                let item = match handler {
                    Some(map) => map(item),
                    None => item,
                };
                match storage.append_item(uuid, &delivery, item.clone()).await {
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(uuid = %uuid, "could not store a stream item: {}", crate::backend::ErrorChain(&error));
                    }
                }
                collected.push(item);
            }
            Ok(collected)
        });
        match catch_panic(collecting).await {
            Ok(result) => result,
            Err(panic) => Err(TaskError::panicked(&panic)),
        }
    }

    /// The seed flow: a plugin error goes to `task_executor_run_task_trigger_error`; the last
    /// value a handler returns becomes the result.
    ///
    /// Each value is checked against the task's result type first: a value the caller could
    /// not decode (`123` for a task returning `String`) would store a `success` whose result
    /// nobody can read. Such a value is logged, naming the plugin, the task and both types, and
    /// set aside; when no handler's value fits, the task ends `error` saying so.
    async fn recover(&self, error: TaskError) -> Result<Value, TaskError> {
        let Some(plugin_error) = error.as_plugin_error() else {
            return Err(error);
        };
        let mut recovered = None;
        let mut mismatch = None;
        for handler in self
            .dispatch
            .handlers(Trigger::TaskExecutorRunTaskTriggerError)
        {
            let payload = TaskExecutorRunTaskTriggerError {
                executor: self,
                task: self.task,
                queued: &self.queued,
                error: plugin_error,
            };
            let Some(value) = Dispatch::call(handler, &payload).await else {
                continue;
            };
            match self.task.parts.output.map(|output| (output.check)(&value)) {
                Some(Err(reason)) => {
                    let output = self.task.output_type().unwrap_or("?");
                    let message = format!(
                        "plugin `{}` returned {} for task `{}`, whose result is a `{output}`: {reason}",
                        handler.name(),
                        json_kind(&value),
                        self.task.parts.name,
                    );
                    tracing::error!(
                        plugin = handler.name(),
                        task = self.task.parts.name,
                        uuid = %self.queued.uuid,
                        "{message}"
                    );
                    mismatch = Some(message);
                }
                _ => recovered = Some(value),
            }
        }
        match (recovered, mismatch) {
            (Some(value), _) => Ok(value),
            (None, Some(message)) => Err(TaskError::named(
                "PluginResultMismatch",
                format!("{message}; the task's own error: {}", error.traceback()),
            )),
            (None, None) => Err(error),
        }
    }

    fn failed(&self, error: TaskError) -> Outcome {
        let outcome = match error.cancel_reason() {
            Some(reason) => {
                tracing::info!(task = self.task.parts.name, uuid = %self.queued.uuid, reason, "task cancelled");
                Outcome::Cancel(reason.to_owned())
            }
            None => {
                let traceback = error.traceback();
                tracing::error!(task = self.task.parts.name, uuid = %self.queued.uuid, "task failed: {traceback}");
                Outcome::Error(traceback)
            }
        };
        *self.failure.lock() = Some(error);
        outcome
    }

    async fn fire_middlewares(
        &self,
        position: MiddlewarePosition,
        middlewares: &[&dyn Middleware],
    ) {
        if self
            .dispatch
            .handlers(Trigger::TaskExecutorMiddlewaresExecute)
            .is_empty()
        {
            return;
        }
        let names: Vec<&str> = middlewares.iter().map(|m| m.name()).collect();
        self.dispatch
            .fire(&TaskExecutorMiddlewaresExecute {
                executor: self,
                position,
                middlewares: &names,
            })
            .await;
    }
}

/// Calls `make`, catching a panic (a middleware that panics before it returns its future).
fn catching<R>(make: impl FnOnce() -> R) -> std::thread::Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(make))
}

impl fmt::Debug for TaskExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskExecutor")
            .field("app", &self.app.name())
            .field("task", &self.task.parts.name)
            .field("uuid", &self.queued.uuid)
            .finish()
    }
}

#[cfg(any(test, feature = "__bench"))]
mod detached {
    use std::sync::Arc;

    use uuid::Uuid;

    use super::TaskExecutor;
    use crate::__private::{TaskArgs, TaskFuture};
    use crate::dispatch::Dispatch;
    use crate::{QueueTasks, QueuedTask, TaskContext, TaskDefinition};

    fn never_invoked(_: TaskContext, _: TaskArgs) -> TaskFuture {
        unreachable!("a detached executor never runs its task")
    }

    static DETACHED: TaskDefinition = TaskDefinition::bare("bench", never_invoked);

    impl TaskExecutor {
        /// An executor for a task that never runs, with no handlers: the payload that executor
        /// triggers carry, for firing them outside a worker (the dispatch tests and the
        /// micro-benchmarks).
        pub(crate) fn detached() -> TaskExecutor {
            let queued = QueuedTask {
                uuid: Uuid::nil(),
                task_name: DETACHED.parts.name.into(),
                priority: 0,
                args: Vec::new(),
                kwargs: serde_json::Map::new(),
                created_at: 0.0,
                retry: None,
                retry_parent_uuid: None,
                run_at: None,
                traceparent: None,
                group_uuid: None,
                expires_at: None,
                max_time: None,
                queue: None,
                hand_backs: 0,
                rate_key: None,
                workflow: None,
                definition: None,
            };
            TaskExecutor::new(
                QueueTasks::new(),
                &DETACHED,
                queued,
                Arc::new(Dispatch::build(&[])),
                tracing::Span::none(),
                tokio::sync::watch::channel(None).1,
                Arc::from(""),
            )
        }
    }
}

/// How a JSON value reads in a message: "a number", "a string", ...
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
