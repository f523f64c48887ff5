//! The Kafka broker of qtasks: the task queue lives in a Kafka topic, read by a consumer group,
//! and the records in a storage it is paired with (Redis by default, as in Python QTasks, or
//! any [`RecordStore`](qtasks_core::backend::RecordStore)).
//!
//! Turn it on with the `kafka` feature of `qtasks`:
//!
//! ```no_run
//! # async fn demo() -> qtasks::Result<()> {
//! use qtasks::redis::Redis;
//!
//! let app = qtasks::kafka::connect("127.0.0.1:9092", Redis::new("redis://127.0.0.1:6379/0")).await?;
//! # Ok(()) }
//! ```
//!
//! # What it keeps from the original, and where it differs
//!
//! - The topic is `N_task_queue`, the consumer group `N_group`, and a message's value is the
//!   original's `task_name:uuid:priority`, the task's data in its record: a producer that
//!   writes the record and sends that value reaches a qtasks worker. qtasks adds the whole
//!   task as JSON in a `qtasks-task` header, so its own takes need no read of the record.
//! - Offsets are committed only up to a partition's first task whose outcome is not stored
//!   (the original commits automatically as it reads, so a crashed worker loses its tasks):
//!   delivery is at least once, and a message read again whose record has ended is dropped.
//!   Tasks of one partition run at once, up to the worker's slots.
//! - Priorities do not reorder the topic: Kafka keeps a partition in the order it was written,
//!   and that is the order its tasks start in.
//! - A delayed task (or a retry's backoff) due later than a second waits in the topic
//!   `N_qtasks_delay`, one partition per tier of wait (250 ms times a power of two), read by the
//!   group `N_group_delay` and moved on when due; what is due sooner waits in the memory of the
//!   worker that read it.
//! - Cancel requests for running tasks travel on the topic `N_qtasks_cancel`, and messages that
//!   are not tasks are set aside in `N_qtasks_dead` with the reason in a header.
//! - Named queues and task limits are not kept (a worker that asks for them is told so).
#![warn(missing_docs)]

mod broker;
mod consumer;
mod dead_letters;
mod delays;
mod offsets;
mod python_repr;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use qtasks_core::backend::{
    BackendError, BackendParts, CancelRequest, Connector, RecordStore, RecordStoreConnector,
};
use qtasks_core::components::GlobalConfig;
use qtasks_core::{QueueConfig, QueueTasks};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use tokio::sync::broadcast;

use crate::broker::{KafkaBroker, Setup};
use crate::wire::Names;

/// An app (default config) whose queue is on the Kafka cluster at `servers`
/// (`host:port,host:port`, or a `kafka://` URL) and whose records are in `storage`'s storage:
/// `qtasks::redis::Redis::new(url)` pairs them as Python QTasks does.
pub async fn connect(
    servers: &str,
    storage: impl RecordStoreConnector,
) -> qtasks_core::Result<QueueTasks> {
    connect_with(
        servers,
        storage,
        QueueConfig::default(),
        KafkaOptions::default(),
    )
    .await
}

/// An app with this config (its `name` prefixes the topic and group names) and these options.
///
/// ```no_run
/// # async fn demo() -> qtasks::Result<()> {
/// use qtasks::kafka::KafkaOptions;
/// use qtasks::redis::Redis;
/// use qtasks::QueueConfig;
///
/// let config = QueueConfig { name: "billing".into(), max_tasks_process: 8, ..Default::default() };
/// let app = qtasks::kafka::connect_with(
///     "127.0.0.1:9092",
///     Redis::new("redis://127.0.0.1:6379/0"),
///     config,
///     KafkaOptions::default().partitions(6),
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub async fn connect_with(
    servers: &str,
    storage: impl RecordStoreConnector,
    config: QueueConfig,
    options: KafkaOptions,
) -> qtasks_core::Result<QueueTasks> {
    Ok(QueueTasks::builder()
        .config(config)
        .connect(Kafka::new(servers, storage).options(options))
        .await?
        .build())
}

/// The Kafka engine as a [`Connector`]: the broker on Kafka, the storage and global config
/// from another engine.
///
/// ```no_run
/// # async fn demo() -> qtasks::Result<()> {
/// use qtasks::QueueTasks;
/// use qtasks::kafka::Kafka;
/// use qtasks::redis::Redis;
///
/// let app = QueueTasks::builder()
///     .connect(Kafka::new("127.0.0.1:9092", Redis::new("redis://127.0.0.1:6379/0")))
///     .await?
///     .build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Kafka {
    servers: String,
    storage: StorageSource,
    options: KafkaOptions,
}

#[derive(Clone)]
enum StorageSource {
    /// Another engine's storage and global config (its broker is not used).
    Engine(Arc<dyn RecordStoreConnector>),
    /// A storage and global config made already.
    Parts(Arc<dyn RecordStore>, Arc<dyn GlobalConfig>),
}

impl Kafka {
    /// The Kafka cluster at `servers` (`host:port,host:port`, or `kafka://host:port`), with the
    /// records in `storage`'s storage: its broker is not used.
    pub fn new(servers: impl Into<String>, storage: impl RecordStoreConnector) -> Self {
        Kafka {
            servers: servers.into(),
            storage: StorageSource::Engine(Arc::new(storage)),
            options: KafkaOptions::default(),
        }
    }

    /// The Kafka cluster at `servers`, with the records in `storage` and the shared entries in
    /// `global_config`: in-memory ones for a single process, or your own.
    ///
    /// ```no_run
    /// # async fn demo() -> qtasks::Result<()> {
    /// use std::sync::Arc;
    /// use qtasks::backend::MemoryStorage;
    /// use qtasks::components::MemoryGlobalConfig;
    /// use qtasks::kafka::Kafka;
    ///
    /// let engine = Kafka::with_storage(
    ///     "127.0.0.1:9092",
    ///     Arc::new(MemoryStorage::new()),
    ///     Arc::new(MemoryGlobalConfig::new()),
    /// );
    /// let app = qtasks::QueueTasks::builder().connect(engine).await?.build();
    /// # Ok(()) }
    /// ```
    pub fn with_storage(
        servers: impl Into<String>,
        storage: Arc<dyn RecordStore>,
        global_config: Arc<dyn GlobalConfig>,
    ) -> Self {
        Kafka {
            servers: servers.into(),
            storage: StorageSource::Parts(storage, global_config),
            options: KafkaOptions::default(),
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: KafkaOptions) -> Self {
        self.options = options;
        self
    }
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("servers", &self.servers)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The bootstrap servers of `servers`: `host:port,host:port`, with or without `kafka://`.
fn bootstrap_servers(servers: &str) -> Result<String, BackendError> {
    let list = servers
        .strip_prefix("kafka://")
        .unwrap_or(servers)
        .trim_end_matches('/');
    if list.is_empty() || list.split(',').any(|server| !server.contains(':')) {
        return Err(BackendError::new(
            "kafka",
            format!("`{servers}` names no Kafka servers: give `host:port` (several joined by `,`)"),
        ));
    }
    Ok(list.to_owned())
}

// `kafka://` reaches this engine through `QueueTasks::connect_engine_url` and the command
// line's `--url`, with the records in the store named by the second URL (`--storage-url`,
// `QTASKS_STORAGE_URL`).
fn url_connector(
    url: &qtasks_core::backend::EngineUrl<'_>,
) -> Result<Box<dyn Connector>, BackendError> {
    let records = url.record_store("kafka")?;
    Ok(Box::new(Kafka::new(url.url, records)))
}

qtasks_core::url_engine!(qtasks_core::backend::UrlEngine::new(
    "kafka",
    &["kafka"],
    url_connector
));

#[qtasks_core::async_trait]
impl Connector for Kafka {
    async fn connect(&self, config: &QueueConfig) -> Result<BackendParts, BackendError> {
        let names =
            Names::new(&config.name).map_err(|reason| BackendError::new("kafka", reason))?;
        let servers = bootstrap_servers(&self.servers)?;
        let (storage, global_config) = match &self.storage {
            StorageSource::Engine(engine) => engine.connect_records(config).await?,
            StorageSource::Parts(storage, global_config) => {
                (Arc::clone(storage), Arc::clone(global_config))
            }
        };
        let (partitions, delay_tiers) = ensure_topics(&servers, &names, &self.options).await?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                broker::SEND_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .map_err(|e| {
                BackendError::new("kafka", "creating the producer failed").with_source(e)
            })?;
        let (cancels, _) = broadcast::channel(4096);
        let (listening, stopped) = tokio::sync::watch::channel(());
        listen_for_cancels(&servers, &names.cancel, cancels.clone(), stopped).await?;
        let concurrency = config.max_tasks_process.max(1);
        let broker = KafkaBroker::new(
            Setup {
                names,
                servers,
                partitions,
                delay_tiers: i32::try_from(delay_tiers).unwrap_or(1),
                session_timeout: self.options.session_timeout,
                revoke_patience: self.options.revoke_patience,
                buffer: concurrency.saturating_mul(4).max(64),
                fetch_wait: self.options.fetch_wait,
            },
            producer,
            Arc::clone(&storage),
            Arc::clone(&global_config),
            cancels,
            listening,
        );
        Ok(BackendParts::new(
            Arc::new(broker),
            storage as _,
            global_config,
        ))
    }
}

/// Creates the app's topics where they are missing, and returns the partition counts of the
/// task topic and the delay topic (a topic that exists keeps its own).
async fn ensure_topics(
    servers: &str,
    names: &Names,
    options: &KafkaOptions,
) -> Result<(usize, usize), BackendError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .map_err(|e| {
            BackendError::new("kafka", "creating the admin client failed").with_source(e)
        })?;
    let replication = || TopicReplication::Fixed(options.replication);
    let partitions = i32::from(options.partitions.max(1));
    let topics = [
        NewTopic::new(&names.topic, partitions, replication()),
        NewTopic::new(&names.cancel, 1, replication()),
        NewTopic::new(&names.dead, 1, replication()),
        NewTopic::new(&names.delay, delays::DELAY_TIERS, replication()),
    ];
    let created = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(broker::SEND_TIMEOUT)),
        )
        .await
        .map_err(|e| {
            BackendError::new("kafka", format!("reaching Kafka at {servers} failed")).with_source(e)
        })?;
    for result in created {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BackendError::new(
                    "kafka",
                    format!("creating the topic `{topic}` failed: {code}"),
                ));
            }
        }
    }
    // The partition counts, read back (a topic may have been made by another process).
    let topics = [names.topic.clone(), names.delay.clone()];
    let servers = servers.to_owned();
    tokio::task::spawn_blocking(move || -> Result<(usize, usize), BackendError> {
        let reader: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .create()
            .map_err(|e| BackendError::new("kafka", "creating a client failed").with_source(e))?;
        let mut counts = [0; 2];
        for (topic, count) in topics.iter().zip(&mut counts) {
            let metadata = reader
                .fetch_metadata(Some(topic), broker::SEND_TIMEOUT)
                .map_err(|e| {
                    BackendError::new("kafka", format!("reading the topic `{topic}` failed"))
                        .with_source(e)
                })?;
            *count = metadata
                .topics()
                .iter()
                .find(|found| found.name() == topic)
                .map_or(0, |found| found.partitions().len());
            if *count == 0 {
                return Err(BackendError::new(
                    "kafka",
                    format!("the topic `{topic}` has no partitions"),
                ));
            }
        }
        Ok((counts[0], counts[1]))
    })
    .await
    .map_err(|e| BackendError::new("kafka", "reading the topics failed").with_source(e))?
}

/// Reads the cancel topic from its end, in the background, for as long as the broker lives.
async fn listen_for_cancels(
    servers: &str,
    topic: &str,
    cancels: broadcast::Sender<CancelRequest>,
    mut stopped: tokio::sync::watch::Receiver<()>,
) -> Result<(), BackendError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        // A group of its own: each process hears every request; nothing is committed.
        .set(
            "group.id",
            format!("qtasks-cancel-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| {
            BackendError::new("kafka", "creating the cancel listener failed").with_source(e)
        })?;
    // From the topic's end as it is now, read before connect returns: a logical "end" is
    // resolved later, when the consumer first fetches, and a cancel sent in between (a client
    // that cancels a task this worker runs, on a loaded machine) would be skipped. Seen once
    // in CI.
    let end = {
        let (servers, name) = (servers.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || -> Result<i64, rdkafka::error::KafkaError> {
            let reader: rdkafka::consumer::BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &servers)
                .create()?;
            Ok(reader.fetch_watermarks(&name, 0, broker::SEND_TIMEOUT)?.1)
        })
        .await
        .map_err(|e| BackendError::new("kafka", "reading the cancel topic failed").with_source(e))?
        .map_err(|e| {
            BackendError::new("kafka", format!("reading the end of `{topic}` failed"))
                .with_source(e)
        })?
    };
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, 0, rdkafka::Offset::Offset(end))
        .and_then(|()| consumer.assign(&list))
        .map_err(|e| {
            BackendError::new("kafka", format!("reading the topic `{topic}` failed")).with_source(e)
        })?;
    tokio::spawn(async move {
        use rdkafka::Message;
        loop {
            let message = tokio::select! {
                _ = stopped.changed() => return,
                message = consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    let request: Option<serde_json::Value> = message
                        .payload()
                        .and_then(|payload| serde_json::from_slice(payload).ok());
                    let uuid = request
                        .as_ref()
                        .and_then(|request| request.get("uuid")?.as_str()?.parse().ok());
                    let reason = request
                        .as_ref()
                        .and_then(|request| request.get("reason")?.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(uuid) = uuid {
                        let _ = cancels.send(CancelRequest::new(uuid, reason));
                    }
                }
                Err(error) => {
                    tracing::warn!("reading cancel requests failed: {error}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    Ok(())
}

/// Settings of the Kafka broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaOptions {
    /// How many partitions a task topic created by qtasks gets (one that exists keeps its
    /// own). Each partition is read by one worker of the group at a time: more partitions let
    /// more workers share the queue. Default 4.
    pub partitions: u16,
    /// How many copies of each partition a created topic keeps. Default 1 (a single broker);
    /// 3 on a production cluster.
    pub replication: i32,
    /// How long the group waits to hear from a worker before it hands the worker's partitions
    /// (and their unfinished tasks) to the others (`session.timeout.ms`). Default 10 s.
    pub session_timeout: Duration,
    /// How long a worker whose partitions are being taken (another worker joined or left)
    /// waits for the running tasks of those partitions to end before it lets them go; a task
    /// still running then may run again on the partition's next owner. Default 30 s.
    pub revoke_patience: Duration,
    /// How long a worker's fetch waits on the server for messages (`fetch.wait.max.ms`): the
    /// longest an idle worker takes to see a new task on a server that answers a fetch only
    /// when its wait ends (tansu does; Apache Kafka answers as soon as a message comes).
    /// Default 100 ms: an idle worker sends ten fetches a second.
    pub fetch_wait: Duration,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            partitions: 4,
            replication: 1,
            session_timeout: Duration::from_secs(10),
            revoke_patience: Duration::from_secs(30),
            fetch_wait: Duration::from_millis(100),
        }
    }
}

impl KafkaOptions {
    /// Sets [`partitions`](Self::partitions).
    #[must_use]
    pub fn partitions(mut self, partitions: u16) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets [`replication`](Self::replication).
    #[must_use]
    pub fn replication(mut self, copies: i32) -> Self {
        self.replication = copies;
        self
    }

    /// Sets [`session_timeout`](Self::session_timeout).
    #[must_use]
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets [`fetch_wait`](Self::fetch_wait).
    #[must_use]
    pub fn fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait;
        self
    }

    /// Sets [`revoke_patience`](Self::revoke_patience).
    #[must_use]
    pub fn revoke_patience(mut self, patience: Duration) -> Self {
        self.revoke_patience = patience;
        self
    }
}
