//! The backend conformance suite (`qtasks::testing::conformance`) on Redis: every case must hold.

use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::testing::conformance;
use qtasks_test_support::{redis_url, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_passes_the_conformance_suite() {
    let Some(url) = redis_url("redis_passes_the_conformance_suite") else {
        return;
    };
    let backend = move |config: qtasks::QueueConfig| {
        let url = url.clone();
        async move {
            let options = RedisOptions {
                lease: Duration::from_secs(5),
                ..RedisOptions::default()
            };
            qtasks::redis::connect_with(&url, config, options).await
        }
    };
    let report = conformance::run(&backend, &unique_prefix("conformance")).await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}
