//! Adds and finishes made at once go out in batches: a thousand tasks added with one
//! `add_many` and drained by a worker all end once, with the right results, and two adds of
//! one id racing into the same batch make one task.

use std::time::Duration;

use qtasks::postgres::PostgresOptions;
use qtasks::{QueueConfig, TaskStatus};
use qtasks_test_support::{pg_schema, postgres_url, unique_prefix};

#[qtasks::task]
async fn pg_batch_triple(n: u64) -> u64 {
    n * 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn a_thousand_tasks_added_and_finished_in_batches_end_once() {
    let Some(url) = postgres_url("pg_a_thousand_tasks_in_batches") else {
        return;
    };
    let schema = pg_schema("pg_batches");
    let config = QueueConfig {
        name: unique_prefix("pg_batches"),
        max_tasks_process: 32,
        ..QueueConfig::default()
    };
    let options = PostgresOptions {
        schema: schema.clone(),
        ..PostgresOptions::default()
    };
    let app = qtasks::postgres::connect_with(&url, config, options)
        .await
        .expect("connecting");
    let handles = pg_batch_triple::add_many(&app, (0..1000).map(|n| (n,)))
        .await
        .expect("adding");
    let twice = qtasks::Uuid::new_v4();
    let (seven, eight) = (
        pg_batch_triple::call(7).uuid(twice),
        pg_batch_triple::call(8).uuid(twice),
    );
    let (first, second) = tokio::join!(seven.add(&app), eight.add(&app));
    let first = first.expect("the first add");
    assert_eq!(first.uuid(), twice);
    assert_eq!(second.expect("the second add").uuid(), twice);
    app.start().await.expect("starting the worker");
    for (n, handle) in handles.iter().enumerate() {
        let result = handle
            .result(Duration::from_secs(60))
            .await
            .expect("the task succeeds");
        assert_eq!(result, n as u64 * 3);
    }
    // One task under the id added twice: whichever add came first wrote it.
    let once = first.wait(Duration::from_secs(60)).await.expect("it ends");
    assert_eq!(once.status, TaskStatus::Success);
    assert!(
        [Some(serde_json::json!(21)), Some(serde_json::json!(24))].contains(&once.returning),
        "{once:?}"
    );
    let stats = app.stats().await.expect("stats").queue.expect("kept");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut stats = stats;
    while stats.finished.success < 1001 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = app.stats().await.expect("stats").queue.expect("kept");
    }
    assert_eq!(stats.finished.success, 1001, "{stats:?}");
    assert_eq!(
        stats.waiting_total() + stats.running + stats.delayed,
        0,
        "{stats:?}"
    );
    app.stop().await.expect("stopping");
    drop(app);
    use qtasks::postgres::sqlx::{self, Executor};
    let pool = sqlx::PgPool::connect(&url).await.expect("connecting");
    pool.execute(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .await
    .expect("dropping the test's schema");
}
