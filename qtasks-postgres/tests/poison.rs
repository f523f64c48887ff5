//! Poison in the tables, against the machine's PostgreSQL: queue rows that cannot run, taken
//! before a good task, are set aside without holding the good one back.

use std::time::Duration;

use qtasks::postgres::PostgresOptions;
use qtasks::{QueueConfig, TaskStatus, Uuid};
use qtasks_test_support::{pg_schema, postgres_url, unique_prefix};
use sqlx::{AssertSqlSafe, Executor, PgPool};

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
    let Some(url) = postgres_url("pg_poison_ahead") else {
        return;
    };
    let schema = pg_schema("pg_poison_ahead");
    let app_name = unique_prefix("pg_poison_ahead");
    let options = PostgresOptions {
        schema: schema.clone(),
        ..PostgresOptions::default()
    };
    let config = QueueConfig {
        name: app_name.clone(),
        max_tasks_process: 1,
        ..QueueConfig::default()
    };
    let app = qtasks::postgres::connect_with(&url, config, options)
        .await
        .expect("connecting");
    let pool = PgPool::connect(&url)
        .await
        .expect("connecting the test's pool");
    for _ in 0..5 {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".queue (app, uuid, queue, priority, state, created_at)
             VALUES ($1, $2, 'default', 0, 'w', 0)"
        )))
        .bind(&app_name)
        .bind(Uuid::new_v4())
        .execute(&pool)
        .await
        .expect("a poison row");
    }
    let good = pg_poison_neighbour::call(7)
        .add(&app)
        .await
        .expect("adding");
    app.start().await.expect("the worker starts");
    let record = good
        .wait(Duration::from_secs(10))
        .await
        .expect("the good task ends well before the next look (30 s)");
    assert_eq!(record.status, TaskStatus::Success);
    let letters = app.dead_letters().list(10).await.expect("dead letters");
    assert_eq!(letters.len(), 5, "each poison row set aside: {letters:?}");
    app.stop().await.expect("the worker stops");
    drop(app);
    pool.execute(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .await
        .expect("dropping the test's schema");
}
