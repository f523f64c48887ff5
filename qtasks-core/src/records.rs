//! Task records from outside a task: [`Records`] (from [`QueueTasks::records`](crate::QueueTasks::records))
//! lists, deletes and retries them; this module also holds the page query the dashboard, the
//! JSON API and the command line share, and the one filter every storage applies.
//!
//! Pages are cut by position, not by offset: a [`RecordCursor`] names the last record shown,
//! and the next page starts just after it, so tasks added meanwhile neither repeat a record
//! nor hide one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> qtasks::Result<()> {
//! use qtasks::records::RecordQuery;
//!
//! let app = qtasks::QueueTasks::new();
//! let query = RecordQuery::default().limit(50);
//! let page = app.records().list(&query).await?;
//! assert!(page.records.is_empty());
//! if let Some(cursor) = page.next {
//!     let _older = app.records().list(&query.clone().after(cursor)).await?;
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use serde_json::{Map, Value};

use crate::{Outcome, QueuedTask, TaskStatus};

pub use crate::app::Records;

/// The most records one page holds.
pub const PAGE_MAX: usize = 500;

/// Which records to list, and from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecordQuery {
    /// Only records with this status.
    pub status: Option<TaskStatus>,
    /// Only records of this task name.
    pub task_name: Option<String>,
    /// Only records added at or after this Unix time (seconds).
    pub since: Option<f64>,
    /// Only records added at or before this Unix time (seconds).
    pub until: Option<f64>,
    /// Start just after this record (the `next` of the page before).
    pub after: Option<RecordCursor>,
    /// How many records a page holds (1 to [`PAGE_MAX`]).
    pub limit: usize,
}

impl Default for RecordQuery {
    fn default() -> Self {
        RecordQuery {
            status: None,
            task_name: None,
            since: None,
            until: None,
            after: None,
            limit: 50,
        }
    }
}

impl RecordQuery {
    /// Only records with `status`.
    #[must_use]
    pub fn status(mut self, status: TaskStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only records of the task `name`.
    #[must_use]
    pub fn task_name(mut self, name: impl Into<String>) -> Self {
        self.task_name = Some(name.into());
        self
    }

    /// Only records added between `since` and `until` (Unix seconds, both included).
    #[must_use]
    pub fn between(mut self, since: Option<f64>, until: Option<f64>) -> Self {
        self.since = since;
        self.until = until;
        self
    }

    /// The page after `cursor`.
    #[must_use]
    pub fn after(mut self, cursor: RecordCursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// At most `limit` records a page (kept between 1 and [`PAGE_MAX`]).
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The page size actually used.
    pub fn page_size(&self) -> usize {
        self.limit.clamp(1, PAGE_MAX)
    }

    /// Whether only the time range (if any) filters: a storage can then count the matches
    /// from its index alone.
    pub fn filters_by_time_only(&self) -> bool {
        self.status.is_none() && self.task_name.is_none()
    }

    /// Whether a record at `position` falls in the time range and after the cursor.
    pub fn in_range(&self, position: RecordCursor) -> bool {
        let ms = position.created_ms;
        self.since.is_none_or(|since| ms >= secs_to_ms(since))
            && self.until.is_none_or(|until| ms <= secs_to_ms(until))
            && self.after.is_none_or(|after| position < after)
    }

    /// Whether a record of this status and task name passes the filters.
    pub fn matches(&self, status: TaskStatus, task_name: &str) -> bool {
        self.status.is_none_or(|wanted| wanted == status)
            && self
                .task_name
                .as_deref()
                .is_none_or(|wanted| wanted == task_name)
    }

    /// The page these records make: those that pass, newest first, cut at the page size.
    /// For a storage that reads every record anyway (the default of
    /// [`Storage::list`](crate::backend::Storage::list)).
    pub fn page_of(&self, records: impl IntoIterator<Item = TaskRecord>) -> RecordPage {
        let mut scanned = 0u64;
        let mut matching: Vec<TaskRecord> = records
            .into_iter()
            .inspect(|_| scanned += 1)
            .filter(|record| {
                self.in_range(RecordCursor::of(record))
                    && self.matches(record.status, &record.task_name)
            })
            .collect();
        let total = matching.len() as u64;
        matching.sort_by_key(|record| std::cmp::Reverse(RecordCursor::of(record)));
        let size = self.page_size();
        let next = (matching.len() > size).then(|| RecordCursor::of(&matching[size - 1]));
        matching.truncate(size);
        RecordPage {
            records: matching,
            next,
            scanned,
            scan_incomplete: false,
            total: Some(total),
        }
    }
}

/// A record's place in the newest-first order: when it was added (milliseconds), then its
/// uuid (so records added in the same millisecond keep one order). Written `ms-uuid` in URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordCursor {
    /// When the record was added, in Unix milliseconds.
    pub created_ms: u64,
    /// The record's task.
    pub uuid: Uuid,
}

impl RecordCursor {
    /// The place of `record`.
    pub fn of(record: &TaskRecord) -> Self {
        RecordCursor {
            created_ms: secs_to_ms(record.created_at),
            uuid: record.uuid,
        }
    }
}

/// Unix seconds as whole milliseconds (the index's score): negative and non-finite times
/// count as 0.
pub fn secs_to_ms(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        (secs * 1000.0).round() as u64
    } else {
        0
    }
}

impl fmt::Display for RecordCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.created_ms, self.uuid)
    }
}

/// A cursor that is not `ms-uuid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a page cursor (expected `milliseconds-uuid`, as a page's `next` gives)")]
pub struct BadCursor(String);

impl FromStr for RecordCursor {
    type Err = BadCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCursor(text.to_owned());
        let (ms, uuid) = text.split_once('-').ok_or_else(bad)?;
        Ok(RecordCursor {
            created_ms: ms.parse().map_err(|_| bad())?,
            uuid: uuid.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for RecordCursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordCursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One page of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecordPage {
    /// The records, newest first.
    pub records: Vec<TaskRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<RecordCursor>,
    /// How many records were looked at to fill this page.
    pub scanned: u64,
    /// The page is short because the storage stopped looking (a filter that few records pass,
    /// over a large store): `next` goes on from where it stopped.
    pub scan_incomplete: bool,
    /// How many records match in all, when the storage knows without reading them.
    pub total: Option<u64>,
}

impl RecordPage {
    /// A page with these records and nothing after them.
    pub fn new(records: Vec<TaskRecord>) -> Self {
        RecordPage {
            records,
            next: None,
            scanned: 0,
            scan_incomplete: false,
            total: None,
        }
    }
}

// -- The record and changes to it ------------------------------------------------------------

/// The stored state of a task (the original's `Task` model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task's id.
    pub uuid: Uuid,
    /// The registered name of the task.
    pub task_name: String,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// Lower runs first.
    pub priority: i64,
    /// Positional arguments, as JSON.
    pub args: Vec<Value>,
    /// Keyword arguments, as JSON.
    pub kwargs: Map<String, Value>,
    /// Unix time in seconds when the task was added.
    pub created_at: f64,
    /// Unix time in seconds of the last status change.
    pub updated_at: f64,
    /// The result, for `success`.
    pub returning: Option<Value>,
    /// The reason, for `error`: `ErrorType: message`.
    pub traceback: Option<String>,
    /// The reason, for `cancel`.
    pub cancel_reason: Option<String>,
    /// For retries: how many retries were left for this attempt.
    pub retry: Option<u32>,
    /// For a retry: the attempt before this one.
    pub retry_parent_uuid: Option<Uuid>,
    /// For status `retry`: the attempt after this one.
    pub retry_child_uuid: Option<Uuid>,
    /// Fields of the stored record that could not be read (bad bytes, text that is not the
    /// JSON or the number it should be), as they were stored; the typed field above holds its
    /// default then. Empty for every record qtasks wrote itself.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub unreadable: std::collections::BTreeMap<String, String>,
    /// The trace the task was added in (a W3C `traceparent`), if one was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The group (or chord) this task is a member of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_uuid: Option<Uuid>,
    /// When a delayed task is due (Unix seconds): no worker takes it before. (This field and
    /// the three below are not the original's; it ignores them.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<f64>,
    /// When the task is not started any more (Unix seconds): a worker that takes it later
    /// ends it `cancel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
    /// This call's time limit per run, in seconds, instead of the task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<f64>,
    /// When the run that ended the task started (Unix seconds), once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    /// When the task ended (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    /// The worker whose run ended the task (`host:pid:nonce`); shared, not copied, between
    /// the records of one worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<std::sync::Arc<str>>,
    /// The data of the error the task failed with, for its caller (`TaskError::typed`,
    /// `with_payload`), as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_payload: Option<Value>,
    /// The progress the task last reported while it ran (`ctx.set_progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    /// When the progress was stored (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at: Option<f64>,
    /// The named queue the task waits in (absent: the default queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// How many times workers that could not run the task handed it back.
    #[serde(default, skip_serializing_if = "crate::task::is_zero")]
    pub hand_backs: u32,
    /// The key the task's rate limit is kept by (`AddOptions::rate_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_key: Option<String>,
    /// The workflow step the task is (`{workflow id}/{step path}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
}

impl TaskRecord {
    /// The record of a task just added, taking the task's arguments without copying them:
    /// status `new`, no result.
    pub fn from_task(queued: QueuedTask) -> Self {
        TaskRecord {
            uuid: queued.uuid,
            task_name: queued.task_name,
            status: TaskStatus::New,
            priority: queued.priority,
            args: queued.args,
            kwargs: queued.kwargs,
            created_at: queued.created_at,
            updated_at: queued.created_at,
            returning: None,
            traceback: None,
            cancel_reason: None,
            retry: queued.retry,
            retry_parent_uuid: queued.retry_parent_uuid,
            retry_child_uuid: None,
            unreadable: std::collections::BTreeMap::new(),
            traceparent: queued.traceparent,
            group_uuid: queued.group_uuid,
            run_at: queued.run_at.filter(|run_at| *run_at > queued.created_at),
            expires_at: queued.expires_at,
            max_time: queued.max_time,
            started_at: None,
            finished_at: None,
            worker: None,
            error_payload: None,
            progress: None,
            progress_at: None,
            queue: queued.queue,
            hand_backs: queued.hand_backs,
            rate_key: queued.rate_key,
            workflow: queued.workflow,
        }
    }

    /// The queue the task waits in: its `queue`, or the default queue.
    pub fn queue_name(&self) -> &str {
        self.queue
            .as_deref()
            .unwrap_or(crate::queues::DEFAULT_QUEUE)
    }

    /// Writes which run ended the task, and when (`finished_at`).
    pub fn run_ended(&mut self, run: &crate::backend::RunInfo, now: f64) {
        self.started_at = run.started_at;
        self.finished_at = Some(now);
        self.worker.clone_from(&run.worker);
        self.error_payload.clone_from(&run.error_payload);
    }

    /// How long the run that ended the task took, when both ends are known.
    pub fn runtime(&self) -> Option<std::time::Duration> {
        let (start, end) = (self.started_at?, self.finished_at?);
        std::time::Duration::try_from_secs_f64(end - start).ok()
    }

    /// The record of a task just added: status `new`, the task's data, no result.
    pub fn new(queued: &QueuedTask) -> Self {
        Self::from_task(queued.clone())
    }
}

/// A partial update of a stored record; only the fields set replace anything. Handlers of the
/// same trigger chain: each one's fields are laid over the previous ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordUpdate {
    /// A new status.
    pub status: Option<TaskStatus>,
    /// A new priority.
    pub priority: Option<i64>,
    /// New positional arguments.
    pub args: Option<Vec<Value>>,
    /// New keyword arguments.
    pub kwargs: Option<Map<String, Value>>,
    /// A new result.
    pub returning: Option<Value>,
    /// A new error text.
    pub traceback: Option<String>,
    /// A new cancel reason.
    pub cancel_reason: Option<String>,
    /// The attempt that follows this one (set when a finished task is retried by hand).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_child_uuid: Option<Uuid>,
}

impl RecordUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == RecordUpdate::default()
    }

    /// Lays `other`'s fields over these.
    pub(crate) fn merge(&mut self, other: RecordUpdate) {
        macro_rules! over {
            ($($field:ident),*) => {$(
                if other.$field.is_some() {
                    self.$field = other.$field;
                }
            )*};
        }
        over!(
            status,
            priority,
            args,
            kwargs,
            returning,
            traceback,
            cancel_reason,
            retry_child_uuid
        );
    }

    /// Writes the fields this update sets into `record` (not `updated_at`): what a storage's
    /// [`update`](crate::backend::Storage::update) does.
    pub fn apply_to(&self, record: &mut TaskRecord) {
        if let Some(status) = self.status {
            record.status = status;
        }
        if let Some(priority) = self.priority {
            record.priority = priority;
        }
        if let Some(args) = &self.args {
            record.args.clone_from(args);
        }
        if let Some(kwargs) = &self.kwargs {
            record.kwargs.clone_from(kwargs);
        }
        if self.returning.is_some() {
            record.returning.clone_from(&self.returning);
        }
        if self.traceback.is_some() {
            record.traceback.clone_from(&self.traceback);
        }
        if self.cancel_reason.is_some() {
            record.cancel_reason.clone_from(&self.cancel_reason);
        }
        if self.retry_child_uuid.is_some() {
            record.retry_child_uuid = self.retry_child_uuid;
        }
    }
}

/// A write of [`RecordStore::transition`](crate::backend::RecordStore::transition): where a task's record goes next, for a broker that
/// keeps only the queue and leaves the records to its storage.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RecordChange {
    /// A worker took the task: status `process`.
    Taken,
    /// A worker handed the task back unfinished: status `new` again.
    Released,
    /// A worker that could not run the task (it does not know it) handed it back: status `new`
    /// again, with this many hand-backs in all. `HandedBack(0)` brings a task set aside in the
    /// dead letters back (`error` → `new`), its error cleared.
    HandedBack(u32),
    /// The task ended: the outcome's status and its fields (a retry also names its child),
    /// and the run that ended it (none for a task cancelled while it waited).
    Finished(Outcome, crate::backend::RunInfo),
    /// A cancel was asked while the task runs (status unchanged, `process`): kept with the
    /// record, so that the run's finish, or a later take of the task, ends it `cancel` with
    /// this reason instead ([`Transition::Cancelled`]), even if no worker heard the request.
    CancelRequested(String),
}

impl RecordChange {
    /// The status the record has after this change.
    pub fn status(&self) -> TaskStatus {
        match self {
            RecordChange::Taken | RecordChange::CancelRequested(_) => TaskStatus::Process,
            RecordChange::Released | RecordChange::HandedBack(_) => TaskStatus::New,
            RecordChange::Finished(outcome, _) => outcome.status(),
        }
    }

    /// Writes this change into a record (not `updated_at`; `finished_at` is `now`).
    pub fn apply_to(&self, record: &mut TaskRecord, now: f64) {
        record.status = self.status();
        if let RecordChange::HandedBack(hand_backs) = self {
            record.hand_backs = *hand_backs;
            if *hand_backs == 0 {
                record.traceback = None;
                record.finished_at = None;
                record.started_at = None;
                record.worker = None;
            }
        }
        if let RecordChange::Finished(outcome, run) = self {
            record.run_ended(run, now);
            match outcome {
                Outcome::Success(value) => record.returning = Some(value.clone()),
                Outcome::Error(traceback) => record.traceback = Some(traceback.clone()),
                Outcome::Cancel(reason) => record.cancel_reason = Some(reason.clone()),
                Outcome::Retry { traceback, child } => {
                    record.traceback = Some(traceback.clone());
                    record.retry_child_uuid = Some(child.uuid);
                    record.retry = child.retry.map(|left| left + 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ms: u64, status: TaskStatus, name: &str) -> TaskRecord {
        let mut record = TaskRecord::from_task(QueuedTask::new(Uuid::new_v4(), name));
        record.created_at = ms as f64 / 1000.0;
        record.status = status;
        record
    }

    #[test]
    fn pages_go_newest_first_and_meet_without_gaps() {
        let records: Vec<_> = (0..7)
            .map(|i| record(1_000 + i / 2, TaskStatus::Success, "a"))
            .collect();
        let mut query = RecordQuery::default().limit(3);
        let mut seen = Vec::new();
        loop {
            let page = query.page_of(records.clone());
            seen.extend(page.records.iter().map(RecordCursor::of));
            match page.next {
                Some(next) => query = query.after(next),
                None => break,
            }
        }
        let mut expected: Vec<_> = records.iter().map(RecordCursor::of).collect();
        expected.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, expected);
    }

    #[test]
    fn filters_by_status_name_and_time() {
        let records = vec![
            record(1_000, TaskStatus::Error, "a"),
            record(2_000, TaskStatus::Error, "b"),
            record(3_000, TaskStatus::Success, "a"),
            record(4_000, TaskStatus::Error, "a"),
        ];
        let query = RecordQuery::default()
            .status(TaskStatus::Error)
            .task_name("a")
            .between(Some(0.5), Some(3.5));
        let page = query.page_of(records);
        assert_eq!(page.records.len(), 1);
        assert_eq!(RecordCursor::of(&page.records[0]).created_ms, 1_000);
        assert_eq!(page.total, Some(1));
    }

    #[test]
    fn cursors_read_back_and_bad_ones_say_what_they_expect() {
        let cursor = RecordCursor {
            created_ms: 1_764_000_000_123,
            uuid: Uuid::new_v4(),
        };
        assert_eq!(cursor.to_string().parse::<RecordCursor>(), Ok(cursor));
        let error = "12:nope".parse::<RecordCursor>().unwrap_err();
        assert!(error.to_string().contains("milliseconds-uuid"), "{error}");
    }
}
