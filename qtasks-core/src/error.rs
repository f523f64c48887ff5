//! Errors: [`Error`] for the app's own operations, [`TaskError`] for what a task fails with,
//! and [`PluginTriggerError`], the error that hands a failure to plugins.

use std::any::{Any, TypeId};
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::backend::BackendError;
use crate::plugin::BoxError;

/// The result of the app's own operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when adding, waiting for or running tasks through the app.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `wait` gave up; the task itself goes on.
    #[error(
        "timed out after {timeout:?} waiting for task {uuid} to finish{}",
        if *.no_worker { "; no worker of this app is running (no heartbeat): start one (`run_forever`, `start`, or the command line's `worker`)" } else { "" }
    )]
    WaitTimeout {
        /// The task waited for.
        uuid: Uuid,
        /// How long the caller waited.
        timeout: Duration,
        /// Whether no worker of the app was alive when the wait gave up (its heartbeat was
        /// missing): then the task is not late, nobody runs it.
        no_worker: bool,
    },
    /// No task with this id is stored.
    #[error("task {0} does not exist")]
    TaskNotFound(Uuid),
    /// A task added by a name no worker of an in-memory app could run: every worker of an
    /// in-memory queue is in this process, and no task of this name is registered here.
    #[error(
        "no task named `{task}` is registered in this process, and the app's queue is in memory, so no worker could run it{hint}"
    )]
    UnknownTask {
        /// The name asked for.
        task: String,
        /// `; did you mean `...`?`, or the registered names.
        hint: String,
    },
    /// A task did not give its result (from [`TaskHandle::result`](crate::TaskHandle::result),
    /// through `?`).
    #[error(transparent)]
    TaskFailed(Box<crate::TaskFailure>),
    /// The arguments given to `add_task` cannot be sent.
    #[error("cannot add task `{task}`: {reason}")]
    InvalidArguments {
        /// The task name.
        task: String,
        /// What was wrong.
        reason: String,
    },
    /// Two `#[qtasks::task]` fns share a name.
    #[error(
        "task name `{name}` is registered twice: at {first} and at {second}; give one of them `name = \"...\"`"
    )]
    DuplicateTask {
        /// The shared name.
        name: &'static str,
        /// `file:line` of one registration.
        first: String,
        /// `file:line` of the other.
        second: String,
    },
    /// An option of a `#[qtasks::task]` that the compiler could not check does not work.
    #[error("task `{task}` at {location}: {reason}")]
    InvalidTaskOption {
        /// The task name.
        task: &'static str,
        /// `file:line` of the task.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A backend URL that no engine compiled into this binary serves (an unknown scheme, or
    /// no `scheme://` at all); the message lists the schemes it knows.
    #[error("{0}")]
    BackendUrl(String),
    /// A queue name that cannot name a queue, or a queue the app's engine cannot keep.
    #[error("queue `{queue}`: {reason}")]
    InvalidQueue {
        /// The queue as given.
        queue: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A plugin registered for a component asked for another component's trigger.
    #[error(
        "trigger `{trigger}` is fired by the {fired_by:?}, not the {component:?}; register the plugin for that component, or on the app",
        fired_by = trigger.component()
    )]
    TriggerNotOfComponent {
        /// The trigger asked for.
        trigger: crate::Trigger,
        /// The component the plugin was registered for.
        component: crate::Component,
    },
    /// The configuration does not parse.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// No schedule of this name is registered here or recorded by a worker.
    #[error("there is no schedule `{0}` (`qtasks schedule list` shows those the workers run)")]
    UnknownSchedule(String),
    /// `start` was called on an app that is running.
    #[error("the app is already running; call `stop()` first")]
    AlreadyRunning,
    /// A plugin's `start` or `stop` failed.
    #[error("plugin `{plugin}` failed to {phase}: {reason}")]
    PluginLifecycle {
        /// The plugin's name.
        plugin: String,
        /// `"start"` or `"stop"`.
        phase: &'static str,
        /// What it said.
        reason: String,
    },
    /// The task's status does not allow what was asked (deleting a task that still waits or
    /// runs, retrying one that succeeded).
    #[error("cannot {action} task {uuid}: it is `{}`; {hint}", .status.as_str())]
    WrongStatus {
        /// What was asked: `"delete"`, `"retry"`.
        action: &'static str,
        /// The task.
        uuid: Uuid,
        /// Its status when asked.
        status: crate::TaskStatus,
        /// What would work instead.
        hint: &'static str,
    },
    /// The broker or storage failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The result type of a task fn: `Ok` is stored as the task's result.
pub type TaskResult<T> = std::result::Result<T, TaskError>;

/// Why a task did not succeed.
///
/// Any error type converts into it with `?` or `.into()`. Two errors are special:
/// [`PluginTriggerError`] (from [`TaskContext::plugin_error`](crate::TaskContext::plugin_error))
/// hands the failure to the `task_executor_run_task_trigger_error` plugins, and
/// [`TaskError::cancel`] (from [`TaskContext::cancel`](crate::TaskContext::cancel)) ends the
/// task with status `cancel`.
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself, so that the blanket
/// conversion from every error type is possible.
pub struct TaskError {
    repr: Repr,
    /// Set by [`TaskError::retry_after`] and [`TaskError::with_retry_after`]: the task asks
    /// to be retried after this wait.
    retry_after: Option<Duration>,
    /// Data for the caller, stored with the record (`error_payload`) and decoded by
    /// [`TaskFailure::payload`](crate::TaskFailure::payload).
    payload: Option<Value>,
}

enum Repr {
    Plugin(PluginTriggerError),
    Cancel(String),
    Failed {
        type_name: &'static str,
        type_id: TypeId,
        error: BoxError,
    },
    Message {
        type_name: &'static str,
        type_id: Option<TypeId>,
        message: String,
    },
}

impl TaskError {
    fn from_repr(repr: Repr) -> Self {
        TaskError {
            repr,
            retry_after: None,
            payload: None,
        }
    }

    /// A failure with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        TaskError::from_repr(Repr::Message {
            type_name: "TaskError",
            type_id: None,
            message: message.to_string(),
        })
    }

    /// An error a caller can match by its type: its type's name (`PaymentDeclined`), its
    /// message (`Display`), and the error itself stored as JSON, which the caller decodes back
    /// with [`TaskFailure::payload`](crate::TaskFailure::payload).
    ///
    /// ```rust,standalone_crate
    /// #[derive(Debug, serde::Serialize, serde::Deserialize)]
    /// struct PaymentDeclined {
    ///     code: u32,
    /// }
    ///
    /// impl std::fmt::Display for PaymentDeclined {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         write!(f, "the card was declined ({})", self.code)
    ///     }
    /// }
    ///
    /// #[qtasks::task]
    /// async fn charge(cents: u64) -> qtasks::TaskResult<u64> {
    ///     Err(qtasks::TaskError::typed(PaymentDeclined { code: 51 }))
    /// }
    ///
    /// #[tokio::main]
    /// async fn main() -> qtasks::Result<()> {
    ///     let app = qtasks::QueueTasks::new();
    ///     app.start().await?;
    ///     let failure = charge::add_task(&app, 100).await?
    ///         .result(std::time::Duration::from_secs(5))
    ///         .await
    ///         .unwrap_err();
    ///     let declined: PaymentDeclined = failure.payload().expect("typed").expect("decodes");
    ///     assert_eq!(declined.code, 51);
    ///     assert_eq!(failure.error_type(), Some("PaymentDeclined"));
    ///     app.stop().await
    /// }
    /// ```
    pub fn typed<E: fmt::Display + serde::Serialize + 'static>(error: E) -> Self {
        let payload = serde_json::to_value(&error).ok();
        let mut typed = TaskError::from_display(error);
        typed.payload = payload;
        typed
    }

    /// This error with data for the caller (any serde value), stored with the record and
    /// decoded by [`TaskFailure::payload`](crate::TaskFailure::payload).
    #[must_use]
    pub fn with_payload(mut self, payload: impl serde::Serialize) -> Self {
        self.payload = serde_json::to_value(payload).ok();
        self
    }

    /// The data stored with this error for the caller, if any.
    pub fn payload(&self) -> Option<&Value> {
        self.payload.as_ref()
    }

    /// Asks for the task to be run again after `delay`, as Celery's `self.retry(countdown=..)`
    /// does: the attempt ends `retry` and its next attempt waits `delay` (not the task's
    /// backoff), whatever `retry_on_exc` says. It counts against the task's `retry`: once the
    /// retries are spent (or without `retry = N`), the task ends `error` saying so.
    ///
    /// ```rust,standalone_crate
    /// use std::time::Duration;
    /// use qtasks::{TaskError, TaskResult};
    ///
    /// #[qtasks::task(retry = 5)]
    /// async fn fetch(url: String) -> TaskResult<String> {
    ///     if url.is_empty() {
    ///         // Not ready yet: try again in 30 s.
    ///         return Err(TaskError::retry_after(Duration::from_secs(30)));
    ///     }
    ///     Ok(url)
    /// }
    /// # fn main() {}
    /// ```
    pub fn retry_after(delay: Duration) -> Self {
        let mut error = TaskError::named(
            "TaskRetry",
            format!("the task asked to be retried after {delay:?}"),
        );
        error.retry_after = Some(delay);
        error
    }

    /// This error, asking for the task to be run again after `delay` (see
    /// [`retry_after`](Self::retry_after)); the traceback of the attempt is this error's.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let error = qtasks::TaskError::msg("the upstream is busy")
    ///     .with_retry_after(Duration::from_secs(5));
    /// assert_eq!(error.retry_delay(), Some(Duration::from_secs(5)));
    /// assert_eq!(error.traceback(), "TaskError: the upstream is busy");
    /// ```
    #[must_use]
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        if self.cancel_reason().is_none() {
            self.retry_after = Some(delay);
        }
        self
    }

    /// The wait the task asked for before its next attempt, if it asked
    /// ([`retry_after`](Self::retry_after)).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Ends the task with status `cancel` and this reason. A cancelled task is never retried.
    pub fn cancel(reason: impl Into<String>) -> Self {
        TaskError::from_repr(Repr::Cancel(reason.into()))
    }

    /// A failure of qtasks' own making with a type name for the traceback
    /// (`DecodeError: ...`).
    pub(crate) fn named(type_name: &'static str, message: String) -> Self {
        TaskError::from_repr(Repr::Message {
            type_name,
            type_id: None,
            message,
        })
    }

    /// A task that panicked: the panic is caught and the task ends `error`.
    pub(crate) fn panicked(message: &str) -> Self {
        TaskError::from_repr(Repr::Message {
            type_name: "TaskPanic",
            type_id: None,
            message: format!("task panicked: {message}"),
        })
    }

    /// Whether the task failed with an error of type `E` (what `retry_on_exc` matches).
    ///
    /// ```
    /// let e: qtasks::TaskError = "x".parse::<u8>().unwrap_err().into();
    /// assert!(e.is::<std::num::ParseIntError>());
    /// assert!(!e.is::<std::io::Error>());
    /// ```
    pub fn is<E: 'static>(&self) -> bool {
        let wanted = TypeId::of::<E>();
        match &self.repr {
            Repr::Plugin(_) => wanted == TypeId::of::<PluginTriggerError>(),
            Repr::Cancel(_) => false,
            Repr::Failed { type_id, .. } => *type_id == wanted,
            Repr::Message { type_id, .. } => *type_id == Some(wanted),
        }
    }

    /// The plugin error this task failed with, if it is one.
    pub fn as_plugin_error(&self) -> Option<&PluginTriggerError> {
        match &self.repr {
            Repr::Plugin(e) => Some(e),
            _ => None,
        }
    }

    /// The cancel reason, if the task cancelled itself.
    pub fn cancel_reason(&self) -> Option<&str> {
        match &self.repr {
            Repr::Cancel(reason) => Some(reason),
            _ => None,
        }
    }

    /// The error the task returned, for downcasting to the task's own error type.
    pub fn source_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.repr {
            Repr::Failed { error, .. } => Some(error.as_ref()),
            _ => None,
        }
    }

    /// The short name of the error type: `TaskPluginTriggerError`, `ParseIntError`, ...
    pub fn type_name(&self) -> &'static str {
        match &self.repr {
            Repr::Plugin(_) => "TaskPluginTriggerError",
            Repr::Cancel(_) => "TaskCancelError",
            Repr::Failed { type_name, .. } | Repr::Message { type_name, .. } => type_name,
        }
    }

    /// Converts a returned `Err(e)` of any `Display + 'static` type, keeping the special
    /// errors special. Used by the code `#[task]` generates.
    pub(crate) fn from_display<E: fmt::Display + 'static>(e: E) -> Self {
        let mut slot = Some(e);
        let any: &mut dyn Any = &mut slot;
        if let Some(task_error) = any.downcast_mut::<Option<TaskError>>() {
            return task_error.take().expect("slot is filled");
        }
        if let Some(plugin_error) = any.downcast_mut::<Option<PluginTriggerError>>() {
            return plugin_error.take().expect("slot is filled").into();
        }
        let e = slot.take().expect("slot is filled");
        TaskError::from_repr(Repr::Message {
            type_name: short_type_name::<E>(),
            type_id: Some(TypeId::of::<E>()),
            message: e.to_string(),
        })
    }

    /// The text stored as the task's `traceback`: `ErrorType: message`, then the causes.
    pub fn traceback(&self) -> String {
        let mut text = format!("{}: {}", self.type_name(), self);
        if let Repr::Failed { error, .. } = &self.repr {
            let mut source = error.source();
            while let Some(cause) = source {
                text.push_str(&format!("\ncaused by: {cause}"));
                source = cause.source();
            }
        }
        text
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for TaskError {
    fn from(error: E) -> Self {
        let mut slot = Some(error);
        let any: &mut dyn Any = &mut slot;
        if let Some(plugin_error) = any.downcast_mut::<Option<PluginTriggerError>>() {
            let plugin_error = plugin_error.take().expect("slot is filled");
            return TaskError::from_repr(Repr::Plugin(plugin_error));
        }
        let error = slot.take().expect("slot is filled");
        TaskError::from_repr(Repr::Failed {
            type_name: short_type_name::<E>(),
            type_id: TypeId::of::<E>(),
            error: Box::new(error),
        })
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Plugin(e) => e.fmt(f),
            Repr::Cancel(reason) => write!(f, "cancelled: {reason}"),
            Repr::Failed { error, .. } => error.fmt(f),
            Repr::Message { message, .. } => f.write_str(message),
        }
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskError({})", self.traceback())
    }
}

/// `core::num::error::ParseIntError` → `ParseIntError` (generic arguments kept).
fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let path_end = full.find('<').unwrap_or(full.len());
    match full[..path_end].rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}

/// The error that hands a task's failure to plugins (the original's `TaskPluginTriggerError`).
///
/// Build it with [`TaskContext::plugin_error`](crate::TaskContext::plugin_error) and add
/// key/value pairs with [`with`](Self::with); handlers of
/// `task_executor_run_task_trigger_error` read them back.
///
/// ```
/// let e = qtasks::PluginTriggerError::new().with("message", "disk full").with("code", 28);
/// assert_eq!(e.message(), Some("disk full"));
/// assert_eq!(e.get("code"), Some(&serde_json::json!(28)));
/// assert_eq!(e.to_string(), "disk full");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginTriggerError {
    kwargs: Map<String, Value>,
}

impl PluginTriggerError {
    /// An error with no key/value pairs.
    pub fn new() -> Self {
        Self::default()
    }

    /// An error with just a `message` (the original's `raise TaskPluginTriggerError("...")`).
    pub fn with_message(message: impl Into<String>) -> Self {
        Self::new().with("message", message.into())
    }

    /// Adds a key/value pair for the plugins to read.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.kwargs.insert(key.into(), value.into());
        self
    }

    /// All key/value pairs (the original's `e.kwargs`).
    pub fn kwargs(&self) -> &Map<String, Value> {
        &self.kwargs
    }

    /// One value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kwargs.get(key)
    }

    /// The `message` value, if it is a string.
    pub fn message(&self) -> Option<&str> {
        self.kwargs.get("message").and_then(Value::as_str)
    }
}

impl fmt::Display for PluginTriggerError {
    /// The `message` value; without one, all key/value pairs as JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(message) => f.write_str(message),
            None => write!(f, "plugin error {}", Value::Object(self.kwargs.clone())),
        }
    }
}

impl StdError for PluginTriggerError {}

/// A task ran over its time limit (`max_time`). Match it with `retry_on_exc = [qtasks::TimeoutError]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("time limit exceeded for task `{task}`: {seconds} seconds")]
pub struct TimeoutError {
    /// The task name.
    pub task: String,
    /// The limit, in seconds.
    pub seconds: f64,
}

/// A task argument that is missing, extra or does not decode into the parameter's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task `{task}`: {problem}")]
pub struct ArgumentError {
    /// The task name.
    pub task: String,
    /// What is wrong, naming the parameter.
    pub problem: String,
}

/// Shows an error with its sources, `outer: inner: innermost`, for logs and messages. Errors of
/// qtasks keep their causes as [`source`](StdError::source) rather than in their own message,
/// as Rust errors should; this puts them back on one line.
///
/// ```
/// use qtasks::backend::{BackendError, ErrorChain};
///
/// let error = BackendError::new("redis", "reading task 7").with_source(std::io::Error::other("connection refused"));
/// assert_eq!(ErrorChain(&error).to_string(), "redis backend: reading task 7: connection refused");
/// ```
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<crate::TaskFailure> for Error {
    fn from(failure: crate::TaskFailure) -> Self {
        Error::TaskFailed(Box::new(failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_type_name_in_the_traceback() {
        let e: TaskError = "x".parse::<i32>().unwrap_err().into();
        assert_eq!(
            e.traceback(),
            "ParseIntError: invalid digit found in string"
        );
    }

    #[test]
    fn a_plugin_error_stays_a_plugin_error_through_into() {
        let e: TaskError = PluginTriggerError::with_message("boom").into();
        assert_eq!(
            e.as_plugin_error().and_then(PluginTriggerError::message),
            Some("boom")
        );
        assert_eq!(e.traceback(), "TaskPluginTriggerError: boom");
        let e = TaskError::from_display(PluginTriggerError::with_message("again"));
        assert!(e.as_plugin_error().is_some());
    }

    #[test]
    fn display_errors_convert() {
        let e = TaskError::from_display(String::from("plain text"));
        assert_eq!(e.traceback(), "String: plain text");
        let e = TaskError::from_display(TaskError::cancel("stop"));
        assert_eq!(e.cancel_reason(), Some("stop"));
    }
}
