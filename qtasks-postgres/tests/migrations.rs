//! The schema's migrations against the machine's PostgreSQL: a schema left at version 1 by an
//! older build is refused with `migrate` off and upgraded with it on, and the upgraded
//! triggers announce finished tasks in batches that wake their waiters.

use std::collections::HashSet;
use std::time::Duration;

use qtasks::postgres::PostgresOptions;
use qtasks::{QueueConfig, QueueTasks, TaskStatus, Uuid};
use qtasks_test_support::{pg_schema, postgres_url, unique_prefix};
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, Executor, PgPool};

#[qtasks::task]
async fn pg_migrated_echo(n: i64) -> i64 {
    n
}

/// Version 1 as a build of it left the schema: its tables and triggers, and its record.
async fn schema_at_version_1(pool: &PgPool, schema: &str) {
    let v1 =
        include_str!("../migrations/0001_init.sql").replace("{schema}", &format!("\"{schema}\""));
    pool.execute(AssertSqlSafe(format!(
        "CREATE SCHEMA \"{schema}\";
         CREATE TABLE \"{schema}\".qtasks_migrations (
             version bigint PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         {v1}
         INSERT INTO \"{schema}\".qtasks_migrations (version, description)
             VALUES (1, 'tables, indexes and triggers');"
    )))
    .await
    .expect("the schema at version 1");
}

async fn connect(url: &str, schema: &str, app: &str, migrate: bool) -> qtasks::Result<QueueTasks> {
    let options = PostgresOptions {
        schema: schema.to_owned(),
        migrate,
        ..PostgresOptions::default()
    };
    let config = QueueConfig {
        name: app.to_owned(),
        ..QueueConfig::default()
    };
    qtasks::postgres::connect_with(url, config, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn a_schema_at_version_1_is_refused_without_migrate_and_upgraded_with_it() {
    let Some(url) = postgres_url("pg_migrations_upgrade") else {
        return;
    };
    let pool = PgPool::connect(&url).await.expect("connecting");
    let schema = pg_schema("pg_migrations_upgrade");
    schema_at_version_1(&pool, &schema).await;
    let app_name = unique_prefix("pg_migrations_upgrade");

    let Err(refused) = connect(&url, &schema, &app_name, false).await else {
        panic!("a schema behind this build is refused with migrate off");
    };
    let message = refused.to_string();
    assert!(
        message.contains("version 1") && message.contains("needs 3"),
        "the error names both versions: {message}"
    );

    let app = connect(&url, &schema, &app_name, true)
        .await
        .expect("upgraded on connect");
    let versions: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".qtasks_migrations ORDER BY version"
    )))
    .fetch_all(&pool)
    .await
    .expect("reading the versions");
    assert_eq!(versions, [1, 2, 3]);

    // The upgraded trigger: finished tasks announced at most 100 a message, each once, and
    // their waiters woken by it (well before their own look, 30 s).
    let mut listener = PgListener::connect(&url).await.expect("listening");
    listener
        .listen(&format!("qtasks_{schema}"))
        .await
        .expect("listening on the schema's channel");
    let handles = pg_migrated_echo::add_many(&app, (0..300).map(|n| (n,)))
        .await
        .expect("adding");
    let added: HashSet<Uuid> = handles.iter().map(|handle| handle.uuid()).collect();
    app.start().await.expect("the worker starts");
    for handle in &handles {
        let record = handle
            .wait(Duration::from_secs(10))
            .await
            .expect("woken by the notification");
        assert_eq!(record.status, TaskStatus::Success);
    }
    let mut announced: Vec<Uuid> = Vec::new();
    let mut largest = 0;
    while announced.len() < added.len() {
        let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("every end is announced")
            .expect("a notification");
        let mut words = notification.payload().split(' ');
        if words.next() != Some("d") {
            continue;
        }
        let uuids: Vec<Uuid> = words.skip(1).map(|w| w.parse().expect("a uuid")).collect();
        largest = largest.max(uuids.len());
        announced.extend(uuids);
    }
    assert!(largest <= 100, "at most 100 a message, not {largest}");
    let once: HashSet<Uuid> = announced.iter().copied().collect();
    assert_eq!(
        (once, announced.len()),
        (added, handles.len()),
        "every end announced, once"
    );
    eprintln!("pg migrations: the largest announcement named {largest} tasks");
    app.stop().await.expect("the worker stops");
    drop(app);
    pool.execute(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .await
        .expect("dropping the test's schema");
}
