//! Kafka test helpers.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Sends raw bytes (and headers) to partition `partition` of a Kafka topic (an app's task
/// topic: `{prefix}_task_queue`), as a producer of another language would, acknowledged.
pub async fn send_raw(
    servers: &str,
    topic: &str,
    partition: i32,
    value: &[u8],
    headers: &[(&str, &[u8])],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("acks", "all")
        .create()
        .expect("a Kafka producer");
    let mut owned = OwnedHeaders::new();
    for (key, value) in headers {
        owned = owned.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let record = FutureRecord::<(), _>::to(topic)
        .partition(partition)
        .payload(value)
        .headers(owned);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)
        .expect("Kafka takes the message");
}
