//! Scheduling: tasks that run later (a delay, a time) and tasks that run periodically (cron,
//! every N), fired once per slot however many workers run the schedule.
//!
//! A [`Schedule`] says when: [`Schedule::cron`] (5 fields, or 6 with seconds first, in UTC or
//! a time zone), [`Schedule::every`] (slots aligned on the Unix epoch, so every worker counts
//! the same ones) or [`Schedule::at`] (once). [`Schedules::add`] (`app.schedules().add(..)`) registers it
//! with the call to add at each slot; every worker of the app (`run_forever`, `qtasks::cli` `worker`, or
//! a scheduler alone: [`Schedules::run`], the `timer` command) runs the schedules,
//! and each slot is claimed once with one atomic command on the backend
//! ([`GlobalConfig::claim`](crate::components::GlobalConfig::claim)), so it fires once with any
//! number of workers, and another worker fires it when one is down.
//!
//! ```
//! use std::time::Duration;
//! use qtasks::schedule::Schedule;
//!
//! # fn demo(app: &qtasks::QueueTasks) -> Result<(), Box<dyn std::error::Error>> {
//! app.schedules().add("digest", Schedule::cron("0 0 7 * * MON-FRI")?.in_time_zone("Europe/Berlin")?,
//!     qtasks::TaskCall::new("send_digest", vec![], Default::default()))?;
//! app.schedules().add("heartbeat", Schedule::every(Duration::from_secs(30)).catch_up(1),
//!     qtasks::TaskCall::new("ping_partners", vec![], Default::default()))?;
//! # Ok(()) }
//! ```
//!

mod clock;
pub(crate) mod runner;
mod timer;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::app::Schedules;
pub use clock::{Clock, SystemClock, TokioClock};
pub use timer::Timer;

/// Why a schedule cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "invalid cron expression `{expression}`: {reason}; a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, e.g. \"0 */5 * * * *\""
    )]
    Cron {
        /// The expression given.
        expression: String,
        /// What the parser said.
        reason: String,
    },
    /// The time zone is not known.
    #[error("unknown time zone `{zone}`: {reason}; use an IANA name such as \"Europe/Berlin\"")]
    TimeZone {
        /// The name given.
        zone: String,
        /// Why it is unknown.
        reason: String,
    },
    /// `every` needs a period of at least a millisecond.
    #[error("a schedule's period must be at least 1 ms, not {0:?}")]
    Period(Duration),
    /// The name is taken by another schedule of the app.
    #[error("a schedule named `{0}` is registered already")]
    Duplicate(String),
    /// A schedule name must be non-empty and have no `:`.
    #[error("a schedule name must be non-empty and contain no `:`, not `{0}`")]
    Name(String),
}

/// What to do with the slots that passed while no worker was there to fire them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Missed {
    /// Skip them; fire from the next slot on (the default).
    #[default]
    Skip,
    /// Fire the newest `n` of them at once, oldest first, then go on.
    CatchUp(u32),
}

#[derive(Clone)]
enum Kind {
    Cron {
        expression: String,
        cron: Box<croner::Cron>,
        zone: jiff::tz::TimeZone,
        zone_name: String,
    },
    Every {
        period_ms: i64,
        from_ms: Option<i64>,
        until_ms: Option<i64>,
    },
    At {
        at_ms: i64,
    },
}

/// When a periodic task runs: a cron expression, a period, or one time.
#[derive(Clone)]
pub struct Schedule {
    kind: Kind,
    missed: Missed,
    jitter: Duration,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("when", &self.to_string())
            .field("missed", &self.missed)
            .field("jitter", &self.jitter)
            .finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron {
                expression,
                zone_name,
                ..
            } => write!(f, "cron \"{expression}\" ({zone_name})"),
            Kind::Every { period_ms, .. } => {
                write!(f, "every {:?}", Duration::from_millis(*period_ms as u64))
            }
            Kind::At { at_ms } => write!(f, "once at {}", format_ms(*at_ms)),
        }
    }
}

/// The id of the task a schedule's slot adds: the same in every worker (a hash of the app's
/// name, the schedule's name and the slot), so the slot's task can be found before, while and
/// after it runs, and a slot fired twice adds it once ([`AddOptions::uuid`]).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let slot = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// let id = qtasks::schedule::slot_task_id("billing", "nightly", slot);
/// assert_eq!(id, qtasks::schedule::slot_task_id("billing", "nightly", slot));
/// assert_ne!(id, qtasks::schedule::slot_task_id("billing", "hourly", slot));
/// ```
///
/// [`AddOptions::uuid`]: crate::AddOptions::uuid
pub fn slot_task_id(app: &str, schedule: &str, slot: SystemTime) -> uuid::Uuid {
    runner::slot_uuid(app, schedule, unix_ms(slot))
}

/// A Unix time in milliseconds as an RFC 3339 UTC time.
pub(crate) fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// A `SystemTime` as Unix milliseconds (before 1970: negative).
pub(crate) fn unix_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Unix milliseconds as a `SystemTime`.
pub(crate) fn system_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

impl Schedule {
    /// A cron expression, in UTC until [`in_time_zone`](Self::in_time_zone): 5 fields
    /// (`minute hour day-of-month month day-of-week`) or 6 with seconds first; ranges, steps,
    /// lists, names (`MON-FRI`), `L`, `W` and `#` as in croner.
    ///
    /// ```
    /// let schedule = qtasks::schedule::Schedule::cron("*/10 * * * * *")?; // every 10 seconds
    /// assert!(qtasks::schedule::Schedule::cron("61 * * * *").is_err());
    /// # Ok::<(), qtasks::schedule::ScheduleError>(())
    /// ```
    pub fn cron(expression: &str) -> Result<Self, ScheduleError> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| ScheduleError::Cron {
                expression: expression.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Schedule::of(Kind::Cron {
            expression: expression.to_owned(),
            cron: Box::new(cron),
            zone: jiff::tz::TimeZone::UTC,
            zone_name: "UTC".to_owned(),
        }))
    }

    /// Every `period`, on slots aligned on the Unix epoch (every 5 minutes fires at :00, :05,
    /// ...), so every worker counts the same slots.
    pub fn every(period: Duration) -> Self {
        Schedule::of(Kind::Every {
            period_ms: i64::try_from(period.as_millis()).unwrap_or(i64::MAX),
            from_ms: None,
            until_ms: None,
        })
    }

    /// Once, at `time`.
    pub fn at(time: SystemTime) -> Self {
        Schedule::of(Kind::At {
            at_ms: unix_ms(time),
        })
    }

    fn of(kind: Kind) -> Self {
        Schedule {
            kind,
            missed: Missed::Skip,
            jitter: Duration::ZERO,
        }
    }

    /// Reads a cron expression in this IANA time zone (with its daylight saving time): a
    /// wall-clock time that does not exist that day (in the hour the clocks skip) fires once,
    /// when the clocks have moved, as cron does; one that happens twice fires once. Other
    /// schedules are not affected.
    pub fn in_time_zone(mut self, zone: &str) -> Result<Self, ScheduleError> {
        if let Kind::Cron {
            zone: current,
            zone_name,
            ..
        } = &mut self.kind
        {
            *current = jiff::tz::TimeZone::get(zone).map_err(|e| ScheduleError::TimeZone {
                zone: zone.to_owned(),
                reason: e.to_string(),
            })?;
            *zone_name = zone.to_owned();
        }
        Ok(self)
    }

    /// No slot before `time` (for `every`). With [`catch_up`](Self::catch_up), slots from
    /// `time` that passed before any worker fired one are caught up too (within the catch-up
    /// horizon): a worker that started late, or died and started again before the first slot
    /// fired, does not skip them.
    #[must_use]
    pub fn starting_at(mut self, time: SystemTime) -> Self {
        if let Kind::Every { from_ms, .. } = &mut self.kind {
            *from_ms = Some(unix_ms(time));
        }
        self
    }

    /// The first slot's time as set by [`starting_at`](Self::starting_at), if it was.
    pub(crate) fn explicit_start_ms(&self) -> Option<i64> {
        match self.kind {
            Kind::Every { from_ms, .. } => from_ms,
            _ => None,
        }
    }

    /// No slot after `time` (for `every`).
    #[must_use]
    pub fn until(mut self, time: SystemTime) -> Self {
        if let Kind::Every { until_ms, .. } = &mut self.kind {
            *until_ms = Some(unix_ms(time));
        }
        self
    }

    /// Fires the newest `at_most` slots missed while no worker ran (instead of skipping them).
    #[must_use]
    pub fn catch_up(mut self, at_most: u32) -> Self {
        self.missed = Missed::CatchUp(at_most);
        self
    }

    /// What to do with missed slots.
    #[must_use]
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// Delays each firing by a random part of `max` (so many schedules on the same minute do
    /// not all add at once). The slot stays the same: it still fires once.
    #[must_use]
    pub fn jitter(mut self, max: Duration) -> Self {
        self.jitter = max;
        self
    }

    /// The missed-slot policy.
    pub fn missed_policy(&self) -> Missed {
        self.missed
    }

    /// The largest jitter.
    pub fn max_jitter(&self) -> Duration {
        self.jitter
    }

    pub(crate) fn validate(&self) -> Result<(), ScheduleError> {
        match &self.kind {
            Kind::Every { period_ms, .. } if *period_ms < 1 => Err(ScheduleError::Period(
                Duration::from_millis((*period_ms).max(0) as u64),
            )),
            _ => Ok(()),
        }
    }

    /// The first slot strictly after `after`, or `None` when there are no more.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use qtasks::schedule::Schedule;
    ///
    /// let every_minute = Schedule::every(Duration::from_secs(60));
    /// let after = UNIX_EPOCH + Duration::from_secs(90);
    /// assert_eq!(every_minute.next_after(after), Some(UNIX_EPOCH + Duration::from_secs(120)));
    /// ```
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        self.next_slot_ms(unix_ms(after)).map(system_time)
    }

    /// The slots in `(after, until]`, oldest first (at most `limit`).
    pub fn slots_between(
        &self,
        after: SystemTime,
        until: SystemTime,
        limit: usize,
    ) -> Vec<SystemTime> {
        self.slots_ms(unix_ms(after), unix_ms(until), limit)
            .into_iter()
            .map(system_time)
            .collect()
    }

    pub(crate) fn slots_ms(&self, after_ms: i64, until_ms: i64, limit: usize) -> Vec<i64> {
        let mut slots = Vec::new();
        let mut cursor = after_ms;
        while slots.len() < limit {
            match self.next_slot_ms(cursor) {
                Some(slot) if slot <= until_ms => {
                    slots.push(slot);
                    cursor = slot;
                }
                _ => break,
            }
        }
        slots
    }

    /// The first slot strictly after `after_ms` (Unix ms).
    pub(crate) fn next_slot_ms(&self, after_ms: i64) -> Option<i64> {
        match &self.kind {
            Kind::Every {
                period_ms,
                from_ms,
                until_ms,
            } => {
                let period = (*period_ms).max(1);
                let after = after_ms.max(from_ms.map_or(i64::MIN, |from| from - 1));
                let next = (after.div_euclid(period) + 1).checked_mul(period)?;
                let next = match from_ms {
                    Some(from) if next < *from => {
                        from.div_euclid(period) * period
                            + if from.rem_euclid(period) == 0 {
                                0
                            } else {
                                period
                            }
                    }
                    _ => next,
                };
                until_ms.is_none_or(|until| next <= until).then_some(next)
            }
            Kind::At { at_ms } => (*at_ms > after_ms).then_some(*at_ms),
            Kind::Cron { cron, zone, .. } => {
                let after = jiff::Timestamp::from_millisecond(after_ms)
                    .ok()?
                    .to_zoned(zone.clone());
                let next = cron.find_next_occurrence(&after, false).ok()?;
                Some(next.timestamp().as_millisecond())
            }
        }
    }

    /// About how long between two slots (for how long a claim must last); a day for a
    /// one-off.
    pub(crate) fn typical_period_ms(&self, now_ms: i64) -> i64 {
        match &self.kind {
            Kind::Every { period_ms, .. } => *period_ms,
            Kind::At { .. } => 86_400_000,
            Kind::Cron { .. } => {
                let first = self.next_slot_ms(now_ms);
                let second = first.and_then(|f| self.next_slot_ms(f));
                match (first, second) {
                    (Some(a), Some(b)) => b - a,
                    _ => 86_400_000,
                }
            }
        }
    }
}

/// A schedule as the backend keeps it for `stats`, `schedule list` and the dashboard: what it
/// runs, when it fires next, and its last firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule's name.
    pub name: String,
    /// The task it adds.
    pub task: String,
    /// When it fires, for people (`cron "0 7 * * *" (Europe/Berlin)`, `every 30s`).
    pub when: String,
    /// The next slot (Unix seconds), if any.
    pub next_at: Option<f64>,
    /// The last slot fired (Unix seconds).
    pub last_slot: Option<f64>,
    /// When it last fired (Unix seconds).
    pub last_fired_at: Option<f64>,
    /// The task its last firing added.
    pub last_uuid: Option<uuid::Uuid>,
    /// Whether it is paused (`schedule pause NAME`).
    #[serde(default)]
    pub paused: bool,
    /// The call it adds, so that any process can run it once now
    /// (`app.schedules().run_now(name)`): its positional arguments (`None` in a record of a
    /// worker older than this field: such a schedule cannot be run from elsewhere)...
    #[serde(default)]
    pub args: Option<Vec<serde_json::Value>>,
    /// ... its keyword arguments ...
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// ... its priority (the call's, else its task's) ...
    #[serde(default)]
    pub priority: Option<i64>,
    /// ... and its queue (the call's, else its task's), so that a process without the task's
    /// code adds it where the schedule does.
    #[serde(default)]
    pub queue: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> SystemTime {
        system_time(ms)
    }

    #[test]
    fn every_counts_aligned_slots() {
        let every = Schedule::every(Duration::from_secs(1));
        assert_eq!(every.next_slot_ms(0), Some(1000));
        assert_eq!(every.next_slot_ms(999), Some(1000));
        assert_eq!(every.next_slot_ms(1000), Some(2000));
        assert_eq!(every.slots_ms(0, 300_000, 1000).len(), 300);
        let bounded = Schedule::every(Duration::from_secs(1))
            .starting_at(at(10_500))
            .until(at(15_000));
        assert_eq!(
            bounded.slots_ms(0, 100_000, 100),
            vec![11_000, 12_000, 13_000, 14_000, 15_000]
        );
        let from_exact = Schedule::every(Duration::from_secs(1)).starting_at(at(10_000));
        assert_eq!(from_exact.next_slot_ms(0), Some(10_000));
    }

    #[test]
    fn once_fires_once() {
        let once = Schedule::at(at(5_000));
        assert_eq!(once.slots_ms(0, 100_000, 10), vec![5_000]);
        assert_eq!(once.next_slot_ms(5_000), None);
    }

    #[test]
    fn cron_reads_seconds_and_rejects_nonsense() {
        let every_ten = Schedule::cron("*/10 * * * * *").unwrap();
        assert_eq!(every_ten.slots_ms(0, 60_000, 100).len(), 6);
        let hourly = Schedule::cron("0 * * * *").unwrap();
        assert_eq!(hourly.next_slot_ms(0), Some(3_600_000));
        let error = Schedule::cron("every day").unwrap_err().to_string();
        assert!(error.contains("5 fields"), "{error}");
        assert!(Schedule::cron("0 0 25 * * *").is_err());
        assert!(
            Schedule::cron("0 0 * * *")
                .unwrap()
                .in_time_zone("Mars/Olympus")
                .is_err()
        );
    }
}
