//! The bookkeeping triggers against the machine's PostgreSQL, written to by hand: one
//! statement that changes rows in every way a statement can, and what the triggers counted
//! and announced for it.

use std::collections::BTreeSet;
use std::time::Duration;

use qtasks::Uuid;
use sqlx::postgres::PgListener;

mod common;
use common::TestApp;

/// The notifications of `listener` that arrive within a second of each other, as payloads.
async fn payloads(listener: &mut PgListener) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(Duration::from_secs(1), listener.recv()).await
    {
        seen.push(notification.payload().to_owned());
    }
    seen
}

/// The words after the kind and the app's hash of the payloads of one kind.
fn named(payloads: &[String], kind: &str, app_hash: &str) -> BTreeSet<String> {
    payloads
        .iter()
        .filter_map(|payload| payload.strip_prefix(&format!("{kind} {app_hash} ")))
        .flat_map(|rest| rest.split(' ').map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn one_statement_of_mixed_changes_is_counted_and_announced_row_by_row() {
    // Connecting makes the schema; no worker runs.
    let Some(test) = TestApp::new("pg_triggers_mixed", 1).await else {
        return;
    };
    let (pool, app_name, schema) = (&test.pool, &test.app_name, &test.schema);
    let app_hash: String = sqlx::query_scalar("SELECT left(md5($1), 16)")
        .bind(app_name)
        .fetch_one(pool)
        .await
        .expect("the app's hash");
    let mut listener = PgListener::connect(&test.url).await.expect("a listener");
    listener
        .listen(&format!("qtasks_{schema}"))
        .await
        .expect("listening");

    // Records: one becomes final, one stays running, one final changes its status, one final
    // is written again as it was.
    let [ended, running, changed, rewritten] = [(); 4].map(|()| Uuid::new_v4());
    for (uuid, status) in [
        (ended, "process"),
        (running, "process"),
        (changed, "success"),
        (rewritten, "success"),
    ] {
        sqlx::query(test.sql(
            "INSERT INTO {schema}.records (app, uuid, status, task_name, created_ms, updated_at, doc)
             VALUES ($1, $2, $3, 't', 0, 0, '{}')",
        ))
        .bind(app_name)
        .bind(uuid)
        .bind(status)
        .execute(pool)
        .await
        .expect("a record");
    }
    sqlx::query(test.sql(
        "UPDATE {schema}.records SET status = CASE uuid
             WHEN $2 THEN 'success' WHEN $3 THEN 'new' WHEN $4 THEN 'error' ELSE status END
         WHERE app = $1",
    ))
    .bind(app_name)
    .bind(ended)
    .bind(running)
    .bind(changed)
    .execute(pool)
    .await
    .expect("one statement of mixed changes");
    let counted: Vec<(String, i64)> = sqlx::query_as(test.sql(
        "SELECT kind, sum(n)::bigint FROM {schema}.stat_deltas
         WHERE app = $1 AND kind IN ('success', 'error', 'cancel', 'retry') GROUP BY kind",
    ))
    .bind(app_name)
    .fetch_all(pool)
    .await
    .expect("the counts");
    assert_eq!(
        counted,
        [("success".to_owned(), 1)],
        "only the record that became final is counted"
    );
    let seen = payloads(&mut listener).await;
    assert_eq!(
        named(&seen, "d", &app_hash),
        [ended, changed].iter().map(Uuid::to_string).collect(),
        "the records that became final or changed their final status are announced: {seen:?}"
    );

    // Queue rows: one becomes due, one waiting changes its priority, one is leased.
    let rows = [
        (Uuid::new_v4(), "due", "d"),
        (Uuid::new_v4(), "reprioritised", "w"),
        (Uuid::new_v4(), "leased", "w"),
    ];
    for (uuid, queue, state) in rows {
        sqlx::query(test.sql(
            "INSERT INTO {schema}.queue (app, uuid, queue, priority, state, due_at, created_at)
             VALUES ($1, $2, $3, 0, $4, CASE WHEN $4 = 'd' THEN now() END, 0)",
        ))
        .bind(app_name)
        .bind(uuid)
        .bind(queue)
        .bind(state)
        .execute(pool)
        .await
        .expect("a queue row");
    }
    let _added = payloads(&mut listener).await;
    sqlx::query(test.sql(
        "UPDATE {schema}.queue SET
             state = CASE queue WHEN 'due' THEN 'w' WHEN 'leased' THEN 'r' ELSE state END,
             due_at = NULL,
             priority = CASE queue WHEN 'reprioritised' THEN 5 ELSE priority END,
             token = CASE queue WHEN 'leased' THEN gen_random_uuid() END,
             lease_until = CASE queue WHEN 'leased' THEN now() + interval '1 minute' END
         WHERE app = $1",
    ))
    .bind(app_name)
    .execute(pool)
    .await
    .expect("one statement of mixed queue changes");
    let seen = payloads(&mut listener).await;
    assert_eq!(
        named(&seen, "a", &app_hash),
        ["due", "reprioritised"].map(str::to_owned).into(),
        "the queues of the rows that wait after the change are announced: {seen:?}"
    );

    // What the statement moved between the counted states, by queue, priority and state.
    let moved: BTreeSet<(String, i64, String, i64)> = sqlx::query_as(test.sql(
        "SELECT queue, priority, kind, sum(n)::bigint FROM {schema}.stat_deltas
         WHERE app = $1 AND kind IN ('w', 'd', 'r') GROUP BY 1, 2, 3 HAVING sum(n) <> 0",
    ))
    .bind(app_name)
    .fetch_all(pool)
    .await
    .expect("the queue counts")
    .into_iter()
    .collect();
    assert_eq!(
        moved,
        [
            ("due", 0, "w", 1),
            ("leased", 0, "r", 1),
            ("reprioritised", 5, "w", 1),
        ]
        .map(|(queue, priority, kind, n)| (queue.to_owned(), priority, kind.to_owned(), n))
        .into(),
        "each row counted in its state and priority after the statement"
    );

    // A leased row without a token, or a token on a row not leased, is refused by the check.
    for (what, sql) in [
        (
            "a leased row without its token",
            "UPDATE {schema}.queue SET token = NULL WHERE app = $1 AND queue = 'leased'",
        ),
        (
            "a waiting row with a token",
            "UPDATE {schema}.queue SET token = gen_random_uuid() WHERE app = $1 AND queue = 'due'",
        ),
    ] {
        let refused = sqlx::query(test.sql(sql))
            .bind(app_name)
            .execute(pool)
            .await
            .expect_err(what);
        let refused = refused.as_database_error().expect("a database error");
        assert_eq!(
            (refused.code().as_deref(), refused.constraint()),
            (Some("23514"), Some("queue_token_while_leased")),
            "{what} breaks the check: {refused}"
        );
    }

    test.drop_schema().await;
}
