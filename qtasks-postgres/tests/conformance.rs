//! The backend conformance suite (`qtasks::testing::conformance`) on PostgreSQL: every case
//! must hold. The suite runs in a schema of its own, dropped at the end.

use std::time::Duration;

use qtasks::postgres::PostgresOptions;
use qtasks::testing::conformance;
use qtasks_test_support::{pg_schema, postgres_url, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn postgres_passes_the_conformance_suite() {
    let Some(url) = postgres_url("postgres_passes_the_conformance_suite") else {
        return;
    };
    let schema = pg_schema("conformance");
    let backend = {
        let (url, schema) = (url.clone(), schema.clone());
        move |config: qtasks::QueueConfig| {
            let url = url.clone();
            let options = PostgresOptions {
                schema: schema.clone(),
                lease: Duration::from_secs(5),
                ..PostgresOptions::default()
            };
            async move { qtasks::postgres::connect_with(&url, config, options).await }
        }
    };
    let report = conformance::run(&backend, &unique_prefix("conformance")).await;
    drop(backend);
    drop_schema(&url, &schema).await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}

async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Executor;
    let pool = sqlx::PgPool::connect(url).await.expect("connecting");
    pool.execute(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .await
    .expect("dropping the test's schema");
}
