//! Named queues: where a task waits, and which queues a worker serves.
//!
//! Every task waits in one queue: the one its `#[task(queue = "..")]` names, the one a call
//! chose ([`AddOptions::queue`](crate::AddOptions::queue)), else [`DEFAULT_QUEUE`]. A worker
//! takes only from the queues its app's [`QueueConfig::queues`](crate::QueueConfig::queues)
//! lists, in proportion to their weights (or in strict order), with an optional cap per queue
//! on how many of its tasks run at once ([`QueueConfig::queue_concurrency`]).
//!
//! [`QueueConfig::queue_concurrency`]: crate::QueueConfig::queue_concurrency

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

pub use crate::app::NamedQueues;

/// The queue of tasks that name none. On Redis and RabbitMQ it keeps Python QTasks' layout
/// (`{app}:task_queue`), so the original's clients and workers meet ours there.
pub const DEFAULT_QUEUE: &str = "default";

/// The longest queue name.
pub const MAX_QUEUE_NAME: usize = 64;

/// Checks a queue name: 1 to 64 ASCII letters, digits, `_`, `-` and `.` (it becomes part of
/// engine keys and AMQP queue names, where `:` and `|` separate fields). The error says what is
/// wrong.
///
/// ```
/// use qtasks::queues::check_queue_name;
///
/// assert!(check_queue_name("billing").is_ok());
/// assert!(check_queue_name("emails.high-priority_2").is_ok());
/// let error = check_queue_name("billing:eu").unwrap_err();
/// assert!(error.contains("`:`"), "{error}");
/// ```
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a queue name cannot be empty".to_owned());
    }
    if name.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "a queue name is at most {MAX_QUEUE_NAME} characters; `{name}` has {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "queue `{name}` contains `{bad}`: a queue name takes ASCII letters, digits, `_`, `-` and `.`"
        ));
    }
    Ok(())
}

/// The queues a worker serves, each with a weight: how often it is asked first, relative to
/// the others (Celery's `-Q`, Sidekiq's weighted queues). Written `billing:3,default:1` (a
/// missing weight is 1), as `QTASKS_QUEUES` and `qtasks worker --queues` take it.
///
/// ```
/// use qtasks::queues::QueueSelection;
///
/// let served: QueueSelection = "billing:3,default".parse()?;
/// assert_eq!(served.names().collect::<Vec<_>>(), ["billing", "default"]);
/// assert_eq!(served.weight_of("billing"), Some(3));
/// assert!(!served.serves("emails"));
/// assert_eq!(served.to_string(), "billing:3,default:1");
/// assert!("billing:0".parse::<QueueSelection>().is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSelection {
    queues: Vec<(String, u32)>,
}

impl Default for QueueSelection {
    /// The default queue alone.
    fn default() -> Self {
        QueueSelection {
            queues: vec![(DEFAULT_QUEUE.to_owned(), 1)],
        }
    }
}

impl QueueSelection {
    /// These queues, each of weight 1.
    ///
    /// # Panics
    ///
    /// On an invalid or repeated name, or none at all: use [`str::parse`] for names read at
    /// run time.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::weighted(names.into_iter().map(|name| (name, 1)))
    }

    /// These queues with their weights.
    ///
    /// # Panics
    ///
    /// On an invalid or repeated name, a weight of 0, or no queue at all: use [`str::parse`]
    /// for queues read at run time.
    pub fn weighted<I, S>(queues: I) -> Self
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        let queues = queues
            .into_iter()
            .map(|(name, weight)| (name.into(), weight))
            .collect();
        match Self::checked(queues) {
            Ok(selection) => selection,
            Err(error) => panic!("invalid queue selection: {error}"),
        }
    }

    fn checked(queues: Vec<(String, u32)>) -> Result<Self, String> {
        if queues.is_empty() {
            return Err("a worker serves at least one queue".to_owned());
        }
        for (i, (name, weight)) in queues.iter().enumerate() {
            check_queue_name(name)?;
            if *weight == 0 {
                return Err(format!(
                    "queue `{name}` has weight 0: a weight is at least 1 (leave a queue out to not serve it)"
                ));
            }
            if queues[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(format!("queue `{name}` is listed twice"));
            }
        }
        Ok(QueueSelection { queues })
    }

    /// The queues' names, in the order given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(|(name, _)| name.as_str())
    }

    /// Whether a worker with this selection serves `queue`.
    pub fn serves(&self, queue: &str) -> bool {
        self.queues.iter().any(|(name, _)| name == queue)
    }

    /// The weight of `queue`, if it is served.
    pub fn weight_of(&self, queue: &str) -> Option<u32> {
        self.queues
            .iter()
            .find(|(name, _)| name == queue)
            .map(|(_, weight)| *weight)
    }

    /// Whether this is the default queue alone.
    pub fn is_default_only(&self) -> bool {
        matches!(self.queues.as_slice(), [(name, _)] if name == DEFAULT_QUEUE)
    }
}

impl FromStr for QueueSelection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut queues = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (name, weight) = match part.split_once(':') {
                Some((name, weight)) => {
                    let weight = weight.trim().parse::<u32>().map_err(|_| {
                        format!(
                            "`{part}`: the weight after `:` is a whole number from 1 (as in `billing:3`)"
                        )
                    })?;
                    (name.trim(), weight)
                }
                None => (part, 1),
            };
            queues.push((name.to_owned(), weight));
        }
        Self::checked(queues)
    }
}

impl fmt::Display for QueueSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, weight)) in self.queues.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}:{weight}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for QueueSelection {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for QueueSelection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|error: String| {
            serde::de::Error::custom(format!(
                "a comma-separated list of queues with optional weights (`billing:3,default`): {error}"
            ))
        })
    }
}

/// How many tasks of a queue one worker runs at once, per queue: `billing:2` runs at most two
/// billing tasks at a time, whatever the worker's other slots do (as `QTASKS_QUEUE_CONCURRENCY`
/// and `qtasks worker --queue-concurrency` take it). Queues not listed share the worker's
/// `max_tasks_process` slots freely.
///
/// ```
/// use qtasks::queues::QueueLimits;
///
/// let limits: QueueLimits = "billing:2, reports:1".parse()?;
/// assert_eq!(limits.limit_of("billing"), Some(2));
/// assert_eq!(limits.limit_of("default"), None);
/// assert!("billing".parse::<QueueLimits>().is_err(), "a limit needs its number");
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueLimits {
    limits: Vec<(String, usize)>,
}

impl QueueLimits {
    /// The cap of `queue`, if it has one.
    pub fn limit_of(&self, queue: &str) -> Option<usize> {
        self.limits
            .iter()
            .find(|(name, _)| name == queue)
            .map(|(_, limit)| *limit)
    }

    /// Whether no queue has a cap.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The queues with a cap, and their caps.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.limits
            .iter()
            .map(|(name, limit)| (name.as_str(), *limit))
    }
}

impl FromStr for QueueLimits {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut limits: Vec<(String, usize)> = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let Some((name, limit)) = part.split_once(':') else {
                return Err(format!(
                    "`{part}`: write the queue and its cap, as in `billing:2`"
                ));
            };
            let name = name.trim();
            check_queue_name(name)?;
            let limit = limit
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|limit| *limit > 0)
                .ok_or_else(|| format!("`{part}`: the cap after `:` is a whole number from 1"))?;
            if limits.iter().any(|(earlier, _)| earlier == name) {
                return Err(format!("queue `{name}` is capped twice"));
            }
            limits.push((name.to_owned(), limit));
        }
        Ok(QueueLimits { limits })
    }
}

impl fmt::Display for QueueLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, limit)) in self.limits.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}:{limit}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for QueueLimits {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for QueueLimits {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|error: String| {
            serde::de::Error::custom(format!(
                "a comma-separated list of queues and caps (`billing:2`): {error}"
            ))
        })
    }
}

/// One queue of a [`Take`], and how many of its tasks the worker can start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueTake<'a> {
    /// The queue's name.
    pub name: &'a str,
    /// At most this many of its tasks.
    pub max: usize,
}

/// What a worker asks its broker for ([`Broker::take`](crate::backend::Broker::take)): up to
/// [`max`](Self::max) tasks, from these queues in this order of preference (the first queue
/// first; the next ones fill what it leaves), each at most its own `max`. Paused queues are
/// skipped by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Take<'a> {
    /// The queues, most wanted first.
    pub queues: Vec<QueueTake<'a>>,
    /// At most this many tasks in all.
    pub max: usize,
    /// How long the broker may wait for a task before it answers with none (the worker then
    /// plans its take again: a queue left out at its cap may have room by then). `None`: wait
    /// until a task comes.
    pub patience: Option<std::time::Duration>,
}

impl<'a> Take<'a> {
    /// Up to `max` tasks from the default queue alone.
    pub fn default_queue(max: usize) -> Take<'static> {
        Take {
            queues: vec![QueueTake {
                name: DEFAULT_QUEUE,
                max,
            }],
            max,
            patience: None,
        }
    }

    /// Up to `max` tasks from `queues`, each of them up to `max` too.
    pub fn from_queues(queues: impl IntoIterator<Item = &'a str>, max: usize) -> Self {
        Take {
            queues: queues
                .into_iter()
                .map(|name| QueueTake { name, max })
                .collect(),
            max,
            patience: None,
        }
    }

    /// Whether only the default queue is asked.
    pub fn is_default_only(&self) -> bool {
        matches!(self.queues.as_slice(), [only] if only.name == DEFAULT_QUEUE)
    }
}

/// How long a take waits while a queue it left out is at its cap: then it is planned again.
const CAPPED_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

/// A worker's side of its queues: the order of each take (smooth weighted round robin, or
/// strict) and the running count of each capped queue.
pub(crate) struct QueuePlan {
    names: Vec<String>,
    weights: Vec<i64>,
    strict: bool,
    /// The round robin's running scores, one per queue.
    scores: Mutex<Vec<i64>>,
    /// The cap of each queue (`usize::MAX` when it has none).
    caps: Vec<usize>,
    /// How many tasks of each capped queue run now (counted only when some queue is capped).
    running: Vec<AtomicUsize>,
    /// Signalled when a capped queue's task ends: a worker whose queues were all at their cap
    /// takes again.
    freed: tokio::sync::Notify,
}

impl QueuePlan {
    pub(crate) fn new(selection: &QueueSelection, strict: bool, limits: &QueueLimits) -> Self {
        let names: Vec<String> = selection.names().map(str::to_owned).collect();
        QueuePlan {
            weights: selection
                .queues
                .iter()
                .map(|(_, weight)| i64::from(*weight))
                .collect(),
            strict,
            scores: Mutex::new(vec![0; names.len()]),
            caps: names
                .iter()
                .map(|name| limits.limit_of(name).unwrap_or(usize::MAX))
                .collect(),
            running: names.iter().map(|_| AtomicUsize::new(0)).collect(),
            freed: tokio::sync::Notify::new(),
            names,
        }
    }

    /// Whether some queue has a cap (then runs are counted per queue).
    pub(crate) fn is_capped(&self) -> bool {
        self.caps.iter().any(|cap| *cap != usize::MAX)
    }

    /// The next take of up to `max` tasks: the queues in this take's order, each with what it
    /// may still start. Empty when every queue is at its cap.
    pub(crate) fn next_take(&self, max: usize) -> Take<'_> {
        let mut order: Vec<usize> = (0..self.names.len()).collect();
        if !self.strict && self.names.len() > 1 {
            // Smooth weighted round robin: each queue gains its weight, the highest score goes
            // first and pays the total back. Over any run of takes each queue leads in
            // proportion to its weight, without long streaks.
            let mut scores = self.scores.lock();
            let total: i64 = self.weights.iter().sum();
            for (score, weight) in scores.iter_mut().zip(&self.weights) {
                *score += weight;
            }
            let first = (0..scores.len())
                .max_by_key(|i| (scores[*i], std::cmp::Reverse(*i)))
                .unwrap_or(0);
            scores[first] -= total;
            order.retain(|i| *i != first);
            order.insert(0, first);
        }
        let mut left_out = false;
        let queues = order
            .into_iter()
            .filter_map(|i| {
                let running = self.running[i].load(Ordering::Acquire);
                let room = self.caps[i].saturating_sub(running).min(max);
                left_out |= room == 0;
                (room > 0).then(|| QueueTake {
                    name: self.names[i].as_str(),
                    max: room,
                })
            })
            .collect();
        Take {
            queues,
            max,
            patience: left_out.then_some(CAPPED_PATIENCE),
        }
    }

    /// Counts a task of `queue` as running (for capped queues).
    pub(crate) fn started(&self, queue: &str) {
        if let Some(i) = self.capped_index(queue) {
            self.running[i].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Counts a task of `queue` out, and wakes a worker waiting for room. (Never below zero:
    /// a delivery executed that this plan did not count, one a custom worker built, must not
    /// stall the queue.)
    pub(crate) fn ended(&self, queue: &str) {
        if let Some(i) = self.capped_index(queue) {
            let _ = self.running[i]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            self.freed.notify_waiters();
        }
    }

    /// Resolves when a capped queue's task ends.
    pub(crate) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    fn capped_index(&self, queue: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|name| name == queue)
            .filter(|i| self.caps[*i] != usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firsts(plan: &QueuePlan, takes: usize) -> Vec<String> {
        (0..takes)
            .map(|_| plan.next_take(10).queues[0].name.to_owned())
            .collect()
    }

    #[test]
    fn weights_set_how_often_a_queue_is_asked_first() {
        let selection: QueueSelection = "billing:3,default:1".parse().unwrap();
        let plan = QueuePlan::new(&selection, false, &QueueLimits::default());
        let firsts = firsts(&plan, 400);
        let billing = firsts.iter().filter(|q| *q == "billing").count();
        assert_eq!(billing, 300, "3 of every 4 takes ask billing first");
        // Smooth: never more than three billing takes in a row.
        assert!(!firsts.windows(4).any(|w| w.iter().all(|q| q == "billing")));
        // Every take still asks every queue, to fill what the first leaves.
        assert_eq!(plan.next_take(10).queues.len(), 2);
    }

    #[test]
    fn strict_order_always_asks_the_first_queue_first() {
        let selection: QueueSelection = "urgent:1,default:9".parse().unwrap();
        let plan = QueuePlan::new(&selection, true, &QueueLimits::default());
        assert!(firsts(&plan, 50).iter().all(|q| q == "urgent"));
    }

    #[test]
    fn a_capped_queue_is_left_out_while_it_is_full() {
        let selection: QueueSelection = "billing,default".parse().unwrap();
        let limits: QueueLimits = "billing:2".parse().unwrap();
        let plan = QueuePlan::new(&selection, true, &limits);
        assert_eq!(plan.next_take(10).queues[0].max, 2);
        plan.started("billing");
        plan.started("default");
        assert_eq!(plan.next_take(10).queues[0].max, 1);
        plan.started("billing");
        let take = plan.next_take(10);
        assert_eq!(take.queues.len(), 1);
        assert_eq!(take.queues[0].name, "default");
        plan.ended("billing");
        assert_eq!(plan.next_take(10).queues[0].name, "billing");
    }

    #[test]
    fn bad_selections_say_what_is_wrong() {
        for (text, says) in [
            ("", "at least one queue"),
            ("billing,billing", "listed twice"),
            ("billing:x", "whole number"),
            ("bill ing", "contains ` `"),
            ("a|b", "contains `|`"),
        ] {
            let error = text.parse::<QueueSelection>().unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
        assert!(
            "billing:0"
                .parse::<QueueLimits>()
                .unwrap_err()
                .contains("from 1")
        );
        let long = "q".repeat(65);
        assert!(check_queue_name(&long).unwrap_err().contains("at most 64"));
    }
}
