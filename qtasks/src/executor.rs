//! One run of one task through the original's steps, firing each `task_executor_*` trigger at
//! its place.
//!
//! Steps (spec section 7): middlewares before, echo context and arguments replacement, before
//! execute, run (with `task_executor_run_task`, or `task_executor_run_task_trigger_error` when
//! the task fails with a plugin error), after execute and result replacement, middlewares
//! after, decode, task close. Replacing triggers chain: each handler sees what the one before
//! it returned.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::__private::{ItemStream, TaskArgs, TaskOutput};
use crate::context::TaskContext;
use crate::dispatch::{Dispatch, chain};
use crate::panic::CatchUnwind;
use crate::task::Outcome;
use crate::triggers::{
    MiddlewarePosition, TaskExecutorAfterExecute, TaskExecutorAfterExecuteResultReplace,
    TaskExecutorArgsReplace, TaskExecutorBeforeExecute, TaskExecutorDecode,
    TaskExecutorMiddlewaresExecute, TaskExecutorRunTask, TaskExecutorRunTaskGen,
    TaskExecutorRunTaskTriggerError, TaskExecutorTaskClose,
};
use crate::{QueueTasks, QueuedTask, TaskDefinition, TaskError, Trigger};

/// One run of one task: what an [`Executor`](crate::Executor) runs, and what plugins receive
/// as `executor` in every `task_executor_*` payload.
pub struct TaskExecutor {
    app: QueueTasks,
    task: &'static TaskDefinition,
    queued: QueuedTask,
    dispatch: Arc<Dispatch>,
    span: tracing::Span,
}

impl TaskExecutor {
    pub(crate) fn new(
        app: QueueTasks,
        task: &'static TaskDefinition,
        queued: QueuedTask,
        dispatch: Arc<Dispatch>,
        span: tracing::Span,
    ) -> Self {
        TaskExecutor {
            app,
            task,
            queued,
            dispatch,
            span,
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

    /// Runs the original's steps to the task's outcome. Never panics on the task's or a
    /// plugin's account: a panic becomes an `error` outcome.
    pub async fn run_default(&self) -> Outcome {
        let outcome = self.run_steps().await;
        // Fires whatever the outcome, so task-scoped resources are always released (the
        // original skips this step when the task fails).
        self.dispatch
            .fire(&TaskExecutorTaskClose {
                executor: self,
                task: self.task,
                queued: &self.queued,
            })
            .await;
        outcome
    }

    async fn run_steps(&self) -> Outcome {
        let dispatch = &*self.dispatch;
        tracing::debug!(task = self.task.name, uuid = %self.queued.uuid, "execute");

        // 1. Middlewares before (per-task and worker middlewares arrive with the execution
        //    semantics work; the trigger fires already so plugins see the step).
        self.fire_middlewares(MiddlewarePosition::Before).await;

        // 2. Echo context and arguments replacement.
        let context = TaskContext::new(
            self.app.clone(),
            self.queued.uuid,
            self.task.name,
            self.span.clone(),
        );
        let mut args = self.queued.args.clone();
        let mut kwargs = self.queued.kwargs.clone();
        chain!(
            dispatch,
            Trigger::TaskExecutorArgsReplace,
            TaskExecutorArgsReplace {
                executor: self,
                args: &args,
                kwargs: &kwargs,
                params: self.task.params
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

        // 3. Run.
        let invocation = (self.task.invoke)(context, TaskArgs::new(self.task.name, args, kwargs));
        let mut result = match CatchUnwind::new(invocation).await {
            Ok(Ok(TaskOutput::Value(mut value))) => {
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
            Ok(Ok(TaskOutput::Stream(items))) => match self.collect(items).await {
                Ok(mut items) => {
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
                Err(error) => return self.failed(&error),
            },
            Ok(Err(error)) => match self.recover(&error).await {
                Some(value) => value,
                None => return self.failed(&error),
            },
            Err(panic) => return self.failed(&TaskError::panicked(&panic)),
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

        // 5. Middlewares after.
        self.fire_middlewares(MiddlewarePosition::After).await;

        // 6. Decode: the result is JSON already; plugins may replace the stored value.
        chain!(
            dispatch,
            Trigger::TaskExecutorDecode,
            TaskExecutorDecode {
                executor: self,
                result: &result
            },
            |decoded| result = decoded
        );
        Outcome::Success(result)
    }

    /// Runs a stream task to its end, collecting its items. A panic while producing an item
    /// fails the task like a panic in any task.
    async fn collect(&self, mut items: ItemStream) -> Result<Vec<Value>, TaskError> {
        let collecting = Box::pin(async move {
            let mut collected = Vec::new();
            while let Some(item) = std::future::poll_fn(|cx| items.as_mut().poll_next(cx)).await {
                collected.push(item?);
            }
            Ok(collected)
        });
        match CatchUnwind::new(collecting).await {
            Ok(result) => result,
            Err(panic) => Err(TaskError::panicked(&panic)),
        }
    }

    /// The seed flow: a plugin error goes to `task_executor_run_task_trigger_error`; the last
    /// value a handler returns becomes the result.
    async fn recover(&self, error: &TaskError) -> Option<Value> {
        let plugin_error = error.as_plugin_error()?;
        let mut recovered = None;
        chain!(
            self.dispatch,
            Trigger::TaskExecutorRunTaskTriggerError,
            TaskExecutorRunTaskTriggerError {
                executor: self,
                task: self.task,
                queued: &self.queued,
                error: plugin_error,
            },
            |value| recovered = Some(value)
        );
        recovered
    }

    fn failed(&self, error: &TaskError) -> Outcome {
        match error.cancel_reason() {
            Some(reason) => {
                tracing::info!(task = self.task.name, uuid = %self.queued.uuid, reason, "task cancelled");
                Outcome::Cancel(reason.to_owned())
            }
            None => {
                let traceback = error.traceback();
                tracing::error!(task = self.task.name, uuid = %self.queued.uuid, "task failed: {traceback}");
                Outcome::Error(traceback)
            }
        }
    }

    async fn fire_middlewares(&self, position: MiddlewarePosition) {
        self.dispatch
            .fire(&TaskExecutorMiddlewaresExecute {
                executor: self,
                position,
                middlewares: &[],
            })
            .await;
    }
}

impl fmt::Debug for TaskExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskExecutor")
            .field("app", &self.app.name())
            .field("task", &self.task.name)
            .field("uuid", &self.queued.uuid)
            .finish()
    }
}
