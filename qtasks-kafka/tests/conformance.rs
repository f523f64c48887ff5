//! The backend conformance suite (`qtasks::testing::conformance`) on Kafka, paired with Redis
//! storage: every case must hold, but those it lists as what Kafka does not keep.

use qtasks::kafka::KafkaOptions;
use qtasks::redis::Redis;
use qtasks::testing::conformance;
use qtasks_test_support::{kafka_url, redis_url, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Redis (QTASKS_TEST_KAFKA_URL, QTASKS_TEST_REDIS_URL)"]
async fn kafka_with_redis_storage_passes_the_conformance_suite() {
    let test = "kafka_with_redis_storage_passes_the_conformance_suite";
    let (Some(kafka), Some(redis)) = (kafka_url(test), redis_url(test)) else {
        return;
    };
    let backend = move |config: qtasks::QueueConfig| {
        let (kafka, redis) = (kafka.clone(), redis.clone());
        async move {
            qtasks::kafka::connect_with(&kafka, Redis::new(redis), config, KafkaOptions::default())
                .await
        }
    };
    let report = conformance::run(&backend, &unique_prefix("conformance_kafka")).await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}
