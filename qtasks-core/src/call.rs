//! Pre-built calls of tasks, and chains of them (the original's `task(..)` objects and
//! `chain(..)`).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::{
    AddOptions, Error, QueueTasks, Result, TaskDefinition, TaskHandle, TaskRecord, TaskStatus,
};

/// A call of a task, built but not sent: `add::call(2, 3)`. Send it with [`add`](Self::add),
/// chain it with [`chain`], or run it in process with [`testing::run`](crate::testing::run).
#[derive(Debug, Clone)]
pub struct TaskCall {
    /// The task name.
    pub task_name: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// The priority of this call; `None` takes the task's, then the app's default.
    pub priority: Option<i64>,
    /// When the task may run, if later than when it is added.
    pub run_at: Option<std::time::SystemTime>,
    pub(crate) definition: Option<&'static TaskDefinition>,
    /// An argument that did not encode, reported when the call is sent.
    pub(crate) invalid: Option<String>,
}

impl TaskCall {
    /// A call of a task by name.
    pub fn new(task_name: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        TaskCall {
            task_name: task_name.into(),
            args,
            kwargs,
            priority: None,
            run_at: None,
            definition: None,
            invalid: None,
        }
    }

    pub(crate) fn defined(definition: &'static TaskDefinition, args: Result<Vec<Value>>) -> Self {
        let (args, invalid) = match args {
            Ok(args) => (args, None),
            Err(error) => (Vec::new(), Some(error.to_string())),
        };
        TaskCall {
            task_name: definition.parts.name.to_owned(),
            args,
            kwargs: Map::new(),
            priority: None,
            run_at: None,
            definition: Some(definition),
            invalid,
        }
    }

    /// Sets the priority of this call.
    #[must_use]
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Runs the task no sooner than `delay` after the call is sent: `add::call(2, 3).delay(..)`.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at = Some(std::time::SystemTime::now() + delay);
        self
    }

    /// Runs the task no sooner than `time`.
    #[must_use]
    pub fn at(mut self, time: std::time::SystemTime) -> Self {
        self.run_at = Some(time);
        self
    }

    pub(crate) fn check(&self) -> Result<()> {
        match &self.invalid {
            Some(reason) => Err(Error::InvalidArguments {
                task: self.task_name.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Sends the call: adds the task to the app's queue.
    pub async fn add(&self, app: &QueueTasks) -> Result<TaskHandle> {
        self.add_as(app, None).await
    }

    /// Sends the call as the task `uuid` (a schedule's slot, which every worker names alike).
    pub(crate) async fn add_as(
        &self,
        app: &QueueTasks,
        uuid: Option<uuid::Uuid>,
    ) -> Result<TaskHandle> {
        self.add_placed(app, uuid, None).await
    }

    /// Sends the call as the task `uuid`, a member of `group`.
    pub(crate) async fn add_placed(
        &self,
        app: &QueueTasks,
        uuid: Option<uuid::Uuid>,
        group: Option<uuid::Uuid>,
    ) -> Result<TaskHandle> {
        self.check()?;
        let options = AddOptions {
            priority: self.priority,
            run_at: self.run_at,
            uuid,
            group,
        };
        app.add_task_with(&self.task_name, &self.args, &self.kwargs, options)
            .await
    }
}

/// Runs calls one after another, each with the previous one's result appended as its last
/// positional argument, as the original's `chain` does.
///
/// ```rust,standalone_crate
/// #[qtasks::task]
/// async fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// #[tokio::main]
/// async fn main() -> qtasks::Result<()> {
///     let app = qtasks::QueueTasks::new();
///     app.start().await?;
///     // add(2, 2) = 4, then add(4, 4) = 8, then add(8, 8) = 16.
///     let records = qtasks::chain([add::call(2, 2), add::call_with(4), add::call_with(8)])
///         .run(&app, std::time::Duration::from_secs(5))
///         .await?;
///     let results: Vec<_> = records.iter().map(|r| r.returning.clone().unwrap()).collect();
///     assert_eq!(results, [4, 8, 16]);
///     app.stop().await
/// }
/// ```
pub fn chain(calls: impl IntoIterator<Item = TaskCall>) -> Chain {
    Chain {
        calls: calls.into_iter().collect(),
    }
}

/// Calls run one after another; see [`chain`].
#[derive(Debug, Clone)]
pub struct Chain {
    calls: Vec<TaskCall>,
}

impl Chain {
    /// Runs the calls, waiting up to `timeout` for each. Stops at the first task that does not
    /// succeed: the records returned end with it.
    pub async fn run(self, app: &QueueTasks, timeout: Duration) -> Result<Vec<TaskRecord>> {
        let mut records: Vec<TaskRecord> = Vec::with_capacity(self.calls.len());
        for mut call in self.calls {
            if let Some(previous) = records.last() {
                call.args
                    .push(previous.returning.clone().unwrap_or(Value::Null));
            }
            let record = call.add(app).await?.wait(timeout).await?;
            let succeeded = record.status == TaskStatus::Success;
            records.push(record);
            if !succeeded {
                break;
            }
        }
        Ok(records)
    }
}
