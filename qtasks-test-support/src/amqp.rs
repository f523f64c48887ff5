//! RabbitMQ test helpers.

/// Publishes raw bytes to a RabbitMQ queue (an app's task queue: `{prefix}:task_queue`), as a
/// producer of another language would, confirmed.
pub async fn publish_raw(amqp: &str, queue: &str, body: &[u8]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let connection = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

/// The options of a test's RabbitMQ app: its queues vanish from the shared server a while after
/// the test.
pub fn options() -> qtasks::rabbitmq::RabbitMqOptions {
    qtasks::rabbitmq::RabbitMqOptions::default().queue_expires(std::time::Duration::from_secs(600))
}

/// An app on RabbitMQ at `amqp` with its records on Redis at `redis`, under its own `prefix`.
pub async fn app(amqp: &str, redis: &str, prefix: &str, concurrency: usize) -> qtasks::QueueTasks {
    let config = qtasks::QueueConfig {
        name: prefix.to_owned(),
        max_tasks_process: concurrency,
        ..qtasks::QueueConfig::default()
    };
    qtasks::rabbitmq::connect_with(amqp, qtasks::redis::Redis::new(redis), config, options())
        .await
        .expect("connects to RabbitMQ and Redis")
}

/// The RabbitMQ and Redis URLs a test of RabbitMQ with Redis records needs, or `None` (see
/// [`services`](crate::services)).
pub fn services(test: &str) -> Option<(String, String)> {
    Some((crate::amqp_url(test)?, crate::redis_url(test)?))
}
