//! Redis test helpers: an app under its own prefix, a raw connection, a planted record.

use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, QueueTasks};

/// An app on Redis under its own prefix.
pub async fn redis_app(
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

pub async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// What a worker that died mid-task leaves on Redis: a `process` record for `task_name(args)`
/// and a lease that ends at `lease_deadline_ms` (Unix milliseconds; 0 has run out already).
pub async fn plant_taken_task(
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
    // A lease member is the delivery token (32 characters) and then the queue member.
    let token = qtasks::Uuid::new_v4().simple().to_string();
    let member = format!("{token}{:020}|{task_name}:{uuid}:0", 1);
    let _: () = con
        .zadd(format!("{prefix}:qtasks:leases"), member, lease_deadline_ms)
        .await
        .unwrap();
    uuid
}
