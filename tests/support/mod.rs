//! Helpers shared by the Redis tests.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, QueueTasks};

/// The Redis URL of the machine, or `None` (the test prints that it was skipped).
pub(crate) fn redis_url(test: &str) -> Option<String> {
    match std::env::var("QTASKS_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped {test}: QTASKS_TEST_REDIS_URL is not set");
            None
        }
    }
}

/// A key prefix (app name) no other test uses, also across processes and runs.
pub(crate) fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "qt_{test}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An app on Redis under its own prefix.
pub(crate) async fn redis_app(
    url: &str,
    prefix: &str,
    options: RedisOptions,
    concurrency: usize,
) -> QueueTasks {
    let config = QueueConfig {
        name: prefix.to_owned(),
        max_tasks_process: concurrency,
        ..Default::default()
    };
    qtasks::redis::connect_with(url, config, options)
        .await
        .expect("Redis is reachable")
}

pub(crate) async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// What a worker that died mid-task leaves on Redis: a `process` record for `task_name(args)`
/// and a lease that ends at `lease_deadline_ms` (Unix milliseconds; 0 has run out already).
pub(crate) async fn plant_taken_task(
    url: &str,
    prefix: &str,
    task_name: &str,
    args: &str,
    lease_deadline_ms: i64,
) -> qtasks::Uuid {
    use redis::AsyncCommands;
    let uuid = qtasks::Uuid::new_v4();
    let mut con = raw_connection(url).await;
    let record = [
        ("task_name", task_name),
        ("priority", "0"),
        ("args", args),
        ("kwargs", "{}"),
        ("created_at", "1.0"),
        ("updated_at", "1.0"),
        ("status", "process"),
    ];
    let _: () = con
        .hset_multiple(format!("{prefix}:{uuid}"), &record)
        .await
        .unwrap();
    let member = format!("{:020}|{task_name}:{uuid}:0", 1);
    let _: () = con
        .zadd(format!("{prefix}:qtasks:leases"), member, lease_deadline_ms)
        .await
        .unwrap();
    uuid
}
