//! Browsing task records a page at a time, newest first: the query the dashboard, the JSON API
//! and the command line share, and the one filter every storage applies.
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
//! let page = app.list_tasks(&query).await?;
//! assert!(page.records.is_empty());
//! if let Some(cursor) = page.next {
//!     let _older = app.list_tasks(&query.clone().after(cursor)).await?;
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{TaskRecord, TaskStatus};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ms: u64, status: TaskStatus, name: &str) -> TaskRecord {
        let mut record = TaskRecord::from_task(crate::QueuedTask::new(Uuid::new_v4(), name));
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
