//! How fast a page of records lists from a large store (the dashboard's tasks page, the
//! `/api/v1/tasks` route), against reading one record, measured in the same process.
//!
//! ```text
//! qtasks-listing --url redis://127.0.0.1:6379/ --records 1000000 [--keep]
//! ```
//!
//! It adds `--records` tasks (no worker: they wait) under an app name of its own, cancels one
//! in a hundred (the "rare status" of the filters), then times each kind of page 21 times and
//! prints the medians, with their ratio to one `get` of a record. The records are deleted at
//! the end unless `--keep` is given (then a second run with the same `--name` skips the adding).

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use qtasks::records::{RecordCursor, RecordQuery};
use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, QueueTasks, TaskStatus};

#[qtasks::task]
async fn listed(i: u64) -> u64 {
    i
}

fn arg(key: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == key).map(|w| w[1].clone())
}

async fn median<F, Fut, T>(runs: usize, mut call: F) -> (Duration, T)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let out = call().await;
        times.push(started.elapsed());
        last = Some(out);
    }
    times.sort();
    (times[runs / 2], last.expect("at least one run"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = arg("--url").unwrap_or_else(|| "redis://127.0.0.1:6379/".to_owned());
    let records: u64 = arg("--records")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let name = arg("--name").unwrap_or_else(|| format!("qtasks_listing_{records}"));
    let keep = std::env::args().any(|a| a == "--keep");
    let config = QueueConfig {
        name,
        ..QueueConfig::default()
    };
    let app: QueueTasks = qtasks::redis::connect_with(&url, config, RedisOptions::default())
        .await
        .expect("Redis is reachable");

    let present = app
        .records()
        .list(&RecordQuery::default().limit(1))
        .await
        .expect("listing")
        .total
        .unwrap_or(0);
    if present < records {
        let started = Instant::now();
        let uuids: Vec<qtasks::Uuid> = futures_util::stream::iter(present..records)
            .map(|i| {
                let app = app.clone();
                async move { listed::add_task(&app, i).await.expect("added").uuid() }
            })
            .buffered(64)
            .collect()
            .await;
        let added = started.elapsed();
        futures_util::stream::iter(uuids.iter().step_by(100))
            .for_each_concurrent(64, |uuid| {
                let app = app.clone();
                async move {
                    app.cancel(*uuid, "the rare status")
                        .await
                        .expect("cancelled");
                }
            })
            .await;
        eprintln!(
            "added {} records in {added:.1?} ({:.0}/s), cancelled one in a hundred",
            uuids.len(),
            uuids.len() as f64 / added.as_secs_f64()
        );
    }

    const RUNS: usize = 21;
    let newest = app
        .records()
        .list(&RecordQuery::default().limit(1))
        .await
        .expect("listing");
    let one = newest.records[0].uuid;
    let (get, _) = median(RUNS, || app.get(one)).await;
    let mut rows = vec![("get one record (baseline)", get, 1)];
    let mut time = async |label: &'static str, query: RecordQuery| {
        let (took, page) = median(RUNS, || app.records().list(&query)).await;
        let page = page.expect("listing");
        rows.push((label, took, page.records.len()));
        page
    };
    let first = time("first page, 50, no filter", RecordQuery::default()).await;
    let total = first.total.unwrap_or(0);
    let all_times = app
        .records()
        .list(&RecordQuery::default().limit(500))
        .await
        .expect("listing");
    let cursor = RecordCursor::of(all_times.records.last().expect("records"));
    time(
        "page after a cursor, 50",
        RecordQuery::default().after(cursor),
    )
    .await;
    let oldest_page = app
        .records()
        .list(&RecordQuery::default().between(None, Some(1.0)))
        .await
        .expect("listing");
    assert!(oldest_page.records.is_empty());
    let half = {
        // A time half way through the adding: the created_at of a record ~total/2 down.
        let mut query = RecordQuery::default().limit(500);
        let mut page = app.records().list(&query).await.expect("listing");
        let mut seen = page.records.len() as u64;
        while seen < total / 2 {
            query = query.after(page.next.expect("more pages"));
            page = app.records().list(&query).await.expect("listing");
            seen += page.records.len() as u64;
        }
        page.records.last().expect("records").created_at
    };
    time(
        "page of a time range (until the middle)",
        RecordQuery::default().between(None, Some(half)),
    )
    .await;
    time(
        "status cancel (1 in 100), 50",
        RecordQuery::default().status(TaskStatus::Cancel),
    )
    .await;
    time(
        "task name filter, 50",
        RecordQuery::default().task_name("listed"),
    )
    .await;
    let rare = time(
        "status error (none): one scan budget",
        RecordQuery::default().status(TaskStatus::Error),
    )
    .await;

    println!("store: {total} records; medians of {RUNS} runs each");
    println!("| query | median | ratio to one get | records |");
    println!("|---|---|---|---|");
    for (label, took, count) in &rows {
        println!(
            "| {label} | {:.2} ms | {:.1} | {count} |",
            took.as_secs_f64() * 1000.0,
            took.as_secs_f64() / get.as_secs_f64()
        );
    }
    println!(
        "(the empty filter looked through {} records before returning, scan_incomplete = {})",
        rare.scanned, rare.scan_incomplete
    );
    if !keep {
        app.flush_all().await.expect("flushed");
    }
}
