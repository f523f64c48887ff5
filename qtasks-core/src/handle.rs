//! Handles on added tasks: [`TaskHandle`] to wait for a task and read its record, typed by the
//! task's output so [`result`](TaskHandle::result) returns the value itself, and
//! [`StreamHandle`] for a stream task's items as they arrive.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::{Error, QueueTasks, Result, TaskRecord, TaskStatus};

/// The most attempts a handle follows along a retry chain.
const MAX_CHAIN: usize = 10_000;

/// A task that was added: wait for it, read its record, or get its result typed.
///
/// `T` is the task's output: `add::add_task(&app, 2, 3)` gives a `TaskHandle<i64>` when `add`
/// returns `i64` (or `TaskResult<i64>`), and [`result`](Self::result) returns that `i64`, or a
/// [`TaskFailure`] saying how the task did not succeed. A task added by name
/// ([`QueueTasks::add_task`]) gives a `TaskHandle` of [`serde_json::Value`], the default.
///
/// ```
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
/// let handle = add::add_task(&app, 2, 3).await?;
/// let sum: i64 = handle.result(Duration::from_secs(5)).await.expect("it succeeds");
/// assert_eq!(sum, 5);
/// # app.stop().await }
/// ```
pub struct TaskHandle<T = Value> {
    uuid: Uuid,
    app: QueueTasks,
    output: PhantomData<fn() -> T>,
}

impl<T> Clone for TaskHandle<T> {
    fn clone(&self) -> Self {
        TaskHandle {
            uuid: self.uuid,
            app: self.app.clone(),
            output: PhantomData,
        }
    }
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("uuid", &self.uuid)
            .field("app", &self.app.name())
            .field("output", &std::any::type_name::<T>())
            .finish()
    }
}

impl TaskHandle {
    pub(crate) fn new(uuid: Uuid, app: QueueTasks) -> Self {
        TaskHandle {
            uuid,
            app,
            output: PhantomData,
        }
    }
}

impl<T> TaskHandle<T> {
    /// The task's id.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The same task, read as another output type (`TaskHandle<Value>` reads any).
    pub fn typed<U>(&self) -> TaskHandle<U> {
        TaskHandle {
            uuid: self.uuid,
            app: self.app.clone(),
            output: PhantomData,
        }
    }

    /// The same task without its output type: results read as JSON.
    pub fn untyped(&self) -> TaskHandle {
        self.typed()
    }

    /// Waits until the task ends and returns its record, whatever the outcome.
    ///
    /// Resolves as soon as the worker stores the result (there is no polling interval), and
    /// follows a retried task to its last attempt. Fails with
    /// [`Error::WaitTimeout`] when `timeout` passes first; the task itself goes on.
    pub async fn wait(&self, timeout: Duration) -> Result<TaskRecord> {
        self.app.wait(self.uuid, timeout).await
    }

    /// The task's record as it is now.
    pub async fn get(&self) -> Result<Option<TaskRecord>> {
        self.app.get(self.uuid).await
    }

    /// The progress the task last reported (`ctx.set_progress`), read as `P`; `None` before it
    /// reported any (or for a task that does not exist).
    ///
    /// ```rust,standalone_crate
    /// # use std::time::Duration;
    /// #[qtasks::task(echo = true)]
    /// async fn import(ctx: qtasks::TaskContext) -> qtasks::TaskResult<()> {
    ///     ctx.set_progress(100)?;
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// app.start().await?;
    /// let handle = import::add_task(&app).await?;
    /// handle.wait(Duration::from_secs(5)).await?;
    /// assert_eq!(handle.progress::<u32>().await?, Some(100));
    /// # app.stop().await }
    /// ```
    pub async fn progress<P: DeserializeOwned>(
        &self,
    ) -> std::result::Result<Option<P>, TaskFailure> {
        let record = self
            .app
            .get(self.uuid)
            .await
            .map_err(|error| TaskFailure::Backend(Box::new(error)))?;
        record
            .and_then(|record| record.progress)
            .map(|value| decode(self.uuid, value))
            .transpose()
    }

    /// The task's progress as it reports it, read as `P`: each new value once stored (a task
    /// reporting faster than the throttle is seen at its pace), ending when the task ends.
    pub fn progress_updates<P: DeserializeOwned + 'static>(
        &self,
    ) -> impl futures_core::Stream<Item = std::result::Result<P, TaskFailure>> + Send + 'static
    {
        let storage = std::sync::Arc::clone(&self.app.components().storage);
        let uuid = self.uuid;
        futures_util::stream::unfold(
            (storage, None::<f64>, false),
            move |(storage, after, ended)| async move {
                if ended {
                    return None;
                }
                match storage.wait_progress(uuid, after).await {
                    Err(error) => Some((
                        Err(TaskFailure::Backend(Box::new(error.into()))),
                        (storage, after, true),
                    )),
                    Ok(None) => None,
                    Ok(Some(record)) => {
                        let ended = record.status.is_final();
                        let fresh = crate::backend::progress_is_newer(&record, after);
                        match (fresh, record.progress) {
                            (true, Some(value)) => {
                                Some((decode(uuid, value), (storage, record.progress_at, ended)))
                            }
                            // Ended with nothing new.
                            _ => None,
                        }
                    }
                }
            },
        )
    }

    /// Cancels the task, as [`QueueTasks::cancel`] does: one still queued never runs, a running
    /// one is stopped, and it ends `cancel` with `reason`. Returns `false` when the task had
    /// ended already.
    ///
    /// ```rust,standalone_crate
    /// # #[qtasks::task]
    /// # async fn report(year: u32) -> String { format!("{year}") }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new(); // not started: the task waits
    /// let handle = report::add_task(&app, 2026).await?;
    /// assert!(handle.cancel("not needed any more").await?);
    /// let failure = handle.result(std::time::Duration::from_secs(1)).await.unwrap_err();
    /// assert!(matches!(failure, qtasks::TaskFailure::Cancelled { .. }));
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self, reason: &str) -> Result<bool> {
        // A retried task lives on in its last attempt: that one is cancelled. An attempt that
        // ends `retry` just as it is cancelled is followed to its next attempt. (A chain of
        // records that loops, written by a plugin, stops at the first attempt seen twice.)
        let mut uuid = self.uuid;
        let mut seen = std::collections::HashSet::new();
        while seen.insert(uuid) && seen.len() <= MAX_CHAIN {
            let record = self.app.get(uuid).await?;
            if let Some(next) = record
                .filter(|record| record.status == TaskStatus::Retry)
                .and_then(|record| record.retry_child_uuid)
            {
                uuid = next;
                continue;
            }
            if self.app.cancel(uuid, reason).await? {
                return Ok(true);
            }
            // Not cancelled: ended, perhaps as `retry` in the meantime.
            match self.app.get(uuid).await? {
                Some(record) if record.status == TaskStatus::Retry => {
                    match record.retry_child_uuid {
                        Some(next) => uuid = next,
                        None => return Ok(false),
                    }
                }
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The items of a stream task as JSON, as the worker stores them, while it runs; the
    /// stream ends when the task ends (the items of a task that failed half-way are the ones
    /// it produced). [`StreamHandle::items`] reads them typed.
    pub fn items(&self) -> impl futures_core::Stream<Item = Result<Value>> + Send + 'static {
        let storage = std::sync::Arc::clone(&self.app.components().storage);
        let start = (
            storage,
            self.uuid,
            0_usize,
            std::collections::VecDeque::new(),
            false,
        );
        futures_util::stream::unfold(
            start,
            |(storage, uuid, mut seen, mut buffered, mut ended)| async move {
                loop {
                    if let Some(item) = buffered.pop_front() {
                        return Some((Ok(item), (storage, uuid, seen, buffered, ended)));
                    }
                    if ended {
                        return None;
                    }
                    match storage.wait_items(uuid, seen).await {
                        Ok(read) => {
                            seen += read.items.len();
                            buffered.extend(read.items);
                            ended = read.ended;
                        }
                        Err(error) => {
                            return Some((
                                Err(error.into()),
                                (storage, uuid, seen, buffered, true),
                            ));
                        }
                    }
                }
            },
        )
    }
}

impl<T: DeserializeOwned> TaskHandle<T> {
    /// Waits until the task ends and returns its result as `T`, or how it did not succeed:
    /// it failed ([`TaskFailure::Error`]), was cancelled ([`TaskFailure::Cancelled`]), did not
    /// end within `timeout` ([`TaskFailure::Timeout`]), does not exist
    /// ([`TaskFailure::NotFound`]), or its stored result is not a `T`
    /// ([`TaskFailure::Decode`]). A retried task's result is its last attempt's.
    pub async fn result(&self, timeout: Duration) -> std::result::Result<T, TaskFailure> {
        let record = self.wait(timeout).await.map_err(|error| match error {
            Error::WaitTimeout {
                uuid,
                timeout,
                no_worker,
            } => TaskFailure::Timeout {
                uuid,
                timeout,
                no_worker,
            },
            Error::TaskNotFound(uuid) => TaskFailure::NotFound { uuid },
            other => TaskFailure::Backend(Box::new(other)),
        })?;
        outcome_of::<T>(record)
    }
}

/// The typed outcome of an ended record.
pub(crate) fn outcome_of<T: DeserializeOwned>(
    record: TaskRecord,
) -> std::result::Result<T, TaskFailure> {
    let uuid = record.uuid;
    match record.status {
        TaskStatus::Success => {
            let value = record.returning.unwrap_or(Value::Null);
            decode(uuid, value)
        }
        TaskStatus::Cancel => Err(TaskFailure::Cancelled {
            uuid,
            reason: record.cancel_reason.unwrap_or_default(),
        }),
        _ => {
            let traceback = record.traceback.unwrap_or_default();
            let (error_type, message) = split_traceback(&traceback);
            Err(TaskFailure::Error {
                uuid,
                error_type,
                message,
                traceback,
                payload: record.error_payload,
            })
        }
    }
}

fn decode<T: DeserializeOwned>(uuid: Uuid, value: Value) -> std::result::Result<T, TaskFailure> {
    serde_json::from_value::<T>(value.clone()).map_err(|error| TaskFailure::Decode {
        uuid,
        expected: std::any::type_name::<T>(),
        value: shown(&value),
        reason: error.to_string(),
    })
}

/// A stored value, shortened for a message.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

/// `ErrorType: message` (how qtasks writes an error) into its two parts; a traceback of
/// another shape (a Python one) is all message, with the type `Error`.
fn split_traceback(traceback: &str) -> (String, String) {
    let first_line = traceback.lines().next().unwrap_or_default();
    match first_line.split_once(": ") {
        Some((kind, _))
            if !kind.is_empty()
                && kind
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '.') =>
        {
            let message = traceback[kind.len() + 2..].to_owned();
            (kind.to_owned(), message)
        }
        _ => ("Error".to_owned(), traceback.to_owned()),
    }
}

/// How a task did not give its result: what [`TaskHandle::result`] returns instead of the
/// value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskFailure {
    /// The task failed (after its retries, if it had any).
    #[error("task {uuid} failed: {error_type}: {message}")]
    Error {
        /// The task's id (a retried task's last attempt).
        uuid: Uuid,
        /// The error's type, as stored (`TaskError`, `ArgumentError`, `Panic`, ...).
        error_type: String,
        /// The error's message, with its causes.
        message: String,
        /// The stored traceback as it is (`ErrorType: message`).
        traceback: String,
        /// The error's data, when the task gave it (`TaskError::typed`, `with_payload`):
        /// [`payload`](TaskFailure::payload) decodes it.
        payload: Option<Value>,
    },
    /// The task was cancelled.
    #[error("task {uuid} was cancelled: {reason}")]
    Cancelled {
        /// The task's id.
        uuid: Uuid,
        /// Why, as the canceller said.
        reason: String,
    },
    /// The task did not end in time; it goes on.
    #[error("task {uuid} did not end within {timeout:?}{}", if *.no_worker { "; no worker of this app is running (no heartbeat): start one" } else { "" })]
    Timeout {
        /// The task's id.
        uuid: Uuid,
        /// How long the caller waited.
        timeout: Duration,
        /// Whether no worker of the app was alive when the wait gave up.
        no_worker: bool,
    },
    /// No task with this id is stored.
    #[error("task {uuid} does not exist")]
    NotFound {
        /// The id asked for.
        uuid: Uuid,
    },
    /// The task succeeded, but its stored result is not of the handle's output type (a worker
    /// running other code, a task added by name with the wrong type).
    #[error("task {uuid} succeeded, but its result {value} is not a `{expected}`: {reason}")]
    Decode {
        /// The task's id.
        uuid: Uuid,
        /// The type the handle expected.
        expected: &'static str,
        /// The stored value (shortened).
        value: String,
        /// What serde said.
        reason: String,
    },
    /// Reading the task failed (the backend is unreachable, ...).
    #[error("reading the task failed: {0}")]
    Backend(#[source] Box<Error>),
}

impl TaskFailure {
    /// For a task that failed, its error's type name as stored (`PaymentDeclined`,
    /// `TaskError`, `TimeoutError`, ...).
    pub fn error_type(&self) -> Option<&str> {
        match self {
            TaskFailure::Error { error_type, .. } => Some(error_type),
            _ => None,
        }
    }

    /// For a task that failed with data for its caller (`TaskError::typed`, `with_payload`),
    /// that data read as `E`: `None` when there is none, `Some(Err(..))` (a
    /// [`TaskFailure::Decode`]) when it is not an `E`.
    pub fn payload<E: DeserializeOwned>(&self) -> Option<std::result::Result<E, TaskFailure>> {
        match self {
            TaskFailure::Error {
                uuid,
                payload: Some(payload),
                ..
            } => Some(decode(*uuid, payload.clone())),
            _ => None,
        }
    }

    /// The id of the task this is about, if the failure names one.
    pub fn uuid(&self) -> Option<Uuid> {
        match self {
            TaskFailure::Error { uuid, .. }
            | TaskFailure::Cancelled { uuid, .. }
            | TaskFailure::Timeout { uuid, .. }
            | TaskFailure::NotFound { uuid }
            | TaskFailure::Decode { uuid, .. } => Some(*uuid),
            TaskFailure::Backend(_) => None,
        }
    }
}

/// A stream task that was added: its items typed, as they arrive. Derefs to the
/// [`TaskHandle`] of all its items (`result` returns them as a `Vec`).
///
/// ```
/// use futures_util::StreamExt;
///
/// #[qtasks::task]
/// async fn count_to(n: u32) -> impl futures_util::Stream<Item = u32> {
///     futures_util::stream::iter(1..=n)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> qtasks::Result<()> {
/// let app = qtasks::QueueTasks::new();
/// app.start().await?;
/// let handle = count_to::add_task(&app, 3).await?;
/// let items: Vec<u32> = handle.items().map(|item| item.expect("a u32")).collect().await;
/// assert_eq!(items, [1, 2, 3]);
/// # app.stop().await }
/// ```
pub struct StreamHandle<I> {
    handle: TaskHandle<Vec<I>>,
}

impl<I> Clone for StreamHandle<I> {
    fn clone(&self) -> Self {
        StreamHandle {
            handle: self.handle.clone(),
        }
    }
}

impl<I> fmt::Debug for StreamHandle<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StreamHandle").field(&self.handle).finish()
    }
}

impl<I> StreamHandle<I> {
    pub(crate) fn new(handle: TaskHandle) -> Self {
        StreamHandle {
            handle: handle.typed(),
        }
    }
}

/// A handle [`TaskCall::add`](crate::TaskCall::add) can give back: [`TaskHandle`] of any
/// result type, or [`StreamHandle`].
pub trait FromTaskHandle {
    /// The handle of the task `handle` names, typed as `Self`.
    fn from_task_handle(handle: TaskHandle) -> Self;
}

impl<T> FromTaskHandle for TaskHandle<T> {
    fn from_task_handle(handle: TaskHandle) -> Self {
        handle.typed()
    }
}

impl<I> FromTaskHandle for StreamHandle<I> {
    fn from_task_handle(handle: TaskHandle) -> Self {
        StreamHandle::new(handle)
    }
}

impl<I> Deref for StreamHandle<I> {
    type Target = TaskHandle<Vec<I>>;

    fn deref(&self) -> &Self::Target {
        &self.handle
    }
}

impl<I: DeserializeOwned + 'static> StreamHandle<I> {
    /// The task's items as `I`, as the worker stores them, while it runs; the stream ends when
    /// the task ends. An item that is not an `I` is a [`TaskFailure::Decode`].
    pub fn items(
        &self,
    ) -> impl futures_core::Stream<Item = std::result::Result<I, TaskFailure>> + Send + 'static
    {
        use futures_util::StreamExt;
        let uuid = self.handle.uuid();
        self.handle.items().map(move |item| match item {
            Ok(value) => decode(uuid, value),
            Err(error) => Err(TaskFailure::Backend(Box::new(error))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracebacks_split_into_type_and_message() {
        assert_eq!(
            split_traceback("TaskError: ошибка: bad input"),
            ("TaskError".to_owned(), "ошибка: bad input".to_owned())
        );
        assert_eq!(
            split_traceback("Traceback (most recent call last):\n  File x"),
            (
                "Error".to_owned(),
                "Traceback (most recent call last):\n  File x".to_owned()
            )
        );
    }

    #[test]
    fn a_value_of_another_type_is_a_decode_failure_naming_both() {
        let failure = decode::<u32>(Uuid::nil(), Value::from("five")).unwrap_err();
        let text = failure.to_string();
        assert!(text.contains("\"five\"") && text.contains("u32"), "{text}");
    }
}
