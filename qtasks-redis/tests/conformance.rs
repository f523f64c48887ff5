//! The backend conformance suite (`qtasks::testing::conformance`) on Redis: every case must hold.

use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::testing::conformance;
use qtasks_test_support::{redis_url, unique_prefix};

/// The app the suite asks for, on the Redis at `url` (5 s leases: the suite's dead workers
/// come back sooner).
fn backend(url: String) -> impl conformance::Backend {
    partitioned_backend(url, 1)
}

/// [`backend`], spread over `partitions`.
fn partitioned_backend(url: String, partitions: u16) -> impl conformance::Backend {
    move |config: qtasks::QueueConfig| {
        let url = url.clone();
        async move {
            let options = RedisOptions {
                lease: Duration::from_secs(5),
                partitions,
                ..RedisOptions::default()
            };
            qtasks::redis::connect_with(&url, config, options).await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_passes_the_conformance_suite() {
    let Some(url) = redis_url("redis_passes_the_conformance_suite") else {
        return;
    };
    let backend = backend(url);
    let report = conformance::run(&backend, &unique_prefix("conformance")).await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}

/// The same suite through Sentinels: a master, a replica and three Sentinels of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_through_sentinels_passes_the_conformance_suite() {
    if redis_url("redis_through_sentinels_passes_the_conformance_suite").is_none() {
        return;
    }
    let master = qtasks_test_support::OwnRedis::start("conformance-sentinel-master", false);
    let replica = qtasks_test_support::OwnReplica::start(&master);
    replica.until_in_sync().await;
    let sentinels = qtasks_test_support::OwnSentinels::start(&master, "conformance");
    sentinels.until_ready(1).await;
    let url = sentinels.url();
    let backend = backend(url);
    let report = conformance::run(&backend, &unique_prefix("conformance-sentinel")).await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}

/// The same suite on a Redis Cluster of the test's own (three masters, no replicas): each app
/// on the slot of its hash tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_cluster_passes_the_conformance_suite() {
    if redis_url("redis_cluster_passes_the_conformance_suite").is_none() {
        return;
    }
    let cluster = qtasks_test_support::OwnCluster::start(3, 0);
    cluster.until_ok(3).await;
    let report = conformance::run(
        &backend(cluster.url()),
        &unique_prefix("conformance-cluster"),
    )
    .await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}

/// The same suite on an app spread over three partitions, on a cluster of three masters: one
/// partition per shard. (Unique keys and task limits are refused there, as the suite allows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_partitioned_app_on_a_redis_cluster_passes_the_conformance_suite() {
    if redis_url("a_partitioned_app_on_a_redis_cluster_passes_the_conformance_suite").is_none() {
        return;
    }
    let cluster = qtasks_test_support::OwnCluster::start(3, 0);
    cluster.until_ok(3).await;
    let report = conformance::run(
        &partitioned_backend(cluster.url(), 3),
        &unique_prefix("conformance-partitions"),
    )
    .await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}
