//! The backend conformance suite (`qtasks::testing::conformance`) on RabbitMQ, paired with Redis
//! storage and with in-memory storage: every case must hold on each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qtasks::backend::MemoryStorage;
use qtasks::components::MemoryGlobalConfig;
use qtasks::rabbitmq::{RabbitMq, RabbitMqOptions};
use qtasks::redis::Redis;
use qtasks::redis::RedisOptions;
use qtasks::testing::conformance;
use qtasks_test_support::amqp_url;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;

/// Test queues vanish from the shared server a while after their test.
fn rabbitmq_options() -> RabbitMqOptions {
    RabbitMqOptions::default().queue_expires(Duration::from_secs(600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn rabbitmq_with_redis_storage_passes_the_conformance_suite() {
    let test = "rabbitmq_with_redis_storage_passes_the_conformance_suite";
    let (Some(amqp), Some(redis)) = (amqp_url(test), redis_url(test)) else {
        return;
    };
    let backend = move |config: qtasks::QueueConfig| {
        let (amqp, redis) = (amqp.clone(), redis.clone());
        async move {
            let storage = Redis::new(redis).options(RedisOptions::default());
            qtasks::rabbitmq::connect_with(&amqp, storage, config, rabbitmq_options()).await
        }
    };
    let report = conformance::run(&backend, &unique_prefix("conformance_amqp")).await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (QTASKS_TEST_AMQP_URL)"]
async fn rabbitmq_with_memory_storage_passes_the_conformance_suite() {
    let test = "rabbitmq_with_memory_storage_passes_the_conformance_suite";
    let Some(amqp) = amqp_url(test) else {
        return;
    };
    // Apps of one name share one storage, as processes share a server.
    type Shared = (Arc<MemoryStorage>, Arc<MemoryGlobalConfig>);
    let shared: Arc<Mutex<HashMap<String, Shared>>> = Arc::default();
    let backend = move |config: qtasks::QueueConfig| {
        let amqp = amqp.clone();
        let (storage, global) = shared
            .lock()
            .unwrap()
            .entry(config.name.clone())
            .or_insert_with(|| {
                (
                    Arc::new(MemoryStorage::new()),
                    Arc::new(MemoryGlobalConfig::new()),
                )
            })
            .clone();
        async move {
            let engine = RabbitMq::with_storage(&amqp, storage, global).options(rabbitmq_options());
            Ok(qtasks::QueueTasks::builder()
                .config(config)
                .connect(engine)
                .await?
                .build())
        }
    };
    let report = conformance::run(&backend, &unique_prefix("conformance_amqp_mem")).await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}
