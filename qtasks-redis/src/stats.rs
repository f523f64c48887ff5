//! Live stats on Redis: one script reads the queue's structures and the counters the other
//! scripts keep (`scripts::STATS`), one more call reads the oldest waiting task's age. Nothing
//! is scanned, so it costs the same on an empty queue and on a million tasks.

use std::collections::HashMap;

use crate::link::Link;
use redis::Script;

use super::wire::parse_entry;
use super::{Keys, QueueKeys, failure, scripts};
use qtasks_core::backend::{BackendError, unix_now};
use qtasks_core::stats::{DeadLetter, QueueStats};

/// One distinct priority of `ready`: the priority (a score, as text), how many, its first
/// member.
type PriorityRun = (String, u64, String);

/// What the stats script returns (see `scripts::STATS`).
type Raw = (
    Vec<PriorityRun>,
    u64,
    u64,
    u64,
    u64,
    HashMap<String, String>,
    u64,
    Vec<Option<String>>,
);

/// Reads the numbers of one queue (its waiting and delayed tasks, by its keys) and the app's
/// (running, finished, dead letters).
pub(crate) async fn read(
    keys: &Keys,
    queue: &QueueKeys<'_>,
    commands: &Link,
) -> Result<QueueStats, BackendError> {
    let mut con = commands.clone();
    let (runs, delayed, running, dead, unsorted, counters, now, heads): Raw =
        Script::new(scripts::STATS)
            .key(&*queue.ready)
            .key(&*queue.list)
            .key(&*queue.incoming)
            .key(&*queue.delayed)
            .key(&keys.leases)
            .key(&keys.dead)
            .key(&*queue.stats)
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure("reading the queue's stats failed".to_owned(), e))?;

    let mut stats = QueueStats::default();
    stats.delayed = delayed;
    stats.running = running;
    stats.dead_letters = dead;
    for (priority, count, _) in &runs {
        let priority = priority.parse::<f64>().map_or(0, |p| p as i64);
        *stats.waiting.entry(priority).or_default() += count;
    }
    add_unsorted(&mut stats, unsorted, &counters);
    // Tasks cancelled while they waited stay queued until a take drops them: not waiting.
    for (field, count) in &counters {
        let Some(priority) = field.strip_prefix("cancelled:") else {
            continue;
        };
        let (Ok(priority), Ok(count)) = (priority.parse::<i64>(), count.parse::<u64>()) else {
            continue;
        };
        if let Some(waiting) = stats.waiting.get_mut(&priority) {
            *waiting = waiting.saturating_sub(count);
        }
    }
    stats.waiting.retain(|_, waiting| *waiting > 0);
    add_finished(&mut stats, &counters, now);

    // The oldest waiting task: the first in arrival order among the priorities' first members
    // (members start with their zero-padded arrival number), else the head of the unsorted
    // lists. Its record says when it was created.
    let oldest_entry = runs
        .iter()
        .map(|(_, _, member)| member.as_str())
        .min()
        .map(|member| member.split_once('|').map_or(member, |(_, entry)| entry))
        .or_else(|| heads.iter().flatten().map(String::as_str).next());
    if let Some(Ok((_, uuid, _))) = oldest_entry.map(parse_entry) {
        let created_at: Option<f64> = redis::cmd("HGET")
            .arg(keys.record(uuid))
            .arg("created_at")
            .query_async(&mut con)
            .await
            .map_err(|e| failure("reading the oldest waiting task failed".to_owned(), e))?;
        stats.oldest_waiting_secs = created_at.map(|at| (unix_now() - at).max(0.0));
    }
    Ok(stats)
}

/// A queue's own numbers, from what [`read`] read of it.
pub(crate) fn numbers_of(stats: &QueueStats) -> qtasks_core::stats::QueueNumbers {
    let mut numbers = qtasks_core::stats::QueueNumbers::default();
    numbers.waiting = stats.waiting_total();
    numbers.delayed = stats.delayed;
    numbers
}

/// The numbers of the records the storage wrote for another broker (`scripts::INSERT` and
/// `scripts::TRANSITION` keep them): as cheap as [`read`], whatever the number of records.
pub(crate) async fn read_records(keys: &Keys, commands: &Link) -> Result<QueueStats, BackendError> {
    let mut con = commands.clone();
    let (counters, oldest, now): (HashMap<String, String>, Option<f64>, u64) =
        Script::new(scripts::RECORD_STATS)
            .key(&keys.records_stats)
            .key(&keys.records_waiting)
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure("reading the records' stats failed".to_owned(), e))?;
    let mut stats = QueueStats::default();
    for (field, count) in &counters {
        let Ok(count) = count.parse::<i64>() else {
            continue;
        };
        let count = count.max(0) as u64;
        if let Some(priority) = field.strip_prefix("w:").and_then(|p| p.parse::<i64>().ok()) {
            if count > 0 {
                stats.waiting.insert(priority, count);
            }
        } else if field == "running" {
            stats.running = count;
        }
    }
    add_finished(&mut stats, &counters, now);
    stats.oldest_waiting_secs = oldest.map(|at| (now as f64 - at).max(0.0));
    Ok(stats)
}

/// Adds the finished counts: the folded totals plus the buckets of the last minute or so.
fn add_finished(stats: &mut QueueStats, counters: &HashMap<String, String>, now: u64) {
    for (field, count) in counters {
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let (status, at) = match field.strip_prefix("t:").and_then(|b| b.split_once(':')) {
            Some((at, status)) => (status, at.parse::<u64>().ok()),
            None => (field.as_str(), None),
        };
        if let Ok(status) = status.parse::<qtasks_core::TaskStatus>() {
            stats.finished.add(status, count);
        }
        // (Buckets are named by the workers' clocks: one a little ahead still counts.)
        if let Some(at) = at
            && at + 60 > now
        {
            stats.finished_last_minute += count;
        }
    }
}

/// Entries pushed and not yet sorted into `ready` count under the priority their client
/// pushed them with (Rust clients keep a counter per priority); entries whose client keeps no
/// counter (Python clients) count under priority 0, the original's default, until a worker
/// sorts them.
fn add_unsorted(stats: &mut QueueStats, unsorted: u64, counters: &HashMap<String, String>) {
    let mut left = unsorted;
    let mut counted: Vec<(i64, u64)> = counters
        .iter()
        .filter_map(|(field, count)| {
            let priority = field.strip_prefix("queued:")?.parse().ok()?;
            Some((priority, count.parse().ok()?))
        })
        .collect();
    counted.sort_unstable();
    for (priority, count) in counted {
        let count = count.min(left);
        if count > 0 {
            *stats.waiting.entry(priority).or_default() += count;
            left -= count;
        }
    }
    if left > 0 {
        *stats.waiting.entry(0).or_default() += left;
    }
}

/// A dead letter as stored (`{"entry","reason","at"}`); its exact bytes are its id.
pub(crate) fn dead_letter(raw: Vec<u8>) -> DeadLetter {
    let text = String::from_utf8_lossy(&raw).into_owned();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let field = |name: &str| parsed.get(name).and_then(|v| v.as_str()).unwrap_or("");
    let entry = match parsed.get("entry") {
        Some(serde_json::Value::String(entry)) => entry.clone(),
        Some(other) => other.to_string(),
        None => text.clone(),
    };
    DeadLetter::new(
        text,
        entry,
        field("reason"),
        parsed.get("at").and_then(|v| v.as_f64()).unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsorted_entries_count_under_their_priority_and_the_rest_under_zero() {
        let mut stats = QueueStats::default();
        let counters = HashMap::from([
            ("queued:5".to_owned(), "2".to_owned()),
            ("queued:-1".to_owned(), "1".to_owned()),
            ("success".to_owned(), "9".to_owned()),
        ]);
        add_unsorted(&mut stats, 5, &counters);
        assert_eq!(stats.waiting.get(&-1), Some(&1));
        assert_eq!(stats.waiting.get(&5), Some(&2));
        assert_eq!(stats.waiting.get(&0), Some(&2));
        // Counters ahead of the lists (a Python worker sorted some) never count twice.
        let mut stats = QueueStats::default();
        add_unsorted(&mut stats, 1, &counters);
        assert_eq!(stats.waiting_total(), 1);
    }

    #[test]
    fn a_dead_letter_keeps_its_stored_bytes_as_its_id() {
        let raw = br#"{"entry":"bad:entry","reason":"no uuid","at":12.5}"#.to_vec();
        let letter = dead_letter(raw.clone());
        assert_eq!(letter.id.as_bytes(), &raw[..]);
        assert_eq!(letter.entry, "bad:entry");
        assert_eq!(letter.reason, "no uuid");
        assert_eq!(letter.at, 12.5);
    }
}
