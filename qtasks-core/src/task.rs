//! The task model: definitions (what `#[task]` registers), queued tasks (what the broker
//! carries), records (what storage keeps) and handles (what `add_task` returns).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Result;
use crate::backend::unix_now;
use crate::records::TaskRecord;

/// The status of a task, as the original names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting in the queue.
    New,
    /// Taken by a worker and running (a task with limits reads so, too, for the moment
    /// between its delivery and the check that may park it or give it a later turn).
    Process,
    /// Finished; `returning` holds the result.
    Success,
    /// Failed; `traceback` holds the reason.
    Error,
    /// Cancelled; `cancel_reason` holds the reason.
    Cancel,
    /// Failed and was retried as a new task (written by the original's retry plugin).
    Retry,
}

impl TaskStatus {
    /// Every status, in the order of a task's life.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::New,
        TaskStatus::Process,
        TaskStatus::Success,
        TaskStatus::Error,
        TaskStatus::Cancel,
        TaskStatus::Retry,
    ];

    /// Whether this record will not change again: success, error, cancel, or retry (the
    /// attempt ended and a child task carries on; [`TaskHandle::wait`] follows it).
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Error | TaskStatus::Cancel | TaskStatus::Retry
        )
    }

    /// The wire name (`"new"`, `"process"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskStatus::New => "new",
            TaskStatus::Process => "process",
            TaskStatus::Success => "success",
            TaskStatus::Error => "error",
            TaskStatus::Cancel => "cancel",
            TaskStatus::Retry => "retry",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of the six.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a task status; the statuses are new, process, success, error, cancel and retry"
)]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for TaskStatus {
    type Err = UnknownStatus;

    /// The status of a wire name.
    ///
    /// ```
    /// assert_eq!("error".parse::<qtasks::TaskStatus>(), Ok(qtasks::TaskStatus::Error));
    /// assert!("failed".parse::<qtasks::TaskStatus>().is_err());
    /// ```
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "new" => TaskStatus::New,
            "process" => TaskStatus::Process,
            "success" => TaskStatus::Success,
            "error" => TaskStatus::Error,
            "cancel" => TaskStatus::Cancel,
            "retry" => TaskStatus::Retry,
            other => return Err(UnknownStatus(other.to_owned())),
        })
    }
}

/// How the wait before each retry grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The same wait each time (`retry_backoff = "fixed"`).
    Fixed,
    /// The wait doubles with each retry, up to [`RetryBackoff::max`]
    /// (`retry_backoff = "exponential"`).
    Exponential,
}

/// The wait before a retry, as a task's options set it (`retry_delay`, `retry_backoff`,
/// `retry_backoff_max`, `retry_jitter`).
///
/// ```
/// use std::time::Duration;
/// use qtasks::{Backoff, RetryBackoff};
///
/// let backoff = RetryBackoff {
///     delay: Duration::from_secs(1),
///     kind: Backoff::Exponential,
///     max: Duration::from_secs(60),
///     jitter: 0.0,
/// };
/// assert_eq!(backoff.delay_for(1), Duration::from_secs(1));
/// assert_eq!(backoff.delay_for(4), Duration::from_secs(8));
/// assert_eq!(backoff.delay_for(20), Duration::from_secs(60), "capped");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBackoff {
    /// The first wait.
    pub delay: Duration,
    /// Whether the wait stays the same or doubles.
    pub kind: Backoff,
    /// The longest wait an exponential backoff grows to (never less than `delay`); by default
    /// ten minutes, as Celery's `retry_backoff_max`.
    pub max: Duration,
    /// The part of each wait that may be taken off at random, from 0 (none) to 1 (all of it),
    /// so the retries of many tasks that failed together do not arrive together. By default
    /// 0.5 for an exponential backoff and 0 for a fixed one.
    pub jitter: f64,
}

impl RetryBackoff {
    /// The longest wait of an exponential backoff unless `retry_backoff_max` says otherwise.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(600);

    /// The wait before retry number `retry` (1 for the first).
    pub fn delay_for(&self, retry: u32) -> Duration {
        let base = match self.kind {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let doubled = self
                    .delay
                    .saturating_mul(1_u32 << retry.saturating_sub(1).min(31));
                doubled.min(self.max.max(self.delay))
            }
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 {
            return base;
        }
        // A random part of the wait, from the randomness of a fresh uuid (no extra dependency).
        let random = (Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
        base.mul_f64(1.0 - jitter * random)
    }

    pub(crate) fn from_parts(parts: &crate::__private::RetryBackoffParts) -> RetryBackoff {
        // Past what a duration holds is the longest one; below zero (or no number) is none.
        let seconds = |value: f64| {
            Duration::try_from_secs_f64(value).unwrap_or(if value > 0.0 {
                Duration::MAX
            } else {
                Duration::ZERO
            })
        };
        let kind = if parts.exponential {
            Backoff::Exponential
        } else {
            Backoff::Fixed
        };
        RetryBackoff {
            delay: seconds(parts.delay),
            kind,
            max: parts.max.map_or(Self::DEFAULT_MAX, seconds),
            jitter: parts
                .jitter
                .unwrap_or(if parts.exponential { 0.5 } else { 0.0 }),
        }
    }
}

/// One parameter of a task, as declared in its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskParam {
    /// The parameter name; keyword arguments are matched against it.
    pub name: &'static str,
    /// The Rust type as written in the signature.
    pub type_name: &'static str,
}

/// A task registered with `#[qtasks::task]`: its name, options and parameters.
///
/// Built at compile time by the macro; read it through the typed handle's `DEFINITION` or from
/// plugin payloads (`event.task.name()`). Its fields are private so that options can be added
/// in minor releases; each has an accessor.
pub struct TaskDefinition {
    /// What `#[task]` filled in (each field documented there); private, so options can be
    /// added without breaking users.
    pub(crate) parts: crate::__private::TaskDefinitionParts,
}

impl TaskDefinition {
    /// A definition with every option unset, for tasks the crate makes itself (the detached
    /// executor of the micro-benchmarks, tests); `invoke` is never meant to run.
    #[cfg(any(test, feature = "__bench"))]
    pub(crate) const fn bare(name: &'static str, invoke: crate::__private::InvokeFn) -> Self {
        TaskDefinition {
            parts: crate::__private::TaskDefinitionParts {
                name,
                priority: None,
                echo: false,
                tags: &[],
                description: None,
                params: &[],
                blocking: false,
                retry: None,
                retry_on: None,
                retry_backoff: None,
                max_time: None,
                result_ttl: None,
                unique_for: None,
                rate_limit: None,
                max_running: None,
                decode: None,
                generate_handler: None,
                middlewares_before: &[],
                middlewares_after: &[],
                router: None,
                queue: None,
                runner: None,
                module_path: module_path!(),
                file: file!(),
                line: line!(),
                invoke,
                output: None,
            },
        }
    }

    /// The task name used on the queue (defaults to the fn name).
    pub fn name(&self) -> &'static str {
        self.parts.name
    }

    /// The priority of new tasks (lower runs first); `None` takes the app's
    /// [`task_default_priority`](crate::QueueConfig::task_default_priority).
    pub fn priority(&self) -> Option<i64> {
        self.parts.priority
    }

    /// Whether the task receives its [`TaskContext`](crate::TaskContext) as first argument.
    pub fn echo(&self) -> bool {
        self.parts.echo
    }

    /// Free-form tags (metadata only).
    pub fn tags(&self) -> &'static [&'static str] {
        self.parts.tags
    }

    /// A description (metadata only).
    pub fn description(&self) -> Option<&'static str> {
        self.parts.description
    }

    /// The parameters filled from the task's arguments (the context is not among them).
    pub fn params(&self) -> &'static [TaskParam] {
        self.parts.params
    }

    /// Whether the fn is a plain `fn`, run on the blocking thread pool.
    pub fn blocking(&self) -> bool {
        self.parts.blocking
    }

    /// How many times a failed run is retried as a new task.
    pub fn retry(&self) -> Option<u32> {
        self.parts.retry
    }

    /// Whether `error` is one the task is retried on (`retry_on_exc`; without it, any error
    /// but a cancel).
    pub fn retries_on(&self, error: &crate::TaskError) -> bool {
        self.parts.retry_on.is_none_or(|matches| matches(error))
    }

    /// The wait before each retry; `None` retries at once.
    pub fn retry_backoff(&self) -> Option<RetryBackoff> {
        self.parts
            .retry_backoff
            .as_ref()
            .map(RetryBackoff::from_parts)
    }

    /// How long the task's record is kept once it ended (`result_ttl`); `None` leaves it to
    /// the engine's retention.
    pub fn result_ttl(&self) -> Option<Duration> {
        self.parts
            .result_ttl
            .map(|seconds| Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
    }

    /// How long one call per arguments holds (`unique_for`); `None`: calls are not unique.
    pub fn unique_for(&self) -> Option<Duration> {
        self.parts
            .unique_for
            .map(|seconds| Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
    }

    /// How often the task may start across the app (`rate_limit = "100/s"`); see
    /// [`limits`](crate::limits).
    pub fn rate_limit(&self) -> Option<crate::limits::RateLimit> {
        let (count, per) = self.parts.rate_limit?;
        crate::limits::RateLimit::new(count, Duration::try_from_secs_f64(per).ok()?).ok()
    }

    /// How many runs of the task may go at once across the app (`max_running`); see
    /// [`limits`](crate::limits).
    pub fn max_running(&self) -> Option<u32> {
        self.parts.max_running.filter(|max| *max > 0)
    }

    /// The time limit of one run (`max_time`, alias `timeout`); `None` has none.
    pub fn max_time(&self) -> Option<Duration> {
        self.parts
            .max_time
            .filter(|seconds| *seconds > 0.0)
            .map(|seconds| Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
    }

    /// The task's result type as its signature spells it (`String`, `Vec<u8>`), or `None` for
    /// a task defined at run time. A value a plugin puts in place of the result is checked
    /// against it.
    pub fn output_type(&self) -> Option<&'static str> {
        self.parts.output.map(|output| output.name)
    }

    /// The router the task belongs to; an app can run only some routers' tasks.
    pub fn router(&self) -> Option<&'static str> {
        self.parts.router
    }

    /// The named queue the task's calls wait in (`queue = ".."`), unless a call chooses
    /// another: the default queue when `None`.
    pub fn queue(&self) -> Option<&'static str> {
        self.parts.queue
    }

    /// The runner of this task's executor (`executor = ..`), instead of the app's.
    pub fn runner(&self) -> Option<&'static dyn crate::components::TaskRunner> {
        self.parts.runner
    }

    /// The module the task fn is declared in.
    pub fn module_path(&self) -> &'static str {
        self.parts.module_path
    }

    /// The source file of the declaration.
    pub fn file(&self) -> &'static str {
        self.parts.file
    }

    /// The source line of the declaration.
    pub fn line(&self) -> u32 {
        self.parts.line
    }

    /// `file:line` of the declaration, for messages.
    pub fn location(&self) -> String {
        format!("{}:{}", self.parts.file, self.parts.line)
    }
}

impl fmt::Debug for TaskDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskDefinition")
            .field("name", &self.parts.name)
            .field("priority", &self.parts.priority)
            .field("echo", &self.parts.echo)
            .field("tags", &self.parts.tags)
            .field("description", &self.parts.description)
            .field("params", &self.parts.params)
            .field("blocking", &self.parts.blocking)
            .field("retry", &self.parts.retry)
            .field("retry_backoff", &self.parts.retry_backoff)
            .field("max_time", &self.parts.max_time)
            .field("router", &self.parts.router)
            .field("runner", &self.parts.runner.map(|e| e.name()))
            .field(
                "location",
                &format_args!("{}:{}", self.parts.file, self.parts.line),
            )
            .finish()
    }
}

/// A task as the broker hands it to a worker (the original's `task_broker`).
///
/// Build one with [`QueuedTask::new`] (or [`QueuedTask::from_record`], for a broker that reads
/// the record back), then set the public fields.
#[derive(Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueuedTask {
    /// The task's id.
    pub uuid: Uuid,
    /// The registered name of the task to run.
    pub task_name: String,
    /// Lower runs first.
    pub priority: i64,
    /// Positional arguments, as JSON.
    pub args: Vec<Value>,
    /// Keyword arguments, as JSON.
    pub kwargs: Map<String, Value>,
    /// Unix time in seconds when the task was added.
    pub created_at: f64,
    /// For a retry: how many retries are left after this attempt.
    pub retry: Option<u32>,
    /// For a retry: the attempt that failed before this one.
    pub retry_parent_uuid: Option<Uuid>,
    /// Unix time in seconds before which the task does not run (a retry's backoff).
    pub run_at: Option<f64>,
    /// The trace the enqueuing code was in (a W3C `traceparent`), when a
    /// [`TraceContext`](crate::trace::TraceContext) is installed: the worker's task span
    /// continues it. Stored as the record's `traceparent` field (Python QTasks ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The group (or chord) this task is a member of, if any: its worker checks, when it
    /// succeeds, whether the chord's callback is due. Stored as the record's `group_uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_uuid: Option<Uuid>,
    /// Unix time in seconds after which the task is not started any more: a worker that takes
    /// it later ends it `cancel` instead ([`AddOptions::expires`](crate::AddOptions::expires)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
    /// The time limit of this call's runs, in seconds, instead of the task's `max_time`
    /// ([`AddOptions::max_time`](crate::AddOptions::max_time)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<f64>,
    /// The named queue the task waits in; `None` is the
    /// [`DEFAULT_QUEUE`](crate::queues::DEFAULT_QUEUE). Stored as the record's `queue` field
    /// (absent for the default queue, as in the original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// How many times workers that could not run the task (they do not know its name) handed
    /// it back ([`QueueConfig::unknown_task_hand_backs`](crate::QueueConfig)). Stored as the
    /// record's `hand_backs` field.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hand_backs: u32,
    /// The key this call's rate limit is kept by, with the task's name
    /// ([`AddOptions::rate_key`](crate::AddOptions::rate_key)); `None`: the task's one rate.
    /// Stored as the record's `rate_key` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_key: Option<String>,
    /// The [workflow](crate::workflow) step this task is, `{workflow id}/{step path}`: the
    /// worker that ends it moves the workflow on. Stored as the record's `workflow` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The definition, when the enqueuing process already knew it: saves the worker a lookup
    /// by name. Never sent over the wire.
    #[serde(skip)]
    pub(crate) definition: Option<&'static TaskDefinition>,
}

impl QueuedTask {
    /// Moves the task out for a run, leaving its plain fields and empty strings and lists
    /// behind (nothing is allocated: the run owns the task, and the worker takes it back with
    /// [`TaskExecutor::into_task`](crate::executor::TaskExecutor) when the run ends).
    pub(crate) fn take_for_run(&mut self) -> QueuedTask {
        let left = QueuedTask {
            uuid: self.uuid,
            task_name: String::new(),
            priority: self.priority,
            args: Vec::new(),
            kwargs: Map::new(),
            created_at: self.created_at,
            retry: self.retry,
            retry_parent_uuid: self.retry_parent_uuid,
            run_at: self.run_at,
            traceparent: None,
            group_uuid: self.group_uuid,
            expires_at: self.expires_at,
            max_time: self.max_time,
            queue: None,
            hand_backs: self.hand_backs,
            rate_key: None,
            workflow: None,
            definition: self.definition,
        };
        std::mem::replace(self, left)
    }

    /// A task of this name with no arguments, the default priority 0, created now.
    ///
    /// ```
    /// let mut task = qtasks::QueuedTask::new(qtasks::Uuid::new_v4(), "add");
    /// task.args = vec![2.into(), 3.into()];
    /// assert_eq!(task.priority, 0);
    /// ```
    pub fn new(uuid: Uuid, task_name: impl Into<String>) -> Self {
        QueuedTask {
            uuid,
            task_name: task_name.into(),
            priority: 0,
            args: Vec::new(),
            kwargs: Map::new(),
            created_at: unix_now(),
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
        }
    }

    /// The queue the task waits in: its [`queue`](Self::queue), or the default queue.
    pub fn queue_name(&self) -> &str {
        self.queue
            .as_deref()
            .unwrap_or(crate::queues::DEFAULT_QUEUE)
    }

    /// The task a stored record describes (what a broker that keeps only ids hands out); takes
    /// the record's arguments without copying them.
    pub fn from_record(record: TaskRecord) -> Self {
        QueuedTask {
            uuid: record.uuid,
            task_name: record.task_name,
            priority: record.priority,
            args: record.args,
            kwargs: record.kwargs,
            created_at: record.created_at,
            retry: record.retry,
            retry_parent_uuid: record.retry_parent_uuid,
            run_at: None,
            traceparent: record.traceparent,
            group_uuid: record.group_uuid,
            expires_at: record.expires_at,
            max_time: record.max_time,
            queue: record.queue,
            hand_backs: record.hand_backs,
            rate_key: record.rate_key,
            workflow: record.workflow,
            definition: None,
        }
    }
}

impl PartialEq for QueuedTask {
    /// Compares the task's data; the cached definition is not part of it.
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
            && self.task_name == other.task_name
            && self.priority == other.priority
            && self.args == other.args
            && self.kwargs == other.kwargs
            && self.created_at == other.created_at
            && self.retry == other.retry
            && self.retry_parent_uuid == other.retry_parent_uuid
            && self.run_at == other.run_at
    }
}

impl fmt::Debug for QueuedTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedTask")
            .field("uuid", &self.uuid)
            .field("task_name", &self.task_name)
            .field("priority", &self.priority)
            .field("args", &self.args)
            .field("kwargs", &self.kwargs)
            .field("created_at", &self.created_at)
            .field("retry", &self.retry)
            .field("retry_parent_uuid", &self.retry_parent_uuid)
            .finish()
    }
}

/// How a task ended, as the worker hands it to storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Status `success` with this result.
    Success(Value),
    /// Status `error` with this traceback.
    Error(String),
    /// Status `cancel` with this reason.
    Cancel(String),
    /// Status `retry`: the attempt failed with `traceback` and `child` runs it again, with
    /// `retries_left` retries after it.
    Retry {
        /// Why the attempt failed.
        traceback: String,
        /// The next attempt, already built; the broker adds it when it stores this outcome.
        child: Box<QueuedTask>,
    },
}

impl Outcome {
    /// The status this outcome stores.
    pub fn status(&self) -> TaskStatus {
        match self {
            Outcome::Success(_) => TaskStatus::Success,
            Outcome::Error(_) => TaskStatus::Error,
            Outcome::Cancel(_) => TaskStatus::Cancel,
            Outcome::Retry { .. } => TaskStatus::Retry,
        }
    }
}

/// For `skip_serializing_if`: a count of zero is left out of the record.
#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
pub(crate) fn is_zero(count: &u32) -> bool {
    *count == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(kind: Backoff, jitter: f64) -> RetryBackoff {
        RetryBackoff {
            delay: Duration::from_secs(2),
            kind,
            max: Duration::from_secs(60),
            jitter,
        }
    }

    #[test]
    fn jitter_takes_off_at_most_its_part_of_the_wait() {
        for (jitter, least) in [(0.0, 8.0), (0.5, 4.0), (1.0, 0.0)] {
            let backoff = backoff(Backoff::Exponential, jitter);
            for _ in 0..200 {
                let wait = backoff.delay_for(3).as_secs_f64();
                assert!((least..=8.0).contains(&wait), "jitter {jitter}: {wait}");
            }
        }
        // A jitter that is no number takes nothing off.
        assert_eq!(
            backoff(Backoff::Fixed, f64::NAN).delay_for(9),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_doubling_wait_never_overflows_and_never_falls_under_the_first() {
        let backoff = backoff(Backoff::Exponential, 0.0);
        assert_eq!(backoff.delay_for(u32::MAX), Duration::from_secs(60));
        let tiny_cap = RetryBackoff {
            max: Duration::from_secs(1),
            ..backoff
        };
        assert_eq!(
            tiny_cap.delay_for(5),
            Duration::from_secs(2),
            "the cap is at least the delay"
        );
    }

    #[test]
    fn the_defaults_follow_the_kind_of_backoff() {
        let parts = crate::__private::RetryBackoffParts {
            delay: 1.5,
            exponential: true,
            max: None,
            jitter: None,
        };
        let exponential = RetryBackoff::from_parts(&parts);
        assert_eq!(exponential.max, RetryBackoff::DEFAULT_MAX);
        assert_eq!(exponential.jitter, 0.5);
        assert_eq!(exponential.delay, Duration::from_millis(1500));
        let fixed = RetryBackoff::from_parts(&crate::__private::RetryBackoffParts {
            exponential: false,
            ..parts
        });
        assert_eq!((fixed.kind, fixed.jitter), (Backoff::Fixed, 0.0));
    }
}
