//! The planner's statistics against the machine's PostgreSQL: a burst of tasks after the queue
//! table was analyzed empty is not left to plans made for an empty table.
//!
//! An ANALYZE (or autovacuum) that finds the queue table empty records zero rows on its pages,
//! and the planner then sizes the table as empty whatever it holds, until autovacuum analyzes
//! it again (its first look comes a minute later at best). A worker analyzes such a table
//! itself within a few seconds.

use std::time::{Duration, Instant};

use qtasks::TaskStatus;
use sqlx::{Executor, PgPool};

mod common;
use common::TestApp;

#[qtasks::task]
async fn pg_statistics_echo(n: i64) -> i64 {
    n
}

/// What `pg_class` says of the test's queue table: its pages and rows.
async fn queue_statistics(test: &TestApp, pool: &PgPool) -> (i32, f32) {
    sqlx::query_as(
        test.sql("SELECT relpages, reltuples FROM pg_class WHERE oid = '{schema}.queue'::regclass"),
    )
    .fetch_one(pool)
    .await
    .expect("reading pg_class")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn a_burst_after_the_queue_was_analyzed_empty_gets_its_statistics_at_once() {
    let Some(test) = TestApp::new("pg_statistics_burst", 64).await else {
        return;
    };
    let (app, pool) = (&test.app, &test.pool);

    // The trap: pages the table once used, analyzed while it was empty. Autovacuum is off for
    // the table, so only the worker can analyze it.
    pool.execute(test.sql("ALTER TABLE {schema}.queue SET (autovacuum_enabled = false)"))
        .await
        .expect("autovacuum off for the test's table");
    app.start().await.expect("the worker starts");
    let first = pg_statistics_echo::add_many(app, (0..2000).map(|n| (n,)))
        .await
        .expect("adding the first tasks");
    for handle in &first {
        let record = handle
            .wait(Duration::from_secs(60))
            .await
            .expect("the first tasks end");
        assert_eq!(record.status, TaskStatus::Success);
    }
    pool.execute(test.sql("ANALYZE {schema}.queue"))
        .await
        .expect("analyzing the empty table");
    let (pages, rows) = queue_statistics(&test, pool).await;
    assert!(
        pages > 0 && rows < 1.0,
        "the trap is set: pages kept, no rows ({pages} pages, {rows} rows)"
    );

    // The burst, held in a paused queue so that the worker takes none of it.
    app.queues().pause("default").await.expect("pausing");
    let burst = pg_statistics_echo::add_many(app, (0..3000).map(|n| (n,)))
        .await
        .expect("adding the burst");
    // The live-row counters the check reads are flushed by the adding sessions within about a
    // second while busy, ten when they go idle; the check runs every two.
    let started = Instant::now();
    let rows = loop {
        let (_, rows) = queue_statistics(&test, pool).await;
        if rows >= 1000.0 || started.elapsed() > Duration::from_secs(30) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        rows >= 1000.0,
        "the worker analyzed the table that holds 3,000 waiting rows (its statistics say {rows})"
    );

    app.queues().resume("default").await.expect("resuming");
    for handle in &burst {
        let record = handle
            .wait(Duration::from_secs(60))
            .await
            .expect("the burst drains");
        assert_eq!(record.status, TaskStatus::Success);
    }
    test.drop_schema().await;
}
