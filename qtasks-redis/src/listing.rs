//! Listing records a page at a time from the records' index, `N:qtasks:records:index`: a
//! sorted set of every record's uuid scored by when it was added (ms). A page walks the index
//! newest first from the cursor's rank (`ZREVRANK`, O(log n)), so page 1 and page 10,000 of a
//! store of millions cost the same few round trips.
//!
//! Who writes the index: the add pipeline, the finish script (a retry's next attempt), the
//! insert script (records a RabbitMQ broker asks for), and the take (`MARK`, `ZADD NX`) for
//! records another producer wrote. Records that expire (the result time to live) leave their
//! uuid behind; a page skips those and drops them, and every worker sweeps the index slowly
//! in the background ([`sweep`]), so the index does not outgrow the records.

use std::time::{Duration, Instant};

use crate::link::Link;
use uuid::Uuid;

use super::{Keys, failure};
use qtasks_core::TaskStatus;
use qtasks_core::backend::BackendError;
use qtasks_core::records::{RecordCursor, RecordPage, RecordQuery, secs_to_ms};

/// The most index entries read per round trip.
const BATCH: usize = 2000;
/// How long one page may look for records that pass a narrow filter before it returns what it
/// has, with a cursor to go on: a page never takes a second, however rare the matches.
const SCAN_TIME: Duration = Duration::from_millis(250);

/// One page of `query`, read from the index.
pub(crate) async fn list(
    keys: &Keys,
    index: &str,
    commands: &Link,
    query: &RecordQuery,
) -> Result<RecordPage, BackendError> {
    let mut con = commands.clone();
    let read_failed = |e| failure("listing the records failed".to_owned(), e);
    let size = query.page_size();
    let mut rank = start_rank(index, &mut con, query)
        .await
        .map_err(read_failed)?;
    let started = Instant::now();
    let mut matches: Vec<RecordCursor> = Vec::with_capacity(size + 1);
    let mut stale: Vec<String> = Vec::new();
    let mut scanned = 0u64;
    let mut last_seen: Option<RecordCursor> = None;
    let mut ended = false;
    // The first read is a page's worth (without a narrow filter nearly every entry shows);
    // each next one is four times larger, up to `BATCH`, so a rare match is found in few trips.
    let mut batch_size = size + 1;
    while matches.len() <= size {
        let batch: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(index)
            .arg(rank)
            .arg(rank + batch_size - 1)
            .arg("WITHSCORES")
            .query_async(&mut con)
            .await
            .map_err(read_failed)?;
        if batch.is_empty() {
            ended = true;
            break;
        }
        rank += batch.len();
        scanned += batch.len() as u64;
        batch_size = (batch_size * 4).min(BATCH);
        let mut candidates = Vec::with_capacity(batch.len());
        for (member, score) in batch {
            let Ok(uuid) = Uuid::parse_str(&member) else {
                stale.push(member);
                continue;
            };
            let position = RecordCursor {
                created_ms: score.max(0.0) as u64,
                uuid,
            };
            last_seen = Some(position);
            if query
                .since
                .is_some_and(|since| position.created_ms < secs_to_ms(since))
            {
                ended = true;
                break;
            }
            if query.in_range(position) {
                candidates.push(position);
            }
        }
        // The status and name of each candidate, in one round trip; a record gone (expired)
        // answers nothing and leaves the index.
        let mut pipe = redis::pipe();
        for position in &candidates {
            pipe.cmd("HMGET")
                .arg(keys.record(position.uuid))
                .arg("status")
                .arg("task_name");
        }
        let found: Vec<(Option<String>, Option<String>)> = if candidates.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut con).await.map_err(read_failed)?
        };
        for (position, (status, name)) in candidates.into_iter().zip(found) {
            let Some(status) = status else {
                stale.push(position.uuid.to_string());
                continue;
            };
            // A status this version does not know passes only an unfiltered listing.
            let passes = match status.parse::<TaskStatus>() {
                Ok(status) => query.matches(status, name.as_deref().unwrap_or_default()),
                Err(_) => query.status.is_none() && query.task_name.is_none(),
            };
            if passes {
                matches.push(position);
                if matches.len() > size {
                    break;
                }
            }
        }
        if ended || started.elapsed() > SCAN_TIME {
            break;
        }
    }
    if !stale.is_empty() {
        // Best effort: the next page or the sweep drops them otherwise.
        let _: Result<(), _> = redis::cmd("ZREM")
            .arg(index)
            .arg(&stale)
            .exec_async(&mut con)
            .await;
    }
    let more = matches.len() > size;
    let scan_incomplete = !more && !ended;
    let next = if more {
        Some(matches[size - 1])
    } else if scan_incomplete {
        last_seen
    } else {
        None
    };
    matches.truncate(size);
    let records = read_records(keys, &mut con, &matches)
        .await
        .map_err(read_failed)?;
    let mut page = RecordPage::new(records);
    page.next = next;
    page.scanned = scanned;
    page.scan_incomplete = scan_incomplete;
    if query.filters_by_time_only() {
        page.total = Some(
            count_in_range(index, &mut con, query)
                .await
                .map_err(read_failed)?,
        );
    }
    Ok(page)
}

/// The rank (newest first) of the first index entry the page may show: just after the cursor,
/// or the first entry not newer than `until`.
async fn start_rank(index: &str, con: &mut Link, query: &RecordQuery) -> redis::RedisResult<usize> {
    if let Some(after) = query.after {
        let rank: Option<usize> = redis::cmd("ZREVRANK")
            .arg(index)
            .arg(after.uuid.to_string())
            .query_async(con)
            .await?;
        if let Some(rank) = rank {
            return Ok(rank + 1);
        }
        // The cursor's record is gone: start at its time (ties are skipped by `in_range`).
        return newer_than(index, con, after.created_ms + 1).await;
    }
    match query.until {
        Some(until) => newer_than(index, con, secs_to_ms(until) + 1).await,
        None => Ok(0),
    }
}

/// How many entries were added at `ms` or later.
async fn newer_than(index: &str, con: &mut Link, ms: u64) -> redis::RedisResult<usize> {
    redis::cmd("ZCOUNT")
        .arg(index)
        .arg(ms)
        .arg("+inf")
        .query_async(con)
        .await
}

async fn count_in_range(
    index: &str,
    con: &mut Link,
    query: &RecordQuery,
) -> redis::RedisResult<u64> {
    let low = query
        .since
        .map_or_else(|| "-inf".to_owned(), |s| secs_to_ms(s).to_string());
    let high = query
        .until
        .map_or_else(|| "+inf".to_owned(), |u| secs_to_ms(u).to_string());
    redis::cmd("ZCOUNT")
        .arg(index)
        .arg(low)
        .arg(high)
        .query_async(con)
        .await
}

/// The whole records of a page, in its order; one gone meanwhile is left out.
async fn read_records(
    keys: &Keys,
    con: &mut Link,
    positions: &[RecordCursor],
) -> redis::RedisResult<Vec<qtasks_core::TaskRecord>> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for position in positions {
        pipe.cmd("HGETALL").arg(keys.record(position.uuid));
    }
    let hashes: Vec<Vec<Vec<u8>>> = pipe.query_async(con).await?;
    Ok(positions
        .iter()
        .zip(hashes)
        .filter_map(|(position, fields)| {
            let fields = super::wire::pairs(fields);
            (!fields.is_empty()).then(|| super::wire::read_record(position.uuid, &fields).0)
        })
        .collect())
}

/// Deletes records and their index entries, one script call each in one pipeline; how many
/// existed. A cancelled task whose entry still waits is remembered so the take drops the entry
/// (`scripts::DELETE`): a deleted record never comes back.
pub(crate) async fn delete(
    keys: &Keys,
    commands: &Link,
    uuids: &[Uuid],
) -> Result<usize, BackendError> {
    let mut pipe = redis::pipe();
    for uuid in uuids {
        // `EVAL` with the (short) source: nothing to load first, even after a restart.
        let call = pipe.cmd("EVAL").arg(crate::scripts::DELETE);
        match &keys.records_index {
            Some(index) => call
                .arg(3)
                .arg(keys.record(*uuid))
                .arg(&keys.gone)
                .arg(index),
            None => call.arg(2).arg(keys.record(*uuid)).arg(&keys.gone),
        };
        call.arg(uuid.to_string());
    }
    let mut con = commands.clone();
    let deleted: Vec<u64> = pipe
        .query_async(&mut con)
        .await
        .map_err(|e| failure(format!("deleting {} record(s) failed", uuids.len()), e))?;
    Ok(deleted.iter().filter(|&&one| one == 1).count())
}

/// Index entries one sweep step looks at.
const SWEEP_BATCH: usize = 1000;

/// One step of the background sweep: looks at `SWEEP_BATCH` index entries from `rank` (oldest
/// first) and drops those whose record is gone; returns where the next step starts (0 again
/// after the newest).
pub(crate) async fn sweep(
    keys: &Keys,
    index: &str,
    commands: &Link,
    rank: usize,
) -> redis::RedisResult<usize> {
    let mut con = commands.clone();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(index)
        .arg(rank)
        .arg(rank + SWEEP_BATCH - 1)
        .query_async(&mut con)
        .await?;
    if members.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for member in &members {
        match Uuid::parse_str(member) {
            Ok(uuid) => pipe.exists(keys.record(uuid)),
            // Not a uuid: no record can be behind it.
            Err(_) => pipe.cmd("ECHO").arg(0),
        };
    }
    let alive: Vec<u8> = pipe.query_async(&mut con).await?;
    let gone: Vec<&String> = members
        .iter()
        .zip(&alive)
        .filter(|(_, alive)| **alive == 0)
        .map(|(member, _)| member)
        .collect();
    if !gone.is_empty() {
        redis::cmd("ZREM")
            .arg(index)
            .arg(&gone)
            .exec_async(&mut con)
            .await?;
    }
    Ok(rank + members.len() - gone.len())
}
