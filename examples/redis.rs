//! qtasks on Redis: a worker and a client in one process, sharing the queue as separate
//! processes would.
//!
//! `cargo run -p qtasks-examples --features redis --example redis [-- redis://127.0.0.1:6379/]`

use std::time::{Duration, Instant};

use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, TaskStatus};

#[qtasks::task]
async fn square(x: i64) -> i64 {
    x * x
}

#[tokio::main]
async fn main() -> qtasks::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_owned());
    let config = QueueConfig {
        name: "qtasks_example".to_owned(),
        ..Default::default()
    };
    let app = qtasks::redis::connect_with(&url, config, RedisOptions::default()).await?;
    app.start().await?; // the worker; a separate process would call `run_forever`

    let started = Instant::now();
    let mut handles = Vec::new();
    for x in 0..1_000 {
        handles.push(square::add_task(&app, x).await?);
    }
    let mut sum = 0;
    for handle in handles {
        let done = handle.wait(Duration::from_secs(30)).await?;
        assert_eq!(done.status, TaskStatus::Success);
        sum += done.returning.and_then(|v| v.as_i64()).unwrap_or_default();
    }
    println!(
        "1000 tasks on Redis in {:?}; sum of squares = {sum}",
        started.elapsed()
    );

    // Sequential round trips: add one task and wait for its result.
    let mut round_trips = Vec::new();
    for x in 0..200 {
        let started = Instant::now();
        square::add_task(&app, x)
            .await?
            .wait(Duration::from_secs(5))
            .await?;
        round_trips.push(started.elapsed());
    }
    round_trips.sort();
    println!(
        "round trip p50 {:?}, p99 {:?}",
        round_trips[100], round_trips[197]
    );

    app.stop().await?;
    app.flush_all().await
}
