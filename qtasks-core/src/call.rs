//! Pre-built calls of tasks, and chains of them (the original's `task(..)` objects and
//! `chain(..)`).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::handle::FromTaskHandle;
use crate::{
    AddOptions, Error, QueueTasks, Result, TaskDefinition, TaskHandle, TaskRecord, TaskStatus,
};

/// A call of a task, built but not sent: `add::call(2, 3)`. Send it with [`add`](Self::add),
/// chain it with [`chain`], or run it in process with [`testing::run`](crate::testing::run).
///
/// `H` is the handle [`add`](Self::add) gives back: a task's own call (`add::call(2, 3)`) is
/// typed by the task's result, so the options keep the type and `add` returns a
/// `TaskHandle<i64>` (a stream task's, a `StreamHandle` of its items). A call by name
/// ([`TaskCall::new`]) reads results as JSON.
///
/// ```rust,standalone_crate
/// use std::time::Duration;
///
/// #[qtasks::task]
/// async fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> qtasks::Result<()> {
/// let app = qtasks::QueueTasks::new();
/// app.start().await?;
/// let handle: qtasks::TaskHandle<i64> = add::call(2, 3)
///     .priority(-1)
///     .delay(Duration::from_millis(10))
///     .add(&app)
///     .await?;
/// assert_eq!(handle.result(Duration::from_secs(5)).await?, 5);
/// # app.stop().await }
/// ```
pub struct TaskCall<H = TaskHandle> {
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
    /// The task's id, when the caller chose it ([`uuid`](Self::uuid)).
    pub(crate) uuid: Option<uuid::Uuid>,
    /// How long after each add the task is not started any more ([`expires`](Self::expires)):
    /// kept relative, so a schedule that adds the call again gives each add its own expiry.
    pub(crate) expires: Option<Duration>,
    /// This call's time limit per run ([`max_time`](Self::max_time)).
    pub(crate) max_time: Option<Duration>,
    /// The queue chosen for this call ([`queue`](Self::queue)).
    pub(crate) queue: Option<String>,
    /// The unique key of this call ([`unique`](Self::unique)).
    pub(crate) unique: Option<crate::unique::UniqueKey>,
    /// The key this call's rate is kept by ([`rate_key`](Self::rate_key)).
    pub(crate) rate_key: Option<String>,
    pub(crate) definition: Option<&'static TaskDefinition>,
    /// An argument that did not encode, reported when the call is sent.
    pub(crate) invalid: Option<String>,
    handle: PhantomData<fn() -> H>,
}

impl<H> Clone for TaskCall<H> {
    fn clone(&self) -> Self {
        TaskCall {
            task_name: self.task_name.clone(),
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            priority: self.priority,
            run_at: self.run_at,
            uuid: self.uuid,
            expires: self.expires,
            max_time: self.max_time,
            queue: self.queue.clone(),
            unique: self.unique.clone(),
            rate_key: self.rate_key.clone(),
            definition: self.definition,
            invalid: self.invalid.clone(),
            handle: PhantomData,
        }
    }
}

impl<H> fmt::Debug for TaskCall<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCall")
            .field("task_name", &self.task_name)
            .field("args", &self.args)
            .field("kwargs", &self.kwargs)
            .field("priority", &self.priority)
            .field("run_at", &self.run_at)
            .field("uuid", &self.uuid)
            .field("expires", &self.expires)
            .field("max_time", &self.max_time)
            .field("queue", &self.queue)
            .field("unique", &self.unique)
            .field("rate_key", &self.rate_key)
            .finish_non_exhaustive()
    }
}

impl TaskCall {
    /// A call of a task by name; its handle reads the result as JSON.
    pub fn new(task_name: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        TaskCall {
            task_name: task_name.into(),
            args,
            kwargs,
            priority: None,
            run_at: None,
            uuid: None,
            expires: None,
            max_time: None,
            queue: None,
            unique: None,
            rate_key: None,
            definition: None,
            invalid: None,
            handle: PhantomData,
        }
    }
}

impl<H> TaskCall<H> {
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
            uuid: None,
            expires: None,
            max_time: None,
            queue: None,
            unique: None,
            rate_key: None,
            definition: Some(definition),
            invalid,
            handle: PhantomData,
        }
    }

    /// Sets the priority of this call (lower runs first).
    #[must_use]
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Runs the task no sooner than `delay` after the call is built: `add::call(2, 3).delay(..)`.
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

    /// Adds the task under this id rather than a new one; an add whose id is known already
    /// adds nothing and names the task the first add made (see [`AddOptions::uuid`]).
    #[must_use]
    pub fn uuid(mut self, uuid: uuid::Uuid) -> Self {
        self.uuid = Some(uuid);
        self
    }

    /// Drops the task if no worker has started it within `expires` from when it is added
    /// (each add of the call, for a schedule); see [`AddOptions::expires`].
    #[must_use]
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = Some(expires);
        self
    }

    /// The time limit of each run of this call, instead of the task's `max_time`.
    #[must_use]
    pub fn max_time(mut self, limit: Duration) -> Self {
        self.max_time = Some(limit);
        self
    }

    /// Puts this call in the named queue `queue` instead of the task's (`#[task(queue = ..)]`),
    /// for workers that serve it. A name that is not a valid queue name fails the add with
    /// [`Error::InvalidQueue`].
    ///
    /// ```rust,standalone_crate
    /// #[qtasks::task]
    /// async fn resize(image: String) -> String { image }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::builder().queues("default,thumbnails").build();
    /// app.start().await?;
    /// let handle = resize::call("cat.png".into()).queue("thumbnails").add(&app).await?;
    /// assert_eq!(handle.get().await?.unwrap().queue.as_deref(), Some("thumbnails"));
    /// # handle.result(std::time::Duration::from_secs(5)).await.unwrap();
    /// # app.stop().await }
    /// ```
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Makes this call unique by `key` for `window` (see
    /// [`AddOptions::unique`](crate::AddOptions::unique)): an add while the key is held returns
    /// the holder's handle.
    #[must_use]
    pub fn unique(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.unique = Some(crate::unique::UniqueKey::new(key, window));
        self
    }

    /// Keeps the task's rate limit for this key apart (see
    /// [`AddOptions::rate_key`](crate::AddOptions::rate_key)).
    #[must_use]
    pub fn rate_key(mut self, key: impl Into<String>) -> Self {
        self.rate_key = Some(key.into());
        self
    }

    /// The same call, its handle reading the result as JSON (to put calls of different tasks
    /// in one list).
    pub fn untyped(self) -> TaskCall {
        TaskCall {
            task_name: self.task_name,
            args: self.args,
            kwargs: self.kwargs,
            priority: self.priority,
            run_at: self.run_at,
            uuid: self.uuid,
            expires: self.expires,
            max_time: self.max_time,
            queue: self.queue,
            unique: self.unique,
            rate_key: self.rate_key,
            definition: self.definition,
            invalid: self.invalid,
            handle: PhantomData,
        }
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

    /// Sends the call as the task `uuid` (a schedule's slot, which every worker names alike),
    /// or under the call's own id, or a new one.
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
        let options = self.options(uuid, group);
        app.add_task_with(&self.task_name, &self.args, &self.kwargs, options)
            .await
    }

    /// The call made into the task it adds, ready to store ([`QueueTasks::add_many`]).
    pub(crate) async fn prepare(&self, app: &QueueTasks) -> Result<crate::app::Prepared> {
        self.check()?;
        let options = self.options(None, None);
        app.prepare_call(&self.task_name, &self.args, &self.kwargs, options)
            .await
    }

    /// The add options this call makes, as the task `uuid`, a member of `group`.
    fn options(&self, uuid: Option<uuid::Uuid>, group: Option<uuid::Uuid>) -> AddOptions {
        AddOptions {
            priority: self.priority,
            run_at: self.run_at,
            uuid: uuid.or(self.uuid),
            group,
            expires_at: self
                .expires
                .and_then(|expires| std::time::SystemTime::now().checked_add(expires)),
            max_time: self.max_time,
            queue: self.queue.clone(),
            unique: self.unique.clone(),
            rate_key: self.rate_key.clone(),
            workflow: None,
        }
    }
}

impl<H: FromTaskHandle> TaskCall<H> {
    /// Sends the call: adds the task to the app's queue. The handle is typed as the call is.
    pub async fn add(&self, app: &QueueTasks) -> Result<H> {
        self.add_as(app, None).await.map(H::from_task_handle)
    }

    /// [`add`](Self::add), written through `target` instead of the app's broker: the app's
    /// whole add pipeline runs (defaults, validation, plugin triggers), and `target` stores
    /// the task (an engine's handle on a transaction of the caller's own, such as PostgreSQL's
    /// `add_in`). See [`AddTarget`](crate::backend::AddTarget).
    pub async fn add_via(
        &self,
        app: &QueueTasks,
        target: &mut dyn crate::backend::AddTarget,
    ) -> Result<H> {
        self.check()?;
        let options = self.options(None, None);
        app.add_task_via(&self.task_name, &self.args, &self.kwargs, options, target)
            .await
            .map(H::from_task_handle)
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
///
/// The calls are of one type: put calls of tasks with different result types in one list with
/// [`TaskCall::untyped`].
pub fn chain<H>(calls: impl IntoIterator<Item = TaskCall<H>>) -> Chain {
    Chain {
        calls: calls.into_iter().map(TaskCall::untyped).collect(),
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
    ///
    /// The chain is added as a [workflow](crate::workflow): the workers add each next step, so
    /// it goes on if the caller exits (or this wait times out).
    pub async fn run(self, app: &QueueTasks, timeout: Duration) -> Result<Vec<TaskRecord>> {
        if self.calls.is_empty() {
            return Ok(Vec::new());
        }
        let (flow, steps) = crate::workflow::Flow::of_calls(&self.calls);
        flow.add(app).await?;
        let mut records: Vec<TaskRecord> = Vec::with_capacity(steps.len());
        for step in steps {
            // A step's record exists once the one before ended and its worker added it.
            let deadline = tokio::time::Instant::now() + timeout;
            while app.get(step).await?.is_none() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::WaitTimeout {
                        uuid: step,
                        timeout,
                        no_worker: !app.ping().await.unwrap_or(true),
                    });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let record = app.handle::<Value>(step).wait(left).await?;
            let succeeded = record.status == TaskStatus::Success;
            records.push(record);
            if !succeeded {
                break;
            }
        }
        Ok(records)
    }

    /// Adds the chain as a [workflow](crate::workflow) and returns its handle (its result: the
    /// last step's, as JSON), without waiting.
    pub async fn add(self, app: &QueueTasks) -> Result<crate::workflow::WorkflowHandle<Value>> {
        crate::workflow::Flow::of_calls(&self.calls)
            .0
            .add(app)
            .await
    }
}
