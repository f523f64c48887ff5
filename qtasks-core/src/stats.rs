//! Live statistics: what waits, what runs, what finished lately, and which workers are alive.
//!
//! Every number here is kept by the write path (counters a backend updates as tasks are
//! added, taken and finished), never by scanning records, so [`QueueTasks::stats`] is cheap
//! enough to call every second on a queue of a million tasks.
//!
//! The app's other windows on its workers are here too: [`Workers`] (`app.workers()`, the
//! workers alive now), [`DeadLetters`] (`app.dead_letters()`) and [`WorkerCounters`]
//! (`app.counters()`, what this process's worker counted).
//!
//! [`QueueTasks::stats`]: crate::QueueTasks::stats

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::unix_now;

pub use crate::app::{DeadLetters, WorkerCounters, Workers};

/// Everything [`QueueTasks::stats`](crate::QueueTasks::stats) reports, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// The app's name.
    pub app: String,
    /// When these were read (Unix seconds).
    pub at: f64,
    /// The queue's numbers; `None` when the broker keeps none (a custom broker that does not
    /// implement [`Broker::stats`](crate::backend::Broker::stats)).
    pub queue: Option<QueueStats>,
    /// The workers whose heartbeat is alive, oldest first.
    pub workers: Vec<WorkerInfo>,
    /// The schedules the workers run: next and last firing, paused or not.
    #[serde(default)]
    pub schedules: Vec<crate::schedule::ScheduleInfo>,
}

/// The queue's numbers, from [`Broker::stats`](crate::backend::Broker::stats).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// Tasks that may run now, by priority (lower runs first).
    pub waiting: BTreeMap<i64, u64>,
    /// Tasks that may run only later (a retry's backoff, a delay).
    pub delayed: u64,
    /// Tasks taken by a worker and not finished.
    pub running: u64,
    /// Tasks finished, by how they ended, since the queue was last flushed.
    pub finished: FinishedCounts,
    /// Tasks finished in the last 60 seconds.
    pub finished_last_minute: u64,
    /// How long the oldest waiting task has waited, in seconds.
    pub oldest_waiting_secs: Option<f64>,
    /// Queue entries that could not run and were set aside with their reason.
    pub dead_letters: u64,
    /// The numbers of each named queue (the default one too), by name: waiting, delayed,
    /// paused. Empty from a broker that keeps no named queues.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, QueueNumbers>,
}

/// One named queue's numbers, in [`QueueStats::queues`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueNumbers {
    /// Its tasks that may run now.
    pub waiting: u64,
    /// Its tasks that may run only later.
    pub delayed: u64,
    /// Whether it is paused: workers take none of its tasks until it is resumed.
    pub paused: bool,
}

impl QueueStats {
    /// All waiting tasks, whatever their priority.
    pub fn waiting_total(&self) -> u64 {
        self.waiting.values().sum()
    }

    /// Throughput over the last minute, in tasks per second.
    pub fn per_second(&self) -> f64 {
        self.finished_last_minute as f64 / 60.0
    }
}

/// Tasks finished, by final status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FinishedCounts {
    /// Ended `success`.
    pub success: u64,
    /// Ended `error`.
    pub error: u64,
    /// Ended `cancel`.
    pub cancel: u64,
    /// Attempts that failed and were retried (`retry`).
    pub retry: u64,
}

impl FinishedCounts {
    /// The four counts with their status names, in a fixed order.
    pub fn by_status(&self) -> [(&'static str, u64); 4] {
        [
            ("success", self.success),
            ("error", self.error),
            ("cancel", self.cancel),
            ("retry", self.retry),
        ]
    }

    /// Adds one to the count of `status` (a non-final status counts nowhere).
    pub fn count(&mut self, status: crate::TaskStatus) {
        self.add(status, 1);
    }

    /// Adds `count` to the count of `status` (a non-final status counts nowhere).
    pub fn add(&mut self, status: crate::TaskStatus, count: u64) {
        use crate::TaskStatus;
        match status {
            TaskStatus::Success => self.success += count,
            TaskStatus::Error => self.error += count,
            TaskStatus::Cancel => self.cancel += count,
            TaskStatus::Retry => self.retry += count,
            _ => {}
        }
    }
}

/// One worker process, as its heartbeat last described it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Unique for the life of the worker: `host:pid:random`.
    pub id: String,
    /// The machine's host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// When the worker started (Unix seconds).
    pub started_at: f64,
    /// How many tasks it runs at once.
    pub concurrency: usize,
    /// Tasks it runs now.
    pub running: u64,
    /// Tasks it has finished since it started.
    pub processed: u64,
    /// When it last wrote its heartbeat (Unix seconds, its own clock).
    pub heartbeat_at: f64,
    /// The qtasks version it runs.
    pub version: String,
    /// The names of the tasks registered in its binary, sorted (a worker with routers runs
    /// those of its routers). Empty from a worker of a qtasks older than this field.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// The tasks it runs now: up to [`WorkerInfo::RUNNING_SHOWN`] of them.
    #[serde(default)]
    pub running_tasks: Vec<uuid::Uuid>,
}

impl WorkerInfo {
    /// How many of its running tasks a worker names in its description.
    pub const RUNNING_SHOWN: usize = 50;

    /// How long ago the worker wrote its heartbeat.
    pub fn heartbeat_age(&self) -> Duration {
        Duration::try_from_secs_f64((unix_now() - self.heartbeat_at).max(0.0)).unwrap_or_default()
    }
}

/// A queue entry that could not run (it did not decode, or named no task record), set aside
/// with its reason instead of being lost or blocking the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The backend's handle on this letter; pass the letter back to
    /// [`Broker::resolve_dead_letter`](crate::backend::Broker::resolve_dead_letter).
    pub id: String,
    /// The entry as it was queued (bytes that are not UTF-8 shown escaped).
    pub entry: String,
    /// Why it could not run.
    pub reason: String,
    /// When it was set aside (Unix seconds).
    pub at: f64,
}

impl DeadLetter {
    /// A short, stable name for this letter (10 hex digits of a hash of its backend id):
    /// what the command line and the dashboard show, and take back, instead of a position
    /// that shifts as letters come and go.
    ///
    /// ```
    /// let letter = qtasks::stats::DeadLetter::new("7", "noop:...", "bad bytes", 0.0);
    /// assert_eq!(letter.short_id().len(), 10);
    /// assert_eq!(letter.short_id(), letter.clone().short_id());
    /// ```
    pub fn short_id(&self) -> String {
        // FNV-1a: the same in every process and release, unlike std's randomly keyed hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.id.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:010x}", hash >> 24)
    }

    /// A letter with this backend handle, entry, reason and time.
    pub fn new(
        id: impl Into<String>,
        entry: impl Into<String>,
        reason: impl Into<String>,
        at: f64,
    ) -> Self {
        DeadLetter {
            id: id.into(),
            entry: entry.into(),
            reason: reason.into(),
            at,
        }
    }
}

/// Counts finished tasks per second over the last minute in a fixed ring of buckets, so the
/// memory it takes never grows. Engines that keep their counters in process may use it.
///
/// ```
/// use qtasks::stats::ThroughputWindow;
///
/// let mut window = ThroughputWindow::default();
/// window.record(1_000, 3);
/// window.record(1_030, 2);
/// assert_eq!(window.last_minute(1_040), 5);
/// assert_eq!(window.last_minute(1_075), 2); // the first bucket is older than 60 s by then
/// ```
#[derive(Debug, Clone)]
pub struct ThroughputWindow {
    /// `(second, count)` per slot `second % 64`.
    buckets: [(u64, u64); 64],
}

impl Default for ThroughputWindow {
    fn default() -> Self {
        ThroughputWindow {
            buckets: [(0, 0); 64],
        }
    }
}

impl ThroughputWindow {
    /// Adds `count` finished tasks at Unix second `second`.
    pub fn record(&mut self, second: u64, count: u64) {
        let slot = &mut self.buckets[(second % 64) as usize];
        if slot.0 == second {
            slot.1 += count;
        } else {
            *slot = (second, count);
        }
    }

    /// Tasks recorded in the 60 seconds up to and including `now`.
    pub fn last_minute(&self, now: u64) -> u64 {
        self.buckets
            .iter()
            .filter(|(second, _)| *second + 60 > now && *second <= now)
            .map(|(_, count)| count)
            .sum()
    }
}
