//! Rate limits and concurrency limits: how often, and how many at once, a task starts across
//! every worker of the app.
//!
//! `#[task(rate_limit = "100/s")]` spaces the task's starts evenly, one every
//! [`RateLimit::interval`] (a token bucket holding one token), for all its calls or, with
//! [`AddOptions::rate_key`](crate::AddOptions::rate_key), for each key apart (one customer's
//! calls do not slow another's). `#[task(max_running = 5)]` lets at most five runs of the task
//! go at once, whatever the number of workers.
//!
//! The engine keeps the limits (one script on Redis, one lock in memory), so they hold across
//! processes. A worker asks it before a limited task starts ([`Broker::admit`]); a task over a
//! limit is handed back unrun to wait in its queue, neither failed nor retried in a loop:
//!
//! - over its rate, it is given the next free start time and waits until then, and starts
//!   then without asking again;
//! - over `max_running`, it is parked (giving up a turn its rate gave it), and a run that ends
//!   wakes as many parked tasks as there are free slots (on Redis a parked task whose waker
//!   died with its worker looks again after [`PARKED_RECHECK`]).
//!
//! [`Broker::admit`]: crate::backend::Broker::admit

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use uuid::Uuid;

/// How long a task parked by `max_running` waits at most before it asks again, in case the
/// run that should have woken it died with its worker (its lease ran out).
pub const PARKED_RECHECK: Duration = Duration::from_secs(30);

/// The longest rate key, in bytes.
pub const MAX_RATE_KEY_LEN: usize = 512;

/// At most `count` starts per `per`, spaced evenly: one every `per / count`.
///
/// ```
/// use std::time::Duration;
/// use qtasks::limits::RateLimit;
///
/// let limit: RateLimit = "100/s".parse().unwrap();
/// assert_eq!(limit.interval(), Duration::from_millis(10));
/// let slow: RateLimit = "3/10m".parse().unwrap();
/// assert_eq!(slow.interval(), Duration::from_secs(200));
/// assert!("100/fortnight".parse::<RateLimit>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// How many starts.
    pub count: u32,
    /// In how long.
    pub per: Duration,
}

impl RateLimit {
    /// `count` starts per `per`; `Err` when either is zero.
    pub fn new(count: u32, per: Duration) -> Result<Self, String> {
        if count == 0 {
            return Err("the count must be more than 0 (a task that may never start?)".into());
        }
        if per.is_zero() {
            return Err("the period must be more than 0".into());
        }
        Ok(RateLimit { count, per })
    }

    /// The time between two starts: `per / count`, at least a microsecond.
    pub fn interval(&self) -> Duration {
        (self.per / self.count.max(1)).max(Duration::from_micros(1))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.per.as_secs_f64();
        match seconds {
            1.0 => write!(f, "{}/s", self.count),
            60.0 => write!(f, "{}/m", self.count),
            3600.0 => write!(f, "{}/h", self.count),
            _ => write!(f, "{}/{seconds}s", self.count),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    /// `"100/s"`, `"60/m"`, `"1000/h"`, `"1/d"`, or a period with a number: `"5/10s"`,
    /// `"1/1m30s"`.
    fn from_str(text: &str) -> Result<Self, String> {
        let Some((count, per)) = text.split_once('/') else {
            return Err(format!(
                "`{text}` is not a rate: write starts per period, like \"100/s\" or \"5/10m\""
            ));
        };
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a whole number of starts", count.trim()))?;
        let per = per.trim();
        // A bare unit is one of it: `s` is `1s`.
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            period(per)?
        } else {
            period(&format!("1{per}"))?
        };
        RateLimit::new(count, per)
    }
}

/// A period written `10s`, `1m30s`, `500ms`, `2h`, `1d`: numbers, each with its unit.
fn period(text: &str) -> Result<Duration, String> {
    let mut rest = text;
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` is not a period: expected a number at `{rest}`"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            unit => {
                return Err(format!(
                    "`{unit}` in `{text}` is not a unit of time (ms, s, m, h, d)"
                ));
            }
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("`{text}`: {e}"))
}

/// What limits one delivered task's start: its task's limits and the key its rate is kept by.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskLimits {
    /// The task's name: `max_running` counts the runs of this name.
    pub task_name: String,
    /// The key the rate is kept by: the task's name, and its call's
    /// [`rate_key`](crate::AddOptions::rate_key) after a `|` if it has one.
    pub rate_key: String,
    /// The task's rate limit (`rate_limit`).
    pub rate: Option<RateLimit>,
    /// How many runs of the task may go at once across the app (`max_running`).
    pub max_running: Option<u32>,
}

impl TaskLimits {
    /// The limits of a call of `definition` with the call's own rate key, if any; `None` when
    /// the task has no limits.
    pub fn of(definition: &crate::TaskDefinition, rate_key: Option<&str>) -> Option<TaskLimits> {
        let rate = definition.rate_limit();
        let max_running = definition.max_running();
        if rate.is_none() && max_running.is_none() {
            return None;
        }
        let name = definition.name();
        Some(TaskLimits {
            task_name: name.to_owned(),
            rate_key: match rate_key {
                Some(key) => format!("{name}|{key}"),
                None => name.to_owned(),
            },
            rate,
            max_running,
        })
    }
}

/// The engine's answer to a worker that asks whether a task may start
/// ([`Broker::admit`](crate::backend::Broker::admit)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It may start now. With `max_running`, it holds one of the task's running slots until
    /// [`Broker::leave`](crate::backend::Broker::leave).
    Run,
    /// Over its rate: handed back unrun (status `new`), it starts after `wait` without asking
    /// again.
    Postponed {
        /// How long it waits.
        wait: Duration,
    },
    /// Over `max_running`: handed back unrun and parked until a run of the task ends.
    Parked,
    /// Cancelled while it was held: its record ends `cancel`, and it never runs.
    Cancelled,
    /// The delivery did not hold its task any more (its lease ran out): another worker has it,
    /// and nothing was done.
    Lost,
}

/// A task's reserved start under its rate: the reservations a rate keeps, so a task handed
/// back until its turn starts then without taking another. (Used by the engines.)
#[derive(Debug, Default)]
pub struct RateState {
    /// When the next start may be, in Unix seconds.
    pub next_start: f64,
    /// The tasks handed back until their turn, and their turn.
    pub reserved: std::collections::HashMap<Uuid, f64>,
}

impl RateState {
    /// Decides the start of task `uuid` at `now` (Unix seconds) under a rate of one start
    /// per `interval`: `None` to start now, or how long to wait for the turn it was given.
    ///
    /// ```
    /// use std::time::Duration;
    /// use qtasks::limits::RateState;
    /// use qtasks::Uuid;
    ///
    /// let mut rate = RateState::default();
    /// let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    /// let tick = Duration::from_millis(100);
    /// assert_eq!(rate.turn(a, 10.0, tick), None);
    /// let wait = rate.turn(b, 10.0, tick).unwrap();
    /// assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9);
    /// // Back at its turn, it starts without taking another.
    /// assert_eq!(rate.turn(b, 10.1, tick), None);
    /// assert!(rate.turn(Uuid::new_v4(), 10.1, tick).is_some());
    /// ```
    pub fn turn(&mut self, uuid: Uuid, now: f64, interval: Duration) -> Option<Duration> {
        if let Some(turn) = self.reserved.get(&uuid).copied() {
            if turn <= now + RESERVATION_SLACK {
                self.reserved.remove(&uuid);
                return None;
            }
            return Some(seconds(turn - now));
        }
        let start = self.next_start.max(now);
        self.next_start = start + interval.as_secs_f64();
        if start <= now + RESERVATION_SLACK {
            return None;
        }
        self.reserved.insert(uuid, start);
        Some(seconds(start - now))
    }

    /// Forgets reservations older than `age` before `now` (tasks cancelled or deleted while
    /// they waited for their turn).
    pub fn forget_before(&mut self, now: f64, age: Duration) {
        let oldest = now - age.as_secs_f64();
        self.reserved.retain(|_, turn| *turn >= oldest);
    }
}

/// How early a task handed back until its turn may come back and still start: a clock's
/// rounding, not a second start.
pub const RESERVATION_SLACK: f64 = 0.001;

fn seconds(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

/// Checks a rate key: not empty, at most [`MAX_RATE_KEY_LEN`] bytes.
pub fn check_rate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a rate key is empty".to_owned());
    }
    if key.len() > MAX_RATE_KEY_LEN {
        return Err(format!(
            "a rate key is {} bytes; the most is {MAX_RATE_KEY_LEN}",
            key.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units_and_periods() {
        let cases = [
            ("100/s", 100, 1.0),
            ("60/m", 60, 60.0),
            ("1000/h", 1000, 3600.0),
            ("1/d", 1, 86400.0),
            ("5/10s", 5, 10.0),
            (" 2 / 1m30s ", 2, 90.0),
        ];
        for (text, count, per) in cases {
            let limit: RateLimit = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(limit.count, count, "{text}");
            assert_eq!(limit.per.as_secs_f64(), per, "{text}");
        }
        for bad in [
            "",
            "100",
            "0/s",
            "-1/s",
            "1.5/s",
            "10/0s",
            "10/parsec",
            "x/s",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_rate_spaces_starts_and_keeps_each_turn() {
        let mut rate = RateState::default();
        let tick = Duration::from_millis(10);
        let tasks: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let waits: Vec<f64> = tasks
            .iter()
            .map(|uuid| {
                rate.turn(*uuid, 100.0, tick)
                    .map_or(0.0, |w| w.as_secs_f64())
            })
            .collect();
        for (n, wait) in waits.iter().enumerate() {
            assert!((wait - n as f64 * 0.01).abs() < 1e-6, "{waits:?}");
        }
        // Coming back early: still its turn, not a new one.
        let early = rate.turn(tasks[4], 100.02, tick).unwrap().as_secs_f64();
        assert!((early - 0.02).abs() < 1e-6, "{early}");
        assert_eq!(rate.turn(tasks[4], 100.04, tick), None);
        assert!(rate.reserved.len() == 3, "the others still hold theirs");
        // An idle rate does not bank starts: after a pause, one at once, the next spaced.
        assert_eq!(rate.turn(Uuid::new_v4(), 200.0, tick), None);
        assert!(rate.turn(Uuid::new_v4(), 200.0, tick).is_some());
        rate.forget_before(200.0, Duration::from_secs(10));
        assert!(rate.reserved.len() == 1, "{:?}", rate.reserved);
    }
}
