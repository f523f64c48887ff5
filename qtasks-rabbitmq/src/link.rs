//! The connection to RabbitMQ, opened again with backoff when it drops, and the channel that
//! publishes with confirms.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use qtasks_core::backend::BackendError;

use crate::wire::{MAX_PRIORITY, Names};

pub(crate) fn failure(message: impl Into<String>, error: lapin::Error) -> BackendError {
    BackendError::new("rabbitmq", message).with_source(error)
}

/// How long one AMQP step may take: a step on a connection that died without an error
/// reaching it (cut mid-frame, its IO loop gone) must fail, not hang a worker's finish or
/// stop.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// Runs one AMQP step within [`STEP`].
pub(crate) async fn step<T>(
    what: &str,
    future: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(STEP, future).await {
        Ok(result) => result.map_err(|e| failure(what, e)),
        Err(_) => Err(BackendError::new(
            "rabbitmq",
            format!("{what}: no answer within {STEP:?}"),
        )),
    }
}

/// Runs a best-effort step (a close, an ack whose channel may be gone) within [`STEP`],
/// ignoring how it ends.
pub(crate) async fn best_effort<T>(future: impl Future<Output = Result<T, lapin::Error>>) {
    let _ = tokio::time::timeout(STEP, future).await;
}

/// An open connection and its publishing channel (in confirm mode).
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) connection: Arc<Connection>,
    pub(crate) publish: Channel,
    /// Counts the connections this link opened: a consumer of an older one is gone.
    pub(crate) generation: u64,
}

impl Live {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publish.status().connected()
    }
}

/// Why a connection could not be opened, and whether trying again may help.
struct OpenError {
    error: BackendError,
    transient: bool,
}

impl From<BackendError> for OpenError {
    fn from(error: BackendError) -> Self {
        OpenError {
            error,
            transient: true,
        }
    }
}

/// One app's connection: opened at first use, and again whenever it is found closed.
pub(crate) struct Link {
    url: String,
    /// The URL without its password, for messages.
    pub(crate) shown: String,
    pub(crate) names: Names,
    connect_timeout: Duration,
    /// `x-expires` of the app's queues, if set (tests let their queues vanish).
    queue_expires: Option<Duration>,
    /// Whether the task queue is declared with `x-max-priority`.
    priorities: bool,
    /// `x-max-length` of the dead-letter queue.
    dead_letters_max: u32,
    /// `x-message-ttl` of the dead-letter queue, if set.
    dead_letters_ttl: Option<Duration>,
    live: tokio::sync::Mutex<Option<Live>>,
    generations: AtomicU64,
}

impl Link {
    pub(crate) fn new(url: String, names: Names, options: &crate::RabbitMqOptions) -> Self {
        Link {
            shown: qtasks_core::backend::redacted_url(&url),
            url,
            names,
            connect_timeout: options.connect_timeout,
            queue_expires: options.queue_expires,
            priorities: options.priorities,
            dead_letters_max: options.dead_letters_max,
            dead_letters_ttl: options.dead_letters_ttl,
            live: tokio::sync::Mutex::default(),
            generations: AtomicU64::new(0),
        }
    }

    /// The open connection, or a new one: tries a few times with a pause that doubles from
    /// 100 ms to 2 s (about 6 s in all) before it gives up, so a caller's error comes soon
    /// and a worker asks again.
    pub(crate) async fn live(&self) -> Result<Live, BackendError> {
        let mut live = self.live.lock().await;
        if let Some(open) = live.as_ref().filter(|open| open.usable()) {
            return Ok(open.clone());
        }
        if let Some(old) = live.take() {
            tracing::warn!(url = %self.shown, "the RabbitMQ connection was lost; connecting again");
            // Whatever is left of it goes; its unacked deliveries return to the queue.
            tokio::spawn(async move {
                best_effort(old.connection.close(0, "reconnecting".into())).await;
            });
        }
        let open = (|| self.open())
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_jitter()
                    .with_max_times(5),
            )
            .when(|error: &OpenError| error.transient)
            .notify(|error: &OpenError, pause| {
                tracing::warn!(url = %self.shown, "connecting to RabbitMQ failed, trying again in {pause:?}: {}", qtasks_core::backend::ErrorChain(&error.error));
            })
            .await
            .map_err(|failed| failed.error)?;
        *live = Some(open.clone());
        Ok(open)
    }

    async fn open(&self) -> Result<Live, OpenError> {
        let unreachable = |e| failure(format!("cannot connect to RabbitMQ at {}", self.shown), e);
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("qtasks {}", self.names.queue).into());
        let connection = tokio::time::timeout(
            self.connect_timeout,
            Connection::connect(&self.url, properties),
        )
        .await
        .map_err(|_| {
            BackendError::new(
                "rabbitmq",
                format!(
                    "cannot connect to RabbitMQ at {}: no answer within {:?}",
                    self.shown, self.connect_timeout
                ),
            )
        })?
        .map_err(unreachable)?;
        let publish = connection.create_channel().await.map_err(unreachable)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unreachable)?;
        // A queue RabbitMQ refuses to declare stays refused: no point trying again.
        self.declare_queues(&publish)
            .await
            .map_err(|error| OpenError {
                error,
                transient: false,
            })?;
        Ok(Live {
            connection: Arc::new(connection),
            publish,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    /// The arguments every queue of the app gets (its expiry, when set, lengthened by
    /// `holds`: how long a message may sit in it unconsumed), plus `extra`.
    pub(crate) fn queue_arguments(
        &self,
        holds: Duration,
        extra: &[(&str, AMQPValue)],
    ) -> FieldTable {
        let mut arguments = FieldTable::default();
        if let Some(expires) = self.queue_expires {
            arguments.insert("x-expires".into(), millis(expires + holds));
        }
        for (name, value) in extra {
            arguments.insert((*name).into(), value.clone());
        }
        arguments
    }

    /// A named queue: durable, with priorities, as the task queue.
    pub(crate) async fn declare_named(
        &self,
        channel: &Channel,
        name: &str,
    ) -> Result<(), BackendError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let max_priority = [("x-max-priority", AMQPValue::LongInt(MAX_PRIORITY.into()))];
        let arguments = if self.priorities {
            self.queue_arguments(Duration::ZERO, &max_priority)
        } else {
            self.queue_arguments(Duration::ZERO, &[])
        };
        channel
            .queue_declare(name.into(), durable, arguments)
            .await
            .map_err(|e| failure(format!("declaring the queue `{name}` failed"), e))?;
        Ok(())
    }

    /// The task queue (durable, with priorities) and the dead-letter queue.
    async fn declare_queues(&self, channel: &Channel) -> Result<(), BackendError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let max_priority = [("x-max-priority", AMQPValue::LongInt(MAX_PRIORITY.into()))];
        let priorities = if self.priorities {
            self.queue_arguments(Duration::ZERO, &max_priority)
        } else {
            self.queue_arguments(Duration::ZERO, &[])
        };
        channel
            .queue_declare(self.names.queue.as_str().into(), durable, priorities)
            .await
            .map_err(|e| {
                failure(
                    format!(
                        "declaring the queue `{}` failed: is it declared with other arguments? (qtasks declares it with `x-max-priority: {MAX_PRIORITY}`; Python QTasks and `RabbitMqOptions::as_the_original` without; every process on a queue must agree)",
                        self.names.queue
                    ),
                    e,
                )
            })?;
        // Bounded: poison must not fill the server's disk.
        let mut limits = vec![(
            "x-max-length",
            AMQPValue::LongLongInt(i64::from(self.dead_letters_max.max(1))),
        )];
        if let Some(ttl) = self.dead_letters_ttl {
            limits.push(("x-message-ttl", millis(ttl)));
        }
        channel
            .queue_declare(
                self.names.dead.as_str().into(),
                durable,
                self.queue_arguments(Duration::ZERO, &limits),
            )
            .await
            .map_err(|e| {
                failure(
                    format!("declaring the queue `{}` failed", self.names.dead),
                    e,
                )
            })?;
        Ok(())
    }

    /// Closes the connection (deliveries not acked return to the queue).
    pub(crate) async fn close(&self) {
        if let Some(live) = self.live.lock().await.take() {
            best_effort(live.connection.close(200, "bye".into())).await;
        }
    }
}

/// A duration as the integer milliseconds of an AMQP argument.
pub(crate) fn millis(duration: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(duration.as_millis().min(i64::MAX as u128) as i64)
}
