//! Poison in the tables, against the machine's PostgreSQL: queue rows that cannot run, taken
//! before a good task, are set aside without holding the good one back.

use std::time::Duration;

use qtasks::{TaskStatus, Uuid};

mod common;
use common::TestApp;

#[qtasks::task]
async fn pg_poison_neighbour(n: i64) -> i64 {
    n
}

/// A worker of one slot takes five poison rows (no record behind them) one by one before the
/// good task added after them: each take that found only poison looks again at once. (It
/// slept until its next look, 30 s, before: found by the fault harness, a lone worker that
/// drained one poison row per look.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn poison_rows_ahead_of_a_task_do_not_hold_it_back() {
    let Some(test) = TestApp::new("pg_poison_ahead", 1).await else {
        return;
    };
    let app = &test.app;
    for _ in 0..5 {
        sqlx::query(test.sql(
            "INSERT INTO {schema}.queue (app, uuid, queue, priority, state, created_at)
             VALUES ($1, $2, 'default', 0, 'w', 0)",
        ))
        .bind(&test.app_name)
        .bind(Uuid::new_v4())
        .execute(&test.pool)
        .await
        .expect("a poison row");
    }
    let good = pg_poison_neighbour::call(7).add(app).await.expect("adding");
    app.start().await.expect("the worker starts");
    let record = good
        .wait(Duration::from_secs(10))
        .await
        .expect("the good task ends well before the next look (30 s)");
    assert_eq!(record.status, TaskStatus::Success);
    let letters = app.dead_letters().list(10).await.expect("dead letters");
    assert_eq!(letters.len(), 5, "each poison row set aside: {letters:?}");
    test.drop_schema().await;
}
