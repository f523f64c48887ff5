//! Transactional enqueue against the machine's PostgreSQL: a task added in the caller's
//! transaction exists exactly when the transaction commits, and wakes a worker that already
//! waits.

use std::time::Duration;

use qtasks::postgres::AddInExt;
use qtasks::{QueueTasks, TaskStatus};
use qtasks_test_support::postgres_url;
use sqlx::{AssertSqlSafe, Executor, PgPool};

mod common;
use common::TestApp;

#[qtasks::task]
async fn pg_tx_double(n: i64) -> i64 {
    n * 2
}

/// An app in a schema of its own, with the orders table its tests insert into.
struct Setup {
    test: TestApp,
}

impl std::ops::Deref for Setup {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.test
    }
}

impl Setup {
    async fn new(test: &str) -> Option<Setup> {
        let test = TestApp::new(test, 10).await?;
        test.pool
            .execute(test.sql("CREATE TABLE {schema}.orders (id bigint PRIMARY KEY)"))
            .await
            .expect("creating the orders table");
        Some(Setup { test })
    }

    async fn orders(&self) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{}\".orders",
            self.schema
        )))
        .fetch_one(&self.pool)
        .await
        .expect("counting orders")
    }

    async fn drop_schema(self) {
        self.test.drop_schema().await;
    }

    fn insert_order(&self) -> String {
        format!("INSERT INTO \"{}\".orders (id) VALUES ($1)", self.schema)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn a_task_added_in_a_committed_transaction_runs_and_a_rolled_back_one_never_exists() {
    let Some(setup) = Setup::new("pg_tx_commit_rollback").await else {
        return;
    };
    setup.app.start().await.expect("starting");

    // Rolled back: neither the order nor the task.
    let mut tx = setup.pool.begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(setup.insert_order()))
        .bind(1_i64)
        .execute(&mut *tx)
        .await
        .expect("order 1");
    let lost = pg_tx_double::call(1)
        .add_in(&setup.app, &mut tx)
        .await
        .expect("adding in the transaction");
    // Not visible to the app before the commit.
    assert!(setup.app.get(lost.uuid()).await.expect("get").is_none());
    tx.rollback().await.expect("rollback");
    assert!(setup.app.get(lost.uuid()).await.expect("get").is_none());

    // Committed: both, and the task runs.
    let mut tx = setup.pool.begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(setup.insert_order()))
        .bind(2_i64)
        .execute(&mut *tx)
        .await
        .expect("order 2");
    let kept = pg_tx_double::call(21)
        .add_in(&setup.app, &mut tx)
        .await
        .expect("adding in the transaction");
    tx.commit().await.expect("commit");
    let result: i64 = kept
        .result(Duration::from_secs(30))
        .await
        .expect("the committed task runs");
    assert_eq!(result, 42);
    assert_eq!(setup.orders().await, 1, "only the committed order");

    // The rolled-back task never ran: a while later it still does not exist.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(setup.app.get(lost.uuid()).await.expect("get").is_none());
    setup.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn a_waiting_worker_wakes_when_the_transaction_commits() {
    let Some(setup) = Setup::new("pg_tx_wakes").await else {
        return;
    };
    setup.app.start().await.expect("starting");
    // The worker is idle in its take by now (it sleeps until a notification; its safety look
    // is 30 s away).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tx = setup.pool.begin().await.expect("begin");
    let handle = pg_tx_double::call(5)
        .add_in(&setup.app, &mut tx)
        .await
        .expect("adding");
    // Held open: the worker must not see the task yet.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = setup.app.get(handle.uuid()).await.expect("get");
    assert!(before.is_none(), "visible before the commit: {before:?}");
    tx.commit().await.expect("commit");
    // Woken by the commit's notification: far sooner than the 30 s safety look.
    let record = handle
        .wait(Duration::from_secs(10))
        .await
        .expect("the worker woke on the commit");
    assert_eq!(record.status, TaskStatus::Success);
    setup.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn the_untyped_form_and_a_plain_connection_add_too() {
    let Some(setup) = Setup::new("pg_tx_untyped").await else {
        return;
    };
    setup.app.start().await.expect("starting");
    let mut conn = setup.pool.acquire().await.expect("a connection");
    // Outside a transaction: committed at once.
    let handle = qtasks::postgres::add_task_in(
        &setup.app,
        &mut conn,
        "pg_tx_double",
        (4,),
        (),
        qtasks::AddOptions::default(),
    )
    .await
    .expect("adding on a plain connection");
    let record = handle.wait(Duration::from_secs(30)).await.expect("runs");
    assert_eq!(record.returning, Some(serde_json::json!(8)));
    drop(conn);
    setup.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn an_app_on_another_engine_is_refused() {
    let Some(url) = postgres_url("pg_tx_other_engine") else {
        return;
    };
    let pool = PgPool::connect(&url).await.expect("connecting");
    let app = QueueTasks::new();
    let mut conn = pool.acquire().await.expect("a connection");
    let error = pg_tx_double::call(1)
        .add_in(&app, &mut conn)
        .await
        .expect_err("an in-memory app has no PostgreSQL broker");
    assert!(
        error.to_string().contains("not the PostgreSQL engine's"),
        "{error}"
    );
}
