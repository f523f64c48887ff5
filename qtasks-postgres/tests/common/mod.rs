//! What the PostgreSQL tests share: an app in a schema of its own, and a pool of the test's
//! own to write and read the tables by hand.
// Each test file is a crate of its own and uses part of this.
#![allow(dead_code)]

use qtasks::QueueConfig;
use qtasks::QueueTasks;
use qtasks::postgres::PostgresOptions;
use qtasks_test_support::{pg_schema, postgres_url, unique_prefix};
use sqlx::{AssertSqlSafe, Executor, PgPool};

/// An app of the test in a schema of its own (made by connecting; no worker runs yet).
pub(crate) struct TestApp {
    pub(crate) app: QueueTasks,
    /// The test's own connections.
    pub(crate) pool: PgPool,
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) app_name: String,
}

impl TestApp {
    /// The app of test `test` running `slots` tasks at once, or `None` (with a line on stderr)
    /// when no PostgreSQL is given outside CI.
    pub(crate) async fn new(test: &str, slots: usize) -> Option<TestApp> {
        let url = postgres_url(test)?;
        let schema = pg_schema(test);
        let app_name = unique_prefix(test);
        let options = PostgresOptions {
            schema: schema.clone(),
            ..PostgresOptions::default()
        };
        let config = QueueConfig {
            name: app_name.clone(),
            max_tasks_process: slots,
            ..QueueConfig::default()
        };
        let app = qtasks::postgres::connect_with(&url, config, options)
            .await
            .expect("connecting");
        let pool = PgPool::connect(&url)
            .await
            .expect("connecting the test's pool");
        Some(TestApp {
            app,
            pool,
            url,
            schema,
            app_name,
        })
    }

    /// `sql` with `{schema}` replaced by the quoted schema name.
    pub(crate) fn sql(&self, sql: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(sql.replace("{schema}", &format!("\"{}\"", self.schema)))
    }

    /// Stops the app and drops its schema.
    pub(crate) async fn drop_schema(self) {
        let TestApp {
            app, pool, schema, ..
        } = self;
        let _ = app.stop().await;
        drop(app);
        pool.execute(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .await
        .expect("dropping the test's schema");
    }
}
