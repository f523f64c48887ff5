//! The task executor: runs one task through the original's steps, firing each
//! `task_executor_*` trigger at its place.
//!
//! Steps (spec section 7): middlewares before, echo context and arguments replacement, before
//! execute, run (with `task_executor_run_task`, or `task_executor_run_task_trigger_error` when
//! the task fails with a plugin error), after execute and result replacement, middlewares
//! after, decode, task close.

use std::fmt;

use serde_json::Value;
use uuid::Uuid;

use crate::__private::TaskArgs;
use crate::context::TaskContext;
use crate::dispatch::Dispatch;
use crate::panic::CatchUnwind;
use crate::task::Outcome;
use crate::triggers::{
    MiddlewarePosition, TaskExecutorAfterExecute, TaskExecutorAfterExecuteResultReplace,
    TaskExecutorArgsReplace, TaskExecutorBeforeExecute, TaskExecutorDecode,
    TaskExecutorMiddlewaresExecute, TaskExecutorRunTask, TaskExecutorRunTaskTriggerError,
    TaskExecutorTaskClose,
};
use crate::{QueueTasks, QueuedTask, TaskDefinition, TaskError};

/// One run of one task. Plugins receive it as `executor` in every `task_executor_*` payload.
pub struct TaskExecutor {
    app: QueueTasks,
    task: &'static TaskDefinition,
    queued: QueuedTask,
}

impl TaskExecutor {
    pub(crate) fn new(app: QueueTasks, task: &'static TaskDefinition, queued: QueuedTask) -> Self {
        TaskExecutor { app, task, queued }
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

    /// Runs the task to its outcome. Never panics on the task's or a plugin's account.
    pub(crate) async fn execute(&self, dispatch: &Dispatch, span: tracing::Span) -> Outcome {
        let outcome = self.run_steps(dispatch, span).await;
        // Fires whatever the outcome, so task-scoped resources are always released (the
        // original skips this step when the task fails).
        dispatch
            .fire(&TaskExecutorTaskClose {
                executor: self,
                task: self.task,
                queued: &self.queued,
            })
            .await;
        outcome
    }

    async fn run_steps(&self, dispatch: &Dispatch, span: tracing::Span) -> Outcome {
        tracing::debug!(task = self.task.name, uuid = %self.queued.uuid, "execute");

        // 1. Middlewares before (per-task and worker middlewares arrive with the execution
        //    semantics work; the trigger fires already so plugins see the step).
        self.fire_middlewares(dispatch, MiddlewarePosition::Before)
            .await;

        // 2. Echo context and arguments replacement.
        let context = TaskContext::new(self.app.clone(), self.queued.uuid, self.task.name, span);
        let mut args = self.queued.args.clone();
        let mut kwargs = self.queued.kwargs.clone();
        let replace = TaskExecutorArgsReplace {
            executor: self,
            args: &args,
            kwargs: &kwargs,
            params: self.task.params,
        };
        if let Some(update) = dispatch.fire(&replace).await {
            if let Some(new_args) = update.args {
                args = new_args;
            }
            if let Some(new_kwargs) = update.kwargs {
                kwargs = new_kwargs;
            }
        }
        dispatch
            .fire(&TaskExecutorBeforeExecute { executor: self })
            .await;

        // 3. Run.
        let invocation = (self.task.invoke)(context, TaskArgs::new(self.task.name, args, kwargs));
        let mut result = match CatchUnwind::new(invocation).await {
            Ok(Ok(value)) => match dispatch
                .fire(&TaskExecutorRunTask {
                    executor: self,
                    result: &value,
                })
                .await
            {
                Some(replaced) => replaced,
                None => value,
            },
            Ok(Err(error)) => match self.recover(dispatch, &error).await {
                Some(value) => value,
                None => return self.failed(&error),
            },
            Err(panic) => return self.failed(&TaskError::panicked(&panic)),
        };

        // 4. After execute and result replacement.
        dispatch
            .fire(&TaskExecutorAfterExecute { executor: self })
            .await;
        if let Some(replaced) = dispatch
            .fire(&TaskExecutorAfterExecuteResultReplace {
                executor: self,
                result: &result,
            })
            .await
        {
            result = replaced;
        }

        // 5. Middlewares after.
        self.fire_middlewares(dispatch, MiddlewarePosition::After)
            .await;

        // 6. Decode: the result is JSON already; plugins may replace the stored value.
        if let Some(decoded) = dispatch
            .fire(&TaskExecutorDecode {
                executor: self,
                result: &result,
            })
            .await
        {
            result = decoded;
        }
        Outcome::Success(result)
    }

    /// The seed flow: a plugin error goes to `task_executor_run_task_trigger_error`; the last
    /// value a handler returns becomes the result.
    async fn recover(&self, dispatch: &Dispatch, error: &TaskError) -> Option<Value> {
        let plugin_error = error.as_plugin_error()?;
        let payload = TaskExecutorRunTaskTriggerError {
            executor: self,
            task: self.task,
            queued: &self.queued,
            error: plugin_error,
        };
        dispatch.fire(&payload).await
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

    async fn fire_middlewares(&self, dispatch: &Dispatch, position: MiddlewarePosition) {
        dispatch
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
